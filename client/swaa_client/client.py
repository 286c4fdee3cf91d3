"""Blocking client.

    >>> from swaa_client import Client
    >>> with Client("127.0.0.1:50051") as client:                      # doctest: +SKIP
    ...     print(client.generate("The capital of France is", max_tokens=8).text)
    ...     for chunk in client.stream([{"role": "user", "content": "Hi!"}], max_tokens=32):
    ...         print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import grpc

from swaa_client import _convert, _wire
from swaa_client._calls import attempts, request_args, retry_delay
from swaa_client._options import NO_RETRY, ClientBase, RetryPolicy
from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_client.types import Chunk, Completion, ModelInfo


class Client(ClientBase):
    """A connection to one swaa-serve deployment.

    Args:
        target: ``host:port``, or any gRPC target naming several servers, e.g. ``dns:///swaa-serve-headless:50051``
            (a Kubernetes headless Service) or ``ipv4:10.0.0.1:50051,10.0.0.2:50051``; default ``$SWAA_TARGET`` or
            ``127.0.0.1:50051``.
        token: bearer token; default ``$SWAA_TOKEN``.
        tls: use TLS with the system roots (implied by ``root_certificates`` / ``client_certificate``).
        root_certificates, client_certificate, client_key: PEM bytes or file paths (the last two for mTLS).
        server_name: TLS name to verify when it differs from the target's host.
        timeout: default deadline of each call in seconds (None = no deadline).
        retry: retry policy for UNAVAILABLE before the first token; ``NO_RETRY`` to disable.
        max_message_bytes: largest message sent or received.
        load_balancing: ``round_robin`` (each call to the next server the target names) or ``pick_first``.
    """

    _grpc = grpc

    # -- calls ------------------------------------------------------------------------------
    def _unary(self, method, request, timeout: float | None, retry: RetryPolicy):
        for attempt in attempts(timeout, retry):
            try:
                return method(request, timeout=attempt.timeout, metadata=self._conn.metadata)
            except grpc.RpcError as e:
                delay = retry_delay(e, attempt, retry)
            time.sleep(delay)

    @request_args
    def generate(self, prompt: _convert.Prompt, *, timeout: float | None = None, **args) -> Completion:
        """Generate and return the whole result. The arguments are ``_convert.generate_request``'s.

        >>> client.generate("2 + 2 =", max_tokens=4).finish_reason    # doctest: +SKIP
        <FinishReason.LENGTH: 'length'>
        """
        req = _convert.generate_request(prompt, **args)
        return _convert.completion(self._unary(self._stub.GenerateOnce, req, timeout or self.timeout, self.retry))

    @request_args
    def stream(self, prompt: _convert.Prompt, *, timeout: float | None = None, **args) -> Iterator[Chunk]:
        """Yield chunks as tokens are generated; the last has ``finished`` set. Same arguments as ``generate``.

        Leaving the loop early (``break``, an exception) cancels the call; the server then frees the cache.
        """
        req = _convert.generate_request(prompt, **args)
        for attempt in attempts(timeout or self.timeout, self.retry):
            call = self._stub.Generate(req, timeout=attempt.timeout, metadata=self._conn.metadata)
            received = False
            try:
                for msg in call:
                    received = True
                    yield _convert.chunk(msg)
                return
            except grpc.RpcError as e:
                delay = retry_delay(e, attempt, self.retry, received=received)
            finally:
                call.cancel()  # no-op once finished; frees the server's request when the caller stops early
            time.sleep(delay)

    def abort(self, request_id: str, *, timeout: float | None = None) -> bool:
        """Abort a running request (from any connection); its stream ends with finish reason ``abort``.
        Returns False when no such request is running."""
        return self._unary(self._stub.Abort, pb.AbortRequest(request_id=request_id), timeout or self.timeout, self.retry).aborted

    def count_tokens(self, prompt: str | Sequence[dict], *, timeout: float | None = None) -> list[int]:
        """The token ids the server's tokenizer makes of ``prompt`` (text, or chat messages with the template)."""
        req = pb.CountTokensRequest()
        _convert.set_prompt(req, prompt)
        return list(self._unary(self._stub.CountTokens, req, timeout or self.timeout, self.retry).token_ids)

    def detokenize(self, token_ids: Sequence[int], *, skip_special_tokens: bool = False,
                   timeout: float | None = None) -> str:
        """The text of ``token_ids`` with the server's tokenizer (``skip_special_tokens``: leave bos/eos/… out)."""
        req = _convert.detokenize_request(token_ids, skip_special_tokens)
        return (self._unary(self._stub.Detokenize, req, timeout or self.timeout, self.retry)).text

    def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        """Model, context limit, SWAA config, per-layer cache layout and cache capacity/usage."""
        return _convert.model_info(self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout or self.timeout, self.retry))

    def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        """grpc.health.v1 status: "SERVING", "NOT_SERVING", ... (no retries: it reports the state now)."""
        resp = self._unary(self._health, _wire.HealthCheckRequest(service=service), timeout, NO_RETRY)
        return _wire.HEALTH_STATUS.get(resp.status, "UNKNOWN")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
