"""Server interceptors: bearer-token auth, INVALID_ARGUMENT (not UNKNOWN) for undecodable requests, and
oversized requests refused before they are parsed."""

from __future__ import annotations

import hmac
from typing import Callable

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from swaa_engine.intake import PromptBounds
from swaa_engine.sampling_params import InvalidRequestError
from swaa_server.servicer import bad_request

# probes and tooling must work without a token: health for kubelet, reflection for grpcurl
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _replace_behaviour(handler: grpc.RpcMethodHandler, unary, stream):
    """Same method kind and serializers, new behaviour (only unary request kinds exist in swaa.v1)."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)
    return handler


def bearer_token(value: str) -> str | None:
    """The token of an ``authorization`` value, or None when it is not the bearer scheme.

    The scheme is case-insensitive and one or more spaces separate it from the token (RFC 7235
    §2.1, RFC 6750 §2.1): some HTTP/2 clients and proxies send ``bearer``.
    """
    scheme, sep, rest = value.partition(" ")
    # isascii: str.lower maps a few non-ASCII letters onto ASCII ones (the Kelvin sign onto "k")
    if not sep or not scheme.isascii() or scheme.lower() != "bearer":
        return None
    return rest.lstrip(" ") or None


class BearerAuth(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` (the scheme in any case) with one of ``tokens`` on
    every rpc but health and reflection."""

    def __init__(self, tokens: tuple[str, ...]):
        if not tokens or any(not t for t in tokens):
            raise ValueError("auth tokens: need at least one non-empty token")
        self._tokens = tuple(t.encode() for t in tokens)

    def _authorized(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and (given := bearer_token(value)) is not None:
                # compare against every token in constant time: no early exit that leaks which prefix matched
                return any([hmac.compare_digest(given.encode(), t) for t in self._tokens])
        return False

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES) or self._authorized(details.invocation_metadata):
            return handler

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        async def deny_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
            yield  # pragma: no cover - makes this an async generator, as unary-stream handlers must be

        return _replace_behaviour(handler, deny, deny_stream)


class _Refused:
    """What a guarded deserializer returns instead of a request: the handler aborts with ``status``."""

    def __init__(self, code: grpc.StatusCode, details: str, status=None):
        self.code, self.details, self.status = code, details, status

    async def abort(self, context):
        if self.status is not None:
            await context.abort_with_status(self.status)
        await context.abort(self.code, self.details)


def _with_parser(handler: grpc.RpcMethodHandler, parse) -> grpc.RpcMethodHandler:
    """``handler`` with ``parse`` as its deserializer; a ``_Refused`` from it ends the call before the handler runs."""
    inner_unary, inner_stream = handler.unary_unary, handler.unary_stream

    async def unary(request, context):
        if isinstance(request, _Refused):
            await request.abort(context)
        return await inner_unary(request, context)

    async def stream(request, context):
        if isinstance(request, _Refused):
            await request.abort(context)
        async for item in inner_stream(request, context):
            yield item

    if inner_unary:
        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=parse,
                                                   response_serializer=handler.response_serializer)
    if inner_stream:
        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=parse,
                                                    response_serializer=handler.response_serializer)
    return handler


def _ours(handler, details) -> bool:
    # only our own handlers: they are coroutines / async generators (health's Watch writes via context)
    return handler is not None and handler.request_deserializer is not None and details.method.startswith("/swaa.v1.")


class DecodeErrors(grpc.aio.ServerInterceptor):
    """grpc answers UNKNOWN when a request does not parse (invalid UTF-8 in a string field, say);
    the contract says INVALID_ARGUMENT, naming the message."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if not _ours(handler, details):
            return handler
        parse = handler.request_deserializer

        def lenient(data: bytes):
            try:
                return parse(data)
            except DecodeError as e:
                return _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid message: {e}")

        return _with_parser(handler, lenient)


class RequestBytes(grpc.aio.ServerInterceptor):
    """Refuses a request larger than any valid one for the model before it is parsed (INVALID_ARGUMENT naming
    "request"): a 15 MB text or a million chat messages then cost their transfer, not a parse into Python
    objects on the event loop. ``bounds()`` gives the serving engine's PromptBounds (None: not known yet)."""

    def __init__(self, bounds: Callable[[], PromptBounds | None]):
        self._bounds = bounds

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if not _ours(handler, details):
            return handler
        parse = handler.request_deserializer

        def bounded(data: bytes):
            bounds = self._bounds()
            try:
                if bounds is not None:
                    bounds.check_request_bytes(len(data))
            except InvalidRequestError as e:
                return _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e), rpc_status.to_status(bad_request(e)))
            return parse(data)

        return _with_parser(handler, bounded)
