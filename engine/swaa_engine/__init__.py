"""swaa_engine: continuous-batching LLM engine with Sliding Window Attention Adaptation."""

from swaa_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from swaa_engine.engine import LLM, LLMEngine
from swaa_engine.outputs import Completion, StreamChunk
from swaa_engine.sampling_params import InvalidRequestError, SamplingParams
from swaa_engine.sequence import FinishReason
from swaa_engine.swaa import SWAAConfig

__all__ = [
    "CacheConfig", "Completion", "EngineConfig", "FinishReason", "InvalidRequestError", "LLM", "LLMEngine",
    "SWAAConfig", "SamplingParams", "SchedulerConfig", "StreamChunk",
]
