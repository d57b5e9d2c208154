"""The sampler (chapter 03, exercise 3.1): from one step's logits to one new token per sequence.

Batched on the device with per-request parameters (`SamplingTensors`, one row per sequence):
penalties on the raw logits, then greedy rows take the argmax; the others divide by their
temperature, drop tokens outside top-k / top-p / min-p, and draw from the softmax. A row with
its own `torch.Generator` (a request with a `seed`) draws its randomness from it alone, so its
samples do not depend on what else shares the batch.
Reads logits [B, V] float32; writes a new [B, V] tensor per stage and the [B] token ids.
"""

from __future__ import annotations

from torch import Tensor

from mili.engine.sampling_batch import SamplingTensors
from mili.exercise import exercise


@exercise("3.1", "Sampler")
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
    raise NotImplementedError("Exercise 3.1: see chapters/03_python_integration.ipynb, section 2")


@exercise("3.1", "Sampler")
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
    raise NotImplementedError("Exercise 3.1: see chapters/03_python_integration.ipynb, section 2")


@exercise("3.1", "Sampler")
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
    raise NotImplementedError("Exercise 3.1: see chapters/03_python_integration.ipynb, section 2")
