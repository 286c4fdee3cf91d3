"""swaa_engine: continuous-batching LLM engine with Sliding Window Attention Adaptation."""

from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from swaa_engine.outputs import Completion, StreamChunk
from swaa_engine.sampling_params import InvalidRequestError, SamplingParams
from swaa_engine.sequence import FinishReason
from swaa_engine.swaa import SWAAConfig

__all__ = [
    "CacheConfig", "Completion", "EngineConfig", "FinishReason", "InvalidRequestError", "LLM", "LLMEngine",
    "SWAAConfig", "SamplingParams", "SchedulerConfig", "StreamChunk",
]


def __getattr__(name: str):
    # LLM and LLMEngine import torch (seconds): only when asked for, so torch-free modules (configs, the CLI's
    # parser, `swaa health`) stay quick to import
    if name in ("LLM", "LLMEngine"):
        from swaa_engine import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'swaa_engine' has no attribute {name!r}")
