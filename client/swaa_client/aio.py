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
from collections.abc import AsyncIterator, Sequence

import grpc

from swaa_client import _convert, _wire
from swaa_client._calls import attempts, request_args, retry_delay
from swaa_client._options import NO_RETRY, ClientBase, RetryPolicy
from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_client.types import Chunk, Completion, ModelInfo


class AsyncClient(ClientBase):
    """See ``Client`` for the arguments. Create it inside the event loop that uses it."""

    _grpc = grpc.aio

    async def _unary(self, method, request, timeout: float | None, retry: RetryPolicy):
        for attempt in attempts(timeout, retry):
            try:
                return await method(request, timeout=attempt.timeout, metadata=self._conn.metadata)
            except grpc.aio.AioRpcError as e:
                delay = retry_delay(e, attempt, retry)
            await asyncio.sleep(delay)

    @request_args
    async def generate(self, prompt: _convert.Prompt, *, timeout: float | None = None, **args) -> Completion:
        """Generate and return the whole result (see ``Client.generate``)."""
        req = _convert.generate_request(prompt, **args)
        return _convert.completion(await self._unary(self._stub.GenerateOnce, req, timeout or self.timeout, self.retry))

    @request_args
    async def stream(self, prompt: _convert.Prompt, *, timeout: float | None = None, **args) -> AsyncIterator[Chunk]:
        """Yield chunks as they are generated (see ``Client.stream``); leaving early cancels the call."""
        req = _convert.generate_request(prompt, **args)
        for attempt in attempts(timeout or self.timeout, self.retry):
            call = self._stub.Generate(req, timeout=attempt.timeout, metadata=self._conn.metadata)
            received = False
            try:
                async for msg in call:
                    received = True
                    yield _convert.chunk(msg)
                return
            except grpc.aio.AioRpcError as e:
                delay = retry_delay(e, attempt, self.retry, received=received)
            finally:
                call.cancel()
            await asyncio.sleep(delay)

    async def abort(self, request_id: str, *, timeout: float | None = None) -> bool:
        """Abort a running request from any connection; False when none is running under that id."""
        resp = await self._unary(self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout or self.timeout, self.retry)
        return resp.aborted

    async def count_tokens(self, prompt: str | Sequence[dict], *, timeout: float | None = None) -> list[int]:
        req = pb.CountTokensRequest()
        _convert.set_prompt(req, prompt)
        return list((await self._unary(self._stub.CountTokens, req, timeout or self.timeout, self.retry)).token_ids)

    async def detokenize(self, token_ids: Sequence[int], *, skip_special_tokens: bool = False,
                   timeout: float | None = None) -> str:
        """The text of ``token_ids`` with the server's tokenizer (``skip_special_tokens``: leave bos/eos/… out)."""
        req = _convert.detokenize_request(token_ids, skip_special_tokens)
        return (await self._unary(self._stub.Detokenize, req, timeout or self.timeout, self.retry)).text

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
