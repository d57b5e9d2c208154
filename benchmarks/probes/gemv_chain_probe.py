"""What does waiting cost a chain of batch-1 projections?

The fusion probe found that, with dependent launch, a batch-1 step of Qwen3-0.6B's projections
streams its weights at about 1.7 TB/s, well under the copy bandwidth, however the small kernels
between them are fused. This probe separates the two costs left: the data dependency between
the projections, and the wait itself. It times the same 112 matrix-vector products (28 layers x
qkv, o, gate_up, down; 881 MB of bfloat16 weights), each in one CUDA graph:

    dependent chain      the layers as the engine runs them (fusion_probe's "unfused", dependent launch)
    independent, plain   every product reads a fixed input, launched one after another
    independent, wait    the same, with dependent launch: each waits for the one before (gdc_wait)
    independent, no wait the same, but no product waits: each lets the next start at once and
                         never waits itself, so the products overlap freely (legal only because
                         they share no data; a real step cannot do this)

The last is what the GEMV kernel can do when nothing holds it back; the gap to it is the cost of
waiting between kernels. Needs a Hopper GPU (dependent launch):

    python benchmarks/probes/gemv_chain_probe.py [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fusion_probe as fp  # noqa: E402  (the layers, the autotuned GEMV and the timing of the fusion probe)

from mili.kernels._triton import dependent_launch, tl, triton  # noqa: E402


@triton.jit
def _gemv_no_wait_kernel(x_ptr, w_ptr, y_ptr, N, K, stride_w, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The GEMV of mili/kernels/linear.py that lets the next kernel start at once and never waits."""
    tl.extra.cuda.gdc_launch_dependents()
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    w_rows = w_ptr + rows[:, None].to(tl.int64) * stride_w
    cols = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for _ in range(0, K, BLOCK_K):
        w = tl.load(w_rows + cols[None, :], mask=row_ok[:, None] & (cols < K)[None, :], other=0.0)
        x = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * x[None, :]
        cols += BLOCK_K
    tl.store(y_ptr + rows, tl.sum(acc, 1).to(y_ptr.dtype.element_ty), mask=row_ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not dependent_launch(torch.device("cuda")):
        raise SystemExit("this probe needs a GPU with dependent launch (Hopper or later)")
    no_wait = triton.autotune(configs=fp.GEMV_CONFIGS, key=["N", "K"])(_gemv_no_wait_kernel)
    torch.manual_seed(0)
    layers = [fp.Layer("cuda", torch.bfloat16, **fp.QWEN3_0_6B) for _ in range(28)]
    weights = [w for layer in layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    inputs = {k: torch.randn(1, k, device="cuda").to(torch.bfloat16) for k in {w.shape[1] for w in weights}}
    outputs = [torch.empty(1, w.shape[0], device="cuda", dtype=torch.bfloat16) for w in weights]

    def independent(mode):
        for w, y in zip(weights, outputs):
            n, k = w.shape
            if mode == "no wait":
                no_wait[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](inputs[k], w, y, n, k, w.stride(0),
                                                                          launch_pdl=True)
            else:
                fp.gemv(inputs[k], w, mode == "wait", out=y)

    h = torch.randn(1, fp.QWEN3_0_6B["hidden"], device="cuda").to(torch.bfloat16)
    res = torch.randn_like(h)
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    report = {"device": torch.cuda.get_device_name(), "layers": len(layers), "products": len(weights),
              "weight_bytes": weight_bytes, "us": {}}
    for name, fn in (("dependent chain", lambda: fp.run(layers, "unfused", h, res, True)),
                     ("independent, plain", lambda: independent("plain")),
                     ("independent, wait", lambda: independent("wait")),
                     ("independent, no wait", lambda: independent("no wait"))):
        us = fp.replay_us(fn)
        report["us"][name] = us
        print(f"{name:<22} {us:7.1f} us  {weight_bytes / us / 1e3:6.0f} GB/s of weights", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
