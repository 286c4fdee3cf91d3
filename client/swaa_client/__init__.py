"""Python SDK for swaa-serve (gRPC API ``swaa.v1``).

    >>> from swaa_client import Client
    >>> with Client("127.0.0.1:50051") as client:                      # doctest: +SKIP
    ...     print(client.generate("The capital of France is", max_tokens=8).text)
"""

from swaa_client._options import NO_RETRY, RetryPolicy
from swaa_client.aio import AsyncClient
from swaa_client.client import Client
from swaa_client.errors import (AlreadyExistsError, CancelledError, DeadlineExceededError, FieldViolation, InternalError, InvalidArgumentError,
                                NotFoundError, PermissionDeniedError, ResourceExhaustedError, SwaaError,
                                UnauthenticatedError, UnavailableError)
from swaa_client.types import (Chunk, Completion, FinishReason, LayerInfo, ModelInfo, PoolUsage, Preemptions, PrefixCache, ReplicaStatus, Sample, SpecialTokens,
                               Timings, TokenLogprob, Usage)

__all__ = [
    "Client", "AsyncClient", "RetryPolicy", "NO_RETRY",
    "Chunk", "Completion", "FinishReason", "LayerInfo", "ModelInfo", "PoolUsage", "Preemptions", "PrefixCache", "ReplicaStatus", "Sample", "SpecialTokens", "Timings",
    "TokenLogprob", "Usage",
    "SwaaError", "FieldViolation", "InvalidArgumentError", "AlreadyExistsError", "UnauthenticatedError", "PermissionDeniedError",
    "ResourceExhaustedError", "UnavailableError", "DeadlineExceededError", "CancelledError", "NotFoundError", "InternalError",
]
__version__ = "0.1.0"
