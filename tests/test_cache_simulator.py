"""The fragmentation study (chapter 05, 5.4): the simulator's accounting adds up, every request
finishes, and the PagedAttention paper's qualitative result holds on the default trace."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mili.cache.simulator import SCHEMES, Request, make_trace, simulate


@pytest.fixture(scope="module")
def reports():
    trace = make_trace(num_requests=200, seed=0)
    return {scheme: simulate(trace, 16 * 1024, scheme) for scheme in SCHEMES}


def test_contiguous_allocation_wastes_a_large_share_and_paging_under_four_percent(reports):
    for scheme in ("first-fit", "best-fit"):
        assert reports[scheme].waste_fraction > 0.5, f"{scheme} wasted only {reports[scheme].waste_fraction:.1%}"
    assert reports["paged"].waste_fraction < 0.04
    assert reports["paged"].mean_running > 2 * reports["first-fit"].mean_running, "paging should fit far more requests"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 60), st.integers(1, 60), st.integers(0, 40)),
                min_size=1, max_size=12),
       st.sampled_from(SCHEMES), st.sampled_from([1, 4, 16]))
def test_every_request_finishes_and_the_slots_add_up(rows, scheme, block_size):
    trace = [Request(a, p, o, p + o + extra) for a, p, o, extra in rows]
    capacity = max(r.max_len for r in trace) + 2 * block_size
    report = simulate(trace, capacity, scheme, block_size=block_size)
    assert report.finished == len(trace)
    assert sum(report.slot_sums.values()) == report.busy_steps * capacity, "every slot is counted exactly once per step"
    assert all(v >= 0 for v in report.slot_sums.values())
    if scheme == "paged":
        assert report.slot_sums["reserved"] == report.slot_sums["external"] == 0
