"""Grader for exercise 3.1 (the sampler).

Oracles: the penalty and filter definitions written out element by element in float64, and the
analytically filtered distribution against the empirical frequencies of many draws.
"""

import math

import pytest
import torch

from mili.engine.sampler import apply_penalties, apply_top_k_top_p_min_p, sample
from mili.engine.sampling_batch import SamplingTensors, make_generator
from mili.engine.sampling_params import SamplingParams
from mili.testing import assert_close, generator_for, randn

pytestmark = pytest.mark.exercise("3.1")


def _random_history(rows: int, vocab: int, length: int, name: str) -> list[list[int]]:
    g = generator_for(name)
    return [torch.randint(0, vocab, (int(torch.randint(0, length, (1,), generator=g)),), generator=g).tolist()
            for _ in range(rows)]


def test_greedy_rows_take_the_argmax():
    logits = randn(6, 50, scale=3.0)
    params = [SamplingParams(temperature=0.0 if i % 2 == 0 else 1.0, top_k=5) for i in range(6)]
    got = sample(logits, SamplingTensors.from_params(params, 50))
    expected = logits.argmax(dim=-1)
    assert got.dtype == torch.int64, f"sample must return int64 token ids, got {got.dtype}"
    assert got.shape == (6,), f"sample must return one token per row, shape (6,), got {tuple(got.shape)}"
    for row in range(0, 6, 2):
        assert got[row] == expected[row], (
            f"row {row} has temperature 0 and must be greedy: expected token {int(expected[row])}, "
            f"got {int(got[row])}. hint: take the argmax of the logits for rows with temperature 0")


def test_penalties_match_their_definition():
    batch, vocab = 5, 40
    logits = randn(batch, vocab, scale=2.0)
    prompts = _random_history(batch, vocab, 12, "prompts")
    outputs = _random_history(batch, vocab, 12, "outputs")
    rep = torch.tensor([1.0, 1.3, 0.7, 2.0, 1.1])
    presence = torch.tensor([0.0, 0.5, -0.4, 1.5, 0.2])
    frequency = torch.tensor([0.0, 0.3, 0.6, -0.5, 1.0])
    prompt_mask = torch.zeros(batch, vocab, dtype=torch.bool)
    counts = torch.zeros(batch, vocab, dtype=torch.int32)
    expected = logits.double().clone()
    for b in range(batch):
        for t in prompts[b]:
            prompt_mask[b, t] = True
        for t in outputs[b]:
            counts[b, t] += 1
        for t in range(vocab):
            x = expected[b, t].item()
            c = outputs[b].count(t)
            if t in prompts[b] or c:
                x = x / rep[b].item() if x > 0 else x * rep[b].item()
            expected[b, t] = x - frequency[b].item() * c - presence[b].item() * (c > 0)
    before = logits.clone()
    got = apply_penalties(logits, prompt_mask, counts, rep, presence, frequency)
    assert torch.equal(logits, before), "apply_penalties must not modify its input logits"
    assert_close(got, expected.float(), what="penalised logits",
                 hint="repetition applies to prompt AND output tokens (divide positive logits, multiply "
                      "negative ones); presence and frequency count the output only")


def _oracle_filter(row: torch.Tensor, top_k: int, top_p: float, min_p: float) -> set[int]:
    """The token ids a row keeps, by the definitions, in float64 with plain Python."""
    order = sorted(range(len(row)), key=lambda i: -row[i].item())[:top_k]
    weights = [math.exp(row[i].item() - row[order[0]].item()) for i in order]
    total = sum(weights)
    probs = [w / total for w in weights]
    kept, mass = [], 0.0
    for token, p in zip(order, probs):
        if mass >= top_p and top_p < 1.0:
            break
        assert top_p == 1.0 or abs(mass - top_p) > 1e-4, "test input too close to the top-p boundary"
        kept.append((token, p))
        mass += p
    return {t for t, p in kept if p >= min_p * probs[0]}


@pytest.mark.parametrize("case", ["top_k", "top_p", "min_p", "combined"])
def test_filters_keep_exactly_the_right_tokens(case):
    batch, vocab = 6, 64
    logits = randn(batch, vocab, scale=2.5, name=f"filters-{case}")
    settings = {
        "top_k": [(1, 1.0, 0.0), (5, 1.0, 0.0), (vocab, 1.0, 0.0), (17, 1.0, 0.0), (2, 1.0, 0.0), (63, 1.0, 0.0)],
        "top_p": [(vocab, 0.5, 0.0), (vocab, 0.9, 0.0), (vocab, 1.0, 0.0), (vocab, 0.01, 0.0), (vocab, 0.73, 0.0),
                  (vocab, 0.95, 0.0)],
        "min_p": [(vocab, 1.0, 0.1), (vocab, 1.0, 0.5), (vocab, 1.0, 0.0), (vocab, 1.0, 1.0), (vocab, 1.0, 0.02),
                  (vocab, 1.0, 0.3)],
        "combined": [(10, 0.8, 0.05), (3, 0.5, 0.2), (vocab, 0.9, 0.1), (20, 0.95, 0.0), (1, 0.3, 0.9),
                     (40, 0.6, 0.01)],
    }[case]
    top_k = torch.tensor([s[0] for s in settings])
    top_p = torch.tensor([s[1] for s in settings])
    min_p = torch.tensor([s[2] for s in settings])
    got = apply_top_k_top_p_min_p(logits, top_k, top_p, min_p)
    assert got.shape == logits.shape, f"expected shape {tuple(logits.shape)}, got {tuple(got.shape)}"
    for b, (k, p, m) in enumerate(settings):
        expected = _oracle_filter(logits[b].double(), k, p, m)
        kept = set(torch.isfinite(got[b]).nonzero().flatten().tolist())
        assert kept == expected, (
            f"{case}: row {b} (top_k={k}, top_p={p}, min_p={m}) should keep tokens {sorted(expected)}, "
            f"kept {sorted(kept)}. hint: top-p keeps a token while the mass ranked above it is < top_p, "
            "measured on the top-k renormalised distribution; min-p compares with the most likely token")
        kept_idx = sorted(kept)
        assert_close(got[b, kept_idx], logits[b, kept_idx], what=f"{case}: kept logits of row {b}",
                     hint="filters only set dropped logits to -inf; kept logits keep their values")


def _filtered_distribution(logits: torch.Tensor, temperature: float, k: int, p: float, m: float) -> torch.Tensor:
    row = logits.double() / temperature
    keep = _oracle_filter(row, k, p, m)
    probs = torch.zeros_like(row)
    idx = sorted(keep)
    probs[idx] = torch.softmax(row[idx], dim=0)
    return probs


@pytest.mark.parametrize("settings", [(1.0, 50, 1.0, 0.0), (0.7, 6, 1.0, 0.0), (1.3, 12, 0.85, 0.0),
                                      (0.9, 12, 1.0, 0.08)])
def test_draws_follow_the_filtered_distribution(settings):
    temperature, k, p, m = settings
    vocab, draws = 12, 40_000
    row = randn(vocab, scale=1.5, name=f"dist-{settings}")
    params = [SamplingParams(temperature=temperature, top_k=k, top_p=p, min_p=m)] * draws
    torch.manual_seed(1234)
    got = sample(row.expand(draws, vocab).contiguous(), SamplingTensors.from_params(params, vocab))
    freq = torch.bincount(got, minlength=vocab).double() / draws
    expected = _filtered_distribution(row, temperature, k, p, m)
    sigma = (expected * (1 - expected) / draws).sqrt()
    worst = int(((freq - expected).abs() - 5 * sigma).argmax())
    assert torch.all((freq - expected).abs() <= 5 * sigma + 1e-9), (
        f"empirical frequencies of {draws} draws do not follow softmax(filtered logits / T): token {worst} "
        f"expected p={expected[worst]:.4f}, drawn {freq[worst]:.4f}. hint: divide by the temperature before "
        "the softmax, and never draw a filtered token")
    assert (freq[expected == 0] == 0).all(), "a filtered-out token was sampled"


def test_seeded_request_ignores_its_batch_mates():
    vocab, steps = 32, 12
    logits = randn(steps, 6, vocab, scale=1.0)
    mine = SamplingParams(temperature=1.0, top_p=0.95, seed=7)

    def run(batch_rows: int, my_row: int) -> list[int]:
        generator = make_generator(7, "cpu")
        tokens = []
        for step in range(steps):
            params = [SamplingParams(temperature=1.0)] * batch_rows
            params[my_row] = mine
            gens = [None] * batch_rows
            gens[my_row] = generator
            batch = logits[step, :batch_rows].clone()
            batch[my_row] = logits[step, 0]
            tokens.append(int(sample(batch, SamplingTensors.from_params(params, vocab, generators=gens))[my_row]))
        return tokens

    alone = run(1, 0)
    crowded = run(6, 4)
    assert alone == crowded, (
        f"a request with a seed must draw the same tokens whatever shares its batch: alone {alone}, "
        f"in a batch of 6 at row 4 {crowded}. hint: draw a seeded row's noise from params.generators[row] only")
    torch.manual_seed(99)
    again = run(3, 2)
    assert again == alone, f"same seed, different global RNG state: {alone} vs {again}"


def test_sample_leaves_logits_untouched_and_uses_penalties():
    vocab = 20
    logits = randn(2, vocab, scale=1.0)
    logits[:, 3] = 10.0  # token 3 is the clear favourite
    before = logits.clone()
    params = [SamplingParams(temperature=0.0, repetition_penalty=1.5, frequency_penalty=2.0),
              SamplingParams(temperature=0.0)]
    tensors = SamplingTensors.from_params(params, vocab, prompt_token_ids=[[1], [1]], output_token_ids=[[3] * 4, [3]])
    got = sample(logits, tensors)
    assert torch.equal(logits, before), "sample must not modify the logits it is given"
    assert int(got[1]) == 3, f"row 1 has no penalties and must pick token 3, got {int(got[1])}"
    assert int(got[0]) != 3, ("row 0 generated token 3 four times with frequency_penalty=2 and must avoid it "
                              "now. hint: apply the penalties before the argmax when params.prompt_mask is set")


def test_sample_leaves_its_parameters_untouched():
    check_parameters_untouched()


def check_parameters_untouched(sample_fn=None) -> None:
    sample_fn = sample_fn or sample
    vocab = 30
    logits = randn(4, vocab, scale=1.0, name="parameters-untouched")
    params = [SamplingParams(temperature=0.0, presence_penalty=0.5), SamplingParams(temperature=0.7, top_k=5),
              SamplingParams(temperature=1.3, top_p=0.8, min_p=0.05), SamplingParams(temperature=0.5, seed=3)]
    tensors = SamplingTensors.from_params(params, vocab, prompt_token_ids=[[1, 2]] * 4, output_token_ids=[[5]] * 4,
                                          generators=[None, None, None, make_generator(3, "cpu")])
    before = {name: value.clone() for name, value in vars(tensors).items() if isinstance(value, torch.Tensor)}
    sample_fn(logits, tensors)
    for name, value in before.items():
        assert torch.equal(getattr(tensors, name), value), (
            f"sample modified params.{name}: the engine reuses a step's SamplingTensors at the next step when "
            "its rows keep their parameters, so an in-place change there leaks into later tokens. "
            "hint: compute into new tensors (x / t, not x.div_(t); clamp, not clamp_)")


def check_unfiltered_rows_keep_every_token(sample_fn=None) -> None:
    """A row without filters shares its batch with top-k rows: it must still draw from all tokens."""
    sample_fn = sample_fn or sample
    vocab, draws = 12, 20_000
    row = randn(vocab, scale=0.5, name="unfiltered-beside-top-k")
    params = [SamplingParams(temperature=1.0, top_k=3) if i % 2 else SamplingParams(temperature=1.0)
              for i in range(draws)]
    torch.manual_seed(4321)
    got = sample_fn(row.expand(draws, vocab).contiguous(), SamplingTensors.from_params(params, vocab))
    free, filtered = got[0::2], got[1::2]
    top3 = set(row.topk(3).indices.tolist())
    outside = sum(int(t) not in top3 for t in free.tolist())
    expected = float(torch.softmax(row.double(), 0)[[i for i in range(vocab) if i not in top3]].sum())
    assert abs(outside / len(free) - expected) < 0.03, (
        f"rows without top-k drew a token outside the 3 most likely {outside / len(free):.3f} of the time, expected "
        f"{expected:.3f}. hint: filter only params.filtered_rows; the others keep every token")
    assert set(filtered.tolist()) <= top3, "a top_k=3 row drew a token outside its top 3"


def check_no_full_vocabulary_sort_when_top_k_bounds_it(sample_fn=None, monkeypatch=None) -> None:
    sample_fn = sample_fn or sample
    vocab = 3000
    logits = randn(4, vocab, scale=2.0, name="no-full-sort")
    params = [SamplingParams(temperature=0.8, top_k=k, top_p=0.9) for k in (5, 40, 40, 7)]
    tensors = SamplingTensors.from_params(params, vocab)
    assert tensors.max_top_k == 40
    widths = []
    real_sort, real_argsort = torch.sort, torch.argsort
    real_method_sort, real_method_argsort = torch.Tensor.sort, torch.Tensor.argsort

    def record(real):
        def wrapped(x, *args, **kwargs):
            widths.append(x.shape[-1])
            return real(x, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(torch, "sort", record(real_sort))
    monkeypatch.setattr(torch, "argsort", record(real_argsort))
    monkeypatch.setattr(torch.Tensor, "sort", record(real_method_sort))
    monkeypatch.setattr(torch.Tensor, "argsort", record(real_method_argsort))
    got = sample_fn(logits, tensors)
    monkeypatch.undo()
    assert max(widths, default=0) < vocab, (
        f"sample sorted rows of width {max(widths)} although every row keeps at most max_top_k = 40 tokens. hint: "
        "take each row's max_top_k largest logits with torch.topk and filter only those")
    for b, k in enumerate((5, 40, 40, 7)):
        assert int(got[b]) in set(logits[b].topk(k).indices.tolist()), f"row {b} drew outside its top {k}"


def test_rows_without_filters_keep_every_token_beside_top_k_rows():
    check_unfiltered_rows_keep_every_token()


def test_top_k_rows_never_sort_the_whole_vocabulary(monkeypatch):
    check_no_full_vocabulary_sort_when_top_k_bounds_it(monkeypatch=monkeypatch)
