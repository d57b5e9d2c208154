"""Every script in examples/ runs to the end on the tiny model and prints sensible answers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mili.exercise import repo_root

ROOT = repo_root()
TINY = ROOT / "data" / "mili-tiny-qwen3"

pytestmark = pytest.mark.skipif(not (TINY / "model.safetensors").exists(), reason="the tiny model is not trained yet")


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_simple_generation():
    out = _run("examples/simple_generation.py").stdout
    assert out.count("Q: ") == 3 and "A: '42'" in out


def test_batch_processing(tmp_path):
    path = tmp_path / "results.jsonl"
    result = _run("examples/batch_processing.py", "--num-prompts", "16", "--out", str(path))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 16 and all(row["tokens"] >= 1 for row in rows)
    correct = sum(row["answer"] == str(eval(row["question"][8:-1])) for row in rows)  # "What is a + b?"
    assert correct >= 12, rows
    assert "tokens/s" in result.stderr


def test_streaming_client_starts_a_server_and_streams():
    pytest.importorskip("openai")
    out = _run("examples/streaming_client.py").stdout
    assert "42" in out and out.count("[finish_reason=stop]") == 2 and "completion tokens]" in out
