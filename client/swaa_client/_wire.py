"""Wire-compatible copies of the few foreign messages the SDK reads: google.rpc.Status / BadRequest
(rich error details) and grpc.health.v1 Check.

They live in a private descriptor pool, so the SDK needs neither googleapis-common-protos nor
grpcio-health-checking, and never clashes with those packages when both are imported (in a server
process, say).
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, kind: int, label: int = _F.LABEL_OPTIONAL, type_name: str = "") -> _F:
    f = _F(name=name, number=number, type=kind, label=label)
    if type_name:  # setting it, even to "", marks the field as a message reference
        f.type_name = type_name
    return f


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)
    rpc = descriptor_pb2.FileDescriptorProto(name="swaa_client/google_rpc.proto", package="google.rpc", syntax="proto3",
                                             dependency=["google/protobuf/any.proto"])
    rpc.message_type.add(name="Status", field=[
        _field("code", 1, _F.TYPE_INT32), _field("message", 2, _F.TYPE_STRING),
        _field("details", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".google.protobuf.Any")])
    bad = rpc.message_type.add(name="BadRequest", field=[
        _field("field_violations", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".google.rpc.BadRequest.FieldViolation")])
    bad.nested_type.add(name="FieldViolation", field=[_field("field", 1, _F.TYPE_STRING), _field("description", 2, _F.TYPE_STRING)])
    pool.Add(rpc)
    health = descriptor_pb2.FileDescriptorProto(name="swaa_client/grpc_health.proto", package="grpc.health.v1", syntax="proto3")
    health.message_type.add(name="HealthCheckRequest", field=[_field("service", 1, _F.TYPE_STRING)])
    health.message_type.add(name="HealthCheckResponse", field=[_field("status", 1, _F.TYPE_INT32)])
    pool.Add(health)
    return pool


_POOL = _build_pool()
Status = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("google.rpc.Status"))
BadRequest = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("google.rpc.BadRequest"))
HealthCheckRequest = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest"))
HealthCheckResponse = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse"))
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def field_violations(status_bytes: bytes) -> list[tuple[str, str]]:
    """(field, description) pairs from a serialized google.rpc.Status; [] if there are none or it is garbled."""
    try:
        status = Status.FromString(status_bytes)
        out = []
        for detail in status.details:
            if detail.type_url.endswith("/google.rpc.BadRequest"):
                out += [(v.field, v.description) for v in BadRequest.FromString(detail.value).field_violations]
        return out
    except Exception:  # details are a courtesy: a garbled trailer must not hide the status itself
        return []
