"""Tensor parallelism on 2 GPUs (NCCL): every rank replays its own decode CUDA graphs, and the
tokens are those of the eager group and of one GPU (the workload ends with one long request
alone, so the fused batch-1 graph runs too); in bfloat16 the replayed decode steps sum
with the one-shot kernel, and the batch-1 steps in their GEMVs (float32 goes to NCCL), and still
give the eager group's tokens; on 4 GPUs, the batch-1 steps that sum in their norms give the
tokens of those that sum with all-reduce kernels; and a worker killed in the middle of decoding
ends rank 0 with an error, not a hang. Skipped without 2 GPUs (the four-rank test without 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mili import LLM, SamplingParams
from mili.distributed import one_shot
from tests.test_tensor_parallel import CHECKPOINTS, write_checkpoint

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")]


def _generate(folder, dtype="float32", **settings) -> tuple[list, str]:
    """The greedy tokens of 11 requests of mixed lengths and forks and of one that outlives them
    all (its last 20 steps are batches of one); and how the decode steps ran: "eager", "graphs",
    "graphs, fused batch 1", or that and ", pushed sums"."""
    prompts = [{"prompt_token_ids": list(range(3, 3 + 5 * i + 7))} for i in range(11)]
    params = [SamplingParams(n=1 + i % 3, temperature=0, max_tokens=6 + 2 * i, ignore_eos=True) for i in range(11)]
    prompts.append({"prompt_token_ids": list(range(5, 40))})
    params.append(SamplingParams(temperature=0, max_tokens=6 + 2 * 10 + 20, ignore_eos=True))
    llm = LLM(str(folder), dtype=dtype, device="cuda", backend="triton", num_kv_blocks=256, block_size=16,
              max_num_seqs=16, **settings)
    try:
        tokens = [[c.token_ids for c in o.outputs] for o in llm.generate(prompts, params, use_tqdm=False)]
        graphs = llm.engine.runner.graphs
        if graphs is None:
            return tokens, "eager"
        sums = ", pushed sums" if graphs.pushed_sums else ""
        return tokens, "graphs, fused batch 1" + sums if graphs.fused_batch_1 else "graphs"
    finally:
        if llm.tensor_parallel_size > 1:
            llm.model.shutdown()
        del llm
        torch.cuda.empty_cache()


def test_bfloat16_steps_summed_by_the_one_shot_kernel_give_the_nccl_groups_tokens(tmp_path):
    """The one-shot kernel takes 2-byte floats only: in bfloat16 the replayed decode steps of the
    process's first group sum with it, the eager group (the second) with NCCL. Two ranks' sums are
    rounded once either way, so the greedy tokens must be identical."""
    assert not one_shot._installed_once, "this test needs the process's first group: keep it first in the file"
    folder = tmp_path / "kv-heads-divide-tied"
    write_checkpoint(folder, **CHECKPOINTS["kv-heads-divide-tied"])
    replayed, steps = _generate(folder, dtype="bfloat16", tensor_parallel_size=2)
    eager, _ = _generate(folder, dtype="bfloat16", tensor_parallel_size=2, enforce_eager=True)
    assert steps == "graphs, fused batch 1, pushed sums"
    assert replayed == eager, "the one-shot kernel's sums, and the GEMVs' (the batch-1 steps), must equal NCCL's"


@pytest.mark.parametrize("name", ["kv-heads-divide-tied", "kv-heads-uneven-untied"])
def test_each_rank_replays_its_graphs_and_gives_the_eager_and_one_gpu_tokens(tmp_path, name):
    folder = tmp_path / name
    write_checkpoint(folder, **CHECKPOINTS[name])
    one_gpu, _ = _generate(folder)
    replayed, steps = _generate(folder, tensor_parallel_size=2)
    eager, eager_steps = _generate(folder, tensor_parallel_size=2, enforce_eager=True)
    assert os.environ.get("NCCL_NVLS_ENABLE") == "0"
    assert replayed == eager, "2 ranks replaying CUDA graphs must give the eager group's tokens"
    assert replayed == one_gpu, "2 ranks must give one GPU's greedy tokens"
    # every rank's shard has power-of-two head counts (the uneven checkpoint's 6 + 3 heads split
    # into 4 + 2 and 2 + 1), so each rank's batch-1 graph runs the fused step
    assert (steps, eager_steps) == ("graphs, fused batch 1", "eager")



_FOUR_RANKS = r"""
import json, sys
from tests.test_tensor_parallel_gpu import _generate

tokens, steps = _generate(sys.argv[1], dtype="bfloat16", tensor_parallel_size=4)
print(json.dumps({"tokens": tokens, "steps": steps}))
"""


@pytest.mark.skipif(torch.cuda.device_count() < 4, reason="needs 4 GPUs")
def test_four_ranks_pushing_their_sums_give_the_tokens_of_four_ranks_with_all_reduce_kernels(tmp_path):
    """At TP=4 the summing norm reads a full block of four parts (no padding row) and every rank
    pushes to three peers. The one-shot all-reduce kernels, which the batch-1 step uses instead
    with MILI_FUSED_ALL_REDUCE=0, add the parts in rank order in float32 rounded once, as the
    summing norm does, so the greedy tokens must be identical (NCCL's, whose ring rounds at every
    hop, need not be). The 4 KV heads' 2 are replicated. Each run is a process of its own: the
    sum buffers belong to a process's first group."""
    folder = tmp_path / "kv-heads-divide-tied"
    write_checkpoint(folder, **CHECKPOINTS["kv-heads-divide-tied"])
    runs = {}
    for name, fused in (("pushed sums", "1"), ("all-reduce kernels", "0")):
        env = dict(os.environ, MILI_FUSED_ALL_REDUCE=fused)
        try:
            run = subprocess.run([sys.executable, "-c", _FOUR_RANKS, str(folder)], env=env, capture_output=True,
                                 text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"four ranks with {name} hung:\n{e.stdout}\n{e.stderr}")
        assert run.returncode == 0, f"four ranks with {name} failed:\n{(run.stdout + run.stderr)[-3000:]}"
        runs[name] = json.loads(run.stdout.strip().splitlines()[-1])
    assert runs["pushed sums"]["steps"] == "graphs, fused batch 1, pushed sums"
    assert runs["all-reduce kernels"]["steps"] == "graphs, fused batch 1"
    assert runs["pushed sums"]["tokens"] == runs["all-reduce kernels"]["tokens"], \
        "four ranks summing in their norms must give the tokens of four ranks summing with all-reduce kernels"


_KILL_A_WORKER = r"""
import os, signal, sys, threading, time
from mili import LLM, SamplingParams

llm = LLM(sys.argv[1], dtype="bfloat16", device="cuda", backend="triton", num_kv_blocks=256, block_size=16,
          max_num_seqs=16, tensor_parallel_size=2)
assert llm.engine.runner.graphs is not None
threading.Timer(2.0, os.kill, (llm.model.workers.processes[0].pid, signal.SIGKILL)).start()
started = time.monotonic()
try:
    while time.monotonic() - started < 100:
        llm.generate([{"prompt_token_ids": list(range(3, 40))}] * 4,
                     SamplingParams(temperature=0, max_tokens=200, ignore_eos=True), use_tqdm=False)
    print("no error 100 s after the worker was killed", flush=True)
    os._exit(0)
except Exception as e:
    print(f"error after {time.monotonic() - started:.1f} s: {type(e).__name__}: {e}", flush=True)
    os._exit(3)
"""


def test_a_worker_killed_while_rank_0_decodes_ends_in_an_error_not_a_hang(tmp_path):
    """Rank 0's one-shot kernels wait on the GPU for a rank that is gone, where NCCL's abort does
    not reach them: the kernel's watchdog (MILI_ALL_REDUCE_TIMEOUT_S) must end the wait, and rank 0
    must say which rank failed. Runs in a process of its own: after the abort its CUDA context is
    lost, and NCCL's watchdog thread, which sees the same CUDA error, may abort the process before
    the engine raises (exit status -6 instead of 3); either way it ends, and its log names the rank."""
    folder = tmp_path / "kv-heads-divide-tied"
    write_checkpoint(folder, **CHECKPOINTS["kv-heads-divide-tied"])
    env = dict(os.environ, MILI_ALL_REDUCE_TIMEOUT_S="5")
    try:
        run = subprocess.run([sys.executable, "-c", _KILL_A_WORKER, str(folder)], env=env, capture_output=True,
                             text=True, timeout=200)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"rank 0 hung after its worker was killed:\n{e.stdout}\n{e.stderr}")
    output = run.stdout + run.stderr
    assert run.returncode != 0, f"rank 0 went on without its worker:\n{output[-3000:]}"
    assert "tensor-parallel rank 1" in output, f"rank 0 must say which rank failed:\n{output[-3000:]}"
