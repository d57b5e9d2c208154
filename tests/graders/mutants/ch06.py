"""Mutants of chapter 06's references: streaming chunks, latency metrics, load-test analysis."""

from tests.graders.mutants import mutant

MUTANTS = [
    # 6.1 streaming chat completions
    mutant("6.1", "finish_reported_again", "a finished choice, still listed in later outputs, reports its finish again",
           "            if i in finished:\n                continue\n", "", "test_joined_deltas_rebuild_each_choice_and_finish_once[3]"),
    mutant("6.1", "usage_counts_the_last_output", "completion_tokens counts only the last output's new tokens",
           "usage(last, completion_tokens)", "usage(last, sum(len(c.token_ids) for c in last.outputs))",
           "test_usage_chunk_only_when_asked"),
    mutant("6.1", "no_role_chunk", "the first chunk of a choice does not announce the assistant role",
           '                yield chunk(i, {"role": "assistant", "content": ""}, None)\n', "", "test_joined_deltas_rebuild_each_choice_and_finish_once[1]"),
    mutant("6.1", "no_done_event", "the stream does not end with data: [DONE]",
           '    yield sse("[DONE]")', "", "test_joined_deltas_rebuild_each_choice_and_finish_once[1]"),
    mutant("6.1", "finish_without_news_is_lost", "a choice that finishes with no new text never reports its finish_reason",
           "if not choice.text and choice.finish_reason is None:", "if not choice.text:", "test_a_request_aborted_before_any_text"),
    mutant("6.1", "usage_chunk_never_sent", "include_usage is ignored",
           "    if include_usage and last is not None:", "    if False:", "test_usage_chunk_only_when_asked"),
    # 6.2 TTFT and TPOT
    mutant("6.2", "tpot_over_all_tokens", "TPOT divides by the number of tokens, not the number of gaps",
           "observe((token_times[-1] - token_times[0]) / (len(token_times) - 1))",
           "observe((token_times[-1] - token_times[0]) / len(token_times))", "test_one_request_with_several_tokens[2]"),
    mutant("6.2", "ttft_from_the_finish", "TTFT is measured from the first token to the finish",
           "metrics.time_to_first_token.observe(token_times[0] - arrival_time)",
           "metrics.time_to_first_token.observe(finish_time - token_times[0])", "test_one_request_with_several_tokens[2]"),
    mutant("6.2", "first_token_counted_as_a_gap", "the wait for the first token is observed as an inter-token gap",
           "for previous, current in zip(token_times, token_times[1:]):",
           "for previous, current in zip([arrival_time] + token_times, token_times):", "test_one_request_with_several_tokens[2]"),
    mutant("6.2", "observes_before_checking", "bad timings are rejected only after the e2e latency was observed",
           "    if token_times and token_times[0] < arrival_time:",
           "    metrics.e2e_request_latency.observe(finish_time - arrival_time)\n"
           "    if token_times and token_times[0] < arrival_time:", "test_bad_timings_raise_before_observing[unsorted]",
           ("    metrics.e2e_request_latency.observe(finish_time - arrival_time)\n    if not token_times:",
            "    if not token_times:")),
    # 6.3 load-test analysis
    mutant("6.3", "nearest_rank_percentiles", "percentiles take the nearest rank instead of interpolating",
           "return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)",
           "return sorted_values[round(rank)]", "test_latency_statistics_match_numpy[percentiles0]"),
    mutant("6.3", "sample_standard_deviation", "std divides by n - 1 (sample) instead of n (population)",
           "sum((v - mean) ** 2 for v in values) / len(values))",
           "sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))", "test_latency_statistics_match_numpy[percentiles0]"),
    mutant("6.3", "errors_count_as_completed", "failed requests are counted in the throughput and latencies",
           "ok = [r for r in records if r.error is None]", "ok = list(records)", "test_errors_are_counted_and_left_out"),
    mutant("6.3", "tpot_over_all_tokens", "TPOT divides by output_tokens, not output_tokens - 1",
           "* 1e3 / (r.output_tokens - 1))", "* 1e3 / r.output_tokens)", "test_latency_statistics_match_numpy[percentiles0]"),
]
