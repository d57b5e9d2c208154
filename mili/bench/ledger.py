"""`mili bench ledger`: what each stage of the course buys, on one workload, in one run.

The same offline workload runs through the engine as the course assembles it:

1. `torch backend`: chapter 01's plain PyTorch ops (attention batched by padding), eager steps,
   batches built from Python lists (exercise 3.4's `build_batch`), each step completed before
   the next is scheduled;
2. `+ chapter 02 kernels`: Triton RMSNorm, RoPE and SiLU-and-mul (attention still in PyTorch);
3. `+ chapter 04 attention`: Triton FlashAttention prefill and paged decode;
4. `+ CUDA graphs`: decode steps replayed from recorded graphs;
5. `+ persistent batch`: step inputs sliced from rows kept across steps, copied without waiting;
6. `+ overlap`: step t+1 scheduled and prepared while step t runs.

Stages 2 to 4 need a CUDA GPU; on the CPU the ledger runs 1, 5 and 6. `--timeline FILE` also
records, with `torch.profiler`, a few decode steps of stages 3 to 6 (host phases and GPU kernels
against time; on the CPU, of every stage) as JSON for a timeline picture, after every stage
has been timed.

    mili bench ledger [--model PRESET|DIR] [--num-seqs 64] [--min-len 100] [--max-len 512]
                      [--json FILE] [--plot FILE] [--timeline FILE [--timeline-plot PNG]]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from mili.bench.environment import environment
from mili.bench.floors import bandwidth_floor, copy_bytes_per_s, free_memory, matmul_flops_per_s, sync
from mili.bench.throughput import run_mili, workload

STAGES = [  # name, backend, engine settings
    ("torch backend", "torch", dict(enforce_eager=True, persistent_batch=False, overlap=False)),
    ("+ chapter 02 kernels", "torch+kernels", dict(enforce_eager=True, persistent_batch=False, overlap=False)),
    ("+ chapter 04 attention", "triton", dict(enforce_eager=True, persistent_batch=False, overlap=False)),
    ("+ CUDA graphs", "triton", dict(enforce_eager=False, persistent_batch=False, overlap=False)),
    ("+ persistent batch", "triton", dict(enforce_eager=False, persistent_batch=True, overlap=False)),
    ("+ overlap", "triton", dict(enforce_eager=False, persistent_batch=True, overlap=True)),
]
TIMELINE_STAGES = ("+ chapter 04 attention", "+ CUDA graphs", "+ persistent batch", "+ overlap")
HOST_PHASES = {"scheduler": ("schedule",), "runner": ("prepare", "run", "sample")}


def stage_backend(name: str, device: torch.device):
    """The backend of a stage: a name the engine knows, or chapter 02's kernels over torch attention."""
    from mili.backends import get_backend
    from mili.engine.batched_attention import engine_backend

    if name != "torch+kernels":
        return name if device.type == "cuda" or name == "torch" else "torch"
    kernels = get_backend("triton", device)
    return replace(engine_backend("torch", device), name="torch+kernels", rms_norm=kernels.rms_norm,
                   fused_add_rms_norm=kernels.fused_add_rms_norm, apply_rope=kernels.apply_rope,
                   silu_and_mul=kernels.silu_and_mul)


def make_llm(model: str, backend, settings: dict, max_model_len: int, max_num_seqs: int, device, dtype):
    from mili.engine.llm import LLM

    return LLM(model, dtype=dtype, device=device, backend=backend, enable_prefix_caching=False,
               max_model_len=max_model_len, max_num_seqs=max_num_seqs, **settings)


def run_ledger(model: str, *, num_seqs: int, min_len: int, max_len: int, device=None, dtype="auto",
               timeline_path=None) -> dict:
    """Time every stage, then (with timeline_path) profile the timeline stages in a second pass,
    so that no timed run follows a profiler in this process."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    stages = [s for s in STAGES if device.type == "cuda" or s[1] == "torch" or s[2]["persistent_batch"]]
    rows, floor = [], None
    for name, backend, settings in stages:
        llm = stage_llm(model, backend, settings, device, dtype, num_seqs, max_len)
        config = llm.model.config
        work = workload(num_seqs, min_len, max_len, config.vocab_size)
        if floor is None:
            floor = bandwidth_floor(config, llm.model.dtype, work, llm.engine.config.max_num_seqs,
                                    copy_bytes_per_s(device), matmul_flops_per_s(device, llm.model.dtype))
        warmup = warmup_work(num_seqs, min_len, max_len, config.vocab_size) if device.type == "cuda" else None
        result = run_mili(llm, work, warmup)
        rows.append({"stage": name, "backend": llm.model.backend.name, **settings,
                     "cuda_graphs": llm.engine.runner.graphs is not None, **result,
                     "fraction_of_bandwidth_floor": floor["seconds"] / result["seconds"]})
        print(f"{name:<24} {result['tokens_per_s']:>9.0f} tok/s  {rows[-1]['fraction_of_bandwidth_floor']:>6.1%} of floor",
              flush=True)
        del llm  # its KV pool and graphs go before the next stage's are made
        free_memory(device)
    report = {"environment": environment(device), "model": model,
              "workload": {"num_seqs": num_seqs, "min_len": min_len, "max_len": max_len, "seed": 0},
              "bandwidth_floor": floor, "stages": rows}
    if timeline_path is not None:
        timelines = {}
        for name, backend, settings in stages:
            if name in TIMELINE_STAGES or device.type != "cuda":
                llm = stage_llm(model, backend, settings, device, dtype, num_seqs, max_len)
                timelines[name] = record_timeline(llm, workload(num_seqs, min_len, max_len, llm.model.config.vocab_size))
                del llm
                free_memory(device)
        Path(timeline_path).write_text(json.dumps({"environment": report["environment"], "model": model,
                                                   "timelines": timelines}))
    return report


def stage_llm(model: str, backend: str, settings: dict, device: torch.device, dtype, num_seqs: int, max_len: int):
    if device.type != "cuda":
        settings = {**settings, "enforce_eager": True}
    return make_llm(model, stage_backend(backend, device), settings, 2 * max_len + 1, num_seqs, device, dtype)


def warmup_work(num_seqs: int, min_len: int, max_len: int, vocab_size: int) -> list[tuple[list[int], int]]:
    """An untimed pass before a stage's run. Triton compiles a kernel again for each new
    specialisation of its integer arguments (equal to 1, a multiple of 16, or neither), on first
    use: with 8 warm-up requests, a stage's kernels outside the CUDA graphs compiled during the
    timed run at batch sizes 16, 32, ... So: as many requests as the workload, with short outputs
    of different lengths, and one longer, so the decode batch shrinks through every kind of size
    down to 1."""
    work = workload(num_seqs, min_len, max_len, vocab_size, seed=1)
    return [(prompt, 32 if i == len(work) - 1 else 1 + i % 24) for i, (prompt, _) in enumerate(work)]


def record_timeline(llm, work, decode_steps: int = 3) -> dict:
    """Run the workload's first 64 requests until every one decodes, then profile a few steps:
    {"host": [[phase, start_us, end_us]], "gpu": [[kernel, start_us, end_us]], "batch": B}."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from mili.bench.step_profile import wrap_method
    from mili.engine.sampling_params import SamplingParams

    engine = llm.engine
    for i, (prompt, _) in enumerate(work[:64]):
        engine.add_request(f"timeline-{i}", {"prompt_token_ids": prompt},
                           SamplingParams(temperature=0.6, max_tokens=64, ignore_eos=True))
    while engine.scheduler.waiting or any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running):
        engine.step()
    for _ in range(2):
        engine.step()

    def labelled(label, inner, *args, **kwargs):
        with record_function(label):
            return inner(*args, **kwargs)

    owners = {"scheduler": engine.scheduler, "runner": engine.runner}
    originals = []
    for owner_name, methods in HOST_PHASES.items():
        owner = owners[owner_name]
        for method in methods:
            if hasattr(owner, method):
                wrap_method(owner, method, functools.partial(labelled, f"mili: {method}"))
                originals.append((owner, method))
    wrap_method(engine, "step", functools.partial(labelled, "mili: step"))
    originals.append((engine, "step"))

    cuda = llm.model.device.type == "cuda"
    sync(llm.model.device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(decode_steps):
            engine.step()
        sync(llm.model.device)
    for owner, method in originals:
        delattr(owner, method)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        trace = json.loads(Path(path).read_text())
    while engine.has_unfinished_requests():
        engine.step()
    host, gpu = [], []
    for event in trace.get("traceEvents", []):
        if event.get("ph") != "X":
            continue
        span = [event["name"][:60], float(event["ts"]), float(event["ts"]) + float(event.get("dur", 0))]
        if event.get("cat") == "user_annotation" and event["name"].startswith("mili: "):
            host.append(span)
        elif event.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            gpu.append(span)
    start = min(s[1] for s in host + gpu) if host or gpu else 0.0
    shift = lambda spans: [[n, round(a - start, 1), round(b - start, 1)] for n, a, b in spans]  # noqa: E731
    return {"host": shift(host), "gpu": shift(gpu), "batch": len(work[:64]), "steps": decode_steps}


def plot_ledger(report: dict, path) -> None:
    from mili.bench.plots import pyplot, save

    rows = report["stages"]
    fig, ax = pyplot().subplots(figsize=(7, 3.6))
    values = [r["tokens_per_s"] for r in rows]
    ax.barh(range(len(rows)), values, color="C0")
    ax.set_yticks(range(len(rows)), [r["stage"] for r in rows])
    ax.invert_yaxis()
    floor = report["bandwidth_floor"]
    tokens = report["stages"][0]["output_tokens"]
    ax.axvline(tokens / floor["seconds"], color="k", linestyle="--", label="bandwidth floor")
    for i, (v, r) in enumerate(zip(values, rows)):
        ax.text(v, i, f" {v:.0f} ({r['fraction_of_bandwidth_floor']:.0%})", va="center", fontsize=8)
    w = report["workload"]
    ax.set_xlabel("output tokens / s")
    ax.set_title(f"{Path(report['model']).name}: {w['num_seqs']} requests, lengths [{w['min_len']}, {w['max_len']}]"
                 f"\n{report['environment']['device']}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    save(fig, path)


def plot_timelines(recorded: dict, path) -> None:
    """One panel per stage: the host's phases (a row each, `mili: step` around them) and the
    device's kernels (one row) against time, from a `--timeline` JSON."""
    from mili.bench.plots import pyplot, save

    stages = list(recorded["timelines"].items())
    fig, axes = pyplot().subplots(len(stages), 1, figsize=(11, 1.6 + 1.3 * len(stages)), squeeze=False)
    for ax, (stage, timeline) in zip(axes[:, 0], stages):
        phases = list(dict.fromkeys(name for name, _, _ in timeline["host"]))
        rows = phases + (["device kernels"] if timeline["gpu"] else [])
        for name, start, end in timeline["host"]:
            row = phases.index(name)
            ax.broken_barh([(start / 1e3, max(end - start, 1.0) / 1e3)], (row - 0.4, 0.8), color=f"C{row}")
        if timeline["gpu"]:
            ax.broken_barh([(start / 1e3, max(end - start, 1.0) / 1e3) for _, start, end in timeline["gpu"]],
                           (len(phases) - 0.4, 0.8), color="k")
        ax.set_yticks(range(len(rows)), [r.removeprefix("mili: ") for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{stage}: {timeline['steps']} decode steps of {timeline['batch']} sequences", fontsize=9)
    axes[-1, 0].set_xlabel("ms")
    fig.suptitle(f"Host and device over time, {Path(recorded['model']).name}, {recorded['environment']['device']}",
                 fontsize=10)
    save(fig, path)


def main(argv: list[str] | None = None) -> int:
    from mili.engine.llm import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="mili bench ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a model folder or a preset (Qwen3-0.6B)")
    parser.add_argument("--num-seqs", type=int, default=64)
    parser.add_argument("--min-len", type=int, default=100)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--plot", help="write a bar chart (PNG) here")
    parser.add_argument("--timeline", help="write profiled decode steps of three stages (JSON) here")
    parser.add_argument("--timeline-plot", help="and draw them (PNG) here")
    args = parser.parse_args(argv)
    report = run_ledger(args.model, num_seqs=args.num_seqs, min_len=args.min_len, max_len=args.max_len,
                        device=args.device, dtype=args.dtype, timeline_path=args.timeline)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot_ledger(report, args.plot)
    if args.timeline and args.timeline_plot:
        plot_timelines(json.loads(Path(args.timeline).read_text()), args.timeline_plot)
    print(f"{len(report['stages'])} stages on {report['environment']['device']}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
