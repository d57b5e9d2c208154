"""benchmarks/probes/gemv_pins.py: pinning the batch-1 GEMV's launch configuration per shape, through
the autotuner's own pruning hook, as Triton calls it."""

from __future__ import annotations

from importlib import import_module

import pytest

from benchmarks.probes.gemv_pins import parse_pins, pin

linear = import_module("mili.kernels.linear")  # the module; mili.kernels.linear is also its function's name


def _launch(config) -> tuple[int, int, int, int]:
    return config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"], config.num_warps, config.num_stages


def test_a_pinned_shape_is_timed_in_its_pinned_configuration_only(monkeypatch):
    pins = parse_pins("3072x4096:plain,empties=2,1024,4,3; 4096x2048:push=8,1024,2,3;")
    assert pins == {(3072, 4096, "plain", True): (2, 1024, 4, 3), (4096, 2048, "push", False): (8, 1024, 2, 3)}
    tuner = linear._gemv_tuned
    monkeypatch.setattr(tuner, "early_config_prune", None)
    pin(pins)
    monkeypatch.setattr(tuner, "nargs", {"N": 3072, "K": 4096}, raising=False)
    kept = tuner.prune_configs({"INPUT": "plain", "OUTPUT": "plain", "EMPTIES": True})
    assert [_launch(c) for c in kept] == [(2, 1024, 4, 3)], "a pinned shape must time its pin and nothing else"
    kept = tuner.prune_configs({"INPUT": "plain", "OUTPUT": "plain", "EMPTIES": False})
    assert len(kept) == len(linear.GEMV_CONFIGS), "a shape without a pin (this one does not empty) is autotuned as usual"


@pytest.mark.parametrize("text", ["3072x4096:plain=2,1024,4", "3072x4096:gather=2,1024,4,3", "3072:plain=2,1024,4,3",
                                  "3072x4096:push,clears=2,1024,4,3"])
def test_a_malformed_pin_names_the_syntax(text):
    with pytest.raises(ValueError, match="NxK:OUTPUT"):
        parse_pins(text)


def test_a_pin_outside_the_autotuners_configurations_is_refused(monkeypatch):
    monkeypatch.setattr(linear._gemv_tuned, "early_config_prune", None)
    with pytest.raises(ValueError, match="GEMV_CONFIGS"):
        pin({(3072, 4096, "plain", False): (3, 3, 3, 3)})
    assert linear._gemv_tuned.early_config_prune is None
