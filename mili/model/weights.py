"""From checkpoint tensor names to mili's fused parameters (chapter 01, exercise 1.6).

Hugging Face checkpoints store q_proj, k_proj, v_proj and gate_proj, up_proj separately. mili
fuses them at load time into one `qkv_proj` and one `gate_up_proj` matrix, so each layer runs
one matrix product instead of three (or two). Names stay traceable: every fused parameter
knows which checkpoint tensors fill which of its rows.
"""

from __future__ import annotations

from mili.config import Qwen3Config
from mili.exercise import exercise


@exercise("1.6", "Checkpoint names -> fused parameters")
def checkpoint_name_to_param(name: str) -> tuple[str, str | None]:
    """Map a Hugging Face Qwen3 tensor name to (mili parameter name, shard id).

    'model.layers.3.self_attn.q_proj.weight' -> ('model.layers.3.self_attn.qkv_proj.weight', 'q')
    (likewise k_proj -> 'k', v_proj -> 'v');
    'model.layers.3.mlp.gate_proj.weight' -> ('model.layers.3.mlp.gate_up_proj.weight', 'gate')
    (likewise up_proj -> 'up'); every other name maps to itself with shard None.
    Match whole name components ('.q_proj.'), not substrings of other names.
    """
    raise NotImplementedError("Exercise 1.6: see chapters/01_project_overview.ipynb, section 4")


@exercise("1.6")
def shard_rows(shard: str, config: Qwen3Config) -> slice:
    """The rows of the fused weight [out_features, in_features] that `shard` fills.

    qkv_proj rows: q = [0, q_size), k = [q_size, q_size + kv_size), v = the next kv_size rows,
    where q_size = num_attention_heads * head_dim and kv_size = num_key_value_heads * head_dim.
    gate_up_proj rows: gate = [0, intermediate_size), up = [intermediate_size, 2 * intermediate_size).
    An unknown shard id raises ValueError.
    """
    raise NotImplementedError("Exercise 1.6: see chapters/01_project_overview.ipynb, section 4")
