"""What does summing over the ranks cost the batch-1 step, apart from waiting for the other GPU?

At TP=2 the qkv and gate_up GEMVs, whose input is the row summed over the ranks, added more time
to a step than half of what they add at TP=1, while the o and down GEMVs came close to half
(chapter 06, benchmarks/tp-batch-1-inputs-ab-h200/). Part of it is waiting for the other GPU;
part may be the summing itself. Its record (benchmarks/summing-gemv-probe-h200.json) is of the
GEMVs that summed as they read, every program polling every rank's part of the whole row; the
engine now sums and normalises in one small kernel (`site_add_rms_norm`) before a plain GEMV,
which is what the summed chain below runs. This probe runs on one GPU, where
nothing waits for another: the layers of a Qwen3-8B shard at TP=2 (36 x qkv [3072, 4096], o
[4096, 2048], gate_up [12288, 4096], down [4096, 6144]; no attention: o reads the first 2048 of
qkv's outputs), each way recorded in one CUDA graph and timed back to back:

    plain          the norms fused into qkv and gate_up, o and down write their rows (TP=1's kernels)
    summed         o and down push into sum sites of a group of one rank, the norms before qkv
                   and gate_up sum them (the TP=2 step's kernels, with one part instead of two)

The gap between the two is what the summing machinery costs without any other GPU.

With --sweep it also asks whether the autotuner's configurations, each chosen by timing one
product alone, are the best in the chain: for each of the four projections and each
configuration of GEMV_CONFIGS, the plain chain with that projection's GEMV held to that
configuration (the others autotuned). Needs a GPU:

    python benchmarks/probes/summing_gemv_probe.py [--layers 36] [--sweep] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_probe import replay_us  # noqa: E402

from mili.bench.environment import environment  # noqa: E402
from mili.distributed.one_shot import SumBuffers  # noqa: E402
from mili.kernels.linear import linear, linear_silu_and_mul, linear_to_sum, rms_norm_linear  # noqa: E402
from mili.kernels.pushed_sums import EMPTY_BITS, site_add_rms_norm  # noqa: E402

gemv = importlib.import_module("mili.kernels.linear")  # the module (mili.kernels.linear is also a function's name)
HIDDEN, QKV, ATTN_OUT, INTER = 4096, 3072, 2048, 6144  # Qwen3-8B split over two ranks
EPS = 1e-6


class Layer:
    def __init__(self, device, dtype, generator):
        def weight(n, k):
            return (torch.randn(n, k, generator=generator, device=device) / k ** 0.5).to(dtype)

        self.qkv, self.o = weight(QKV, HIDDEN), weight(HIDDEN, ATTN_OUT)
        self.gate_up, self.down = weight(2 * INTER, HIDDEN), weight(HIDDEN, INTER)
        self.norm_1 = torch.ones(HIDDEN, dtype=dtype, device=device)
        self.norm_2 = torch.ones(HIDDEN, dtype=dtype, device=device)

    @property
    def bytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in (self.qkv, self.o, self.gate_up, self.down))


def plain_step(layers, h, residual):
    for layer in layers:
        qkv, residual = rms_norm_linear(h, residual, layer.norm_1, EPS, layer.qkv)
        h = linear(qkv[:, :ATTN_OUT], layer.o)
        act, residual = rms_norm_linear(h, residual, layer.norm_2, EPS, layer.gate_up, output="silu_and_mul")
        h = linear(act, layer.down)
    return h


def summed_step(layers, sites, h, residual):
    sites = iter(sites)
    for index, layer in enumerate(layers):
        if index == 0:
            qkv, residual = rms_norm_linear(h, residual, layer.norm_1, EPS, layer.qkv)
        else:
            normed, residual = site_add_rms_norm(h, residual, layer.norm_1, EPS)
            qkv = linear(normed, layer.qkv)
        h = linear_to_sum(qkv[:, :ATTN_OUT], layer.o, next(sites))
        normed, residual = site_add_rms_norm(h, residual, layer.norm_2, EPS)
        act = linear_silu_and_mul(normed, layer.gate_up)
        h = linear_to_sum(act, layer.down, next(sites)) if index + 1 < len(layers) else linear(act, layer.down)
    return h


# each projection's launch as _launch_gemv makes it: (N, K, INPUT, OUTPUT)
ROLES = {"qkv": (QKV, HIDDEN, "add_rms_norm", "plain"), "o": (HIDDEN, ATTN_OUT, "plain", "plain"),
         "gate_up": (INTER, HIDDEN, "add_rms_norm", "silu_and_mul"), "down": (HIDDEN, INTER, "plain", "plain")}


class HeldConfig:
    """Stands in for the autotuned GEMV: launches of one (N, K, INPUT, OUTPUT) take `config`, the
    others go to the autotuner."""

    def __init__(self, tuned, key: tuple, config):
        self.tuned, self.key, self.config = tuned, key, config

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if (args[3], args[4], kwargs["INPUT"], kwargs.get("OUTPUT", "plain")) != self.key:
                return self.tuned[grid](*args, **kwargs)
            meta = dict(self.config.kwargs)
            return gemv._gemv_kernel[grid(meta)](*args, **kwargs, **meta, num_warps=self.config.num_warps,
                                                 num_stages=self.config.num_stages)
        return launch


def sweep(layers, h, residual, repeats: int) -> dict:
    """µs a layer of the plain chain with each projection held to each configuration."""
    tuned, results = gemv._gemv_tuned, {}
    try:
        for role, key in ROLES.items():
            results[role] = {}
            for config in gemv.GEMV_CONFIGS:
                gemv._gemv_tuned = HeldConfig(tuned, key, config)
                name = "BLOCK_N={BLOCK_N} BLOCK_K={BLOCK_K}".format(**config.kwargs)
                name += f" warps={config.num_warps} stages={config.num_stages}"
                results[role][name] = replay_us(lambda: plain_step(layers, h, residual), repeats) / len(layers)
    finally:
        gemv._gemv_tuned = tuned
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sweep", action="store_true", help="each projection held to each GEMV configuration")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this probe needs a GPU")
    device, dtype = torch.device("cuda"), torch.bfloat16
    generator = torch.Generator(device=device).manual_seed(0)
    layers = [Layer(device, dtype, generator) for _ in range(args.layers)]
    count = 2 * args.layers - 1
    buffer = torch.full((count * HIDDEN,), EMPTY_BITS, dtype=torch.int16, device=device)
    sites = SumBuffers(0, 1, buffer, [buffer.data_ptr()]).sites(HIDDEN, count)
    h = torch.randn(1, HIDDEN, generator=generator, device=device).to(dtype)
    residual = torch.randn(1, HIDDEN, generator=generator, device=device).to(dtype)
    plain = replay_us(lambda: plain_step(layers, h, residual), args.repeats)
    summed = replay_us(lambda: summed_step(layers, sites, h, residual), args.repeats)
    gigabytes = sum(layer.bytes for layer in layers) / 1e9
    report = {"environment": environment(device), "layers": args.layers, "weight_gigabytes": gigabytes,
              "us": {"plain": plain, "summed (a group of one rank)": summed},
              "us_per_layer": {"plain": plain / args.layers, "summed (a group of one rank)": summed / args.layers},
              "tb_per_s": {"plain": gigabytes / plain * 1e3, "summed (a group of one rank)": gigabytes / summed * 1e3}}
    print(f"{report['environment']['device']}: {args.layers} layers of a Qwen3-8B shard at TP=2, "
          f"{gigabytes:.2f} GB of weights")
    for name, us in report["us"].items():
        print(f"  {name:<30} {us:9.1f} us  {us / args.layers:6.2f} us a layer  {report['tb_per_s'][name]:5.2f} TB/s")
    if args.sweep:
        report["held_configurations_us_per_layer"] = sweep(layers, h, residual, args.repeats)
        for role, times in report["held_configurations_us_per_layer"].items():
            best = min(times, key=times.get)
            print(f"  {role:<8} best held: {times[best]:6.2f} us a layer ({best}); worst {max(times.values()):6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
