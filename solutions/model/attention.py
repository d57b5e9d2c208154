"""Reference for exercise 1.3 (mirrors mili/model/attention.py)."""

import torch
from torch import Tensor


def gqa_causal_attention(q: Tensor, k: Tensor, v: Tensor, softmax_scale: float) -> Tensor:
    """softmax(q kᵀ · scale + causal mask) v for one sequence, with grouped-query heads.

    q: [Tq, Hq, D] · k, v: [Tk, Hkv, D] with Tk >= Tq and Hq a multiple of Hkv · returns [Tq, Hq, D]
    in q's dtype. Query head h reads key/value head h // (Hq // Hkv).
    The queries are the *last* Tq positions of the Tk-token sequence (earlier keys are a cached
    prefix): query i may attend to keys j <= i + (Tk - Tq). Compute the softmax in float32.
    """
    tq, hq, _ = q.shape
    tk, hkv, _ = k.shape
    group = hq // hkv
    qf = q.float().transpose(0, 1)  # [Hq, Tq, D]
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, Tk, D]
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = torch.matmul(qf, kf.transpose(1, 2)) * softmax_scale  # [Hq, Tq, Tk]
    query_pos = torch.arange(tq, device=q.device).unsqueeze(1) + (tk - tq)
    key_pos = torch.arange(tk, device=q.device).unsqueeze(0)
    scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    out = torch.matmul(scores.softmax(dim=-1), vf)  # [Hq, Tq, D]
    return out.transpose(0, 1).to(q.dtype)
