"""Triton kernels (chapters 02 and 04), exported under the op names of `mili.backends`."""

from mili.kernels.activation import silu_and_mul
from mili.kernels.linear import linear
from mili.kernels.qk_norm_rope import qk_norm_rope
from mili.kernels.rmsnorm import fused_add_rms_norm, rms_norm
from mili.kernels.rope import apply_rope
from mili.kernels.decode_attention import paged_decode_attention
from mili.kernels.flash_attn import flash_attn_varlen
from mili.kernels.kv_store import store_kvcache
