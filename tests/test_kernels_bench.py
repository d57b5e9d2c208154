"""`mili bench kernels` reporting on a synthetic result (the timing itself needs a GPU)."""

import io

import pytest
import torch

from mili.bench import kernels as bench


def synthetic_report(triton_fraction: float, compile_ratio: float, same_bytes_fraction: float | None = None) -> dict:
    rows = []
    for model in ("0.6B", "8B"):
        for kernel in bench.KERNELS:
            for tokens in (1, 4096):
                ms = 0.01 * tokens
                gbps = triton_fraction * 3000.0
                row = {"model": model, "kernel": kernel, "tokens": tokens, "bytes": int(gbps * ms * 1e6)}
                for impl, factor in (("triton", 1.0), ("compile", compile_ratio), ("eager", 5.0)):
                    row[impl] = {"ms": ms * factor, "gbps": gbps / factor, "fraction_of_copy": triton_fraction / factor}
                if same_bytes_fraction is not None:
                    row["same_bytes_copy"] = {"ms": ms, "gbps": same_bytes_fraction * 3000.0,
                                              "fraction_of_copy": same_bytes_fraction}
                rows.append(row)
    env = {"gpu": "Test GPU", "torch": torch.__version__, "triton": "x", "driver": "1", "git_commit": "abc"}
    return {"environment": env, "copy_gbps": 3000.0, "results": rows, "targets": bench.check_targets(rows)}


def test_targets_are_met_only_above_the_bandwidth_fractions_and_compile():
    assert all(c["ok"] for c in synthetic_report(0.9, 1.2)["targets"])
    assert not any(c["ok"] for c in synthetic_report(0.9, 0.95)["targets"])  # 5% slower than torch.compile
    assert all(c["ok"] for c in synthetic_report(0.9, 0.99)["targets"])  # a tie, within timing noise
    missed = {c["kernel"] for c in synthetic_report(0.75, 1.2)["targets"] if not c["ok"]}
    assert missed == {"rms_norm", "fused_add_rms_norm", "silu_and_mul"}  # RoPE's bar is 70%
    assert all(c["tokens"] >= bench.TARGET_TOKENS for c in synthetic_report(0.9, 1.2)["targets"])


def test_report_prints_a_table_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    report = synthetic_report(0.9, 1.2)
    out = io.StringIO()
    bench.print_report(report, out)
    assert "copy%" in out.getvalue() and "10/10 met" in out.getvalue()
    bench.plot_report(report, tmp_path / "k.png")
    assert (tmp_path / "k.png").stat().st_size > 10_000


def test_a_miss_is_reported_next_to_what_a_copy_of_the_same_bytes_reaches(tmp_path):
    report = synthetic_report(0.7, 1.2, same_bytes_fraction=0.68)
    out = io.StringIO()
    bench.print_report(report, out)
    assert "MISS 0.6B rms_norm T=4096: 70% of copy (>= 85% of copy), 1.20x torch.compile; " \
           "a copy of the same bytes reaches 68%" in out.getvalue()
    assert "same-size copy%" in out.getvalue()
    bench.plot_report(report, tmp_path / "k.png")


def test_the_same_size_peer_copies():
    src = torch.randint(0, 255, (40000,), dtype=torch.uint8)
    dst = torch.zeros_like(src)
    bench.stream_copy(src, dst)
    assert torch.equal(dst, src), "stream_copy must copy every byte, including the partial last block"


def test_main_refuses_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    assert bench.main([]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_eager_peers_compute_the_ops():
    x, w = torch.randn(3, 8), torch.rand(8) + 0.5
    expected = x / x.pow(2).mean(-1, keepdim=True).add(bench.EPS).sqrt() * w
    torch.testing.assert_close(bench.eager_rms_norm(x, w), expected)
    _, summed = bench.eager_fused_add_rms_norm(x, x, w)
    torch.testing.assert_close(summed, 2 * x)
    g = torch.randn(2, 6)
    torch.testing.assert_close(bench.eager_silu_and_mul(g), torch.sigmoid(g[:, :3]) * g[:, :3] * g[:, 3:])


@pytest.mark.parametrize("kernel", bench.KERNELS)
def test_each_case_runs_and_the_peers_agree(kernel, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("covered by the benchmark itself on CUDA")
    monkeypatch.setitem(bench.MODELS, "tiny", {"hidden": 48, "inter": 40, "hq": 4, "hkv": 2, "d": 16})
    args, num_bytes, ours, eager = bench.make_case(kernel, "tiny", 3, dtype=torch.float32, dev="cpu")
    assert num_bytes > 0
    expected = eager(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    got = ours(*args)
    as_tuple = lambda out: out if isinstance(out, tuple) else (out,)  # noqa: E731
    for g, e in zip(as_tuple(got), as_tuple(expected)):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
