"""Reference for exercise 1.6 (mirrors mili/model/weights.py)."""

from __future__ import annotations

from mili.config import Qwen3Config

_FUSED = {
    ".self_attn.q_proj.": (".self_attn.qkv_proj.", "q"),
    ".self_attn.k_proj.": (".self_attn.qkv_proj.", "k"),
    ".self_attn.v_proj.": (".self_attn.qkv_proj.", "v"),
    ".mlp.gate_proj.": (".mlp.gate_up_proj.", "gate"),
    ".mlp.up_proj.": (".mlp.gate_up_proj.", "up"),
}


def checkpoint_name_to_param(name: str) -> tuple[str, str | None]:
    """Map a Hugging Face Qwen3 tensor name to (mili parameter name, shard id).

    'model.layers.3.self_attn.q_proj.weight' -> ('model.layers.3.self_attn.qkv_proj.weight', 'q')
    (likewise k_proj -> 'k', v_proj -> 'v');
    'model.layers.3.mlp.gate_proj.weight' -> ('model.layers.3.mlp.gate_up_proj.weight', 'gate')
    (likewise up_proj -> 'up'); every other name maps to itself with shard None.
    Match whole name components ('.q_proj.'), not substrings of other names.
    """
    for part, (fused, shard) in _FUSED.items():
        if part in name:
            return name.replace(part, fused), shard
    return name, None


def shard_rows(shard: str, config: Qwen3Config) -> slice:
    """The rows of the fused weight [out_features, in_features] that `shard` fills.

    qkv_proj rows: q = [0, q_size), k = [q_size, q_size + kv_size), v = the next kv_size rows,
    where q_size = num_attention_heads * head_dim and kv_size = num_key_value_heads * head_dim.
    gate_up_proj rows: gate = [0, intermediate_size), up = [intermediate_size, 2 * intermediate_size).
    An unknown shard id raises ValueError.
    """
    q, kv, inter = config.q_size, config.kv_size, config.intermediate_size
    rows = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv), "gate": (0, inter), "up": (inter, 2 * inter)}
    if shard not in rows:
        raise ValueError(f"unknown shard {shard!r}; expected one of {', '.join(rows)}")
    return slice(*rows[shard])
