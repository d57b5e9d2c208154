"""The ledger's profiled timeline (mili/bench/ledger.py) on the CPU: phases recorded, methods restored, drawn."""

import json

from mili.bench.ledger import plot_timelines, record_timeline
from mili.engine.llm import LLM
from tests.hf_oracle import TINY_MODEL


def test_timeline_records_the_host_phases_and_restores_the_engine(tmp_path):
    llm = LLM(str(TINY_MODEL), num_kv_blocks=64)
    work = [([5 + i, 6, 7, 8, 9], 8) for i in range(4)]
    timeline = record_timeline(llm, work, decode_steps=2)
    phases = {name for name, _, _ in timeline["host"]}
    assert {"mili: step", "mili: schedule", "mili: prepare", "mili: run", "mili: sample"} <= phases, phases
    assert all(start <= end for _, start, end in timeline["host"]), "spans must not end before they start"
    for owner, name in [(llm.engine, "step"), (llm.engine.runner, "prepare"), (llm.engine.scheduler, "schedule")]:
        assert name not in vars(owner), f"{name} is still wrapped on the instance after recording"
    assert not llm.engine.has_unfinished_requests(), "the timeline's requests must be run to the end"
    recorded = {"environment": {"device": "cpu"}, "model": str(TINY_MODEL), "timelines": {"+ overlap": timeline}}
    path = tmp_path / "timeline.png"
    plot_timelines(json.loads(json.dumps(recorded)), path)
    assert path.stat().st_size > 10_000
