"""The host's time per decode step by phase (mili/bench/step_profile.py host_phase_times), on the CPU."""

from mili.bench.step_profile import HOST_PHASES, host_phase_times
from mili.engine.llm import LLM
from mili.engine.sampling_params import SamplingParams
from tests.hf_oracle import TINY_MODEL


def test_host_phase_times_times_every_phase_of_every_step_with_the_forward_stubbed():
    llm = LLM(str(TINY_MODEL), num_kv_blocks=64, max_num_seqs=4)
    phases = host_phase_times(llm, batch=2, steps=6, prompt_len=9)
    assert set(phases) == set(HOST_PHASES)
    for phase in ("prepare", "sample", "complete"):
        assert phases[phase]["calls"] == 6, f"{phase}: one call per step (a prefill and 5 decodes), got {phases[phase]}"
    assert phases["step"]["calls"] >= 6 and phases["schedule"]["calls"] >= 6
    assert all(row["us"] > 0 for row in phases.values()), phases
    assert phases["step"]["us"] >= phases["prepare"]["us"], "a step contains its prepare"
    out = llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                       use_tqdm=False)
    assert out[0].outputs[0].token_ids == [7, 7, 7, 7], "the forward stays stubbed: its logits always pick token 7"
