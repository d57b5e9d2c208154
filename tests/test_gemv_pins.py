"""The batch-1 GEMV's configurations pinned per card and shape (mili/kernels/linear.py's GEMV_PINS),
and benchmarks/probes/gemv_pins.py, which pins more from the environment: both through the
autotuner's own pruning hook, as Triton calls it."""

from __future__ import annotations

from importlib import import_module

import pytest
import torch

from benchmarks.probes.gemv_pins import parse_pins, pin
from mili.config import preset

linear = import_module("mili.kernels.linear")  # the module; mili.kernels.linear is also its function's name

H200 = "NVIDIA H200"


def _kept(monkeypatch, card: str, n: int, k: int, input_kind="plain", output="plain", empties=False):
    """The configurations the GEMV's autotuner would time for this shape, on a card of this name."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: card)
    tuner = linear._gemv_tuned
    monkeypatch.setattr(tuner, "nargs", {"N": n, "K": k, "x_ptr": torch.empty(1)}, raising=False)
    return [linear.launch_of(c) for c in tuner.prune_configs({"INPUT": input_kind, "OUTPUT": output, "EMPTIES": empties})]


def test_every_pin_is_one_of_the_autotuners_configurations():
    known = {linear.launch_of(c) for c in linear.GEMV_CONFIGS}
    for card, pins in linear.GEMV_PINS.items():
        for shape, launch in pins.items():
            assert launch in known, f"{card} pins {shape} to {launch}, which GEMV_CONFIGS lacks: it would fail at launch"


def _qwen3_8b_step_gemvs(tp: int) -> set:
    """The four GEMVs of Qwen3-8B's batch-1 step on a rank of `tp`, keyed as the autotuner keys them:
    for silu_and_mul N is the rows of one half, and the GEMVs after a summing norm empty its site."""
    config = preset("Qwen3-8B")
    hidden, head = config.hidden_size, config.head_dim
    return {
        (head * (config.num_attention_heads + 2 * config.num_key_value_heads) // tp, hidden, "plain", "plain", True),
        (hidden, head * config.num_attention_heads // tp, "plain", "push", False),
        (config.intermediate_size // tp, hidden, "plain", "silu_and_mul", True),
        (hidden, config.intermediate_size // tp, "plain", "push", False),
    }


def test_the_h200_pins_are_the_qwen3_8b_tensor_parallel_step_gemvs():
    """A change to Qwen3-8B's shapes or to how the step launches them would leave pins that nothing
    uses, and the shapes they were measured for autotuned again: this test names them."""
    assert set(linear.GEMV_PINS[H200]) == _qwen3_8b_step_gemvs(2) | _qwen3_8b_step_gemvs(4)


def test_a_pinned_shape_is_launched_in_its_pin_on_its_card_only(monkeypatch):
    monkeypatch.setattr(linear._gemv_tuned, "early_config_prune", linear.keep_pinned(linear.card_pins))
    (shape, launch), *_ = linear.GEMV_PINS[H200].items()
    n, k, input_kind, output, empties = shape
    assert _kept(monkeypatch, H200, n, k, input_kind, output, empties) == [launch], \
        "a pinned shape must be launched in its pin and nothing else"
    everything = [linear.launch_of(c) for c in linear.GEMV_CONFIGS]
    assert _kept(monkeypatch, "NVIDIA H100 80GB HBM3", n, k, input_kind, output, empties) == everything, \
        "another card's GEMV must be autotuned over every configuration"
    assert _kept(monkeypatch, H200, n, k, "rms_norm", output, empties) == everything, \
        "a shape that differs in any part of the key (here what it multiplies) is not the pinned one"


def test_pins_from_the_environment_add_to_the_cards(monkeypatch):
    monkeypatch.setattr(linear._gemv_tuned, "early_config_prune", None)
    pins = parse_pins("3072x4096:plain,empties=8,1024,4,3; 4096x4096:plain,input=rms_norm=8,1024,2,3;")
    assert pins == {(3072, 4096, "plain", "plain", True): (8, 1024, 4, 3),
                    (4096, 4096, "rms_norm", "plain", False): (8, 1024, 2, 3)}
    pin(pins)
    assert _kept(monkeypatch, H200, 3072, 4096, empties=True) == [(8, 1024, 4, 3)], "the environment's pin wins"
    assert _kept(monkeypatch, "any card", 4096, 4096, "rms_norm") == [(8, 1024, 2, 3)]
    assert _kept(monkeypatch, H200, 4096, 2048, output="push") == [linear.GEMV_PINS[H200][(4096, 2048, "plain", "push", False)]], \
        "the card's pins for the shapes the environment does not name stay"
    assert len(_kept(monkeypatch, "any card", 4096, 2048, output="push")) == len(linear.GEMV_CONFIGS)


@pytest.mark.parametrize("text", ["3072x4096:plain=2,1024,4", "3072x4096:gather=2,1024,4,3", "3072:plain=2,1024,4,3",
                                  "3072x4096:push,clears=2,1024,4,3", "3072x4096:plain,input=silu=2,1024,4,3",
                                  "3072x4096:plain,empties,empties=2,1024,4,3"])
def test_a_malformed_pin_names_the_syntax(text):
    with pytest.raises(ValueError, match="NxK:OUTPUT"):
        parse_pins(text)


def test_a_pin_outside_the_autotuners_configurations_is_refused(monkeypatch):
    monkeypatch.setattr(linear._gemv_tuned, "early_config_prune", None)
    with pytest.raises(ValueError, match="GEMV_CONFIGS"):
        pin({(3072, 4096, "plain", "plain", False): (3, 3, 3, 3)})
    assert linear._gemv_tuned.early_config_prune is None


def test_the_picks_a_run_printed_become_pins_that_read_back():
    from pathlib import Path

    from benchmarks.probes.gemv_pins import first_picks, format_pins, picks_in_log

    log = Path(__file__).parents[1] / "benchmarks" / "tp-gemv-empties-ab-h200" / "autotune-choices" / "run-3.log"
    picks = picks_in_log(log.read_text())
    assert set(picks) == _qwen3_8b_step_gemvs(2), "the log is of the 8B TP=2 step: its four GEMVs"
    assert all(len(launches) == 2 for launches in picks.values()), "each of the two ranks printed one pick a shape"
    assert picks[(4096, 2048, "plain", "push", False)] == [(2, 512, 2, 1), (8, 1024, 2, 3)]
    first = first_picks(picks)
    assert first[(4096, 2048, "plain", "push", False)] == (2, 512, 2, 1)
    assert parse_pins(format_pins(first)) == first
    unlike = first_picks(picks, unlike=first)
    assert unlike[(4096, 2048, "plain", "push", False)] == (8, 1024, 2, 3), "the other rank's pick, unlike the first"
    assert unlike[(3072, 4096, "plain", "plain", True)] == first[(3072, 4096, "plain", "plain", True)], \
        "where every rank picked alike there is nothing else to take"
    with_input = {(4096, 4096, "rms_norm", "plain", False): (8, 1024, 2, 3)}
    assert parse_pins(format_pins(with_input)) == with_input


@pytest.mark.gpu
def test_on_a_gpu_the_cards_pins_are_found_by_its_name_and_a_pin_is_what_launches(monkeypatch):
    """The card's name as CUDA reports it is GEMV_PINS's key; and Triton's own autotuner, as installed,
    launches a pinned shape in its pin and computes the product with it."""
    card = torch.cuda.get_device_name()
    tuner = linear._gemv_tuned
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    for (n, k, input_kind, output, empties), launch in linear.GEMV_PINS.get(card, {}).items():
        monkeypatch.setattr(tuner, "nargs", {"N": n, "K": k, "x_ptr": x}, raising=False)
        kept = tuner.prune_configs({"INPUT": input_kind, "OUTPUT": output, "EMPTIES": empties})
        assert [linear.launch_of(c) for c in kept] == [launch], f"{card}'s pin for {(n, k, output)} is not applied"
    monkeypatch.setattr(tuner, "nargs", None, raising=False)
    monkeypatch.setattr(tuner, "early_config_prune", tuner.early_config_prune)
    pin({(96, 1024, "plain", "plain", False): (8, 512, 4, 1)})
    weight = torch.randn(96, 1024, device="cuda", dtype=torch.bfloat16)
    y = linear.linear(x, weight)
    assert linear.launch_of(tuner.best_config) == (8, 512, 4, 1), "the pinned configuration must be the one launched"
    torch.testing.assert_close(y.float(), x.float() @ weight.float().T, rtol=2e-2, atol=2e-1)
