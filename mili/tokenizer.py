"""Tokenizer: text <-> token ids, the chat template, and the ids that end a generation.

Reads a Hugging Face model folder the way `transformers` does:
- `tokenizer.json` (required): the fast-tokenizer file, run by the `tokenizers` library;
- `tokenizer_config.json`: the Jinja chat template (a string, or a list of named templates),
  and the special tokens (eos_token, pad_token, ...) the template may refer to;
- `chat_template.jinja` / `additional_chat_templates/*.jinja`: newer folders keep templates
  there, and they take priority over the config's;
- `generation_config.json` (else `config.json`): `eos_token_id`, an int or a list. Generation
  stops on every one of them and on the tokenizer's eos_token.

Chat templates are rendered exactly as `transformers.PreTrainedTokenizerBase.apply_chat_template`
renders them (see `mili.chat_template`), so prompts match the ones the model was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _BackendTokenizer

from mili.chat_template import render_chat_template, select_template, validate_messages

# The named special tokens transformers hands to chat templates (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

DOWNLOAD_HINT = (
    "A model folder holds tokenizer.json (plus tokenizer_config.json for the chat template and "
    "generation_config.json for the stop ids), as published on the Hugging Face Hub; download "
    "one with e.g. `huggingface-cli download Qwen/Qwen3-0.6B --local-dir models/Qwen3-0.6B`, "
    "or build the Qwen3 tokenizer offline with mili.qwen3_tokenizer.qwen3_tokenizer()."
)


class TokenizerError(ValueError):
    """A tokenizer file is malformed, or the tokenizer cannot do what was asked."""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} should hold a JSON object, got {type(data).__name__}")
    return data


def _token_text(value: Any, where: str) -> str | None:
    """A special token in tokenizer_config.json: a string, null, or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"{where} should be a string or an object with 'content', got {value!r}")


def _read_chat_templates(folder: Path, config: dict) -> str | dict[str, str] | None:
    templates = {}
    if (folder / "chat_template.jinja").is_file():
        templates["default"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    extra_dir = folder / "additional_chat_templates"
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if templates:
        return templates["default"] if list(templates) == ["default"] else templates
    template = config.get("chat_template")
    if isinstance(template, list):
        try:
            return {entry["name"]: entry["template"] for entry in template}
        except (TypeError, KeyError) as err:
            raise TokenizerError(
                "tokenizer_config.json: chat_template is a list, so each entry must be "
                "{'name': ..., 'template': ...}"
            ) from err
    if template is not None and not isinstance(template, str):
        raise TokenizerError(
            f"tokenizer_config.json: chat_template must be a string or a list of named templates, "
            f"got {type(template).__name__}"
        )
    return template


def _read_eos_ids(folder: Path) -> list[int]:
    for name in ("generation_config.json", "config.json"):
        if (folder / name).is_file():
            value = _read_json(folder / name).get("eos_token_id")
            ids = value if isinstance(value, list) else [] if value is None else [value]
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
                raise TokenizerError(
                    f"{folder / name}: eos_token_id must be an int or a list of ints, got {value!r}"
                )
            return ids
    return []


class Tokenizer:
    """A `tokenizers.Tokenizer` plus what a model folder says about chat formatting and stopping."""

    def __init__(
        self,
        backend: _BackendTokenizer,
        *,
        chat_template: str | dict[str, str] | None = None,
        special_tokens: dict[str, str] | None = None,
        eos_token_ids: Iterable[int] = (),
    ):
        self._backend = backend
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        eos = list(dict.fromkeys(eos_token_ids))
        eos_token = self.special_tokens.get("eos_token")
        if (
            eos_token is not None
            and (eos_id := backend.token_to_id(eos_token)) is not None
            and eos_id not in eos
        ):
            eos.append(eos_id)
        self._eos_token_ids = eos
        self._longest_token_chars: int | None = None

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Tokenizer:
        """Load the tokenizer of a Hugging Face model folder (files: see the module docstring)."""
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"no model folder at {folder}. {DOWNLOAD_HINT}")
        if not (folder / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json. {DOWNLOAD_HINT}")
        try:
            backend = _BackendTokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as err:  # tokenizers raises a bare Exception for any bad file
            raise TokenizerError(f"{folder / 'tokenizer.json'} could not be read: {err}") from err
        config_path = folder / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        special_tokens = {}
        for name in SPECIAL_TOKEN_NAMES:
            text = _token_text(config.get(name), f"{config_path}: {name}")
            if text is not None:
                special_tokens[name] = text
        return cls(
            backend,
            chat_template=_read_chat_templates(folder, config),
            special_tokens=special_tokens,
            eos_token_ids=_read_eos_ids(folder),
        )

    # --- text <-> ids -------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special-token text such as "<|im_end|>" becomes its single id."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_releasing_gil(self, text: str) -> list[int]:
        """`encode(text)`, while other Python threads run: `tokenizers` holds the GIL through
        `encode` (a megabyte of text stalls every thread for seconds) but releases it in
        `encode_batch`. For a server that tokenizes in a worker thread beside its event loop."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._backend.encode_batch([text], add_special_tokens=False)[0].ids

    @property
    def longest_token_chars(self) -> int:
        """The most characters one token can stand for (its byte-level spelling has one character
        per byte, and a byte is at most one character), so a text of C characters needs at least
        C / longest_token_chars tokens, before normalization."""
        if self._longest_token_chars is None:
            self._longest_token_chars = max(len(token) for token in self._backend.get_vocab(with_added_tokens=True))
        return self._longest_token_chars

    def decode(self, ids: int | Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`. A cut-off UTF-8 character decodes to U+FFFD; ids outside the vocabulary
        (e.g. the padding rows of an embedding table) are skipped."""
        return self._backend.decode(self._as_id_list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | None | list[str | None]:
        """The vocabulary entry of each id (byte-level text, e.g. "Ġworld"); None if unknown."""
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        return [self._backend.id_to_token(i) for i in self._as_id_list(ids)]

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    @staticmethod
    def _as_id_list(ids: Iterable[int]) -> list[int]:
        if isinstance(ids, int):
            return [ids]
        if isinstance(ids, (str, bytes)):
            raise TypeError("ids must be a sequence of ints, got a string")
        out = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if any(i < 0 for i in out):
            raise ValueError(f"token ids must be non-negative, got {min(out)}")
        return out

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer knows: base vocabulary + added tokens (151,669 for Qwen3; the
        model's embedding table may be larger, e.g. 151,936)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends a generation: generation_config's eos_token_id, then the eos_token."""
        return list(self._eos_token_ids)

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    # --- chat ---------------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    def apply_chat_template(
        self,
        messages: list[dict],
        *,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        enable_thinking: bool | None = None,
        tools: list[dict] | None = None,
        **template_kwargs,
    ) -> str | list[int]:
        """Render a conversation with the model's chat template (as transformers does).

        messages: [{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}, ...].
        add_generation_prompt: end with the header of the assistant's next turn.
        enable_thinking: passed to the template only when not None (Qwen3: False adds an empty
        <think></think> block so the model answers directly).
        tools: JSON schemas of functions the model may call. Other keyword arguments become
        template variables. Returns the prompt text, or its token ids when tokenize=True.
        """
        if not self.has_chat_template:
            raise TokenizerError(
                "this tokenizer has no chat template (tokenizer_config.json has no 'chat_template' "
                "and the folder no chat_template.jinja): encode a plain prompt with .encode()"
            )
        messages = validate_messages(messages)
        if enable_thinking is not None:
            template_kwargs["enable_thinking"] = enable_thinking
        template = select_template(self.chat_template, has_tools=tools is not None)
        text = render_chat_template(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            **{**self.special_tokens, **template_kwargs},
        )
        return self.encode(text) if tokenize else text

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, eos_token_ids={self._eos_token_ids}, "
            f"chat_template={'yes' if self.has_chat_template else 'no'})"
        )
