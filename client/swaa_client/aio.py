"""asyncio client: the same calls as ``Client``, as coroutines and async iterators.

    >>> import asyncio
    >>> from swaa_client import AsyncClient
    >>> async def main():                                               # doctest: +SKIP
    ...     async with AsyncClient("127.0.0.1:50051") as client:
    ...         async for chunk in client.stream("Once upon a time", max_tokens=32):
    ...             print(chunk.text, end="", flush=True)
    >>> asyncio.run(main())                                             # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import grpc

from swaa_client import _convert, _wire
from swaa_client._options import NO_RETRY, ClientBase, RetryPolicy
from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_client.errors import SwaaError, UnavailableError, from_rpc_error
from swaa_client.types import Chunk, Completion, ModelInfo


async def _error(e: grpc.aio.AioRpcError) -> SwaaError:
    return from_rpc_error(e.code(), e.details(), e.trailing_metadata())


class AsyncClient(ClientBase):
    """See ``Client`` for the arguments. Create it inside the event loop that uses it."""

    _grpc = grpc.aio

    async def _unary(self, method, request, timeout: float | None, retry: RetryPolicy):
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in range(1, retry.max_attempts + 1):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await method(request, timeout=left, metadata=self._conn.metadata)
            except grpc.aio.AioRpcError as e:
                err = await _error(e)
                if not isinstance(err, UnavailableError) or attempt == retry.max_attempts:
                    raise err from None
            await asyncio.sleep(retry.backoff(attempt))

    async def generate(self, prompt: _convert.Prompt, *, max_tokens: int | None = None, temperature: float = 0.0,
                       top_k: int = 0, top_p: float | None = None, min_p: float = 0.0,
                       repetition_penalty: float | None = None, seed: int | None = None,
                       stop: Sequence[str] | str | None = None, stop_token_ids: Sequence[int] | None = None,
                       logprobs: int | None = None, ignore_eos: bool = False, request_id: str | None = None,
                       timeout: float | None = None) -> Completion:
        """Generate and return the whole result (see ``Client.generate``)."""
        req = _convert.request_from_call_args(locals())
        return _convert.completion(await self._unary(self._stub.GenerateOnce, req, timeout or self.timeout, self.retry))

    async def stream(self, prompt: _convert.Prompt, *, max_tokens: int | None = None, temperature: float = 0.0,
                     top_k: int = 0, top_p: float | None = None, min_p: float = 0.0,
                     repetition_penalty: float | None = None, seed: int | None = None,
                     stop: Sequence[str] | str | None = None, stop_token_ids: Sequence[int] | None = None,
                     logprobs: int | None = None, ignore_eos: bool = False, request_id: str | None = None,
                     timeout: float | None = None) -> AsyncIterator[Chunk]:
        """Yield chunks as they are generated (see ``Client.stream``); leaving early cancels the call."""
        req = _convert.request_from_call_args(locals())
        timeout = timeout or self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in range(1, self.retry.max_attempts + 1):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            call = self._stub.Generate(req, timeout=left, metadata=self._conn.metadata)
            received = False
            try:
                async for msg in call:
                    received = True
                    yield _convert.chunk(msg)
                return
            except grpc.aio.AioRpcError as e:
                err = await _error(e)
                if received or not isinstance(err, UnavailableError) or attempt == self.retry.max_attempts:
                    raise err from None
            finally:
                call.cancel()
            await asyncio.sleep(self.retry.backoff(attempt))

    async def abort(self, request_id: str, *, timeout: float | None = None) -> bool:
        """Abort a running request from any connection; False when none is running under that id."""
        resp = await self._unary(self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout or self.timeout, self.retry)
        return resp.aborted

    async def count_tokens(self, prompt: str | Sequence[dict], *, timeout: float | None = None) -> list[int]:
        req = pb.CountTokensRequest()
        _convert.set_prompt(req, prompt)
        return list((await self._unary(self._stub.CountTokens, req, timeout or self.timeout, self.retry)).token_ids)

    async def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        msg = await self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout or self.timeout, self.retry)
        return _convert.model_info(msg)

    async def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        resp = await self._unary(self._health, _wire.HealthCheckRequest(service=service), timeout, NO_RETRY)
        return _wire.HEALTH_STATUS.get(resp.status, "UNKNOWN")

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
