"""`mili bench latency`: one request alone, milliseconds per output token, against the weight-read floor.

At batch 1 a decode step reads every weight to produce one token, so no engine can beat
weight bytes / copy bandwidth per token (plus the K/V of the context, small here). A step whose
host work (scheduling, building inputs, launching, reading back the token) takes longer than
that leaves the GPU idle: batch 1 shows host overhead at its plainest.

Measured: time to the first token (the prefill), then ms per output token after it (TPOT),
median of `--repeats` runs of a `--prompt-len` random prompt with `--new-tokens` greedy tokens.
`--compare hf` times Hugging Face `generate` in the same run (greedy, same prompt; its TPOT is
the time of `--hf-new-tokens` tokens minus the time of one, over the difference).
`--tensor-parallel-size N` splits the model over N devices; the floor is then the group's (the
whole model's bytes over N devices' bandwidth, `floors.group_of`).

    mili bench latency [--model PRESET|DIR] [--prompt-len 128] [--new-tokens 512] [--compare hf]
                       [--tensor-parallel-size N] [--profile] [--json FILE] [--plot FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from mili.argtypes import positive_int
from mili.bench.environment import environment
from mili.bench.floors import (
    copy_bytes_per_s,
    free_memory,
    group_of,
    kv_bytes_per_token,
    sync,
    weight_bytes_per_step,
)
from mili.bench.throughput import hf_model_for, print_compile_warning


def time_mili(llm, prompt: list[int], new_tokens: int) -> dict:
    """One request through the engine: seconds to its first token and per token after it."""
    from mili.engine.sampling_params import RequestOutputKind, SamplingParams

    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)
    sync(llm.model.device)
    start = time.perf_counter()
    engine.add_request("latency", {"prompt_token_ids": prompt}, params)
    first = None
    while engine.has_unfinished_requests():
        for output in engine.step():
            if first is None and output.outputs[0].token_ids:
                first = time.perf_counter()
    end = time.perf_counter()
    return {"ttft_s": first - start, "tpot_s": (end - first) / (new_tokens - 1), "total_s": end - start}


def time_hf(hf_model, prompt: list[int], new_tokens: int) -> float:
    device = next(hf_model.parameters()).device
    ids = torch.tensor([prompt], device=device)

    def generate(n: int) -> float:
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                              min_new_tokens=n, pad_token_id=0)
        sync(device)
        return time.perf_counter() - start

    generate(2)  # warm-up
    return (generate(new_tokens) - generate(1)) / (new_tokens - 1)


def run_benchmark(model: str, *, prompt_len: int = 128, new_tokens: int = 512, repeats: int = 3,
                  compare_hf: bool = False, hf_new_tokens: int = 64, device=None, dtype="auto",
                  enforce_eager: bool = False, overlap: bool = True, profile: bool = False,
                  tensor_parallel_size: int = 1) -> dict:
    from mili.engine.llm import LLM
    from mili.kernels._triton import recorded_compiles

    if compare_hf and tensor_parallel_size > 1:
        raise ValueError("--compare hf runs Hugging Face on one device: leave out --tensor-parallel-size")
    llm = LLM(model, dtype=dtype, device=device, max_num_seqs=8, enable_prefix_caching=False,
              max_model_len=prompt_len + new_tokens + 1, enforce_eager=enforce_eager, overlap=overlap,
              tensor_parallel_size=tensor_parallel_size)
    (config, devices), device = group_of(llm.model), llm.model.device
    prompt = [random.Random(0).randrange(config.vocab_size) for _ in range(prompt_len)]
    copy_rate = devices * copy_bytes_per_s(device)
    weights = weight_bytes_per_step(config, llm.model.dtype)
    mean_context = prompt_len + new_tokens / 2
    floor_s = (weights + mean_context * kv_bytes_per_token(config, llm.model.dtype)) / copy_rate
    time_mili(llm, prompt, 16)  # warm-up: kernels compile for these shapes
    with recorded_compiles() as compiled:
        runs = [time_mili(llm, prompt, new_tokens) for _ in range(repeats)]
    tpot = statistics.median(r["tpot_s"] for r in runs)
    graphs = llm.engine.runner.graphs
    report = {"environment": environment(device), "model": model, "dtype": str(llm.model.dtype),
              "cuda_graphs": graphs is not None, "fused_batch_1_step": graphs is not None and graphs.fused_batch_1,
              "pushed_sums": graphs is not None and graphs.pushed_sums,
              "overlap": llm.engine.config.overlap,
              "tensor_parallel_size": devices, "prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats,
              "copy_bytes_per_s": copy_rate, "weight_bytes_per_step": weights, "floor_ms_per_token": 1e3 * floor_s,
              "mili": {"tpot_ms": 1e3 * tpot, "ttft_ms": 1e3 * statistics.median(r["ttft_s"] for r in runs),
                       "runs": runs, "times_floor": tpot / floor_s, "triton_compiles": compiled}}
    if profile:
        from mili.bench.step_profile import StepProfile

        steps = StepProfile(llm.engine)
        time_mili(llm, prompt, new_tokens)
        report["mili"]["profile"] = steps.summary()
    if devices > 1:
        llm.model.shutdown()  # its workers and process group; the engine's reference outlives this call
    if compare_hf:
        del llm.engine
        free_memory(device)
        hf_tpot = time_hf(hf_model_for(llm, model), prompt, hf_new_tokens)
        report["hf"] = {"tpot_ms": 1e3 * hf_tpot, "new_tokens": hf_new_tokens, "times_floor": hf_tpot / floor_s}
        report["speedup_vs_hf"] = hf_tpot / tpot
    return report


def print_report(report: dict, stream=None) -> None:
    stream = stream or sys.stdout
    devices = report.get("tensor_parallel_size", 1)
    group = f" × {devices} (tensor parallel)" if devices > 1 else ""
    print(f"{report['environment']['device']}{group} · {report['model']} · {report['dtype']} · batch 1, prompt "
          f"{report['prompt_len']}, {report['new_tokens']} new tokens · floor {report['floor_ms_per_token']:.3f} ms/token "
          f"({report['weight_bytes_per_step'] / 1e9:.2f} GB of weights at {report['copy_bytes_per_s'] / 1e9:.0f} GB/s)",
          file=stream)
    if report.get("fused_batch_1_step"):
        print("decode steps replay the fused batch-1 graph (MILI_FUSED_STEP=0: the modules' forward)", file=stream)
    if report.get("pushed_sums"):
        print("its o and down GEMVs push their parts to every rank and the next norms sum them, no all-reduce "
              "kernels (MILI_FUSED_ALL_REDUCE=0: keep them)", file=stream)
    print(f"{'engine':<8} {'ms/token':>9} {'x floor':>8} {'TTFT ms':>8}", file=stream)
    for name in ("mili", "hf"):
        if name in report:
            r = report[name]
            ttft = f"{r['ttft_ms']:>8.2f}" if "ttft_ms" in r else f"{'-':>8}"
            print(f"{name:<8} {r['tpot_ms']:>9.3f} {r['times_floor']:>7.2f}x {ttft}", file=stream)
    print_compile_warning(report["mili"], stream)
    if "profile" in report["mili"]:
        from mili.bench.step_profile import print_summary

        print_summary(report["mili"]["profile"], stream)


def plot_report(report: dict, path) -> None:
    from mili.bench.plots import labelled_bars, pyplot, save

    names = [n for n in ("mili", "hf") if n in report]
    fig, ax = pyplot().subplots(figsize=(5, 3.2))
    labelled_bars(ax, ["mili engine" if n == "mili" else "HF generate" for n in names],
                  [report[n]["tpot_ms"] for n in names], "{:.2f}", color=["C0", "C1"][:len(names)])
    ax.axhline(report["floor_ms_per_token"], color="k", linestyle="--", label="weight-read floor")
    ax.set_yscale("log")
    ax.set_ylabel("ms per output token (log)")
    ax.set_title(f"{Path(report['model']).name}, batch 1, prompt {report['prompt_len']}\n"
                 f"{report['environment']['device']}", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, path)


def main(argv: list[str] | None = None) -> int:
    from mili.engine.llm import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="mili bench latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a model folder or a preset (Qwen3-0.6B)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", choices=["hf"], help="also time Hugging Face generate")
    parser.add_argument("--hf-new-tokens", type=int, default=64, help="tokens HF generates to measure its TPOT")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--enforce-eager", action="store_true", help="CUDA: no CUDA graphs")
    parser.add_argument("--no-overlap", action="store_true", help="complete each step before scheduling the next")
    parser.add_argument("--tensor-parallel-size", type=positive_int, default=1, metavar="N",
                        help="split the model over N devices (GPUs device, device+1, ...; or CPU ranks)")
    parser.add_argument("--profile", action="store_true", help="host and device time per step (one more run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--plot", help="write a bar chart (PNG) here")
    args = parser.parse_args(argv)
    if args.new_tokens < 2 or args.prompt_len < 1:
        parser.error("--new-tokens must be at least 2 and --prompt-len at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_benchmark(args.model, prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
                           compare_hf=args.compare == "hf", hf_new_tokens=args.hf_new_tokens, device=args.device,
                           dtype=args.dtype, enforce_eager=args.enforce_eager, overlap=not args.no_overlap,
                           profile=args.profile, tensor_parallel_size=args.tensor_parallel_size)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot_report(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
