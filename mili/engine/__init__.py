"""The engine (chapter 03): sampling, detokenizing, scheduling, the model runner and the offline API."""

from mili.engine.sampling_params import SamplingParams
from mili.engine.sequence import CompletionOutput, RequestOutput

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "LLMEngine", "RequestOutput", "SamplingParams"]


def __getattr__(name):
    if name == "LLM":
        from mili.engine.llm import LLM

        return LLM
    if name in ("LLMEngine", "EngineConfig"):
        from mili.engine import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'mili.engine' has no attribute {name!r}")
