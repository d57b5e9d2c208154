"""The engine step (chapter 03, exercise 3.4): scheduled sequences -> flat batch -> model ->
sampled tokens -> sequences that grow or finish.

`build_batch` packs every scheduled sequence's new tokens back to back (DESIGN.md §3) with the
attention metadata that tells the model where each sequence's keys live in the paged cache.
`append_tokens` adds the sampled tokens and decides who is done. `ModelRunner` owns the model
and the KV cache and runs one step: forward, logits of the sampled rows only, the sampler.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mili.engine.batch import ModelInput, ScheduledSeq
from mili.engine.batched_attention import decode_kv_of
from mili.engine.cuda_graphs import DecodeGraphs, can_record
from mili.engine.sampler import sample
from mili.engine.sampling_batch import SamplingTensors, make_generator
from mili.engine.sequence import Sequence
from mili.exercise import exercise
from mili.model.metadata import AttentionMetadata, KVCache  # noqa: F401 (AttentionMetadata: for the exercise)


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
    raise NotImplementedError("Exercise 3.4: see chapters/03_python_integration.ipynb, section 5")


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
    raise NotImplementedError("Exercise 3.4: see chapters/03_python_integration.ipynb, section 5")


class ModelRunner:
    """Owns the model and the paged KV cache; runs one step and samples."""

    def __init__(self, model, kv_cache: KVCache):
        self.model = model
        self.kv_cache = kv_cache
        self.device = model.device
        self.vocab_size = model.config.vocab_size
        self.decode_kv = decode_kv_of(model.backend)  # CPU decode attention keeps K/V across steps
        self.graphs: DecodeGraphs | None = None

    def capture_cuda_graphs(self, *, max_num_seqs: int, max_model_len: int) -> None:
        """Record decode steps as CUDA graphs where the model allows it (CUDA, triton backend)."""
        if can_record(self.model):
            self.graphs = DecodeGraphs(self.model, self.kv_cache, max_num_seqs=max_num_seqs,
                                       max_model_len=max_model_len)

    @torch.inference_mode()
    def run(self, model_input: ModelInput) -> Tensor:
        """Forward the flat batch; returns float32 logits [S, V] of the rows to sample."""
        hidden = self.graphs.run(model_input) if self.graphs is not None else None
        if hidden is None:
            hidden = self._forward(model_input)
        return self.model.compute_logits(hidden[model_input.logits_indices])

    def _forward(self, model_input: ModelInput) -> Tensor:
        md = model_input.attn_metadata
        if self.decode_kv is None:
            return self.model(model_input.input_ids, model_input.positions, md, self.kv_cache)
        with self.decode_kv.step(_decode_row_keys(model_input), md.block_tables):
            return self.model(model_input.input_ids, model_input.positions, md, self.kv_cache)

    @torch.inference_mode()
    def sample(self, seqs: list[Sequence], logits: Tensor) -> list[int]:
        params = [s.params for s in seqs]
        for seq in seqs:
            if seq.params.seed is not None and seq.generator is None:
                # sample i of a seeded request gets its own stream; each is reproducible on its own
                seq.generator = make_generator(seq.params.seed + 1_000_003 * seq.index, self.device)
        tensors = SamplingTensors.from_params(
            params, self.vocab_size, self.device,
            prompt_token_ids=[s.token_ids[:s.num_prompt_tokens] for s in seqs],
            output_token_ids=[s.output_token_ids for s in seqs],
            generators=[s.generator for s in seqs],
        )
        return sample(logits, tensors).tolist()

    @torch.inference_mode()
    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy the K/V of whole blocks (src -> dst) in every layer: a forked sample's partial block."""
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs], device=self.device)
        dst = torch.tensor([p[1] for p in pairs], device=self.device)
        self.kv_cache.k[:, dst] = self.kv_cache.k[:, src]
        self.kv_cache.v[:, dst] = self.kv_cache.v[:, src]


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
