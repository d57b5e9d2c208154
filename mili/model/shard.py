"""Which part of Qwen3 one rank of a tensor-parallel group holds.

Attention splits by heads. A query head needs its key/value head on the same rank, so the KV
heads are split first and each rank takes the query heads of its KV heads. With fewer KV heads
than ranks, each rank holds one KV head, replicated on the ranks that share it (as vLLM does),
and those ranks split its query heads. The MLP splits its intermediate features. Everything
splits into contiguous near-equal parts (`shard_range`), so sizes need not divide.

`local_config` is the model as one rank sees it: its heads and intermediate features, the full
vocabulary (the logits are gathered). The engine sizes each rank's KV cache from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mili.config import Qwen3Config
from mili.model.parallel import TensorParallelGroup, shard_range


def attention_heads(num_heads: int, num_kv_heads: int, rank: int, size: int) -> tuple[range, range]:
    """(query heads, KV heads) of `rank` among `size` ranks."""
    group = num_heads // num_kv_heads
    if num_kv_heads >= size:
        kv = shard_range(num_kv_heads, rank, size)
        return range(kv.start * group, kv.stop * group), kv
    head = rank * num_kv_heads // size  # the KV head this rank holds a copy of
    sharing = [r for r in range(size) if r * num_kv_heads // size == head]
    if len(sharing) > group:
        raise ValueError(f"cannot split {num_heads} attention heads ({num_kv_heads} KV heads) over {size} ranks: "
                         f"{len(sharing)} ranks would share KV head {head} and its {group} query heads; "
                         "use fewer ranks")
    part = shard_range(group, sharing.index(rank), len(sharing))
    return range(head * group + part.start, head * group + part.stop), range(head, head + 1)


@dataclass(frozen=True)
class ModelShard:
    config: Qwen3Config  # the whole model's
    group: TensorParallelGroup
    q_heads: range
    kv_heads: range
    intermediate: range

    @classmethod
    def of(cls, config: Qwen3Config, group: TensorParallelGroup) -> ModelShard:
        if not 0 <= group.rank < group.size:
            raise ValueError(f"rank {group.rank} is outside a group of {group.size}")
        q, kv = attention_heads(config.num_attention_heads, config.num_key_value_heads, group.rank, group.size)
        return cls(config, group, q, kv, shard_range(config.intermediate_size, group.rank, group.size))

    @property
    def local_config(self) -> Qwen3Config:
        return replace(self.config, num_attention_heads=len(self.q_heads), num_key_value_heads=len(self.kv_heads),
                       intermediate_size=len(self.intermediate))

    @property
    def q_columns(self) -> range:
        """The input features of o_proj this rank holds: its query heads' outputs."""
        d = self.config.head_dim
        return range(self.q_heads.start * d, self.q_heads.stop * d)

    def checkpoint_rows(self, shard: str) -> slice:
        """The rows of the checkpoint's q/k/v_proj or gate/up_proj weight this rank holds."""
        d = self.config.head_dim
        heads = {"q": self.q_heads, "k": self.kv_heads, "v": self.kv_heads}
        if shard in heads:
            return slice(heads[shard].start * d, heads[shard].stop * d)
        if shard in ("gate", "up"):
            return slice(self.intermediate.start, self.intermediate.stop)
        raise ValueError(f"unknown shard {shard!r}; expected q, k, v, gate or up")
