"""The Generation servicer: translates messages and maps engine errors to gRPC status; nothing else."""

from __future__ import annotations

import uuid
from dataclasses import replace

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc
from swaa_engine.async_engine import EngineDeadError, EngineUnavailableError
from swaa_engine.intake import request_id_problem
from swaa_engine.sampling_params import InvalidRequestError, RequestIdInUseError
from swaa_engine.scheduler import QueueFullError
from swaa_engine.sequence import FinishReason
from swaa_server import convert
from swaa_server.frontend import Frontend, ReplicaUnavailableError

log = structlog.get_logger("swaa.request")


def bad_request(e: InvalidRequestError) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=convert.proto_field(e.field), description=e.description)]))
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(e), details=[detail])


async def _abort_with(context, e: Exception, request_id: str = ""):
    log.info("request.rejected", request_id=request_id if request_id and request_id_problem(request_id) is None else None,
             error=type(e).__name__, field=getattr(e, "field", None), reason=getattr(e, "description", str(e)))
    if isinstance(e, InvalidRequestError):
        await context.abort_with_status(rpc_status.to_status(bad_request(e)))
    if isinstance(e, RequestIdInUseError):
        await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(e))
    if isinstance(e, QueueFullError):
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
    if isinstance(e, EngineDeadError):
        await context.abort(grpc.StatusCode.INTERNAL, str(e))
    if isinstance(e, (ReplicaUnavailableError, EngineUnavailableError)):
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
    raise e


_LATE = "the request's deadline passed while it was queued or running (ended in the engine, its cache freed)"


async def _chain(first, stream):
    yield first
    async for chunk in stream:
        yield chunk


_EXPECTED = (InvalidRequestError, RequestIdInUseError, QueueFullError, EngineDeadError, ReplicaUnavailableError,
             EngineUnavailableError)


class GenerationServicer(pb_grpc.GenerationServicer):
    """``engine`` (a Frontend: one engine or a replica router) is None while the model loads: every call then gets
    UNAVAILABLE (retryable)."""

    def __init__(self, engine: Frontend | None = None):
        self.engine = engine

    async def _ready(self, context) -> None:
        if self.engine is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading")

    def _request(self, request, context):
        # the call's deadline goes into the engine: a request still queued or running when it passes ends there
        # (DEADLINE_EXCEEDED) and frees its slots at the next step
        return (convert.prompt_of(request, self.engine.bounds()),
                convert.sampling_of(request.sampling, request.n, request.priority, context.time_remaining()))

    async def Generate(self, request, context):
        await self._ready(context)
        rid = None
        try:
            # the id first: a bad one is refused before anything logs it; a missing one is made here, so that
            # the log line of a rejected call carries an id too
            rid = convert.request_id_of(request) or uuid.uuid4().hex
            prompt, params = self._request(request, context)
            stream = self.engine.stream(prompt, params, rid)
            first = await stream.__anext__()
        except _EXPECTED as e:
            await _abort_with(context, e, rid)
        try:
            async for chunk in _chain(first, stream):
                if chunk.finish_reason is FinishReason.DEADLINE:
                    if chunk.token_ids or chunk.text:  # what it made before the deadline, then the status
                        yield convert.chunk_pb(replace(chunk, finished=False))
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _LATE)
                yield convert.chunk_pb(chunk)
        except EngineDeadError as e:
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
        except EngineUnavailableError as e:  # the engine died mid-stream: this server is going away, retry elsewhere
            log.info("request.engine_dead", request_id=rid, reason=str(e))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except ReplicaUnavailableError as e:  # its replica died mid-stream: retryable, the client knows how far it got
            log.info("request.replica_lost", request_id=rid, reason=str(e))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        finally:
            await stream.aclose()  # client cancel / deadline lands here: aborts the request, frees its cache

    async def GenerateOnce(self, request, context):
        await self._ready(context)
        rid = None
        try:
            # the id first: a bad one is refused before anything logs it; a missing one is made here, so that
            # the log line of a rejected call carries an id too
            rid = convert.request_id_of(request) or uuid.uuid4().hex
            prompt, params = self._request(request, context)
            chunks = await self.engine.generate(prompt, params, rid)
        except _EXPECTED as e:
            await _abort_with(context, e, rid)
        if chunks[-1].finish_reason is FinishReason.DEADLINE:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _LATE)
        return convert.response_pb(chunks)

    async def Abort(self, request, context):
        await self._ready(context)
        try:
            rid = convert.request_id_of(request)
        except InvalidRequestError as e:
            await _abort_with(context, e)
        return pb.AbortResponse(aborted=rid is not None and await self.engine.abort(rid))

    async def CountTokens(self, request, context):
        await self._ready(context)
        try:
            ids = await self.engine.tokenize(convert.prompt_of(request, self.engine.bounds()))
        except (InvalidRequestError, QueueFullError, ReplicaUnavailableError) as e:
            await _abort_with(context, e)
        return pb.CountTokensResponse(count=len(ids), token_ids=ids)

    async def Detokenize(self, request, context):
        await self._ready(context)
        try:
            text = await self.engine.detokenize(list(request.token_ids), request.skip_special_tokens)
        except (InvalidRequestError, QueueFullError, ReplicaUnavailableError) as e:
            await _abort_with(context, e)
        return pb.DetokenizeResponse(text=text)

    async def GetModelInfo(self, request, context):
        await self._ready(context)
        try:
            model, replicas = await self.engine.info()
        except ReplicaUnavailableError as e:
            await _abort_with(context, e)
        return convert.model_info_pb(model, replicas)
