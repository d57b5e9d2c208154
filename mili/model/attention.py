"""Grouped-query causal attention for one sequence, in PyTorch (chapter 01, exercise 1.3).

The torch backend's `flash_attn_varlen` and `paged_decode_attention` gather each sequence's
keys and values (from the step's tensors or from the paged cache) and call this function.
Reads Tq·Hq·D + 2·Tk·Hkv·D elements, writes Tq·Hq·D; materialises a [Hq, Tq, Tk] score matrix,
which is exactly what FlashAttention (chapter 04) avoids.
"""

from torch import Tensor

from mili.exercise import exercise


@exercise("1.3", "Grouped-query causal attention")
def gqa_causal_attention(q: Tensor, k: Tensor, v: Tensor, softmax_scale: float) -> Tensor:
    """softmax(q kᵀ · scale + causal mask) v for one sequence, with grouped-query heads.

    q: [Tq, Hq, D] · k, v: [Tk, Hkv, D] with Tk >= Tq and Hq a multiple of Hkv · returns [Tq, Hq, D]
    in q's dtype. Query head h reads key/value head h // (Hq // Hkv).
    The queries are the *last* Tq positions of the Tk-token sequence (earlier keys are a cached
    prefix): query i may attend to keys j <= i + (Tk - Tq). Compute the softmax in float32.
    """
    raise NotImplementedError("Exercise 1.3: see chapters/01_project_overview.ipynb, section 4")
