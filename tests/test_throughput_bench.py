"""`mili bench throughput` end to end on the CPU at a toy size: both engines run the same workload,
only the requested tokens count, and the report, JSON and plot come out."""

import json

import pytest

from mili.bench import throughput
from tests.hf_oracle import TINY_MODEL


def test_workload_is_seeded_and_within_the_lengths():
    work = throughput.workload(20, 5, 9, vocab=100, seed=3)
    assert work == throughput.workload(20, 5, 9, vocab=100, seed=3)
    assert work != throughput.workload(20, 5, 9, vocab=100, seed=4)
    assert all(5 <= len(p) <= 9 and 5 <= n <= 9 and all(0 <= t < 100 for t in p) for p, n in work)


def test_bandwidth_floor_counts_weights_per_step_and_each_tokens_context():
    from mili.bench.floors import bandwidth_floor, kv_bytes_per_token, weight_bytes_per_step
    import torch

    from mili.config import preset

    config = preset("Qwen3-0.6B")
    work = [([1] * 10, 3), ([2] * 4, 5)]  # decode contexts: 11, 12 and 5, 6, 7, 8 tokens
    floor = bandwidth_floor(config, torch.bfloat16, work, max_num_seqs=2, copy_rate=1e12, flops_rate=1e15)
    kv = kv_bytes_per_token(config, torch.bfloat16)
    assert floor["kv_bytes"] == (11 + 12 + 5 + 6 + 7 + 8) * kv
    assert floor["decode_steps"] == 5, "both sequences decode together: the longest output sets the steps"
    weights = weight_bytes_per_step(config, torch.bfloat16)
    assert weights == config.num_parameters() * 2, "Qwen3-0.6B ties its embeddings: the LM head reads the table"
    expected = (floor["kv_bytes"] + 5 * weights) / 1e12 + 2 * config.num_parameters() * 14 / 1e15
    assert floor["seconds"] == expected
    one_at_a_time = bandwidth_floor(config, torch.bfloat16, work, max_num_seqs=1, copy_rate=1e12, flops_rate=1e15)
    assert one_at_a_time["decode_steps"] == 10


def test_bench_runs_mili_and_hf_on_the_same_workload(tmp_path, one_torch_thread, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "report.json"
    argv = ["--model", str(TINY_MODEL), "--num-seqs", "3", "--min-len", "4", "--max-len", "12", "--compare", "hf",
            "--json", str(out), "--plot", str(tmp_path / "bars.png")]
    assert throughput.main(argv) == 0
    report = json.loads(out.read_text())
    wanted = report["workload"]["output_tokens"]
    assert report["mili"]["output_tokens"] == wanted, "mili must produce exactly the tokens each request asked for"
    assert report["hf"]["output_tokens"] == wanted
    assert report["hf"]["generated_tokens_incl_surplus"] >= wanted, "HF pads every row to the batch's longest output"
    longest = max(n for _, n in throughput.workload(3, 4, 12, vocab=1408, seed=0))
    assert longest <= report["mili"]["steps"] <= 3 + longest, (
        f"expected the timed run's steps (one token per step per sequence, up to one prefill step each), "
        f"got {report['mili']['steps']}: were the warm-up's steps counted too?")
    assert report["speedup_vs_hf"] == pytest.approx(report["mili"]["tokens_per_s"] / report["hf"]["tokens_per_s"])
    floor = report["bandwidth_floor"]
    assert floor["seconds"] > 0 and floor["kv_bytes"] > 0 and floor["decode_steps"] == longest
    assert 0 < report["mili"]["fraction_of_bandwidth_floor"] < 1
    assert report["mili"]["triton_compiles"] == [], "the torch backend on the CPU compiles no Triton kernel"
    out = capsys.readouterr().out
    assert "mili" in out and "compiled Triton kernels" not in out
    assert (tmp_path / "bars.png").stat().st_size > 5_000


def test_on_a_cpu_the_default_workload_is_scaled_down_and_says_so(monkeypatch, capsys):
    seen = {}

    def fake_run(model, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(throughput, "run_benchmark", fake_run)
    with pytest.raises(SystemExit):
        throughput.main(["--device", "cpu", "--max-len", "64"])
    assert (seen["num_seqs"], seen["min_len"], seen["max_len"]) == (32, 32, 64)
    err = capsys.readouterr().err
    assert "--num-seqs 32" in err and "--min-len 32" in err and "--max-len" not in err


def test_a_timed_run_that_compiled_says_so(capsys):
    """A compile inside the timed run is time spent in the compiler, not the engine: the report names
    the kernels (on a GPU, after a warm-up that missed a specialisation)."""
    import sys

    throughput.print_compile_warning({"triton_compiles": ["_rms_norm_kernel", "_rms_norm_kernel"]}, sys.stdout)
    throughput.print_compile_warning({"triton_compiles": []}, sys.stdout)
    out = capsys.readouterr().out
    assert out.count("warning") == 1 and "_rms_norm_kernel" in out and "_rms_norm_kernel," not in out
