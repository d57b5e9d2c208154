"""`mili bench serve --goodput`: requests per second that met every service-level objective."""

import pytest

from mili.bench.analysis import RequestRecord
from mili.bench.serve import goodput, parse_goodput, request_latencies


def test_objectives_parse_like_vllms_flag():
    assert parse_goodput(["ttft:250", "tpot:25.5"]) == {"ttft_ms": 250.0, "tpot_ms": 25.5}
    assert parse_goodput(None) == {}
    for bad in ("itl:5", "ttft", "ttft:fast", "tpot:0"):
        with pytest.raises(ValueError, match="--goodput"):
            parse_goodput([bad])


def test_goodput_counts_the_requests_that_met_every_objective():
    records = [
        RequestRecord(start=0.0, end=1.0, token_times=[0.1, 0.5, 1.0], output_tokens=3),  # ttft 100, tpot 450
        RequestRecord(start=0.0, end=0.4, token_times=[0.3, 0.4], output_tokens=2),  # ttft 300, tpot 100
        RequestRecord(start=0.0, end=0.2, token_times=[0.05], output_tokens=1),  # ttft 50, no tpot
        RequestRecord(start=0.0, end=0.1, error="HTTP 429"),  # an error is no request served
    ]
    rows = request_latencies(records)
    assert len(rows) == 3 and rows[2]["tpot_ms"] is None
    assert rows[0]["ttft_ms"] == pytest.approx(100.0) and rows[0]["tpot_ms"] == pytest.approx(450.0)
    result = goodput(rows, {"ttft_ms": 200.0, "tpot_ms": 500.0}, duration_s=2.0)
    assert result["requests_met"] == 2 and result["request_goodput"] == pytest.approx(1.0)
    assert result["fraction_met"] == pytest.approx(2 / 3)
    assert goodput(rows, {"ttft_ms": 1000.0}, duration_s=2.0)["requests_met"] == 3
