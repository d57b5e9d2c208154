"""Reference for exercise 3.1: the batched sampler."""

from __future__ import annotations

import torch
from torch import Tensor

from mili.engine.sampling_batch import GREEDY_EPS, SamplingTensors


def apply_penalties(logits: Tensor, prompt_mask: Tensor, output_counts: Tensor, repetition_penalty: Tensor,
                    presence_penalty: Tensor, frequency_penalty: Tensor) -> Tensor:
    """Repetition, presence and frequency penalties (vLLM's / OpenAI's definitions); returns a new tensor.

    logits: [B, V] float32 · prompt_mask: [B, V] bool (token occurs in row b's prompt) ·
    output_counts: [B, V] int (occurrences in row b's generated tokens) · each penalty: [B] float32.
    For a token seen in the prompt or the output, a logit l becomes l / repetition_penalty if l > 0
    and l * repetition_penalty otherwise. Then, for every token,
    l -= frequency_penalty * count + presence_penalty * (count > 0) with count from the output only.
    The input is not modified.
    """
    in_output = output_counts > 0
    seen = prompt_mask | in_output
    rep = repetition_penalty.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    out = torch.where(seen, penalised, logits)
    out = out - frequency_penalty.unsqueeze(1) * output_counts.to(out.dtype)
    return out - presence_penalty.unsqueeze(1) * in_output.to(out.dtype)


def apply_top_k_top_p_min_p(logits: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor) -> Tensor:
    """Set the logits of the tokens each row's filters drop to -inf; returns a new [B, V] tensor.

    logits: [B, V] float32, already divided by the temperature · top_k: [B] int64 (V keeps all) ·
    top_p: [B] float32 in (0, 1] · min_p: [B] float32 in [0, 1].
    Filters, in this order, on the row's softmax p:
      top-k: keep the top_k most likely tokens;
      top-p: of those, renormalised, keep the most likely ones until their cumulative probability
             reaches top_p (a token stays if the mass of the tokens ranked above it is < top_p;
             top_p = 1 keeps them all, whatever float rounding does to the cumulative sum);
      min-p: drop tokens with p < min_p * max(p).
    The most likely token always stays. Ties may be broken in any order.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device).unsqueeze(0)
    keep = ranks < top_k.unsqueeze(1)
    probs = sorted_logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs
    keep &= (mass_above < top_p.unsqueeze(1)) | (top_p.unsqueeze(1) >= 1.0)
    keep &= probs >= min_p.unsqueeze(1) * probs[:, :1]  # min-p is a ratio: renormalising does not change it
    keep[:, 0] = True
    filtered = sorted_logits.masked_fill(~keep, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, filtered)


def sample(logits: Tensor, params: SamplingTensors) -> Tensor:
    """One token id per row: returns [B] int64 on logits' device.

    logits: [B, V] float32; neither it nor params is modified (the engine reuses one step's params
    at the next step when its rows keep their parameters). Steps:
      1. if params.prompt_mask is not None, apply the penalties (apply_penalties);
      2. rows with params.temperature == 0 take the argmax of the (penalised) logits; when
         params.all_greedy (a host bool) that is all: return it;
      3. the other rows divide by their temperature and, when params.needs_filtering, the rows in
         params.filtered_rows go through apply_top_k_top_p_min_p (the others keep every token);
         then every row draws from its softmax.
    Never sort the whole vocabulary when params.max_top_k < V: every filtering row then keeps at
    most max_top_k tokens, so filter only each row's max_top_k largest logits (torch.topk) and put
    them back in place, -inf elsewhere. Never ask the device for a value (.item(), bool(tensor)):
    the engine launches the next step while this one runs.
    Randomness: a row b with params.generators[b] not None draws only from that generator
    (use the exponential race: argmax(p / E) with E ~ Exp(1) drawn from the generator, V draws
    per row), so a seeded request gives the same tokens whatever shares its batch; other rows
    use the global RNG.
    """
    if params.prompt_mask is not None:
        logits = apply_penalties(logits, params.prompt_mask, params.output_counts, params.repetition_penalty,
                                 params.presence_penalty, params.frequency_penalty)
    greedy_tokens = logits.argmax(dim=-1)
    if params.all_greedy:
        return greedy_tokens
    scaled = logits / params.temperature.clamp_min(GREEDY_EPS).unsqueeze(1)
    if params.needs_filtering:
        scaled = torch.where(params.filtered_rows.unsqueeze(1), _filter(scaled, params), scaled)
    probs = scaled.softmax(dim=-1)
    noise = torch.empty_like(probs).exponential_()
    for row, generator in enumerate(params.generators or []):
        if generator is not None:
            noise[row].exponential_(generator=generator)
    # the exponential race: argmax p_i / E_i picks token i with probability p_i
    sampled = (probs / noise.clamp_min(1e-20)).argmax(dim=-1)
    return torch.where(params.temperature < GREEDY_EPS, greedy_tokens, sampled)


def _filter(scaled: Tensor, params: SamplingTensors) -> Tensor:
    """top-k / top-p / min-p on every row; on the max_top_k candidates only when that bounds them."""
    vocab = scaled.shape[-1]
    if params.max_top_k >= vocab:
        return apply_top_k_top_p_min_p(scaled, params.top_k, params.top_p, params.min_p)
    candidates, token_ids = scaled.topk(params.max_top_k, dim=-1)
    kept = apply_top_k_top_p_min_p(candidates, params.top_k.clamp(max=params.max_top_k), params.top_p, params.min_p)
    return torch.full_like(scaled, float("-inf")).scatter_(1, token_ids, kept)
