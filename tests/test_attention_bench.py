"""`mili bench attention` on a CPU: its PyTorch baseline is right, and a report prints and plots."""

import torch

from mili.bench import attention as bench


def test_gather_sdpa_baseline_matches_per_sequence_attention():
    batch, hq, hkv, d, context = 3, 8, 2, 16, 40
    blocks = context // bench.BLOCK_SIZE + 1
    k_cache = torch.randn(batch * blocks, bench.BLOCK_SIZE, hkv, d)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(batch * blocks).view(batch, blocks).to(torch.int32)
    q = torch.randn(batch, hq, d)
    got = bench.torch_paged_decode(q, k_cache, v_cache, tables, context)
    for b in range(batch):
        k = k_cache[tables[b].long()].flatten(0, 1)[:context].repeat_interleave(hq // hkv, 1)  # [L, Hq, D]
        v = v_cache[tables[b].long()].flatten(0, 1)[:context].repeat_interleave(hq // hkv, 1)
        p = (torch.einsum("hd,lhd->hl", q[b], k) * d ** -0.5).softmax(-1)
        torch.testing.assert_close(got[b], torch.einsum("hl,lhd->hd", p, v), atol=1e-5, rtol=1e-5)


def fake_report():
    entry = lambda ms, flops: {"ms": ms, "tflops": flops / ms / 1e9}
    prefill = []
    for model in ("0.6B", "8B"):
        for n in (512, 4096):
            flops = 4 * 128 * 16 * n * (n + 1) / 2
            prefill.append({"model": model, "tokens": n, "flops": flops, "floor_ms": flops / 8e14 * 1e3,
                            "mili": entry(1.0, flops), "sdpa_flash_attention": entry(1.2, flops),
                            "sdpa_cudnn_attention": None, "sdpa_default": entry(0.8, flops)})
    decode = [{"batch": 64, "context": c, "kv_bytes": 64 * c * 4096, "floor_ms": 0.1,
               "mili": {"ms": 0.1, "gbps": 2500.0, "fraction_of_copy": 0.83},
               "torch_gather_sdpa": {"ms": 0.5, "gbps": 500.0, "fraction_of_copy": 0.17}} for c in (1024, 4096)]
    report = {"environment": {"gpu": "test GPU", "torch": "x", "triton": "y"}, "matmul_tflops": 800.0,
              "copy_gbps": 3000.0, "prefill": prefill, "decode": decode}
    report["targets"] = bench.check_targets(report)
    return report


def test_report_prints_targets_and_plots(tmp_path, capsys):
    report = fake_report()
    assert [c["ok"] for c in report["targets"]] == [True, True, True, True]
    bench.print_report(report)
    out = capsys.readouterr().out
    assert "MET  decode B=64 L=4096" in out and "n/a" in out
    bench.plot_report(report, tmp_path / "attention.png")
    assert (tmp_path / "attention.png").stat().st_size > 10_000


def test_main_without_a_gpu_says_so(capsys):
    if torch.cuda.is_available():
        return
    assert bench.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
