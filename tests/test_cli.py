"""The `mili` command: status, generate (parity with transformers, streaming, JSON), and every kind of
bad input or failure (corrupt weights, missing CUDA, a failed generation) as one line on stderr with a
non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mili.cli import main
from tests.hf_oracle import hf_greedy, make_checkpoint_with_tokenizer


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A random Qwen3 (transformers) with the tiny model's tokenizer: any HF folder must work."""
    folder = tmp_path_factory.mktemp("cli-model")
    return folder, make_checkpoint_with_tokenizer(folder)


def _run(args, capsys):
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse reports usage errors by exiting with status 2
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_json_matches_transformers_greedy(model_folder, capsys):
    folder, hf = model_folder
    code, out, err = _run(["generate", "--model", str(folder), "--temperature", "0", "--max-tokens", "24", "--json",
                           "--no-chat", "What is 17 + 25?"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"prompt_token_ids", "token_ids", "text", "finish_reason"}
    expected = hf_greedy(hf, result["prompt_token_ids"], 24)
    assert result["token_ids"] == expected
    assert result["finish_reason"] == "length"


def test_generate_streams_text_with_the_chat_template(model_folder, capsys):
    folder, _ = model_folder
    code, out, err = _run(["generate", "--model", str(folder), "--max-tokens", "8", "--temperature", "0.8",
                           "--top-p", "0.9", "--top-k", "20", "--seed", "3", "hi"], capsys)
    assert code == 0, err
    again = _run(["generate", "--model", str(folder), "--max-tokens", "8", "--temperature", "0.8",
                  "--top-p", "0.9", "--top-k", "20", "--seed", "3", "hi"], capsys)[1]
    assert out == again, "the same --seed must give the same sample"


@pytest.mark.parametrize("args,message", [
    (["--model", "/no/such/folder", "hi"], "neither a model folder nor a preset"),
    (["--max-tokens", "0", "hi"], "positive integer"),
    (["--temperature", "-1", "hi"], "must be >= 0"),
    (["--top-p", "0", "hi"], "(0, 1]"),
])
def test_bad_arguments_get_one_line_and_status_2(model_folder, args, message, capsys):
    folder, _ = model_folder
    argv = ["generate"] + (args if "--model" in args else ["--model", str(folder)] + args)
    code, _, err = _run(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_prompt_beyond_the_context_window(model_folder, capsys):
    folder, _ = model_folder
    code, _, err = _run(["generate", "--model", str(folder), "--no-chat", "--max-tokens", "8", "word " * 600], capsys)
    assert code == 2 and "context window of 512 tokens" in err


def test_argparse_errors_exit_2_without_traceback(model_folder):
    proc = subprocess.run([sys.executable, "-m", "mili.cli", "generate", "--max-tokens", "-3", "hi"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "positive integer" in proc.stderr and "Traceback" not in proc.stderr


def test_status_lists_chapter_01(capsys):
    code, out, _ = _run(["status"], capsys)
    assert code == 0
    for exercise_id in ("1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7"):
        assert f"\n{exercise_id} " in out


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert "Traceback" not in err and len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    return lines[0]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_checkpoint_is_one_line(model_folder, tmp_path, damage, capsys):
    folder, _ = model_folder
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    data = (folder / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:len(data) // 2] if damage == "truncated" else b"\x07" * 4096)
    code, _, err = _run(["generate", "--model", str(tmp_path), "hi"], capsys)
    assert code == 2 and "not a readable safetensors file" in _one_line_error(err)


@pytest.mark.parametrize("args,message", [
    (["--seed", str(2**64), "hi"], "signed 64-bit integer"),
    (["--seed", "99999999999999999999", "--temperature", "1", "hi"], "signed 64-bit integer"),
    (["--device", "tpu", "hi"], "auto, cpu, cuda or cuda:N"),
    ([""], "the prompt is empty"),
    (["  \n"], "the prompt is empty"),
])
def test_bad_values_are_one_line(model_folder, args, message, capsys):
    folder, _ = model_folder
    code, _, err = _run(["generate", "--model", str(folder), "--max-tokens", "2"] + args, capsys)
    assert code == 2 and message in _one_line_error(err)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is here")
def test_device_cuda_without_cuda_is_one_line(model_folder, capsys):
    folder, _ = model_folder
    code, _, err = _run(["generate", "--model", str(folder), "--device", "cuda", "hi"], capsys)
    assert code == 2 and "CUDA is not available" in _one_line_error(err)


def test_triton_on_a_cpu_without_the_interpreter_is_one_line(model_folder, monkeypatch, capsys):
    folder, _ = model_folder
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, _, err = _run(["generate", "--model", str(folder), "--device", "cpu", "--backend", "triton", "hi"], capsys)
    assert code == 2 and "TRITON_INTERPRET=1" in _one_line_error(err)


def test_a_failed_generation_exits_1_with_one_line(model_folder, monkeypatch, capsys):
    from mili.engine.model_runner import ModelRunner

    def broken_sample(self, *args, **kwargs):
        raise RuntimeError("injected sampler failure")

    monkeypatch.setattr(ModelRunner, "sample", broken_sample)
    folder, _ = model_folder
    code, _, err = _run(["generate", "--model", str(folder), "--max-tokens", "4", "hi"], capsys)
    assert code == 1 and "the generation failed" in _one_line_error(err) and "injected sampler failure" in err


def test_a_prompt_from_stdin_loses_its_trailing_newline(model_folder, monkeypatch, capsys):
    import io

    folder, _ = model_folder
    args = ["generate", "--model", str(folder), "--no-chat", "--max-tokens", "1", "--json"]
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 17 + 25?\n"))
    code, out, err = _run(args, capsys)
    assert code == 0, err
    from_stdin = json.loads(out)["prompt_token_ids"]
    code, out, err = _run(args + ["What is 17 + 25?"], capsys)
    assert from_stdin == json.loads(out)["prompt_token_ids"]


def test_an_unknown_exercise_is_named_without_stray_quotes(capsys):
    code, _, err = _run(["grade", "9.9"], capsys)
    assert code == 2 and _one_line_error(err).startswith("mili: error: no exercise '9.9'"), err


def test_every_flag_of_every_command_has_help():
    import argparse

    from mili.cli import build_parser as mili_parser
    from mili.evaluation import build_parser as eval_parser
    from mili.server.cli import build_parser as serve_parser

    generate = next(a for a in mili_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    for parser in (generate, eval_parser(), serve_parser()):
        bare = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
        assert not bare, f"{parser.prog}: flags without help: {bare}"
