"""Typed exceptions: one class per gRPC status the service documents, each carrying the code and details."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from swaa_client import _wire


@dataclass(frozen=True)
class FieldViolation:
    field: str        # the request field at fault, e.g. "sampling.top_p" or "prompt"
    description: str


class SwaaError(Exception):
    """A failed call. ``code`` is the gRPC status; ``field_violations`` names bad fields (INVALID_ARGUMENT)."""

    retryable = False

    def __init__(self, code: grpc.StatusCode, message: str, field_violations: tuple[FieldViolation, ...] = ()):
        self.code = code
        self.message = message
        self.field_violations = field_violations
        detail = "; ".join(f"{v.field}: {v.description}" for v in field_violations if v.description not in message)
        super().__init__(f"{code.name}: {message}" + (f" [{detail}]" if detail else ""))


class InvalidArgumentError(SwaaError):
    """A bad parameter or a prompt over the context limit; see ``field_violations``."""


class AlreadyExistsError(SwaaError):
    """A running request already has this ``request_id``; pick another, or wait for it to finish."""


class UnauthenticatedError(SwaaError):
    """Missing or wrong bearer token."""


class PermissionDeniedError(SwaaError):
    pass


class ResourceExhaustedError(SwaaError):
    """The server's waiting queue is full, or the message is over the size limit."""


class UnavailableError(SwaaError):
    """The server is loading, draining or unreachable. Retried automatically before the first token."""

    retryable = True


class DeadlineExceededError(SwaaError):
    pass


class CancelledError(SwaaError):
    pass


class NotFoundError(SwaaError):
    pass


class InternalError(SwaaError):
    pass


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def from_rpc_error(code: grpc.StatusCode, details: str | None, trailing_metadata) -> SwaaError:
    violations: tuple[FieldViolation, ...] = ()
    for key, value in trailing_metadata or ():
        if key == "grpc-status-details-bin":
            violations = tuple(FieldViolation(f, d) for f, d in _wire.field_violations(value))
    return _BY_CODE.get(code, SwaaError)(code, details or "", violations)
