"""The tensor-parallel batch-1 step without all-reduce kernels (mili/kernels/pushed_sums.py): the
o/down GEMV pushes its partial products into every rank's buffer (`linear_to_sum`), the embedding
its lookup (`embedding_to_sum`), and the next norm sums them (`site_add_rms_norm`). Here the ranks are simulated in one process, on the CPU, in
Triton's interpreter: their buffers are plain tensors and each rank's kernel writes into the
others' through their addresses, as on GPUs through symmetric memory. The interpreter runs one
kernel at a time, so every rank pushes before any rank reads; the tests check the buffers between
the two, so a site left unfilled fails here instead of leaving a reader waiting."""

from __future__ import annotations

import pytest
import torch

from mili.checkpoint import load_model
from mili.distributed.one_shot import SumBuffers
from mili.kernels.linear import linear, linear_silu_and_mul, linear_to_sum, rms_norm_linear
from mili.kernels.pushed_sums import EMPTY_BITS, embedding_to_sum, site_add_rms_norm
from solutions.kernels.rmsnorm import fused_add_rms_norm


# ranks simulated in CPU memory need the interpreter, which runs where there is no GPU (conftest.py);
# on GPUs tests/test_tensor_parallel_gpu.py runs the real thing
simulated = pytest.mark.skipif(torch.cuda.is_available(), reason="simulates ranks in Triton's interpreter on the CPU")


def _simulated_ranks(world: int, width: int, count: int, spare_sites: int = 1) -> list[SumBuffers]:
    buffers = [torch.full(((count + spare_sites) * world * width,), EMPTY_BITS, dtype=torch.int16)
               for _ in range(world)]
    addresses = [b.data_ptr() for b in buffers]
    return [SumBuffers(rank, world, buffers[rank], addresses) for rank in range(world)]


def _regions(ranks: list[SumBuffers], site: int, width: int) -> torch.Tensor:
    """[receiver, sender, width]: the int16 contents of one site in every rank's buffer."""
    world = len(ranks)
    return torch.stack([r.buffer[site * world * width:(site + 1) * world * width].view(world, width) for r in ranks])


def _all_reduced(parts: list[torch.Tensor]) -> torch.Tensor:
    """What the one-shot all-reduce gives: the parts added in rank order in float32, rounded once."""
    total = parts[0].float()
    for part in parts[1:]:
        total = total + part.float()
    return total.to(parts[0].dtype)


@simulated
@pytest.mark.parametrize("world", [2, 3, 4])
def test_pushed_products_summed_by_the_next_norm_equal_an_all_reduce_then_the_norm(world):
    """Three sites used in order over two steps, as the decode step uses them: after every rank's
    push the site holds every rank's part (-0.0 sent as +0.0), and every buffer is empty outside
    it; the reading norm gives, on every rank, the bits of the one-shot all-reduce's sum followed
    by fused_add_rms_norm, and the same residual out; the GEMV after it (the last site: the norm
    itself, as the final norm does) leaves the site empty for the next step's pushes."""
    dtype, width, k_in, count = torch.float16, 37, 70, 3
    gen = torch.Generator().manual_seed(world)
    ranks = _simulated_ranks(world, width, count)
    sites = [r.sites(width, count) for r in ranks]
    norm_weight = (torch.rand(width, generator=gen) + 0.5).to(dtype)
    next_weight = (torch.randn(5, width, generator=gen) / width ** 0.5).to(dtype)
    residual = torch.randn(1, width, generator=gen).to(dtype)
    for step in range(2):
        for site in range(count):
            xs = [torch.randn(1, k_in, generator=gen).to(dtype) for _ in range(world)]
            weights = [(torch.randn(width, k_in, generator=gen) / k_in ** 0.5).to(dtype) for _ in range(world)]
            weights[0][3] = 0.0  # rank 0's element 3: -1e-8, which rounds to -0.0, the empty marker
            weights[0][3, 0], xs[0][0, 0] = 1e-4, -1e-4
            parts = [linear(x, w) for x, w in zip(xs, weights)]
            assert parts[0].view(torch.int16)[0, 3] == EMPTY_BITS
            for rank in range(world):
                assert linear_to_sum(xs[rank], weights[rank], sites[rank][site]) is sites[rank][site]
            arrived = _regions(ranks, site, width)
            assert not arrived.eq(EMPTY_BITS).any(), f"step {step}, site {site}: a part never arrived"
            elsewhere = torch.stack([r.buffer for r in ranks])
            elsewhere[:, site * world * width:(site + 1) * world * width] = EMPTY_BITS
            assert elsewhere.eq(EMPTY_BITS).all(), \
                f"step {step}, site {site}: outside the site every buffer must be empty (a push writes nothing " \
                "but its parts, which the norm relies on to skip its wait, and every site read is emptied)"
            for sender, part in enumerate(parts):
                sent = part.view(torch.int16).masked_fill(part.view(torch.int16) == EMPTY_BITS, 0)
                assert torch.equal(arrived[:, sender], sent.expand(world, width)), \
                    f"site {site}: rank {sender}'s part is not in region [site][{sender}] of every rank"
            expected, expected_residual = fused_add_rms_norm(_all_reduced(parts), residual, norm_weight, 1e-6)
            last = site == count - 1
            for rank in range(world):
                got, got_residual = site_add_rms_norm(sites[rank][site], residual, norm_weight, 1e-6, empty=last)
                assert torch.equal(got_residual, expected_residual), \
                    f"step {step}, site {site}, rank {rank}: the residual out must be the summed row + the residual"
                assert torch.equal(got, expected), \
                    f"step {step}, site {site}, rank {rank}: the summing norm differs from all-reduce-then-norm"
                if not last:
                    assert torch.equal(linear(got, next_weight, empties=sites[rank][site]), linear(expected, next_weight)), \
                        f"step {step}, site {site}, rank {rank}: the GEMV that empties the site computes as the plain one"
                assert _regions(ranks, site, width)[rank].eq(EMPTY_BITS).all(), \
                    f"step {step}, site {site}, rank {rank}: the site must be empty in this rank's buffer after " \
                    f"{'the norm' if last else 'the GEMV after the norm'} (nothing else empties it, and the next " \
                    "step's pushes wait for it)"
            residual = expected_residual


@simulated
@pytest.mark.parametrize("world", [2, 3, 4])
def test_the_summing_norm_then_a_gemv_equals_the_fused_norm_gemv_of_one_gpu(world):
    """With a residual and without one (the first layer's, whose row is the embedding), the
    summing norm followed by the plain or SiLU-and-mul GEMV gives on every rank the bits that the
    batch-1 step of one GPU (rms_norm_linear) gives for the all-reduced row, and either GEMV,
    told to, empties the site the norm left full."""
    dtype, width, k_in, n_out = torch.float16, 37, 70, 22
    gen = torch.Generator().manual_seed(10 + world)
    ranks = _simulated_ranks(world, width, 3)
    sites = [r.sites(width, 3) for r in ranks]
    norm_weight = (torch.rand(width, generator=gen) + 0.5).to(dtype)
    weight = (torch.randn(2 * n_out, width, generator=gen) / width ** 0.5).to(dtype)
    for site, residual in ((0, None), (1, torch.randn(1, width, generator=gen).to(dtype))):
        xs = [torch.randn(1, k_in, generator=gen).to(dtype) for _ in range(world)]
        weights = [(torch.randn(width, k_in, generator=gen) / k_in ** 0.5).to(dtype) for _ in range(world)]
        for rank in range(world):
            linear_to_sum(xs[rank], weights[rank], sites[rank][site])
        summed = _all_reduced([linear(x, w) for x, w in zip(xs, weights)])
        for rank in range(world):
            out, residual_out = site_add_rms_norm(sites[rank][site], residual, norm_weight, 1e-6, empty=False)
            what = f"rank {rank}, {'no residual' if residual is None else 'a residual'}"
            assert not _regions(ranks, site, width)[rank].eq(EMPTY_BITS).any(), \
                f"{what}: told not to, the norm must leave the site to the GEMV after it"
            empties = ("plain", "silu_and_mul")[(rank + site) % 2]
            for output in ("plain", "silu_and_mul"):
                expected, expected_residual = rms_norm_linear(summed, residual, norm_weight, 1e-6, weight, output)
                gemv = linear_silu_and_mul if output == "silu_and_mul" else linear
                got = gemv(out, weight, empties=sites[rank][site] if output == empties else None)
                assert torch.equal(residual_out, expected_residual), f"{what}: residual_out must be the summed row + residual"
                assert torch.equal(got, expected), f"{what}: the summing norm, then the {output} GEMV, differs from one GPU's"
            assert _regions(ranks, site, width)[rank].eq(EMPTY_BITS).all(), \
                f"{what}: the {empties} GEMV must empty the site in its rank's buffer"
    with pytest.raises(ValueError, match="empties a sum site"):
        linear(torch.ones(1, width + 1, dtype=dtype), torch.ones(3, width + 1, dtype=dtype), empties=sites[0][0])
    with pytest.raises(ValueError, match="empties a sum site"):
        linear_silu_and_mul(torch.ones(1, width + 1, dtype=dtype), torch.ones(4, width + 1, dtype=dtype),
                            empties=sites[0][0])
    with pytest.raises(ValueError, match="norm_weight must be"):
        site_add_rms_norm(sites[0][0], None, norm_weight[:-1], 1e-6)
    with pytest.raises(ValueError, match="residual must be"):
        site_add_rms_norm(sites[0][0], torch.zeros(1, width + 1, dtype=dtype), norm_weight, 1e-6)


@simulated
def test_sites_need_two_and_room_and_their_users_check_the_width():
    ranks = _simulated_ranks(2, 8, 3, spare_sites=0)
    assert ranks[0].sites(8, 1) is None, "with one site a fast peer could push the next sum before it is emptied"
    assert ranks[0].sites(8, 4) is None, "four sites of 8 do not fit a buffer of three"
    sites = ranks[0].sites(8, 3)
    assert [s.site for s in sites] == [0, 1, 2]
    with pytest.raises(ValueError, match="residual"):
        site_add_rms_norm(sites[0], torch.ones(1, 6, dtype=torch.float16), torch.ones(8, dtype=torch.float16), 1e-6)
    with pytest.raises(ValueError, match="width"):
        linear_to_sum(torch.ones(1, 4, dtype=torch.float16), torch.ones(6, 4, dtype=torch.float16), sites[0])
    with pytest.raises(ValueError, match="width"):
        embedding_to_sum(torch.zeros(1, dtype=torch.long), torch.ones(5, 6, dtype=torch.float16), 0, sites[0])


@simulated
@pytest.mark.parametrize("world", [2, 3, 4])
def test_pushed_embedding_summed_by_the_first_norm_equals_the_lookup_then_the_norm(world):
    """Each rank holds rows [start, stop) of the table (views of one table, so a rank that reads a
    row past its own reads its neighbour's, and the sum shows it). Whichever rank holds the token,
    the first layer's norm, given the site and no residual, gives the bits of rms_norm_linear on
    the token's row, and that row as the residual out; a -0.0 in the row arrives as +0.0."""
    from mili.model.parallel import shard_range

    dtype, vocab, width, n_out, count = torch.float16, 11, 24, 10, 3
    gen = torch.Generator().manual_seed(world)
    table = torch.randn(vocab, width, generator=gen).to(dtype)
    table[:, 5] = -0.0
    norm_weight = (torch.rand(width, generator=gen) + 0.5).to(dtype)
    weight = (torch.randn(n_out, width, generator=gen) / width ** 0.5).to(dtype)
    ranks = _simulated_ranks(world, width, count)
    sites = [r.sites(width, count) for r in ranks]
    shards = [shard_range(vocab, rank, world) for rank in range(world)]
    tokens = sorted({0, shards[0].stop - 1, shards[0].stop, shards[-1].start, vocab - 1})
    for step, token in enumerate(tokens):
        site = step % count
        for rank, rows in enumerate(shards):
            embedding_to_sum(torch.tensor([token]), table[rows.start:rows.stop], rows.start, sites[rank][site])
        arrived = _regions(ranks, site, width)
        assert not arrived.eq(EMPTY_BITS).any(), f"token {token}: a rank's part never arrived"
        row = table[token:token + 1] + 0.0  # -0.0 + 0.0 = +0.0: what the sum over the ranks gives
        expected, _ = rms_norm_linear(row, None, norm_weight, 1e-6, weight)
        for rank in range(world):
            normed, got_residual = site_add_rms_norm(sites[rank][site], None, norm_weight, 1e-6)
            assert torch.equal(got_residual, row), \
                f"token {token}, rank {rank}: the residual out must be the token's row (one rank's, the others zeros)"
            assert torch.equal(linear(normed, weight), expected), \
                f"token {token}, rank {rank}: the first norm and GEMV differ from lookup-then-norm-GEMV"
        assert _regions(ranks, site, width).eq(EMPTY_BITS).all(), f"token {token}: the norms must empty the site"


@simulated
def test_every_configuration_the_autotuner_may_pick_pushes_the_same():
    """On a GPU the GEMV is autotuned over GEMV_CONFIGS (1 to 8 rows per program, masked past N):
    each must push every row as the interpreter's own tiling does, and, as the GEMV after a
    summing norm, empty every element of its site (of K elements, more than its programs' first
    chunks)."""
    from mili.kernels._triton import triton
    from mili.kernels.linear import GEMV_CONFIGS, _gemv_kernel

    dtype, width, k_in = torch.float16, 10, 2100
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, k_in, generator=gen).to(dtype)
    weight = (torch.randn(width, k_in, generator=gen) / k_in ** 0.5).to(dtype)
    ranks = _simulated_ranks(2, width, 3)
    sites = [r.sites(width, 3) for r in ranks]
    for rank in range(2):
        linear_to_sum(x, weight, sites[rank][0])
    expected_push = _regions(ranks, 0, width).clone()
    for config in GEMV_CONFIGS:
        block_n, block_k = config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"]
        site = sites[0][0]
        ranks[0].buffer.fill_(EMPTY_BITS)
        _gemv_kernel[(triton.cdiv(width, block_n),)](
            x, weight, x, width, k_in, weight.stride(0), x, x, x, 0.0, site.addresses, site.site,
            INPUT="plain", BLOCK_H=1, OUTPUT="push", BLOCK_N=block_n, BLOCK_K=block_k, DEPENDENT_LAUNCH=False,
            **site.ranks)
        assert torch.equal(_regions(ranks, 0, width)[:, 0], expected_push[:, 0]), \
            f"BLOCK_N={block_n}, BLOCK_K={block_k}: rank 0's push differs"
        wide = _simulated_ranks(2, k_in, 2, spare_sites=0)[0]
        wide.buffer.fill_(0)
        y = torch.empty(1, width, dtype=dtype)
        _gemv_kernel[(triton.cdiv(width, block_n),)](
            x, weight, y, width, k_in, weight.stride(0), x, x, y, 0.0, wide.addresses, 1,
            INPUT="plain", BLOCK_H=1, EMPTIES=True, BLOCK_N=block_n, BLOCK_K=block_k, DEPENDENT_LAUNCH=False,
            RANK=0, WORLD=2, SENDERS=2)
        assert torch.equal(y, linear(x, weight)), f"BLOCK_N={block_n}, BLOCK_K={block_k}: the emptying GEMV's product differs"
        emptied = wide.buffer.view(2, 2, k_in)
        assert emptied[1].eq(EMPTY_BITS).all() and emptied[0].eq(0).all(), \
            f"BLOCK_N={block_n}, BLOCK_K={block_k}: the GEMV must empty all of site 1 and nothing else"


def test_a_shards_fused_step_pushes_its_sums_at_the_embedding_and_every_o_and_down(tmp_path, monkeypatch):
    """With sum buffers installed, the batch-1 step of a tensor-parallel shard gets one site for the
    embedding and one per o and down projection, in the order the step runs them (the final norm
    sums the last down's); with MILI_FUSED_ALL_REDUCE=0, or in one process, it gets none."""
    from mili.distributed import one_shot
    from mili.engine.fused_step import FusedDecodeStep
    from mili.model.parallel import TensorParallelGroup
    from tests.test_tensor_parallel import CHECKPOINTS, write_checkpoint

    config = write_checkpoint(tmp_path, **CHECKPOINTS["kv-heads-divide-tied"])
    hidden, sites = config.hidden_size, 2 * config.num_hidden_layers + 1
    shard = load_model(tmp_path, dtype=torch.bfloat16, backend="triton", group=TensorParallelGroup(0, 2))
    monkeypatch.setattr(one_shot, "_sum_buffers", _simulated_ranks(2, hidden, sites)[0])
    step = FusedDecodeStep(shard)
    assert [(s.site, s.width) for s in step.sum_sites] == [(i, hidden) for i in range(sites)]
    monkeypatch.setenv("MILI_FUSED_ALL_REDUCE", "0")
    assert FusedDecodeStep(shard).sum_sites is None
    monkeypatch.delenv("MILI_FUSED_ALL_REDUCE")
    assert FusedDecodeStep(load_model(tmp_path, dtype=torch.bfloat16, backend="triton")).sum_sites is None
