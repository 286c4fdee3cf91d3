"""The call core both clients share (no I/O here): the generation arguments, listed once, and the retry rule.

``Client`` and ``AsyncClient`` differ only in how they wait (``time.sleep`` or ``await asyncio.sleep``) and iterate;
what a request holds and which failure is retried when is decided here, once."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass

from swaa_client._convert import generate_request
from swaa_client._options import RetryPolicy
from swaa_client.errors import UnavailableError, from_rpc_error


@dataclass(frozen=True)
class Attempt:
    number: int  # 1, 2, …
    timeout: float | None  # seconds left of the call's one deadline (None: no deadline)
    last: bool


def attempts(timeout: float | None, retry: RetryPolicy) -> Iterator[Attempt]:
    """The attempts of one call: all of them share the deadline set when the call began."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for n in range(1, retry.max_attempts + 1):
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        yield Attempt(n, left, n == retry.max_attempts)


def retry_delay(e, attempt: Attempt, retry: RetryPolicy, *, received: bool = False) -> float:
    """Seconds to wait before the next attempt after ``e`` (a grpc.RpcError), or its SwaaError raised: only
    UNAVAILABLE is retried, and only while nothing has reached the caller (so output is never duplicated)."""
    err = from_rpc_error(e.code(), e.details(), e.trailing_metadata())
    if received or not isinstance(err, UnavailableError) or attempt.last:
        raise err from None
    return retry.backoff(attempt.number)


def request_args(method):
    """``method(self, prompt, *, timeout=None, **args)`` passes ``args`` to ``generate_request``: show that one
    list of keywords (help, IDEs) as the method's own."""
    own, req = inspect.signature(method), inspect.signature(generate_request)
    params = [own.parameters["self"], *req.parameters.values(), own.parameters["timeout"]]
    method.__signature__ = own.replace(parameters=params)
    return method
