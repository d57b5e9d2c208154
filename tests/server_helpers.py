"""Shared by the server tests: a small random Qwen3 folder with the tiny model's tokenizer, metrics parsing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mili.exercise import repo_root
from tests.hf_oracle import make_hf_checkpoint

TOKENIZER_SOURCE = repo_root() / "data" / "mili-tiny-qwen3"


def make_server_model(folder: Path, **overrides) -> Path:
    """A random transformers Qwen3 (2 layers, hidden 64) saved with the tiny model's tokenizer files."""
    vocab = json.loads((TOKENIZER_SOURCE / "tokenizer.json").read_text())
    size = len(vocab["model"]["vocab"]) + len(vocab["added_tokens"])
    make_hf_checkpoint(folder, vocab_size=size + 3, **overrides)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_SOURCE / name, folder / name)
    return folder


def metric(text: str, name: str, **labels) -> float:
    """The sum of the samples called `name` (with these labels) in Prometheus text `text`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
