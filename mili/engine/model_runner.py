"""The device side of a step (chapter 03): scheduled sequences -> flat batch -> model -> sampled ids.

`ModelRunner` owns the model, the paged KV cache and the CUDA graphs. Each step it
1. builds the flat batch (`docs/architecture.md`, "The batch contract") from the persistent
   batch's rows with array operations, into pinned host memory, and copies it to the device in
   one copy that does not wait (`prepare`);
2. takes the id of a token sampled by the previous step, not yet read by the host, straight
   from the device (overlap: the host never waits for it to build the next step);
3. launches the forward (or replays a CUDA graph), the logits of the sampled rows and the
   sampler, and starts copying the sampled ids back (`sample`): a `LaunchedStep` whose
   `result()` is the step's one host sync.

Exercise 3.4 is the step written plainly, as the course first builds it: `build_batch` packs the
scheduled sequences' new tokens from Python lists, and `append_tokens` adds the sampled tokens
and decides who is done (the engine's output side still uses it). With
`EngineConfig(persistent_batch=False)` the runner builds its batches with `build_batch`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mili.engine.batch import LaunchedStep, ModelInput, ScheduledSeq
from mili.engine.batched_attention import decode_kv_of
from mili.engine.cuda_graphs import Batch1Inputs, DecodeGraphs, can_record
from mili.engine.input_batch import InputBatch
from mili.engine.sampler import sample
from mili.engine.sampling_batch import SamplingTensors, make_generator
from mili.engine.sequence import Sequence
from mili.exercise import exercise
from mili.model.metadata import AttentionMetadata, KVCache


@exercise("3.4", "Engine step: batch building and finishing")
def build_batch(scheduled: list[ScheduledSeq], block_manager, device: torch.device | str = "cpu") -> ModelInput:
    """Turn this step's scheduled sequences into the model's flat batch.

    For each item (seq, n) in order, the tokens computed now are seq.token_ids[c : c + n] with
    c = seq.num_computed_tokens, at positions c .. c + n - 1; their K/V go to the slots
    block_manager.slot_mapping(seq.seq_id, c, c + n); the sequence attends to c + n tokens
    through block_manager.block_table(seq.seq_id).
    Returns ModelInput with input_ids and positions [T] int64 on `device`, and attn_metadata:
      - every n == 1 (a decode batch): AttentionMetadata.decode(context_lens, slot_mapping, block_tables);
      - otherwise AttentionMetadata.prefill(query_lens, context_lens=..., slot_mapping=...,
        block_tables=...), passing block_tables only if some sequence has c > 0 (then attention
        reads earlier keys from the paged cache);
    logits_indices [S] int64: the flat row of the last token of each sequence whose tokens are
    all computed after this step (c + n == seq.num_tokens), and sampled_seqs those S sequences,
    in batch order. A prompt chunk that leaves tokens for later is not sampled.
    """
    raise NotImplementedError("Exercise 3.4: see chapters/03_python_integration.ipynb, section 6")


@exercise("3.4", "Engine step: batch building and finishing")
def append_tokens(seqs: list[Sequence], token_ids: list[int], max_model_len: int) -> list[tuple[Sequence, str]]:
    """Append each sampled token to its sequence and return the sequences that finished, with why.

    For seq, t in zip(seqs, token_ids): append t to seq.token_ids; feed it to seq.detokenizer
    (add_token) and add the returned text to seq.text. The sequence finishes with
      "stop" when the detokenizer finished (EOS, stop token id, stop string): copy its stop_reason
            to seq.stop_reason;
      "length" when it now has seq.params.max_tokens output tokens (None: no limit) or
            max_model_len tokens in all: add seq.detokenizer.flush() to seq.text.
    Returns [(seq, reason)] in input order; does not change seq.status (the scheduler does).
    """
    raise NotImplementedError("Exercise 3.4: see chapters/03_python_integration.ipynb, section 6")


class ModelRunner:
    """Owns the model, the paged KV cache and the CUDA graphs; prepares, runs and samples a step."""

    def __init__(self, model, kv_cache: KVCache):
        self.model = model
        self.kv_cache = kv_cache
        self.device = model.device
        self.vocab_size = model.config.vocab_size
        self.pin = self.device.type == "cuda"  # pinned host memory: copies to the GPU that do not wait
        self.decode_kv = decode_kv_of(model.backend)  # CPU decode attention keeps K/V across steps
        self.graphs: DecodeGraphs | None = None
        self.batch_1_inputs: Batch1Inputs | None = None  # the batch-1 graph's own inputs (rank 0's in a group)

    def capture_cuda_graphs(self, *, max_num_seqs: int, max_model_len: int) -> None:
        """Record decode steps as CUDA graphs where the model allows it (CUDA, triton backend).
        A tensor-parallel model records them on every rank (`record_decode_graphs`)."""
        if not can_record(self.model):
            return
        if hasattr(self.model, "record_decode_graphs"):
            self.graphs = self.model.record_decode_graphs(self.kv_cache, max_num_seqs=max_num_seqs,
                                                          max_model_len=max_model_len)
        else:
            self.graphs = DecodeGraphs(self.model, self.kv_cache, max_num_seqs=max_num_seqs,
                                       max_model_len=max_model_len, with_logits=True)
        self.batch_1_inputs = self.graphs.batch_1_inputs

    # ------------------------------------------------------------------ inputs

    def prepare(self, scheduled: list[ScheduledSeq], batch: InputBatch, previous: LaunchedStep | None) -> ModelInput:
        """The flat batch of this step from the persistent batch's rows (each scheduled sequence has
        one). A sequence whose last token is pending takes it from `previous` on the device."""
        if len(scheduled) == 1 and self.batch_1_inputs is not None:
            model_input = self._prepare_batch_1(scheduled[0], batch, previous)
            if model_input is not None:
                return model_input
        num_seqs = len(scheduled)
        rows, starts, counts = (np.empty(num_seqs, dtype=np.int64) for _ in range(3))
        token_ids: list[int] = []
        pending_at, pending_from, sampled_at, sampled_seqs, row_keys = [], [], [], [], []
        for i, item in enumerate(scheduled):
            seq, count = item.seq, item.num_tokens
            start = seq.num_computed_tokens
            rows[i], starts[i], counts[i] = batch.rows[seq.seq_id], start, count
            if seq.num_pending_tokens:  # a decode of the token the previous step sampled
                pending_at.append(len(token_ids))
                pending_from.append(previous.index[seq.seq_id])
                token_ids.append(0)
            else:
                token_ids += seq.token_ids[start:start + count]
            done = start + count == seq.num_tokens
            if done:
                sampled_at.append(i)
                sampled_seqs.append(seq)
            row_keys.append(seq.seq_id if done and count == 1 else None)
        ends = starts + counts
        num_tokens = int(counts.sum())
        decode = num_tokens == num_seqs  # every sequence runs one token: flat row i is sequence i
        if decode:
            positions, token_rows = starts, rows
        else:
            cu_seqlens = np.zeros(num_seqs + 1, dtype=np.int64)
            np.cumsum(counts, out=cu_seqlens[1:])
            positions, token_rows = np.arange(num_tokens) - np.repeat(cu_seqlens[:-1] - starts, counts), np.repeat(rows, counts)
        bs = batch.block_size
        slots = batch.block_tables[token_rows, positions // bs].astype(np.int64) * bs + positions % bs
        width = int(batch.num_blocks[rows].max())

        # Each array starts at a multiple of 16 bytes of its buffer. Triton compiles a kernel
        # separately for pointers that are and are not 16-byte aligned: unaligned views would
        # make it compile again in the middle of a run, the first time a step's sizes misalign them.
        # Both go to the device in one copy: the int64 arrays, then the int32 ones.
        t, s = _aligned(num_tokens, 2), _aligned(num_seqs + 1, 4)
        num_longs = _aligned(3 * t + len(sampled_at) + 2 * len(pending_at), 2)
        num_ints = 3 * s + num_seqs * width
        host = self._host(torch.int64, num_longs + -(-num_ints // 2))
        staged = host.numpy()
        longs, ints = staged[:num_longs], staged[num_longs:].view(np.int32)
        longs[:num_tokens] = token_ids
        longs[t:t + num_tokens] = positions
        longs[2 * t:2 * t + num_tokens] = slots
        at = 3 * t
        longs[at:at + len(sampled_at)] = sampled_at if decode else cu_seqlens[1:][sampled_at] - 1
        pending = slice(at + len(sampled_at), at + len(sampled_at) + 2 * len(pending_at))
        longs[pending] = pending_at + pending_from
        ints[:num_seqs] = ends
        if not decode:  # a decode step's metadata has no cumulative lengths
            ints[s:s + num_seqs + 1] = cu_seqlens
            ints[2 * s] = 0
            np.cumsum(ends, out=ints[2 * s + 1:2 * s + 1 + num_seqs])
        ints[3 * s:num_ints] = batch.block_tables[rows, :width].reshape(-1)

        on_device = self._to_device(host)
        longs, ints = on_device[:num_longs], on_device[num_longs:].view(torch.int32)
        input_ids = longs[:num_tokens]
        if decode and pending_from == list(range(num_tokens)) == pending_at and len(previous.token_ids) == num_tokens:
            input_ids = previous.token_ids  # the previous step's ids, row for row (a steady decode batch)
        elif pending_at:
            where = longs[pending]
            input_ids[where[:len(pending_at)]] = previous.token_ids[where[len(pending_at):]]
        metadata = AttentionMetadata(
            is_prefill=not decode,
            cu_seqlens_q=None if decode else ints[s:s + num_seqs + 1],
            cu_seqlens_k=None if decode else ints[2 * s:2 * s + num_seqs + 1],
            max_seqlen_q=1 if decode else int(counts.max()), max_seqlen_k=int(ends.max()),
            slot_mapping=longs[2 * t:2 * t + num_tokens],
            context_lens=ints[:num_seqs],
            block_tables=ints[3 * s:num_ints].view(num_seqs, width) if decode or (starts > 0).any() else None,
        )
        return ModelInput(input_ids=input_ids, positions=longs[t:t + num_tokens], attn_metadata=metadata,
                          logits_indices=longs[at:at + len(sampled_at)], sampled_seqs=sampled_seqs,
                          row_keys=row_keys)

    def _prepare_batch_1(self, item: ScheduledSeq, batch: InputBatch, previous: LaunchedStep | None) -> ModelInput | None:
        """One sequence decoding one token and sampled, staged straight into the batch-1 graph's
        inputs with one copy (None for any other step of one sequence)."""
        seq, start = item.seq, item.seq.num_computed_tokens
        if item.num_tokens != 1 or start + 1 != seq.num_tokens:
            return None
        inputs, row, bs = self.batch_1_inputs, batch.rows[seq.seq_id], batch.block_size
        table = batch.block_tables[row, :batch.num_blocks[row]]
        pending = seq.num_pending_tokens > 0
        host = self._host(torch.int64, inputs.buffer.numel())
        count = inputs.stage(host.numpy(), token_id=0 if pending else seq.token_ids[start], position=start,
                             slot=int(table[start // bs]) * bs + start % bs, context_len=start + 1, block_table=table)
        inputs.buffer[:count].copy_(host[:count], non_blocking=True)
        if pending:  # after the copy above, which writes a 0 there
            at = previous.index[seq.seq_id]
            inputs.input_ids.copy_(previous.token_ids[at:at + 1])
        metadata = AttentionMetadata(is_prefill=False, max_seqlen_q=1, max_seqlen_k=start + 1,
                                     slot_mapping=inputs.slot_mapping, context_lens=inputs.context_lens,
                                     block_tables=inputs.block_tables)
        return ModelInput(input_ids=inputs.input_ids, positions=inputs.positions, attn_metadata=metadata,
                          logits_indices=inputs.logits_indices, sampled_seqs=[seq], row_keys=[seq.seq_id])

    def _host(self, dtype: torch.dtype, size: int) -> Tensor:
        """A fresh host buffer, pinned on CUDA: torch's pinned allocator hands it out again only
        once the copy that reads it has run. Fill it through `.numpy()`."""
        return torch.empty(size, dtype=dtype, pin_memory=self.pin)

    def _to_device(self, host: Tensor | np.ndarray) -> Tensor:
        if isinstance(host, np.ndarray):
            host = torch.from_numpy(host)
            host = host.pin_memory() if self.pin else host
        return host.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ forward and sampling

    @torch.inference_mode()
    def run(self, model_input: ModelInput) -> Tensor:
        """Forward the flat batch; returns float32 logits [S, V] of the rows to sample."""
        replayed = self.graphs.run(model_input) if self.graphs is not None else None
        if replayed is not None and replayed.are_logits:  # a decode step: every row is sampled
            return replayed.rows
        hidden = replayed.rows if replayed is not None else self._forward(model_input)
        rows = model_input.logits_indices  # increasing flat rows: as many as hidden's are all of them, in order
        return self.model.compute_logits(hidden if len(rows) == len(hidden) else hidden[rows])

    def _forward(self, model_input: ModelInput) -> Tensor:
        md = model_input.attn_metadata
        if self.decode_kv is None:
            return self.model(model_input.input_ids, model_input.positions, md, self.kv_cache)
        row_keys = model_input.row_keys if model_input.row_keys is not None else _decode_row_keys(model_input)
        with self.decode_kv.step(row_keys, md.block_tables):
            return self.model(model_input.input_ids, model_input.positions, md, self.kv_cache)

    @torch.inference_mode()
    def sample(self, seqs: list[Sequence], logits: Tensor, batch: InputBatch | None) -> LaunchedStep:
        """Sample one token for each of seqs (row i of logits) and start copying the ids to the host.
        With the persistent batch, the sampling parameters come from the sequences' rows."""
        for seq in seqs:
            if seq.params.seed is not None and seq.generator is None:
                # sample i of a seeded request gets its own stream; each is reproducible on its own
                seq.generator = make_generator(seq.params.seed + 1_000_003 * seq.index, self.device)
        if batch is None:
            tensors = SamplingTensors.from_params(
                [s.params for s in seqs], self.vocab_size, self.device,
                prompt_token_ids=[s.token_ids[:s.num_prompt_tokens] for s in seqs],
                output_token_ids=[s.output_token_ids for s in seqs],
                generators=[s.generator for s in seqs])
            return LaunchedStep(seqs, sample(logits, tensors))
        rows = np.fromiter((batch.rows[s.seq_id] for s in seqs), dtype=np.int64, count=len(seqs))
        rows_on_device = self._to_device(rows) if batch.has_device_state else None
        token_ids = sample(logits, batch.sampling_tensors(rows, seqs, rows_on_device))
        batch.count_sampled(rows_on_device, token_ids)
        return LaunchedStep(seqs, token_ids)

    @torch.inference_mode()
    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy the K/V of whole blocks (src -> dst) in every layer: a forked sample's partial block.
        A tensor-parallel model copies them in every rank's cache (`copy_kv_blocks`)."""
        if not pairs:
            return
        copy_on_every_rank = getattr(self.model, "copy_kv_blocks", None)
        if copy_on_every_rank is not None:
            copy_on_every_rank(self.kv_cache, pairs)
        else:
            self.kv_cache.copy_blocks(pairs)


def _aligned(count: int, per_16_bytes: int) -> int:
    """count rounded up to a whole number of 16-byte units of per_16_bytes elements."""
    return -(-count // per_16_bytes) * per_16_bytes


def _decode_row_keys(model_input: ModelInput) -> list:
    """The seq_id of each batch row that decodes one token and is sampled; None for the others."""
    md = model_input.attn_metadata
    sampled = dict(zip(model_input.logits_indices.tolist(), model_input.sampled_seqs))
    if md.cu_seqlens_q is None:  # a decode batch: row b is flat row b
        ends = range(1, len(md.context_lens) + 1)
        starts = range(len(md.context_lens))
    else:
        bounds = md.cu_seqlens_q.tolist()
        starts, ends = bounds[:-1], bounds[1:]
    keys = []
    for start, end in zip(starts, ends):
        seq = sampled.get(end - 1) if end - start == 1 else None
        keys.append(None if seq is None else seq.seq_id)
    return keys
