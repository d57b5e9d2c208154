"""Mutants of chapter 03's references: sampler, detokenizer, scheduler, engine step, reasoning parser (3.5's, and more of
3.1's, are in tests/test_grader_mutants_03.py)."""

from tests.graders.mutants import mutant

MUTANTS = [
    # 3.1 sampler
    mutant("3.1", "seeded_rows_use_the_global_rng", "a seeded row draws its noise from the global generator",
           "noise[row].exponential_(generator=generator)", "noise[row].exponential_()",
           "test_seeded_request_ignores_its_batch_mates"),
    mutant("3.1", "no_temperature", "logits are not divided by the temperature before the softmax",
           "    scaled = logits / params.temperature.clamp_min(GREEDY_EPS).unsqueeze(1)", "    scaled = logits",
           "test_draws_follow_the_filtered_distribution[settings1]"),
    mutant("3.1", "penalties_never_applied", "repetition, presence and frequency penalties are skipped",
           "    if params.prompt_mask is not None:", "    if False:",
           "test_sample_leaves_logits_untouched_and_uses_penalties"),
    # 3.2 incremental detokenizer
    mutant("3.2", "releases_half_characters", "text is released while it still ends in half a character",
           '(full.endswith("\\ufffd") and not final)', "False", "test_streams_whole_characters_only"),
    mutant("3.2", "eos_adds_text", "an EOS id is decoded into the text instead of stopping it",
           "        if token_id in self.stop_ids:\n            self.finished, self.stop_reason = True, token_id\n",
           "        if token_id in self.stop_ids and False:\n            self.finished, self.stop_reason = True, token_id\n",
           "test_eos_ids_stop_and_add_no_text"),
    mutant("3.2", "holds_nothing_back", "no text is held back, so the start of a stop string is streamed",
           "self._hold = max((len(s) for s in self.stop), default=1) - 1", "self._hold = 0",
           "test_stop_strings_end_the_text_before_them"),
    # 3.3 scheduler
    mutant("3.3", "preempts_the_oldest", "preemption evicts the first-admitted sequence instead of the newest",
           "victim = self.running[-1]", "victim = self.running[0]", "test_preemption_by_recompute_keeps_generated_tokens"),
    mutant("3.3", "ignores_max_num_seqs", "admission does not stop at max_num_seqs",
           " and len(self.running) < self.max_num_seqs", "", "test_max_num_seqs_caps_the_batch"),
    mutant("3.3", "whole_prompt_over_budget", "a prompt is scheduled whole even when it exceeds the budget left",
           "            num_tokens = min(seq.num_uncomputed_tokens, budget)\n            output.scheduled.append",
           "            num_tokens = seq.num_uncomputed_tokens\n            output.scheduled.append",
           "test_token_budget_and_chunked_prefill"),
    # 3.4 engine step
    mutant("3.4", "positions_from_zero", "every chunk's positions start at 0 instead of num_computed_tokens",
           "positions += range(start, end)", "positions += range(end - start)", "test_mixed_step_builds_the_flat_batch"),
    mutant("3.4", "samples_unfinished_chunks", "a prompt chunk that leaves tokens for later is sampled too",
           "        if end == seq.num_tokens:\n", "        if True:\n", "test_mixed_step_builds_the_flat_batch"),
    mutant("3.4", "ignores_the_context_limit", "a sequence that fills max_model_len is not finished",
           " or seq.num_tokens >= max_model_len:", ":", "test_append_tokens_finishes_for_the_right_reason"),
    # 3.6 reasoning parser
    mutant("3.6", "split_opening_tag_leaks", "a delta that ends in part of <think> is not held back, so '<thi' leaks",
           "            if len(text) < len(OPEN_TAG) and OPEN_TAG.startswith(text):", "            if False:",
           "test_every_cut_in_two[thinking]"),
    mutant("3.6", "split_closing_tag_leaks", "inside the reasoning, a delta that ends in part of </think> is released",
           "cut = len(text) - _partial_tag_length(text, CLOSE_TAG)", "cut = len(text)",
           "test_every_cut_in_two[thinking]"),
    mutant("3.6", "answer_counted_as_reasoning", "the text after </think> in the delta that closes the block is reasoning",
           "return text[:end], self._answer(text[end + len(CLOSE_TAG):])",
           "return text[:end] + text[end + len(CLOSE_TAG):], \"\"", "test_whole_text_in_one_delta[thinking]"),
    mutant("3.6", "closing_tag_only_is_content", "a text that does not open with <think> is content at once, even "
           "when a </think> follows", 'self._state, delta = "undecided", text', 'self._state, delta = "content", text',
           "test_whole_text_in_one_delta[closing tag only]"),
]
