"""Tensor parallelism on the CPU (gloo, 2 ranks): the same greedy tokens as one process, each rank
loading only its part, and no process left behind however the run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mili import LLM, SamplingParams
from mili.bench import tensor_parallel_summary
from mili.checkpoint import load_model, random_model
from mili.config import Qwen3Config
from mili.distributed.step import pack_step, unpack_step
from mili.exercise import repo_root
from mili.model.metadata import AttentionMetadata
from mili.model.parallel import TensorParallelGroup, shard_range
from mili.model.shard import ModelShard, attention_heads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = repo_root()
TINY_MODEL = ROOT / "data" / "mili-tiny-qwen3"

# heads and KV heads that divide by 2 ranks and that do not; tied and untied embeddings
CHECKPOINTS = {
    "kv-heads-divide-tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                 vocab_size=256, intermediate_size=96),
    "kv-heads-uneven-untied": dict(num_attention_heads=6, num_key_value_heads=3, tie_word_embeddings=False,
                                   vocab_size=301, intermediate_size=97),
    "kv-head-replicated-untied": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                                      vocab_size=263, intermediate_size=64),
    "query-heads-uneven-tied": dict(num_attention_heads=3, num_key_value_heads=1, tie_word_embeddings=True,
                                    vocab_size=257, intermediate_size=80),
}


def write_checkpoint(folder: Path, seed: int = 0, **shape) -> Qwen3Config:
    """A random Qwen3 checkpoint under the Hugging Face names (q/k/v and gate/up unfused).

    Weights are large enough (std 0.08) for peaked logits, so that greedy choices do not hinge on
    the last bits that a different order of summation changes.
    """
    config = Qwen3Config(hidden_size=64, num_hidden_layers=2, head_dim=16, max_position_embeddings=512,
                         rope_theta=10000.0, eos_token_id=None, **shape)
    gen = torch.Generator().manual_seed(seed)

    def matrix(rows, cols):
        return 0.08 * torch.randn(rows, cols, generator=gen)

    def norm(size):
        return 1.0 + 0.2 * torch.randn(size, generator=gen)

    h, d = config.hidden_size, config.head_dim
    tensors = {"model.embed_tokens.weight": matrix(config.vocab_size, h), "model.norm.weight": norm(h)}
    if not config.tie_word_embeddings:
        tensors["lm_head.weight"] = matrix(config.vocab_size, h)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": norm(h), p + "post_attention_layernorm.weight": norm(h),
            p + "self_attn.q_proj.weight": matrix(config.q_size, h), p + "self_attn.k_proj.weight": matrix(config.kv_size, h),
            p + "self_attn.v_proj.weight": matrix(config.kv_size, h), p + "self_attn.o_proj.weight": matrix(h, config.q_size),
            p + "self_attn.q_norm.weight": norm(d), p + "self_attn.k_norm.weight": norm(d),
            p + "mlp.gate_proj.weight": matrix(config.intermediate_size, h),
            p + "mlp.up_proj.weight": matrix(config.intermediate_size, h),
            p + "mlp.down_proj.weight": matrix(h, config.intermediate_size),
        })
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config.to_hf_dict()))
    return config


# ---------------------------------------------------------------- the split (no processes)

@pytest.mark.parametrize("heads,kv_heads,size", [(4, 2, 2), (6, 3, 2), (4, 1, 2), (3, 1, 2), (8, 2, 4), (6, 2, 4),
                                                 (16, 8, 8), (64, 8, 4), (9, 3, 3)])
def test_every_query_head_is_on_exactly_one_rank_with_its_kv_head(heads, kv_heads, size):
    group = heads // kv_heads
    seen = []
    for rank in range(size):
        q, kv = attention_heads(heads, kv_heads, rank, size)
        assert len(q) >= 1 and len(kv) >= 1
        assert all(head // group in kv for head in q), f"rank {rank}: query heads {q} without their KV head in {kv}"
        seen += list(q)
    assert seen == list(range(heads))


def test_splits_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="use fewer ranks"):
        attention_heads(2, 1, 0, 4)
    assert [len(shard_range(10, r, 4)) for r in range(4)] == [3, 3, 2, 2]


def test_a_step_travels_in_one_buffer():
    md = AttentionMetadata.prefill([3, 2], context_lens=[5, 2], slot_mapping=[4, 5, 6, 8, 9],
                                   block_tables=[[1, 2], [2]])
    ids, pos = torch.tensor([5, 6, 7, 8, 9]), torch.tensor([2, 3, 4, 0, 1])
    layout, buffer = pack_step(ids, pos, md)
    assert buffer.dtype == torch.int64 and buffer.numel() == layout.numel
    ids2, pos2, md2 = unpack_step(layout, buffer.clone())
    assert torch.equal(ids2, ids) and torch.equal(pos2, pos)
    for name in ("cu_seqlens_q", "cu_seqlens_k", "slot_mapping", "context_lens", "block_tables"):
        assert torch.equal(getattr(md2, name), getattr(md, name)) and getattr(md2, name).dtype == getattr(md, name).dtype
    assert (md2.is_prefill, md2.max_seqlen_q, md2.max_seqlen_k) == (True, 3, 5)


def test_each_rank_reads_only_its_part(tmp_path, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = tmp_path / "ckpt"
    config = write_checkpoint(folder, **CHECKPOINTS["kv-heads-uneven-untied"])
    full = load_file(str(folder / "model.safetensors"))

    def refuse(*args, **kwargs):
        raise AssertionError("a rank read a whole tensor (get_tensor) instead of its part (get_slice)")

    monkeypatch.setattr(safe_open, "get_tensor", refuse, raising=False)
    parts = [load_model(folder, group=TensorParallelGroup(rank, 2)) for rank in range(2)]  # loading needs no group
    total = sum(t.numel() for t in full.values())
    for rank, part in enumerate(parts):
        held = sum(p.numel() for p in part.parameters())
        assert held < 0.6 * total, f"rank {rank} holds {held} of {total} weights"
        shard = part.shard
        d = config.head_dim
        qkv = part.model.layers[1].self_attn.qkv_proj.weight
        q_rows, kv_rows = slice(shard.q_heads.start * d, shard.q_heads.stop * d), slice(shard.kv_heads.start * d,
                                                                                           shard.kv_heads.stop * d)
        expected = torch.cat([full["model.layers.1.self_attn.q_proj.weight"][q_rows],
                              full["model.layers.1.self_attn.k_proj.weight"][kv_rows],
                              full["model.layers.1.self_attn.v_proj.weight"][kv_rows]])
        assert torch.equal(qkv, expected)
        o_cols = slice(shard.q_columns.start, shard.q_columns.stop)
        assert torch.equal(part.model.layers[1].self_attn.o_proj.weight, full["model.layers.1.self_attn.o_proj.weight"][:, o_cols])
        inter = slice(shard.intermediate.start, shard.intermediate.stop)
        assert torch.equal(part.model.layers[0].mlp.down_proj.weight, full["model.layers.0.mlp.down_proj.weight"][:, inter])
        vocab = shard_range(config.vocab_size, rank, 2)
        assert torch.equal(part.lm_head.weight, full["lm_head.weight"][vocab.start:vocab.stop])
        assert torch.equal(part.model.norm.weight, full["model.norm.weight"])


def test_random_shards_are_parts_of_the_one_process_weights():
    config = Qwen3Config(vocab_size=99, hidden_size=32, intermediate_size=50, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True)
    whole = random_model(config, seed=3)
    for rank in range(2):
        part = random_model(config, seed=3, shard=ModelShard.of(config, TensorParallelGroup(rank, 2)))
        vocab = shard_range(99, rank, 2)
        assert torch.equal(part.model.embed_tokens.weight, whole.model.embed_tokens.weight[vocab.start:vocab.stop])
        inter = part.shard.intermediate
        assert torch.equal(part.model.layers[0].mlp.gate_up_proj.weight,
                           torch.cat([whole.model.layers[0].mlp.gate_up_proj.weight[inter.start:inter.stop],
                                      whole.model.layers[0].mlp.gate_up_proj.weight[50 + inter.start:50 + inter.stop]]))


# ---------------------------------------------------------------- two ranks against one process

def _workload():
    """Prompts sharing prefixes (the prefix cache hits) that together outgrow the KV pool (preemption)."""
    shared = list(range(3, 27))
    prompts = [{"prompt_token_ids": shared[:16 + 3 * i] + [40 + i, 41 + 2 * i, 42]} for i in range(6)]
    prompts.append({"prompt_token_ids": list(range(60, 97))})
    settings = dict(num_kv_blocks=30, block_size=4, max_num_seqs=8, max_num_batched_tokens=40, enable_prefix_caching=True)
    return prompts, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), settings


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_two_ranks_give_the_tokens_of_one_process(tmp_path, name):
    folder = tmp_path / name
    write_checkpoint(folder, **CHECKPOINTS[name])
    prompts, params, settings = _workload()
    one = LLM(str(folder), **settings)
    expected = [o.outputs[0].token_ids for o in one.generate(prompts, params, use_tqdm=False)]
    two = LLM(str(folder), tensor_parallel_size=2, **settings)
    try:
        got = [o.outputs[0].token_ids for o in two.generate(prompts, params, use_tqdm=False)]
        stats = two.stats()
    finally:
        two.model.shutdown()
    for i, (want, have) in enumerate(zip(expected, got)):
        assert have == want, f"{name}, prompt {i}: 2 ranks gave {have}, one process {want}"
    assert stats["preemptions"] > 0, "the workload must preempt (the KV pool is too small for every prompt at once)"
    assert stats["prefix_cache_hit_tokens"] > 0, "the workload must hit the prefix cache"


def test_parallel_samples_give_the_tokens_of_one_process(tmp_path):
    """n = 3 forks the prompt's partial last block: every rank must copy it in its own cache."""
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, **CHECKPOINTS["kv-heads-uneven-untied"])
    prompts = [{"prompt_token_ids": list(range(5, 19))}, {"prompt_token_ids": [7, 3, 9, 11, 2]}]  # 14, 5: not x4
    params = [SamplingParams(n=3, temperature=0, max_tokens=12, ignore_eos=True),
              SamplingParams(n=3, temperature=0.8, seed=11, max_tokens=12, ignore_eos=True)]
    settings = dict(num_kv_blocks=64, block_size=4)

    def samples(llm):
        return [[c.token_ids for c in o.outputs] for o in llm.generate(prompts * 2, params * 2, use_tqdm=False)]

    expected = samples(LLM(str(folder), **settings))
    two = LLM(str(folder), tensor_parallel_size=2, **settings)
    try:
        got = samples(two)
    finally:
        two.model.shutdown()
    assert got == expected
    assert len(set(map(tuple, expected[1]))) > 1, "the seeded samples should differ from one another"


def _stand_in_graphs_against_one_process(folder: Path, spec: dict,
                                         checkpoint: str = "kv-heads-divide-tied") -> tuple[dict, list]:
    """Run `spec` (prompts, params, LLM settings) with two ranks and stand-in graphs
    (tests/stand_in_graphs_tp.py) and in one process: (what the two ranks report, one process's tokens)."""
    write_checkpoint(folder, **CHECKPOINTS[checkpoint])
    one = LLM(str(folder), **spec["settings"])
    params = [SamplingParams(**p) for p in spec["params"]]
    expected = [[c.token_ids for c in o.outputs] for o in one.generate(spec["prompts"], params, use_tqdm=False)]
    proc = subprocess.run([sys.executable, "-m", "tests.stand_in_graphs_tp", str(folder), json.dumps(spec)],
                          env=_env(uuid.uuid4().hex), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), expected


def test_every_rank_replays_its_own_graphs_where_a_decode_batch_fits(tmp_path):
    """The CUDA-graph protocol on the CPU, with stand-in graphs (tests/stand_in_graphs_tp.py):
    rank 0 records and replays with the workers; prefills and forks run eagerly in between."""
    spec = {"prompts": [{"prompt_token_ids": list(range(3, 3 + 4 * i + 5))} for i in range(4)],
            "params": [dict(n=1 + i % 2, temperature=0, max_tokens=8 + i, ignore_eos=True) for i in range(4)],
            "settings": dict(num_kv_blocks=64, block_size=4, max_num_seqs=3)}
    got, expected = _stand_in_graphs_against_one_process(tmp_path / "ckpt", spec)
    assert got["token_ids"] == expected
    assert got["replays"] > 8, "the decode steps should have replayed"


def test_every_rank_runs_the_fused_batch_1_step_of_its_shard(tmp_path):
    """The engine records its batch-1 graph from `FusedDecodeStep` (triton backend, here in the
    interpreter): with the stand-in graphs each rank runs it on its shard, its all-reduces in step
    with the other rank's, and the tokens are those of one process. 6 query and 3 KV heads: one
    process cannot fuse them (not powers of two) and runs the modules, while the ranks' shards
    (4 + 2 and 2 + 1 heads) are fused, each with its own number of heads."""
    spec = {"prompts": [{"prompt_token_ids": [5, 9, 14, 3, 27, 8]}],
            "params": [dict(temperature=0, max_tokens=5, ignore_eos=True)],
            "settings": dict(num_kv_blocks=16, block_size=4, max_num_seqs=2, backend="triton")}
    got, expected = _stand_in_graphs_against_one_process(tmp_path / "ckpt", spec, "kv-heads-uneven-untied")
    assert got["token_ids"] == expected
    assert got["fused_replays"] >= 4, "every decode step of the lone request should have run the fused step"
    assert got["staged_replays"] == got["fused_replays"], \
        "a lone request's decode steps should replay from the batch-1 inputs rank 0 staged and broadcast"


def test_what_two_ranks_cannot_do_is_refused_clearly(tmp_path):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, **CHECKPOINTS["kv-heads-divide-tied"])
    with pytest.raises(ValueError, match="at least 2 ranks"):
        LLM(str(folder), tensor_parallel_size=0)
    llm = LLM(str(folder), tensor_parallel_size=2, num_kv_blocks=16)
    try:
        with pytest.raises(RuntimeError, match="already initialised"):
            LLM(str(folder), tensor_parallel_size=2)
    finally:
        llm.model.shutdown()
    with pytest.raises(BaseException, match="shut down"):
        llm.generate([{"prompt_token_ids": [1, 2]}], SamplingParams(max_tokens=2), use_tqdm=False)


def test_the_benchmarks_split_the_model_and_hold_it_against_the_group_floor(tmp_path, capsys):
    from mili.bench import latency, throughput
    from mili.bench.floors import weight_bytes_per_step

    folder = tmp_path / "ckpt"
    config = write_checkpoint(folder, **CHECKPOINTS["kv-heads-uneven-untied"])
    latency_json, throughput_json = tmp_path / "tp-latency-tp2.json", tmp_path / "tp-throughput-tp2.json"
    assert latency.main(["--model", str(folder), "--device", "cpu", "--tensor-parallel-size", "2", "--prompt-len", "8",
                         "--new-tokens", "6", "--repeats", "1", "--json", str(latency_json)]) == 0
    assert throughput.main(["--model", str(folder), "--device", "cpu", "--tensor-parallel-size", "2", "--num-seqs",
                            "3", "--min-len", "4", "--max-len", "10", "--json", str(throughput_json)]) == 0
    assert "× 2 (tensor parallel)" in capsys.readouterr().out
    one, many = json.loads(latency_json.read_text()), json.loads(throughput_json.read_text())
    whole_model = weight_bytes_per_step(config, torch.float32)  # the group's floor reads every rank's part
    assert one["tensor_parallel_size"] == many["tensor_parallel_size"] == 2
    assert one["weight_bytes_per_step"] == many["bandwidth_floor"]["weight_bytes_per_step"] == whole_model
    assert many["mili"]["output_tokens"] == many["workload"]["output_tokens"]
    with pytest.raises(ValueError, match="one device"):
        latency.run_benchmark(str(folder), compare_hf=True, tensor_parallel_size=2)
    pytest.importorskip("matplotlib")
    assert tensor_parallel_summary.main([str(tmp_path)]) == 0
    card = tensor_parallel_summary.card_slug(one["environment"]["device"])
    summary = json.loads((tmp_path / f"tp-summary-{card}.json").read_text())
    assert [row["tensor_parallel_size"] for row in summary["latency"] + summary["throughput"]] == [2, 2]
    assert (tmp_path / f"tp-{card}.png").stat().st_size > 5_000


def test_the_summary_counts_a_size_run_more_than_once_with_the_mean_of_its_runs():
    def report(size, tpot, floor):
        return {"model": "Qwen3-8B", "tensor_parallel_size": size, "floor_ms_per_token": floor, "cuda_graphs": True,
                "prompt_len": 128, "new_tokens": 128,
                "mili": {"tpot_ms": tpot, "ttft_ms": 2 * tpot, "times_floor": tpot / floor}}

    rows = tensor_parallel_summary.latency_rows([report(2, 2.5, 2.0), report(1, 4.0, 3.9), report(2, 2.3, 2.2),
                                                 report(1, 4.2, 4.1)])
    assert [(r["tensor_parallel_size"], r["runs_tpot_ms"]) for r in rows] == [(1, [4.0, 4.2]), (2, [2.5, 2.3])]
    one, two = rows
    assert one["tpot_ms"] == pytest.approx(4.1) and two["tpot_ms"] == pytest.approx(2.4)
    assert two["ttft_ms"] == pytest.approx(4.8)
    assert two["times_floor"] == pytest.approx(2.4 / 2.1), "against the mean of the runs' floors"
    ratio = tensor_parallel_summary.speedups(rows)["Qwen3-8B"]["tp2_over_tp1"]
    assert ratio["time_ratio"] == pytest.approx(2.4 / 4.1), "the target is judged on the means, not on one run"


def test_the_summary_sets_each_speed_up_against_the_floors():
    def row(model, size, tpot, floor):
        return {"model": model, "tensor_parallel_size": size, "tpot_ms": tpot, "floor_ms_per_token": floor}

    result = tensor_parallel_summary.speedups([row("Qwen3-8B", 2, 5.0, 2.5), row("Qwen3-8B", 1, 10.0, 5.0),
                                               row("Qwen3-8B", 4, 4.0, 1.25), row("Qwen3-32B", 2, 9.0, 8.0)])
    assert result == {"Qwen3-8B": {"tp2_over_tp1": {"time_ratio": 0.5, "ideal_time_ratio": 0.5, "target_at_most": 0.6,
                                                     "target_met": True},
                                    "tp4_over_tp1": {"time_ratio": 0.4, "ideal_time_ratio": 0.25}}}
    assert tensor_parallel_summary.card_slug("NVIDIA H100 80GB HBM3") == "h100"


# ---------------------------------------------------------------- no process left behind

def test_a_worker_killed_mid_run_fails_the_group_at_once(tmp_path):
    from mili.distributed.failure import TensorParallelFailure

    folder = tmp_path / "ckpt"
    write_checkpoint(folder, **CHECKPOINTS["kv-heads-divide-tied"])
    llm = LLM(str(folder), tensor_parallel_size=2, num_kv_blocks=64)
    try:
        params = SamplingParams(max_tokens=4, ignore_eos=True)
        assert llm.generate([{"prompt_token_ids": [1, 2, 3]}], params, use_tqdm=False)[0].outputs[0].token_ids
        (worker,) = llm.model.workers.processes
        os.kill(worker.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        started = time.monotonic()
        with pytest.raises(TensorParallelFailure, match="rank 1 was killed by SIGKILL"):
            llm.generate([{"prompt_token_ids": [1, 2, 3]}], params, use_tqdm=False)
        assert time.monotonic() - started < 10, "the failure must be seen at once, not after a timeout"
        with pytest.raises(TensorParallelFailure, match="SIGKILL"):  # and every later call says so too
            llm.generate([{"prompt_token_ids": [4]}], params, use_tqdm=False)
    finally:
        llm.model.shutdown()


def test_the_command_line_reports_a_group_failure_and_exits_non_zero(monkeypatch, capsys):
    from mili import cli
    from mili.distributed.failure import TensorParallelFailure

    def failing_llm(*args, **kwargs):
        raise TensorParallelFailure("tensor-parallel rank 1 exited with status 1")

    monkeypatch.setattr("mili.engine.LLM", failing_llm)
    assert cli.main(["generate", "hi", "--tensor-parallel-size", "2"]) == 1
    assert "rank 1 exited with status 1" in capsys.readouterr().err


def _processes_with(token: str) -> list[int]:
    """Live processes whose environment holds `token` (rank 0, the fork server, the workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _assert_all_gone(token: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _processes_with(token)
    assert not left, f"processes left behind: {left}"


def _env(token: str, **extra) -> dict:
    return dict(os.environ, MILI_TP_TEST=token, PYTHONPATH=str(ROOT), **extra)


GENERATE_FOREVER = """
import faulthandler, signal, sys, torch
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for the stacks if rank 0 does not stop
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started where SIGINT is ignored
torch.set_num_threads(1)
from mili import LLM, SamplingParams
from mili.bench import tensor_parallel_summary
llm = LLM(sys.argv[1], tensor_parallel_size=2, num_kv_blocks=64)
print("ready", flush=True)
while True:
    llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=200, ignore_eos=True), use_tqdm=False)
"""


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes through /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopping_rank_zero_leaves_no_worker(how):
    token = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-c", GENERATE_FOREVER, str(TINY_MODEL)],
                            env=_env(token, PYTHONFAULTHANDLER="1"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    stderr: list[str] = []  # read as it comes: a full pipe would block the processes that write to it
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()

    def written(wait: float) -> str:  # what the processes wrote to stderr, up to its end if it comes within `wait` s
        reader.join(timeout=wait)
        return "".join(stderr)

    try:
        assert proc.stdout.readline().strip() == "ready", written(10)
        assert len(_processes_with(token)) >= 2, "the worker should be running"
        time.sleep(0.5)  # in the middle of generating
        if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        else:  # Kubernetes and `kill` send SIGTERM to the main process only
            proc.send_signal(signal.SIGTERM)
        stop_within = 60  # a loaded 2-core CI machine: shutdown waits up to 2 x 5 s on workers
        try:
            proc.wait(timeout=stop_within)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # every thread's stack, to stderr
            for pid in set(_processes_with(token)) - {proc.pid}:  # workers and fork server: their stacks as they abort
                os.kill(pid, signal.SIGABRT)
            pytest.fail(f"rank 0 was still running {stop_within} s after {how}; its threads, then what it wrote:\n"
                        + written(2))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _assert_all_gone(token)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes through /proc")
def test_a_failing_worker_is_reported_and_the_command_exits_non_zero():
    token = uuid.uuid4().hex
    proc = subprocess.run([sys.executable, "-m", "tests.faulty_tp", "generate", "2 + 3 =", "--model", str(TINY_MODEL),
                           "--tensor-parallel-size", "2", "--max-tokens", "40"],
                          env=_env(token, MILI_FAULT_AFTER="40"), cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 1, proc.stderr
    assert "tensor-parallel rank 1 failed" in proc.stderr and "injected failure on rank 1" in proc.stderr, proc.stderr
    _assert_all_gone(token)


# ---------------------------------------------------------------- serving

def _start_server(token: str, *, module: str = "mili.server.cli", **env) -> tuple[subprocess.Popen, str]:
    from mili.server.launch import free_port

    port = free_port()
    command = [sys.executable, "-m", module, *(["serve"] if module != "mili.server.cli" else []),
               "--model", str(TINY_MODEL), "--device", "cpu", "--tensor-parallel-size", "2", "--port", str(port),
               "--num-kv-blocks", "64", "--log-level", "warning"]
    proc = subprocess.Popen(command, env=_env(token, OMP_NUM_THREADS="1", **env), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 90.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mili serve exited with status {proc.returncode}:\n{proc.stdout.read()}"
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise AssertionError("mili serve --tensor-parallel-size 2 was not healthy in time")


def _complete(url: str, max_tokens: int) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    body = json.dumps({"prompt": "2 + 3 =", "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes through /proc")
def test_a_tensor_parallel_server_answers_then_stops_with_every_process_on_sigterm():
    pytest.importorskip("fastapi")
    token = uuid.uuid4().hex
    proc, url = _start_server(token)
    try:
        _wait_healthy(proc, url)
        status, answer = _complete(url, max_tokens=6)
        assert status == 200 and answer["usage"]["completion_tokens"] == 6, answer
        proc.send_signal(signal.SIGTERM)  # what Kubernetes sends the container's main process
        assert proc.wait(timeout=60) == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _assert_all_gone(token)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes through /proc")
def test_a_tensor_parallel_server_whose_worker_fails_exits_non_zero():
    pytest.importorskip("fastapi")
    token = uuid.uuid4().hex
    # the warm-up's four forwards (two requests of a prefill and a decode; 8 layers, 2 row-parallel layers
    # each) pass; the request's first fails on rank 1
    proc, url = _start_server(token, module="tests.faulty_tp", MILI_FAULT_AFTER="64")
    try:
        _wait_healthy(proc, url)
        status, _ = _complete(url, max_tokens=6)
        assert status >= 500
        assert proc.wait(timeout=60) == 1
        assert "injected failure on rank 1" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _assert_all_gone(token)
