"""Build data/mili-tiny-qwen3 from a seed: corpus -> tokenizer (CPU) -> Qwen3 training (GPU).

    python data/build_tiny_model.py corpus    --seed 0 --out /tmp/tiny-corpus.txt
    python data/build_tiny_model.py tokenizer --seed 0 --out data/mili-tiny-qwen3
    python data/build_tiny_model.py train     --seed 0 --out data/mili-tiny-qwen3 --steps 2693

(data/README.md lists the exact commands of both training phases.)
The corpus is an endless seeded stream of chat conversations over the skills in `mili/tasks.py`,
rendered with the checkpoint's own chat template (Qwen3's, verbatim), so training sees exactly the
tokens `apply_chat_template(..., add_generation_prompt=True)` produces at inference. The loss falls
on the assistant answers (and their <|im_end|>) only. 3 in 4 conversations use the default prompt
(`<|im_start|>assistant\\n`), 1 in 4 the `enable_thinking=False` one (an empty think block).
Training lives in `data/train_tiny_model.py`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mili import tasks
from mili.chat_template import render_chat_template
from mili.qwen3_chat_template import QWEN3_CHAT_TEMPLATE

MODEL_DIR = Path(__file__).resolve().parent / "mili-tiny-qwen3"
SPECIAL_TOKENS = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
                  ("<think>", False), ("</think>", False)]   # (content, special) as in Qwen3
BPE_VOCAB = 2043          # at most (+ 5 added tokens = 2048); the corpus saturates it at 1,364
# Qwen2/Qwen3's pre-tokenizer split: contractions, words, single digits, punctuation, spaces.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SHORT_SKILLS = {"arithmetic": 0.4, "sort": 0.25, "reverse": 0.2, "copy": 0.15}
EMPTY_THINK_SHARE = 0.25


def chat_renderer(template: str = QWEN3_CHAT_TEMPLATE):
    """Render a chat template with mili's renderer (the test suite holds it equal to transformers')."""
    def render(messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        return render_chat_template(template, messages, add_generation_prompt=add_generation_prompt, **kwargs)
    return render


# How recall conversations ask: (share with one question, most questions, distinct names).
# v1 made the tokenizer corpus and training phase 1; v2 (more lookups per table) phase 2.
RECALL_MIXES = {"v1": (0.5, 8, False), "v2": (0.3, 16, True)}


def conversation(rng: random.Random, skill: str, table_size: int | None = None, mix: str = "v2") -> list[dict]:
    """One training conversation, its answers included. Recall asks several questions of one table."""
    if skill != "recall":
        q = tasks.GENERATORS[skill](rng)
        return q.messages + [{"role": "assistant", "content": q.answer}]
    single, most, distinct = RECALL_MIXES[mix]
    table = tasks.code_table(rng, table_size or rng.randint(1, tasks.MAX_TABLE))
    turns = 1 if rng.random() < single else rng.randint(2, most)
    names = (rng.sample(list(table), min(turns, len(table))) if distinct
             else [rng.choice(list(table)) for _ in range(turns)])
    messages = [{"role": "system", "content": tasks.table_prompt(table)}]
    for name in names:
        messages += [{"role": "user", "content": tasks.recall_question(name)},
                     {"role": "assistant", "content": table[name]}]
    return messages


def segments(render, messages: list[dict], empty_think: bool) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_target) pieces: targets are answers + <|im_end|>.

    The prompt is the template's rendering of every message but the last answer, with the
    generation prompt; earlier answers are found in it where the template wrote them.
    """
    extra = {"enable_thinking": False} if empty_think else {}
    prompt = render(messages[:-1], add_generation_prompt=True, **extra)
    pieces, pos = [], 0
    for message in messages[:-1]:
        if message["role"] != "assistant":
            continue
        header = "<|im_start|>assistant\n"
        start = prompt.index(header + message["content"] + "<|im_end|>", pos) + len(header)
        end = start + len(message["content"]) + len("<|im_end|>")
        pieces += [(prompt[pos:start], False), (prompt[start:end], True)]
        pos = end
    pieces += [(prompt[pos:], False), (messages[-1]["content"] + "<|im_end|>", True)]
    return pieces


def sample(rng: random.Random, render, skill: str | None = None, table_size: int | None = None,
           mix: str = "v2") -> list[tuple[str, bool]]:
    """One training conversation as segments: a short skill (weighted) unless `skill` is given."""
    skill = skill or rng.choices(list(SHORT_SKILLS), weights=list(SHORT_SKILLS.values()))[0]
    return segments(render, conversation(rng, skill, table_size, mix), empty_think=rng.random() < EMPTY_THINK_SHARE)


def corpus_texts(seed: int, n: int) -> list[str]:
    """`n` rendered conversations (1 in 5 a recall one) for tokenizer training and inspection."""
    rng, render = random.Random(f"corpus/{seed}"), chat_renderer()
    return ["".join(text for text, _ in sample(rng, render, "recall" if i % 5 == 0 else None, mix="v1"))
            for i in range(n)]


def train_tokenizer(texts: list[str]):
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = re.compile("|".join(re.escape(t) for t, _ in SPECIAL_TOKENS))
    pieces = [p for text in texts for p in specials.split(text) if p]
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(pieces, trainer)
    for content, special in SPECIAL_TOKENS:   # after the BPE ranks, as in Qwen
        token = AddedToken(content, special=special, normalized=False)
        tok.add_special_tokens([token]) if special else tok.add_tokens([token])
    return tok


def tokenizer_config(tok) -> dict:
    added = {str(tok.token_to_id(c)): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                        "single_word": False, "special": s} for c, s in SPECIAL_TOKENS}
    return {"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
            "chat_template": QWEN3_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 2048,
            "pad_token": "<|endoftext|>", "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}


def build_tokenizer(seed: int, out: Path, n: int) -> None:
    tok = train_tokenizer(corpus_texts(seed, n))
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok), indent=2, ensure_ascii=False) + "\n")
    print(f"tokenizer: {tok.get_vocab_size()} ids -> {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    corpus = sub.add_parser("corpus", help="write sample conversations (text) to a file")
    corpus.add_argument("--out", type=Path, required=True)
    corpus.add_argument("--n", type=int, default=2000)
    tokenizer = sub.add_parser("tokenizer", help="train the BPE tokenizer, write tokenizer*.json")
    tokenizer.add_argument("--out", type=Path, default=MODEL_DIR)
    tokenizer.add_argument("--n", type=int, default=20000, help="conversations to train on")
    train = sub.add_parser("train", help="train the model (GPU), write the checkpoint")
    for p in (corpus, tokenizer, train):
        p.add_argument("--seed", type=int, default=0)
    args, rest = parser.parse_known_args(argv)
    if args.step == "corpus":
        args.out.write_text("\n\n".join(corpus_texts(args.seed, args.n)) + "\n")
    elif args.step == "tokenizer":
        build_tokenizer(args.seed, args.out, args.n)
    else:
        from train_tiny_model import main as train_main
        return train_main(["--seed", str(args.seed)] + rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
