"""Decode attention on the CPU from contiguous per-sequence K/V that persist across steps.

Reading a sequence's keys from the paged cache means gathering its blocks: a copy of its whole
context, in every layer, at every decode step, only to read it once more in the matmul. On the
CPU that copy costs more than the attention itself. `DecodeKV` keeps, for each decoding sequence
and layer, a contiguous float32 copy of its keys and values that grows by the one new token a
step writes, so a step reads each cached byte once.

The paged cache stays the truth: prefix sharing, preemption and block accounting never see the
copies. The engine names the sequence of each batch row when a step begins (`step`); a
sequence whose block table no longer extends the one its copy was made from (it was preempted
and re-admitted) is copied afresh, and a sequence that leaves the batch drops its copy. The
copies cost memory on top of the pool: at most the decoding sequences' contexts, in float32,
plus a quarter of room to grow.

    decode_kv = DecodeKV()
    with decode_kv.step([seq_id or None for each batch row], block_tables):
        model(...)  # each layer: decode_kv.paged_decode_attention(q, k_cache, v_cache, context_lens, block_tables)

Outside a step (or for a row named None) it gathers the row's blocks and attends without keeping them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from mili.backends.torch_ops import gather_paged


def attend_one(rows: Tensor, keys_t: Tensor, values: Tensor, out: Tensor) -> None:
    """One decode query over L keys and values, written into out [Hkv, group, D].

    rows [Hkv, group, D]: the query heads that share a key/value head, already multiplied by the
    softmax scale; they are the rows of one matmul with that head's keys. keys_t [Hkv, D, L] and
    values [Hkv, L, D] are views of [L, Hkv, D] storage (the matmuls read them strided, no copy).
    """
    scores = torch.matmul(rows, keys_t)  # [Hkv, group, L]
    torch.matmul(scores.softmax(-1), values, out=out)


class _Copy:
    """One sequence's contiguous float32 keys and values in one layer: positions [0, length).
    keys_t and values are the views attention reads ([Hkv, D, capacity] and [Hkv, capacity, D]),
    made once per growth rather than at every step."""

    def __init__(self, like: Tensor):
        self._set(like.new_empty((0, *like.shape[2:]), dtype=torch.float32),
                  like.new_empty((0, *like.shape[2:]), dtype=torch.float32))
        self.length = 0

    def _set(self, k: Tensor, v: Tensor) -> None:
        self.k, self.v = k, v
        self.keys_t, self.values = k.permute(1, 2, 0), v.transpose(0, 1)

    def extend(self, k_cache: Tensor, v_cache: Tensor, blocks: list[int], length: int) -> None:
        """Copy positions [self.length, length) from the paged caches."""
        if length > self.k.shape[0]:
            capacity = length + max(64, length // 4)  # geometric growth: O(1) copying per token
            self._set(self._grown(self.k, capacity), self._grown(self.v, capacity))
        if self.length == 0 and length > 1:
            table = torch.tensor(blocks, device=k_cache.device)
            self.k[:length] = gather_paged(k_cache, table, length)
            self.v[:length] = gather_paged(v_cache, table, length)
        else:  # usually the one token written this step
            block_size = k_cache.shape[1]
            for pos in range(self.length, length):
                block, offset = blocks[pos // block_size], pos % block_size
                self.k[pos] = k_cache[block, offset]
                self.v[pos] = v_cache[block, offset]
        self.length = length

    def _grown(self, old: Tensor, capacity: int) -> Tensor:
        new = old.new_empty((capacity, *old.shape[1:]))
        new[:self.length] = old[:self.length]
        return new


class _Sequence:
    def __init__(self, blocks: list[int]):
        self.blocks = blocks  # the block table the copies were read through
        self.layers: dict[int, _Copy] = {}


class DecodeKV:
    """Contiguous per-sequence K/V for decode attention, kept across the steps of one engine."""

    def __init__(self):
        self._sequences: dict[Hashable, _Sequence] = {}
        self._rows: list[_Sequence | None] = []  # the batch rows of the step running now
        self._layers: dict[int, int] = {}  # k_cache.data_ptr() -> layer number

    @contextmanager
    def step(self, row_keys: list[Hashable | None], block_tables: Tensor | None) -> Iterator[None]:
        """Serve one forward pass: row_keys names each batch row's sequence (None: a row the copies
        do not serve, e.g. a prompt chunk). A pass that raises drops every copy."""
        self._begin(row_keys, block_tables)
        try:
            yield
        except BaseException:
            self.clear()
            raise
        finally:
            self._rows = []

    def _begin(self, row_keys: list[Hashable | None], block_tables: Tensor | None) -> None:
        if block_tables is None or all(key is None for key in row_keys):
            self.clear()
            return
        kept: dict[Hashable, _Sequence] = {}
        self._rows = []
        for key, row in zip(row_keys, block_tables.tolist(), strict=True):
            entry = None
            if key is not None:
                blocks = [b for b in row if b >= 0]
                entry = self._sequences.get(key)
                if entry is None or blocks[:len(entry.blocks)] != entry.blocks:
                    entry = _Sequence(blocks)
                entry.blocks = blocks
                kept[key] = entry
            self._rows.append(entry)
        self._sequences = kept

    def clear(self) -> None:
        """Forget every copy (after a failed step, or a step with no decode rows)."""
        self._sequences, self._rows = {}, []

    def paged_decode_attention(self, q, k_cache, v_cache, context_lens, block_tables, *, softmax_scale=None,
                               batch_rows: list[int] | None = None) -> Tensor:
        """Same contract as the torch backend's op; `batch_rows` maps q's rows to the step's batch rows
        when only some rows decode (a mixed step)."""
        batch, heads, head_dim = q.shape
        scale = softmax_scale if softmax_scale is not None else head_dim ** -0.5
        kv_heads = k_cache.shape[2]
        queries = (q.float() * scale).view(batch, kv_heads, heads // kv_heads, head_dim)
        lengths = context_lens.tolist()
        batch_rows = batch_rows if batch_rows is not None else range(batch)
        layer = self._layers.setdefault(k_cache.data_ptr(), len(self._layers))
        out = q.new_empty((batch, kv_heads, heads // kv_heads, head_dim), dtype=torch.float32)  # matmuls write into it
        for i, (row, length) in enumerate(zip(batch_rows, lengths)):
            entry = self._rows[row] if row < len(self._rows) else None
            if entry is None:
                keys = gather_paged(k_cache, block_tables[i], length).float()
                values = gather_paged(v_cache, block_tables[i], length).float()
                attend_one(queries[i], keys.permute(1, 2, 0), values.transpose(0, 1), out[i])
                continue
            copy = entry.layers.get(layer)
            if copy is None or copy.length > length:
                copy = entry.layers[layer] = _Copy(k_cache)
            copy.extend(k_cache, v_cache, entry.blocks, length)
            attend_one(queries[i], copy.keys_t[..., :length], copy.values[:, :length], out[i])
        return out.view(batch, heads, head_dim).to(q.dtype)
