"""`SamplingTensors`: one step's per-request sampling parameters, as tensors on the device.

The scheduler hands the sampler B sequences with B different `SamplingParams`; this module packs
them into [B] tensors (and, only when some request uses penalties, [B, V] token-occurrence
tensors) so that exercise 3.1 samples the whole batch with a handful of tensor operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mili.engine.sampling_params import _GREEDY_EPS, SamplingParams

GREEDY_EPS = _GREEDY_EPS


@dataclass
class SamplingTensors:
    temperature: Tensor  # [B] float32, 0 = greedy
    top_k: Tensor  # [B] int64, vocab_size = keep all
    top_p: Tensor  # [B] float32, 1 = keep all
    min_p: Tensor  # [B] float32, 0 = keep all
    repetition_penalty: Tensor  # [B] float32, 1 = off
    presence_penalty: Tensor  # [B] float32
    frequency_penalty: Tensor  # [B] float32
    prompt_mask: Tensor | None = None  # [B, V] bool: token occurs in the prompt (None: no penalties)
    output_counts: Tensor | None = None  # [B, V] int32: occurrences in the output so far
    generators: list[torch.Generator | None] | None = None  # per row; None rows use the global RNG
    needs_filtering: bool = True  # some row uses top-k, top-p or min-p (False lets the sampler skip a sort)

    @property
    def all_greedy(self) -> bool:
        return bool((self.temperature < GREEDY_EPS).all())


    @classmethod
    def from_params(
        cls,
        params: list[SamplingParams],
        vocab_size: int,
        device: torch.device | str = "cpu",
        *,
        prompt_token_ids: list[list[int]] | None = None,
        output_token_ids: list[list[int]] | None = None,
        generators: list[torch.Generator | None] | None = None,
    ) -> SamplingTensors:
        """Pack B requests' parameters; token histories are needed only if a request uses penalties."""
        if not params:
            raise ValueError("params must hold at least one SamplingParams")
        if generators is not None and len(generators) != len(params):
            raise ValueError(f"need one generator (or None) per row: {len(generators)} for {len(params)} rows")

        def floats(name: str) -> Tensor:
            return torch.tensor([float(getattr(p, name)) for p in params], dtype=torch.float32, device=device)

        top_k = [p.top_k if p.top_k > 0 else vocab_size for p in params]
        tensors = cls(
            temperature=torch.tensor([0.0 if p.is_greedy else float(p.temperature) for p in params],
                                     dtype=torch.float32, device=device),
            top_k=torch.tensor([min(k, vocab_size) for k in top_k], dtype=torch.int64, device=device),
            top_p=floats("top_p"), min_p=floats("min_p"),
            repetition_penalty=floats("repetition_penalty"),
            presence_penalty=floats("presence_penalty"), frequency_penalty=floats("frequency_penalty"),
            generators=generators,
            needs_filtering=any(0 < p.top_k < vocab_size or p.top_p < 1.0 or p.min_p > 0.0
                                for p in params if not p.is_greedy),
        )
        if any(p.uses_penalties for p in params):
            if prompt_token_ids is None or output_token_ids is None:
                raise ValueError("penalties need prompt_token_ids and output_token_ids for every row")
            tensors.prompt_mask = token_counts(prompt_token_ids, vocab_size, device) > 0
            tensors.output_counts = token_counts(output_token_ids, vocab_size, device)
        return tensors


def token_counts(rows: list[list[int]], vocab_size: int, device) -> Tensor:
    """[B, V] int32: how often each token id occurs in each row."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.tensor([r + [vocab_size] * (width - len(r)) for r in rows], dtype=torch.int64, device=device)
    counts = torch.zeros(len(rows), vocab_size + 1, dtype=torch.int32, device=device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.int32))
    return counts[:, :vocab_size]


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
