"""What the KV cache reports to the engine and the server (chapter 05).

`BlockManager.stats` returns a `CacheStats` snapshot: how full the cache is (in blocks), how
many prompt tokens were looked up in the prefix cache and how many were found there, and how
many cached blocks were evicted to make room. The server exports these as Prometheus metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class CacheStats:
    num_blocks: int = 0
    used_blocks: int = 0  # held by a sequence or by the prefix cache
    cached_blocks: int = 0  # held by the prefix cache (some also by sequences)
    evictable_blocks: int = 0  # cached and used by no running sequence: reclaimable on demand
    prefix_queries: int = 0  # sequences admitted through BlockManager.allocate
    prefix_queries_tokens: int = 0  # prompt tokens of those sequences
    prefix_hit_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache
    evictions: int = 0  # blocks the prefix cache gave back to the free pool under pressure or its limit
    forks: int = 0  # parallel samples created by BlockManager.fork
    copied_blocks: int = 0  # partial blocks a fork had to copy

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (by sequences or the prefix cache)."""
        return self.used_blocks / self.num_blocks if self.num_blocks else 0.0

    @property
    def hit_rate(self) -> float:
        """Fraction of looked-up prompt tokens served from the prefix cache."""
        return self.prefix_hit_tokens / self.prefix_queries_tokens if self.prefix_queries_tokens else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "usage": self.usage, "hit_rate": self.hit_rate}
