"""`mili bench throughput`: offline generation throughput against its bandwidth floor.

The default workload is nano-vllm's: 256 sequences of random token ids, prompt and output lengths
uniform in [100, 1024], seed 0, EOS ignored; counted as output tokens over wall time. Flags scale
it down for the CPU, or fix the lengths (`--prompt-len 512 --output-len 256`). `--compare hf` runs Hugging Face `generate` on the same prompts in the same run:
batches of `--hf-batch-size` prompts in arrival order, left-padded, sampling with the same
temperature up to the longest output of the batch; only the tokens each request asked for count
(HF cannot stop one row of a batch early, so its surplus tokens are wasted work).
On a GPU an untimed pass over a second workload drawn the same way (seed + 1) comes first: Triton
compiles a kernel the first time it meets each specialisation (a row count of 1, a multiple of 16
or neither; each launch shape), which cost a cold run on an H200 a third of its speed.
The floor (`floors.py`): the bytes decode must read (the weights once per step, each sequence's
K/V context once per token) at the copy bandwidth measured in this run, plus the prefill's FLOPs
at the matmul rate measured here; `fraction_of_bandwidth_floor` is floor time / measured time.
`--profile` adds host and device time per step (`step_profile.py`). `--no-overlap` and
`--no-persistent-batch` turn the engine's host-side optimisations off, to measure what each buys.
On a shared CPU, wall time includes waiting for a core; the process's CPU time is reported too.
`--tensor-parallel-size N` splits the model over N devices; the floor is then the group's
(`floors.group_of`).

    mili bench throughput [--model DIR|PRESET] [--num-seqs 256] [--min-len 100] [--max-len 1024]
                          [--prompt-len N --output-len N] [--compare hf] [--tensor-parallel-size N]
                          [--profile] [--json FILE] [--plot FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from mili.argtypes import positive_int
from mili.bench.environment import environment
from mili.bench.floors import bandwidth_floor, copy_bytes_per_s, free_memory, group_of, matmul_flops_per_s, sync

TEMPERATURE = 0.6
GPU_WORKLOAD = {"num_seqs": 256, "min_len": 100, "max_len": 1024}  # nano-vllm's
CPU_WORKLOAD = {"num_seqs": 32, "min_len": 32, "max_len": 512}  # minutes, not hours, on a laptop


def workload(num_seqs: int, min_len: int, max_len: int, vocab: int, seed: int = 0,
             prompt_len: int | None = None, output_len: int | None = None):
    """[(prompt token ids, output length)] as nano-vllm draws them (seeded, lengths uniform in
    [min_len, max_len] unless fixed by prompt_len / output_len)."""
    rng = random.Random(seed)
    work = []
    for _ in range(num_seqs):
        prompt = [rng.randrange(vocab) for _ in range(prompt_len or rng.randint(min_len, max_len))]
        work.append((prompt, output_len or rng.randint(min_len, max_len)))
    return work


def run_mili(llm, work, warmup=None, profile: bool = False) -> dict:
    """Time llm.generate over `work`, after an untimed pass over `warmup` (default: 2 short requests).
    With profile, a second timed pass records host and device time per step."""
    from mili.engine.sampling_params import SamplingParams
    from mili.kernels._triton import recorded_compiles

    def requests(pairs):
        return ([{"prompt_token_ids": p} for p, _ in pairs],
                [SamplingParams(temperature=TEMPERATURE, max_tokens=n, ignore_eos=True) for _, n in pairs])

    llm.generate(*requests(warmup or [(p, 4) for p, _ in work[:2]]), use_tqdm=False)
    prompts, params = requests(work)
    before = llm.stats()
    sync(llm.model.device)
    with recorded_compiles() as compiled:
        start, cpu_start = time.perf_counter(), time.process_time()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        sync(llm.model.device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    after = llm.stats()
    result = {"seconds": seconds, "cpu_seconds": cpu_seconds, "output_tokens": tokens, "tokens_per_s": tokens / seconds,
              "tokens_per_cpu_s": tokens / cpu_seconds,
              "preemptions": after["preemptions"] - before["preemptions"], "steps": after["steps"] - before["steps"],
              "triton_compiles": compiled}
    if profile:
        from mili.bench.step_profile import StepProfile

        steps = StepProfile(llm.engine)
        llm.generate(prompts, params, use_tqdm=False)
        result["profile"] = steps.summary()
    return result


def run_hf(hf_model, work, batch_size: int) -> dict:
    device = next(hf_model.parameters()).device

    def generate(batch):
        width = max(len(p) for p, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (prompt, _) in enumerate(batch):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        with torch.no_grad():
            out = hf_model.generate(ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                    temperature=TEMPERATURE, top_k=0, top_p=1.0,
                                    max_new_tokens=max(n for _, n in batch),
                                    min_new_tokens=max(n for _, n in batch), pad_token_id=0)
        return out.shape[1] - width

    generate(work[:2])  # warm-up
    sync(device)
    start, cpu_start, generated = time.perf_counter(), time.process_time(), 0
    for i in range(0, len(work), batch_size):
        batch = work[i:i + batch_size]
        generated += generate(batch) * len(batch)
    sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    useful = sum(n for _, n in work)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "output_tokens": useful, "tokens_per_s": useful / seconds,
            "tokens_per_cpu_s": useful / cpu_seconds,
            "generated_tokens_incl_surplus": generated, "batch_size": batch_size}


def hf_model_for(llm, model: str):
    from transformers import Qwen3Config as HFConfig
    from transformers import Qwen3ForCausalLM as HFQwen3

    folder = Path(model)
    if (folder / "config.json").exists():
        hf = HFQwen3.from_pretrained(folder, dtype=llm.model.dtype)
    else:  # a preset: same shapes, random weights (speed does not depend on the values)
        hf = HFQwen3(HFConfig(**{k: v for k, v in llm.model.config.to_hf_dict().items() if k != "torch_dtype"}))
        hf = hf.to(llm.model.dtype)
    return hf.to(llm.model.device).eval()


def run_benchmark(model: str, *, num_seqs: int, min_len: int, max_len: int, compare_hf: bool, device=None,
                  dtype="auto", hf_batch_size: int | None = None, max_num_seqs: int = 256,
                  max_num_batched_tokens: int | None = None, seed: int = 0, enforce_eager: bool = False,
                  prompt_len: int | None = None, output_len: int | None = None, profile: bool = False,
                  overlap: bool = True, persistent_batch: bool = True, backend="auto",
                  tensor_parallel_size: int = 1) -> dict:
    from mili.engine.llm import LLM

    if compare_hf and tensor_parallel_size > 1:
        raise ValueError("--compare hf runs Hugging Face on one device: leave out --tensor-parallel-size")
    longest = max(prompt_len or max_len, min_len) + max(output_len or max_len, min_len)
    llm = LLM(model, dtype=dtype, device=device, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
              enable_prefix_caching=False, max_model_len=longest + 1, enforce_eager=enforce_eager,
              overlap=overlap and persistent_batch, persistent_batch=persistent_batch, backend=backend,
              tensor_parallel_size=tensor_parallel_size)
    config, devices = group_of(llm.model)
    work = workload(num_seqs, min_len, max_len, config.vocab_size, seed, prompt_len, output_len)
    device = llm.model.device
    floor = bandwidth_floor(config, llm.model.dtype, work, max_num_seqs, devices * copy_bytes_per_s(device),
                            devices * matmul_flops_per_s(device, llm.model.dtype))
    flop_floor_s = 2 * config.num_parameters() * sum(len(p) + n for p, n in work) / floor["matmul_flops_per_s"]
    warmup = None
    if device.type == "cuda":
        warmup = workload(num_seqs, min_len, max_len, config.vocab_size, seed + 1, prompt_len, output_len)
    mili = run_mili(llm, work, warmup, profile)
    if devices > 1:
        llm.model.shutdown()  # its workers and process group; the engine's reference outlives this call
    report = {"environment": environment(device), "model": model, "dtype": str(llm.model.dtype),
              "backend": llm.model.backend.name, "cuda_graphs": llm.engine.runner.graphs is not None,
              "overlap": llm.engine.config.overlap, "persistent_batch": llm.engine.config.persistent_batch,
              "tensor_parallel_size": devices, "workload": {"num_seqs": num_seqs, "min_len": min_len, "max_len": max_len, "seed": seed,
                           "prompt_len": prompt_len, "output_len": output_len, "temperature": TEMPERATURE,
                           "prompt_tokens": sum(len(p) for p, _ in work), "output_tokens": sum(n for _, n in work)},
              "bandwidth_floor": floor, "floor_seconds": floor["seconds"],
              "flop_only_floor_seconds": flop_floor_s,
              "mili": {**mili, "fraction_of_bandwidth_floor": floor["seconds"] / mili["seconds"]}}
    if compare_hf:
        del llm.engine  # its KV pool (most of a GPU's memory) and CUDA graphs would leave HF no room
        free_memory(device)
        hf = run_hf(hf_model_for(llm, model), work, hf_batch_size or num_seqs)
        report["hf"] = {**hf, "fraction_of_bandwidth_floor": floor["seconds"] / hf["seconds"]}
        report["speedup_vs_hf"] = mili["tokens_per_s"] / hf["tokens_per_s"]
        report["speedup_vs_hf_cpu_time"] = mili["tokens_per_cpu_s"] / hf["tokens_per_cpu_s"]
    return report


def print_report(report: dict, stream=None) -> None:
    stream = stream or sys.stdout  # looked up now: a default bound at import would miss a redirected stdout
    w, floor = report["workload"], report["bandwidth_floor"]
    lengths = (f"prompts {w['prompt_len']}, outputs {w['output_len']}" if w.get("prompt_len") else
               f"lengths [{w['min_len']}, {w['max_len']}]")
    devices = report.get("tensor_parallel_size", 1)
    group = f" × {devices} (tensor parallel)" if devices > 1 else ""
    print(f"{report['environment']['device']}{group} · {report['model']} · {report['dtype']} · {w['num_seqs']} seqs, {lengths}"
          f" · bandwidth floor {floor['seconds']:.2f} s ({floor['copy_bytes_per_s'] / 1e9:.0f} GB/s copy, "
          f"{floor['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s matmul)", file=stream)
    print(f"{'engine':<8} {'seconds':>9} {'out tok/s':>11} {'of floor':>9} {'ratio':>7}   "
          f"{'CPU s':>8} {'tok/CPU s':>10} {'ratio':>7}", file=stream)
    for name in ("mili", "hf"):
        if name in report:
            r = report[name]
            ratio = r["tokens_per_s"] / report["hf"]["tokens_per_s"] if "hf" in report else 1.0
            cpu_ratio = r["tokens_per_cpu_s"] / report["hf"]["tokens_per_cpu_s"] if "hf" in report else 1.0
            print(f"{name:<8} {r['seconds']:>9.2f} {r['tokens_per_s']:>11.1f} {r['fraction_of_bandwidth_floor']:>8.1%} "
                  f"{ratio:>6.2f}x   {r['cpu_seconds']:>8.2f} {r['tokens_per_cpu_s']:>10.1f} {cpu_ratio:>6.2f}x",
                  file=stream)
    print_compile_warning(report["mili"], stream)
    if "profile" in report["mili"]:
        from mili.bench.step_profile import print_summary

        print_summary(report["mili"]["profile"], stream)


def print_compile_warning(run: dict, stream) -> None:
    """A timed run that compiled Triton kernels (`triton_compiles`) timed the compiler too: say so."""
    if run.get("triton_compiles"):
        print(f"warning: the timed runs compiled Triton kernels ({', '.join(sorted(set(run['triton_compiles'])))}): "
              "part of their time is the compiler's; warm up with the same kinds of steps", file=stream)


def plot_report(report: dict, path) -> None:
    from mili.bench.plots import labelled_bars, pyplot, save

    names = [n for n in ("mili", "hf") if n in report]
    fig, ax = pyplot().subplots(figsize=(5, 3.2))
    labelled_bars(ax, ["mili engine" if n == "mili" else "HF generate (batched)" for n in names],
                  [report[n]["tokens_per_s"] for n in names], "{:.0f}", color=["C0", "C1"][:len(names)])
    w = report["workload"]
    ax.set_ylabel("output tokens / s")
    ax.set_title(f"{Path(report['model']).name}, {w['num_seqs']} seqs, lengths [{w['min_len']}, {w['max_len']}]\n"
                 f"{report['environment']['device']}", fontsize=9)
    save(fig, path)


def main(argv: list[str] | None = None) -> int:
    from mili.engine.llm import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="mili bench throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a model folder or a preset (Qwen3-0.6B)")
    parser.add_argument("--num-seqs", type=int, default=None, help="requests (default 256; 32 on a CPU)")
    parser.add_argument("--min-len", type=int, default=None, help="shortest prompt and output (default 100; 32 on a CPU)")
    parser.add_argument("--max-len", type=int, default=None, help="longest prompt and output (default 1024; 512 on a CPU)")
    parser.add_argument("--compare", choices=["hf"], help="also run Hugging Face generate on the same prompts")
    parser.add_argument("--hf-batch-size", type=int, default=None, help="HF batch size (default: all at once)")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--enforce-eager", action="store_true", help="CUDA: no CUDA graphs for decode steps")
    parser.add_argument("--prompt-len", type=int, default=None, help="every prompt this long (random ids)")
    parser.add_argument("--output-len", type=int, default=None, help="every output this long")
    parser.add_argument("--profile", action="store_true", help="host and device time per step (a second pass)")
    parser.add_argument("--no-overlap", action="store_true", help="complete each step before scheduling the next")
    parser.add_argument("--no-persistent-batch", action="store_true",
                        help="build each step from Python lists (exercise 3.4's build_batch); implies --no-overlap")
    parser.add_argument("--backend", default="auto", help="torch or triton (default: triton on CUDA)")
    parser.add_argument("--tensor-parallel-size", type=positive_int, default=1, metavar="N",
                        help="split the model over N devices (GPUs device, device+1, ...; or CPU ranks)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--plot", help="write a bar chart (PNG) here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_cpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
    defaults = CPU_WORKLOAD if on_cpu else GPU_WORKLOAD
    unset = [name for name in defaults if getattr(args, name) is None]
    for name in unset:
        setattr(args, name, defaults[name])
    if on_cpu and unset:
        flags = ", ".join("--" + name.replace("_", "-") + f" {defaults[name]}" for name in unset)
        print(f"on a CPU the workload is scaled down: {flags} (pass them to change it)", file=sys.stderr)
    report = run_benchmark(args.model, num_seqs=args.num_seqs, min_len=args.min_len, max_len=args.max_len,
                           compare_hf=args.compare == "hf", device=args.device, dtype=args.dtype,
                           hf_batch_size=args.hf_batch_size, max_num_seqs=args.max_num_seqs,
                           max_num_batched_tokens=args.max_num_batched_tokens, enforce_eager=args.enforce_eager,
                           prompt_len=args.prompt_len, output_len=args.output_len, profile=args.profile,
                           overlap=not args.no_overlap, persistent_batch=not args.no_persistent_batch,
                           backend=args.backend, tensor_parallel_size=args.tensor_parallel_size)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot_report(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
