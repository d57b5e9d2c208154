"""RMSNorm in PyTorch (chapter 01, exercise 1.1).

Qwen3 normalises with RMSNorm before attention, before the MLP, on every query and key head
(q/k norm) and before the LM head. Reads T·H + H elements, writes T·H.
"""

from torch import Tensor

from mili.exercise import exercise


@exercise("1.1", "RMSNorm")
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Root-mean-square normalisation over the last dimension.

    x: [..., H] (bf16/fp16/fp32) · weight: [H] · returns [..., H] in x's dtype.
    out = x / sqrt(mean(x², -1) + eps) * weight, computed in float32 and cast back at the end
    (as Hugging Face's Qwen3RMSNorm does: normalise in float32, cast to x's dtype, then scale).
    """
    raise NotImplementedError("Exercise 1.1: see chapters/01_project_overview.ipynb, section 4")
