"""The matrix-vector product of a batch-1 decode step, as a Triton kernel.

At batch 1 every linear layer is y[N] = W[N, K] · x[K]: each weight is read once and used for
two flops, so the product is bound by reading W, and all that matters is streaming W at the
memory's full rate. cuBLAS's GEMM kernels are built for many rows; at one row and the small
shapes of Qwen3-0.6B they reach 0.9-2.5 TB/s on an H100, and for some shapes they split K and
add a second, reducing kernel. This kernel gives each program a few whole rows of W (1 to 8,
autotuned per shape over GEMV_CONFIGS, or pinned per card and shape in GEMV_PINS) and walks
along K, so the loads of every SM are long and contiguous: 1.7-3.2 TB/s on the same shapes
(benchmarks/gemv-probe-h100.json, each product timed back to back, so part of a small weight may
be served from L2). In the engine it took the batch-1 decode step of Qwen3-0.6B from 1.35 to
1.21 ms on an H100 (benchmarks/latency-h100-qwen3-0.6b-58bc43a.json and -1d22c47.json). More
than one row goes to cuBLAS, where the matrix-matrix kernels are the right tool.
Memory: reads N·K elements of W and K of x, writes N.

`rms_norm_linear` is the same kernel with a decoder layer's pre-norm in its input, and for the
MLP's gate_up with SiLU-and-mul in its output (the engine's batch-1 step,
mili/engine/fused_step.py): one launch where the modules take two or three. Under tensor
parallelism `linear_to_sum` pushes a row-parallel product's part to every rank, for
`site_add_rms_norm` to sum (mili/kernels/pushed_sums.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel
from mili.kernels.pushed_sums import SumSite, buffer_of, empty_site, every_buffer, push_to_site


@triton.jit
def first_weight_tile(w_ptr, N, K, stride_w, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GATED: tl.constexpr = False):
    """This program's rows of W [N, K] (GATED: of W [2N, K], its rows j of the first half then j + N
    of the second): (rows, which are in range, their pointers, the columns of the first K tile,
    that tile loaded). W is read-only, so it may be loaded before a dependent wait."""
    if GATED:
        j = tl.arange(0, 2 * BLOCK_N)
        first_half = tl.program_id(0) * BLOCK_N + j % BLOCK_N
        rows = first_half + (j // BLOCK_N) * N
        row_ok = first_half < N
    else:
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
    w_rows = w_ptr + rows[:, None].to(tl.int64) * stride_w
    cols = tl.arange(0, BLOCK_K)
    w = tl.load(w_rows + cols[None, :], mask=row_ok[:, None] & (cols < K)[None, :], other=0.0)
    return rows, row_ok, w_rows, cols, w


@triton.jit(do_not_specialize=["sum_site"])
def _gemv_kernel(x_ptr, w_ptr, y_ptr, N, K, stride_w,
                 res_ptr, norm_w_ptr, res_out_ptr, eps,
                 sum_addresses_ptr, sum_site,
                 INPUT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
                 DEPENDENT_LAUNCH: tl.constexpr, OUTPUT: tl.constexpr = "plain", EMPTIES: tl.constexpr = False,
                 RANK: tl.constexpr = 0, WORLD: tl.constexpr = 1, SENDERS: tl.constexpr = 1):
    """One program: rows [pid·BLOCK_N, +BLOCK_N) of W, dotted with the input in float32.

    The loads of W run one tile ahead of the products. Under a dependent launch the first tile is
    requested before waiting for the kernel that writes x: W is read-only, so the first reads of
    the weights overlap the previous kernel (a norm, the activation, attention).
    INPUT says what the product multiplies, each tile computed as the loop reaches it, rounded
    where the separate norm kernel rounds (its sum of squares may add in another order):
        "plain"         x [K]
        "rms_norm"      rms_norm(x) · norm_w
        "add_rms_norm"  rms_norm(x + res) · norm_w; program 0 also writes res_out = x + res
    For the two norms every program first reads the whole row (BLOCK_H ≥ K elements, a few KB
    that the previous kernel just wrote, so from L2) for its rms. That prologue costs about what
    the separate norm kernel cost; scaling the finished dot products by 1/rms instead, with the
    squares summed in the loop, was slower still on an H100 (benchmarks/fused-step-ab-h100.json).
    OUTPUT says what it writes, y [N]:
        "plain"         the products, W [N, K] · input
        "silu_and_mul"  silu(gate) · up from W [2N, K] = [W_gate; W_up]: each program takes rows j
                        of both halves, so the activation costs no extra reads and no recompute
        "push"          the products into every rank's buffer at sum_site, not into y (and
                        nothing else: see push_to_site)
    EMPTIES: x is the row a summing norm read from sum_site (width K) of this rank's buffer, and
    the programs empty that site again after their wait, chunk pid, pid + programs, ... of K.
    """
    rows, row_ok, w_rows, cols, w = first_weight_tile(w_ptr, N, K, stride_w, BLOCK_N, BLOCK_K,
                                                      OUTPUT == "silu_and_mul")
    if OUTPUT == "push":
        buffers = every_buffer(sum_addresses_ptr, WORLD, SENDERS)
    if EMPTIES:
        own = buffer_of(sum_addresses_ptr, RANK)
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    if EMPTIES:
        for start in range(tl.program_id(0) * BLOCK_K, K, tl.num_programs(0) * BLOCK_K):
            chunk = start + tl.arange(0, BLOCK_K)
            empty_site(own, K, sum_site, chunk, chunk < K, WORLD, SENDERS)
    dtype = y_ptr.dtype.element_ty
    rstd = 0.0
    ADDS: tl.constexpr = INPUT == "add_rms_norm"
    NORMS: tl.constexpr = INPUT != "plain"
    if NORMS:
        h = tl.arange(0, BLOCK_H)
        h_ok = h < K
        row = tl.load(x_ptr + h, mask=h_ok, other=0.0).to(tl.float32)
        if ADDS:  # the residual stream's new row
            row = (row + tl.load(res_ptr + h, mask=h_ok, other=0.0).to(tl.float32)).to(dtype)
            if tl.program_id(0) == 0:
                tl.store(res_out_ptr + h, row, mask=h_ok)
            row = row.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(row * row, 0) / K + eps)
    acc = tl.zeros(w.shape, tl.float32)
    for _ in range(0, K, BLOCK_K):  # cols walks along K
        ok = cols < K
        x = tl.load(x_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        if ADDS:
            x = (x + tl.load(res_ptr + cols, mask=ok, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
        if NORMS:
            x = (x * rstd).to(dtype).to(tl.float32)
            x = (x * tl.load(norm_w_ptr + cols, mask=ok, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
        acc += w.to(tl.float32) * x[None, :]
        cols += BLOCK_K
        w = tl.load(w_rows + cols[None, :], mask=row_ok[:, None] & (cols < K)[None, :], other=0.0)
    y = tl.sum(acc, 1).to(dtype)
    if OUTPUT == "silu_and_mul":  # y holds [gate rows, up rows]: out = silu(gate) · up, rounded as silu_and_mul rounds
        gate, up = tl.split(tl.permute(tl.reshape(y.to(tl.float32), (2, BLOCK_N)), (1, 0)))
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(y_ptr + rows, (gate * tl.sigmoid(gate) * up).to(dtype), mask=rows < N)
    elif OUTPUT == "push":
        push_to_site(buffers, N, sum_site, rows, row_ok, y, RANK, WORLD, SENDERS)
    else:
        tl.store(y_ptr + rows, y, mask=row_ok)


# the configurations that won on the Qwen3 0.6B and 8B shapes on an H100 (gemv_probe.py), then
# those that came closest to each shape's best, tensor-parallel shards included, in a sweep of the
# kernel itself with its weights out of L2 (gemv_config_sweep.py, benchmarks/gemv-config-sweep-h100.json)
GEMV_CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                for n, k, w, s in ((2, 512, 2, 1), (2, 512, 2, 2), (2, 1024, 4, 1), (2, 1024, 4, 3), (8, 1024, 2, 3),
                                   (4, 2048, 4, 1), (1, 2048, 8, 1), (8, 512, 4, 1), (8, 1024, 4, 3), (1, 1024, 2, 3))]
GemvShape = tuple[int, int, str, str, bool]  # the autotuner's key without the dtypes: N, K, INPUT, OUTPUT, EMPTIES
GemvLaunch = tuple[int, int, int, int]  # BLOCK_N, BLOCK_K, num_warps, num_stages: one of GEMV_CONFIGS


def launch_of(config: triton.Config) -> GemvLaunch:
    """A GEMV configuration as the GemvLaunch that names it."""
    return config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"], config.num_warps, config.num_stages


# Shapes whose configuration is fixed per card instead of autotuned. The autotuner times each GEMV
# on its own at warm-up, on each rank, and picks among configurations within its timer's noise;
# in the step (CUDA graph, dependent launches, pushes) two such picks differ. Qwen3-8B at TP=2 on
# two H200s: runs fell in two groups, 2.37 and 2.42-2.47 ms a token, and pinning the picks of a
# fast run made every run 2.373-2.374 (benchmarks/tp-gemv-pins-ab-h200/); at TP=4 on four,
# autotuned runs took 1.587-1.670 ms and pinned ones 1.583-1.587 (benchmarks/tp-gemv-pins-tp4-h200/).
GEMV_PINS: dict[str, dict[GemvShape, GemvLaunch]] = {
    "NVIDIA H200": {
        (3072, 4096, "plain", "plain", True): (2, 1024, 4, 3),  # q, k, v of 8B at TP=2, emptying the site
        (4096, 2048, "plain", "push", False): (2, 512, 2, 2),  # o of 8B at TP=2
        (6144, 4096, "plain", "silu_and_mul", True): (8, 512, 4, 1),  # gate_up of 8B at TP=2
        (4096, 6144, "plain", "push", False): (8, 1024, 4, 3),  # down of 8B at TP=2
        (1536, 4096, "plain", "plain", True): (2, 1024, 4, 3),  # q, k, v of 8B at TP=4
        (4096, 1024, "plain", "push", False): (8, 512, 4, 1),  # o of 8B at TP=4
        (3072, 4096, "plain", "silu_and_mul", True): (1, 2048, 8, 1),  # gate_up of 8B at TP=4
        (4096, 3072, "plain", "push", False): (2, 512, 2, 1),  # down of 8B at TP=4
    },
}


def card_pins(device: torch.device) -> dict[GemvShape, GemvLaunch]:
    """GEMV_PINS's pins for the card `device` is (by its name), none for a card it lacks."""
    return GEMV_PINS.get(torch.cuda.get_device_name(device), {})


def keep_pinned(pins_of: Callable[[torch.device], dict[GemvShape, GemvLaunch]]) -> Callable:
    """The autotuner's early pruning hook that leaves a pinned shape only its pinned configuration
    (nothing left to choose between), and every other shape all of GEMV_CONFIGS.
    pins_of(device): the pins for the card that x is on."""
    configs_by_launch = {launch_of(config): config for config in GEMV_CONFIGS}

    def prune(configs, named_args, **kwargs):
        shape = (named_args["N"], named_args["K"], kwargs["INPUT"], kwargs["OUTPUT"], kwargs["EMPTIES"])
        launch = pins_of(named_args["x_ptr"].device).get(shape)
        return configs if launch is None else [configs_by_launch[launch]]

    return prune


_gemv_tuned = triton.autotune(configs=GEMV_CONFIGS, key=["N", "K", "INPUT", "OUTPUT", "EMPTIES"],
                              prune_configs_by={"early_config_prune": keep_pinned(card_pins)})(_gemv_kernel)


def _is_single_row(x: Tensor, weight: Tensor) -> bool:
    return (x.dim() == 2 and x.shape[0] == 1 and x.stride(-1) == 1 and weight.stride(-1) == 1
            and x.dtype == weight.dtype and x.device == weight.device)


def _launch_gemv(x: Tensor, weight: Tensor, input_kind: str, residual: Tensor | None = None,
                 norm_weight: Tensor | None = None, eps: float = 0.0, output: str = "plain",
                 site: SumSite | None = None) -> tuple[Tensor, Tensor | None]:
    """y [1, N] = weight · (x transformed as `input_kind` says), written as `output` says, and the
    new residual row when there is one (see _gemv_kernel). `site`: where "push" writes y (then
    nothing is returned as y but x); with any other output, the site this GEMV empties."""
    n, k = weight.shape
    if output == "silu_and_mul":
        n //= 2
    y = x if output == "push" else torch.empty(1, n, dtype=x.dtype, device=x.device)  # a push writes no y
    residual_out = torch.empty(1, k, dtype=x.dtype, device=x.device) if input_kind == "add_rms_norm" else None
    norms = input_kind != "plain"
    tensors = (x, weight, y, n, k, weight.stride(0), residual if residual is not None else x,
               norm_weight if norm_weight is not None else x, residual_out if residual_out is not None else y, eps)
    if site is None:
        sums, ranks = (x, 0), {}
    else:
        sums = (site.addresses, site.site)
        ranks = site.ranks
    empties = site is not None and output != "push"
    block_h = triton.next_power_of_2(k) if norms else 1
    if x.device.type == "cuda":
        _gemv_tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
            *tensors, *sums, INPUT=input_kind, BLOCK_H=block_h, OUTPUT=output, EMPTIES=empties, **ranks,
            **dependent_launch_options(x.device))
    else:  # the interpreter: one small configuration (tuning means timing, and there is no GPU to time)
        _gemv_kernel[(triton.cdiv(n, 2),)](*tensors, *sums, INPUT=input_kind, BLOCK_N=2, BLOCK_K=64, BLOCK_H=block_h,
                                           DEPENDENT_LAUNCH=False, OUTPUT=output, EMPTIES=empties, **ranks)
    return y, residual_out


def linear(x: Tensor, weight: Tensor, empties: SumSite | None = None) -> Tensor:
    """x [T, K] · weight [N, K]ᵀ -> [T, N] (no bias): the GEMV kernel for one row, F.linear otherwise.
    empties: the sum site that x was summed from (`site_add_rms_norm(..., empty=False)`), which the
    GEMV empties in this rank's buffer after its wait (one row only)."""
    if empties is not None:
        _check_empties(x, weight, empties, "linear")
    elif not _is_single_row(x, weight):
        return F.linear(x, weight)
    return _launch_gemv(x, weight, "plain", site=empties)[0]


def linear_silu_and_mul(x: Tensor, weight: Tensor, empties: SumSite | None = None) -> Tensor:
    """silu_and_mul(x · weightᵀ) for one row: x [1, K], weight [2I, K] = [W_gate; W_up] -> [1, I], in
    one GEMV (the MLP's gate_up after a norm kernel), rounded as the two kernels round. empties: as
    `linear`'s."""
    if not _is_single_row(x, weight) or weight.shape[0] % 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_silu_and_mul takes one contiguous row x [1, K] and a weight [2I, K] of its dtype "
                         f"and device, got x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} {weight.dtype}")
    if empties is not None:
        _check_empties(x, weight, empties, "linear_silu_and_mul")
    return _launch_gemv(x, weight, "plain", output="silu_and_mul", site=empties)[0]


def _check_empties(x: Tensor, weight: Tensor, site: SumSite, name: str) -> None:
    if not _is_single_row(x, weight) or x.shape[1] != site.width or weight.shape[1] != site.width:
        raise ValueError(f"{name}: a GEMV that empties a sum site takes one contiguous row x [1, {site.width}] (the "
                         f"site's width) and a weight [N, {site.width}] of its dtype and device, got x "
                         f"{tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} {weight.dtype}")


def linear_to_sum(x: Tensor, weight: Tensor, site: SumSite) -> SumSite:
    """This rank's part of a row-parallel product, weight [N, K] · x [1, K], pushed into every rank's
    sum buffer at `site` (mili/kernels/pushed_sums.py) instead of written. Returns the site, which
    `site_add_rms_norm` sums and normalises (and empties, or leaves to the GEMV after it): the sum
    over the ranks, without an all-reduce kernel.
    Memory: reads N·K + K elements, writes N on each of the W ranks."""
    if not _is_single_row(x, weight) or weight.shape[0] != site.width or x.dtype.itemsize != 2:
        raise ValueError(f"linear_to_sum takes one contiguous row x [1, K] of 2-byte floats in weight's dtype and "
                         f"a weight of {site.width} rows (the site's width), got x {tuple(x.shape)} {x.dtype}, "
                         f"weight {tuple(weight.shape)} {weight.dtype}")
    _launch_gemv(x, weight, "plain", output="push", site=site)
    return site


def rms_norm_linear(x: Tensor, residual: Tensor | None, norm_weight: Tensor, eps: float,
                    weight: Tensor, output: str = "plain") -> tuple[Tensor, Tensor]:
    """A decoder layer's pre-norm and the projection after it, in one launch, for one row.

    x, residual: [1, K] (residual None: the first layer, whose x is the embedding) · norm_weight [K]
    · weight [N, K]. Returns (y, residual_out) with residual_out = x + residual (x itself when
    residual is None) and y = weight · rms_norm(residual_out, norm_weight, eps): fused_add_rms_norm
    (or rms_norm) followed by linear, with the same roundings. output="silu_and_mul" (the MLP's
    gate_up, weight [2I, K]) returns silu_and_mul(y) [1, I] instead, rounded as that kernel rounds.
    Memory: reads N·K + 3·K elements (K from L2 by every program), writes N (+ K).
    """
    if not _is_single_row(x, weight):
        raise ValueError(f"rms_norm_linear takes one contiguous row x [1, K] of weight's dtype and device (a "
                         f"batch-1 decode step), got x {tuple(x.shape)} {x.dtype} on {x.device}, weight "
                         f"{weight.dtype} on {weight.device}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"rms_norm_linear: x has {x.shape[1]} features, weight [N, K] = {tuple(weight.shape)}")
    if norm_weight.shape != (x.shape[1],) or norm_weight.dtype != x.dtype or norm_weight.device != x.device:
        raise ValueError(f"norm_weight must be [{x.shape[1]}] {x.dtype} on {x.device}, got "
                         f"{tuple(norm_weight.shape)} {norm_weight.dtype} on {norm_weight.device}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or not residual.is_contiguous()):
        raise ValueError(f"residual must be a contiguous {tuple(x.shape)} {x.dtype} row like x, "
                         f"got {tuple(residual.shape)} {residual.dtype}")
    if output not in ("plain", "silu_and_mul") or (output == "silu_and_mul" and weight.shape[0] % 2):
        raise ValueError(f"output must be 'plain', or 'silu_and_mul' with an even number of rows [2I, K], got "
                         f"{output!r} and weight {tuple(weight.shape)}")
    kind = "rms_norm" if residual is None else "add_rms_norm"
    y, residual_out = _launch_gemv(x, weight, kind, residual, norm_weight, eps, output)
    return y, (x if residual_out is None else residual_out)

