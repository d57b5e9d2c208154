"""The `mili` command: status, generate (parity with transformers, streaming, JSON), bad input."""

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
