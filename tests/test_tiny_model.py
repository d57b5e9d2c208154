"""The embedded tiny Qwen3 (data/mili-tiny-qwen3): its folder, its chat template, its skills.

Fast CPU checks: the folder is a Qwen3 checkpoint transformers loads; transformers' chat template
rendering equals mili's; training pieces tokenise exactly as the whole conversation does; and mili
answers a fixed sample of questions exactly (the end-to-end check of the engine on this machine).
"""

from __future__ import annotations

import importlib.util
import json
import random

import pytest
import torch

from mili import tasks
from mili.evaluation import DEFAULT_MODEL

FOLDER = DEFAULT_MODEL


def _build_script():
    spec = importlib.util.spec_from_file_location("build_tiny_model", FOLDER.parent / "build_tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_folder_is_a_small_qwen3_checkpoint():
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["head_dim"] == 128
    assert config["num_attention_heads"] == 2 * config["num_key_value_heads"]
    assert config["tie_word_embeddings"] is True
    assert config["max_position_embeddings"] >= 2048
    assert config.get("rope_theta", config.get("rope_parameters", {}).get("rope_theta")) == 1e6
    assert (FOLDER / "model.safetensors").stat().st_size <= 20_000_000
    generation = json.loads((FOLDER / "generation_config.json").read_text())
    tokenizer = json.loads((FOLDER / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert generation["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert {"<think>", "</think>", "<|im_start|>"} <= set(ids)


def test_tasks_are_seeded_and_answers_check():
    suite = tasks.eval_suite(5, seed=3)
    assert suite == tasks.eval_suite(5, seed=3)
    assert suite != tasks.eval_suite(5, seed=4)
    assert set(suite) == set(tasks.SKILLS) | {"recall@64"}
    for q in suite["arithmetic"]:
        a, op, b = q.messages[0]["content"].removeprefix("What is ").removesuffix("?").split()
        assert int(q.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    for q in suite["recall@64"]:
        assert q.messages[0]["content"].count("\n- ") == tasks.MAX_TABLE
        assert tasks.check(q, f" {q.answer}\n") and not tasks.check(q, q.answer + "0")


def test_transformers_loads_the_folder_and_renders_what_mili_renders():
    transformers = pytest.importorskip("transformers")
    from mili.tokenizer import Tokenizer

    hf = transformers.AutoTokenizer.from_pretrained(FOLDER)
    ours = Tokenizer.from_pretrained(FOLDER)
    model = transformers.AutoModelForCausalLM.from_pretrained(FOLDER)
    assert model.config.model_type == "qwen3"
    for skill, questions in tasks.eval_suite(2, seed=11).items():
        for q in questions:
            for thinking in (None, False, True):
                extra = {} if thinking is None else {"enable_thinking": thinking}
                text = hf.apply_chat_template(q.messages, add_generation_prompt=True, tokenize=False, **extra)
                assert ours.apply_chat_template(q.messages, add_generation_prompt=True, enable_thinking=thinking) == text
                assert ours.encode(text) == hf.encode(text, add_special_tokens=False), skill
    assert set(ours.eos_token_ids) == {hf.convert_tokens_to_ids("<|im_end|>"), hf.convert_tokens_to_ids("<|endoftext|>")}


def test_training_pieces_tokenise_like_the_whole_conversation():
    from tokenizers import Tokenizer

    build = _build_script()
    tok, render, rng = Tokenizer.from_file(str(FOLDER / "tokenizer.json")), build.chat_renderer(), random.Random(0)
    for i in range(40):
        pieces = build.sample(rng, render, "recall" if i % 4 == 0 else None, table_size=rng.randint(1, 6))
        whole = "".join(text for text, _ in pieces)
        joined = [t for text, _ in pieces for t in tok.encode(text, add_special_tokens=False).ids]
        assert joined == tok.encode(whole, add_special_tokens=False).ids
        assert sum(target for _, target in pieces) >= 1
        assert all(text.endswith("<|im_end|>") for text, target in pieces if target)


# Short skills, one question each (recall has its own test below, through the engine).
SAMPLE = [("What is 17 + 25?", "42"), ("What is 503 - 678?", "-175"), ("What is 999 + 1?", "1000"),
          ("Reverse the words:\nred fox sun moon", "moon sun fox red"),
          ("Sort the numbers:\n52, 7, 31, 7, 90", "7, 7, 31, 52, 90"),
          ("Copy this sentence exactly:\nBrave fox dream bright cold star.", "Brave fox dream bright cold star.")]


def test_mili_answers_a_sample_exactly():
    from mili.checkpoint import load_model
    from mili.generate import generate_tokens
    from mili.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(FOLDER)
    model = load_model(FOLDER, dtype=torch.float32, device="cpu", backend="torch")
    eos = tokenizer.eos_token_ids
    for question, answer in SAMPLE:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True)
        new = list(generate_tokens(model, ids, 32, eos))
        assert new[-1] in eos, f"{question!r}: no end of turn within 32 tokens"
        reply = tokenizer.decode(new[:-1])
        assert reply == answer, f"{question!r}: expected {answer!r}, got {reply!r}"


def test_engine_recalls_codes_from_a_shared_table_with_prefix_caching():
    """The prefix-caching workload: one long table prompt, several questions; a RoPE or KV-cache
    bug (positions of cached blocks, slot mapping) turns right codes into wrong ones."""
    import random

    from mili import LLM, SamplingParams

    table = tasks.code_table(random.Random(2026), 48)
    names = list(table)[::9]
    llm = LLM(str(FOLDER), dtype="float32", device="cpu", num_kv_blocks=512)
    conversations = [[{"role": "system", "content": tasks.table_prompt(table)},
                      {"role": "user", "content": tasks.recall_question(name)}] for name in names]
    first = llm.chat(conversations[:1], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    rest = llm.chat(conversations[1:], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    replies = [out.outputs[0].text for out in first + rest]
    assert replies == [table[name] for name in names], f"codes of {names}: expected {[table[n] for n in names]}, got {replies}"
    assert all(out.num_cached_tokens >= 16 * 20 for out in rest), "later questions must reuse the cached table prompt"
