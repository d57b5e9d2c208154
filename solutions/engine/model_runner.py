"""Reference for exercise 3.4: building the flat batch and finishing sequences."""

from __future__ import annotations

import torch

from mili.engine.batch import ModelInput, ScheduledSeq
from mili.engine.sequence import Sequence
from mili.model.metadata import AttentionMetadata


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
    input_ids, positions, slots, query_lens, context_lens, tables = [], [], [], [], [], []
    logits_indices, sampled = [], []
    for item in scheduled:
        seq, start = item.seq, item.seq.num_computed_tokens
        end = start + item.num_tokens
        input_ids += seq.token_ids[start:end]
        positions += range(start, end)
        slots += block_manager.slot_mapping(seq.seq_id, start, end)
        query_lens.append(item.num_tokens)
        context_lens.append(end)
        tables.append(block_manager.block_table(seq.seq_id))
        if end == seq.num_tokens:
            logits_indices.append(len(input_ids) - 1)
            sampled.append(seq)
    if all(n == 1 for n in query_lens):
        metadata = AttentionMetadata.decode(context_lens, slots, tables, device=device)
    else:
        has_prefix = any(k > q for q, k in zip(query_lens, context_lens))
        metadata = AttentionMetadata.prefill(query_lens, context_lens=context_lens, slot_mapping=slots,
                                             block_tables=tables if has_prefix else None, device=device)
    return ModelInput(
        input_ids=torch.tensor(input_ids, dtype=torch.int64, device=device),
        positions=torch.tensor(positions, dtype=torch.int64, device=device),
        attn_metadata=metadata,
        logits_indices=torch.tensor(logits_indices, dtype=torch.int64, device=device),
        sampled_seqs=sampled,
    )


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
    finished = []
    for seq, token_id in zip(seqs, token_ids):
        seq.token_ids.append(token_id)
        seq.text += seq.detokenizer.add_token(token_id)
        max_tokens = seq.params.max_tokens
        if seq.detokenizer.finished:
            seq.stop_reason = seq.detokenizer.stop_reason
            finished.append((seq, "stop"))
        elif (max_tokens is not None and seq.num_output_tokens >= max_tokens) or seq.num_tokens >= max_model_len:
            seq.text += seq.detokenizer.flush()
            finished.append((seq, "length"))
    return finished
