"""The call core shared by Client and AsyncClient, without a server: one list of generation arguments, one deadline
across attempts, and UNAVAILABLE retried only before any output (the same in both clients)."""

import asyncio
import inspect

import grpc
import pytest

from swaa_client import AsyncClient, Client, InvalidArgumentError, RetryPolicy, UnavailableError
from swaa_client._calls import attempts, retry_delay
from swaa_client._convert import generate_request

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.0, max_backoff_s=0.0)


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    # an AioRpcError is also a grpc.RpcError: one stand-in for both clients' except clauses
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"{code.name} (test)")


def test_generate_and_stream_of_both_clients_take_the_one_argument_list():
    want = list(inspect.signature(generate_request).parameters) + ["timeout"]
    for method in (Client.generate, Client.stream, AsyncClient.generate, AsyncClient.stream):
        assert list(inspect.signature(method).parameters)[1:] == want, method.__qualname__


def test_attempts_share_one_deadline():
    got = list(attempts(10.0, FAST))
    assert [a.number for a in got] == [1, 2, 3] and [a.last for a in got] == [False, False, True]
    assert all(0 < a.timeout <= 10.0 for a in got)
    assert got[0].timeout >= got[1].timeout >= got[2].timeout
    assert [a.timeout for a in attempts(None, FAST)] == [None] * 3


def test_only_unavailable_before_output_is_retried():
    first, last = list(attempts(None, FAST))[0], list(attempts(None, FAST))[-1]
    assert retry_delay(rpc_error(grpc.StatusCode.UNAVAILABLE), first, FAST) == 0.0
    with pytest.raises(UnavailableError):
        retry_delay(rpc_error(grpc.StatusCode.UNAVAILABLE), last, FAST)
    with pytest.raises(UnavailableError):
        retry_delay(rpc_error(grpc.StatusCode.UNAVAILABLE), first, FAST, received=True)
    with pytest.raises(InvalidArgumentError):
        retry_delay(rpc_error(grpc.StatusCode.INVALID_ARGUMENT), first, FAST)


def flaky(failures: int, code=grpc.StatusCode.UNAVAILABLE):
    calls = []

    def method(request, timeout=None, metadata=()):
        calls.append(timeout)
        if len(calls) <= failures:
            raise rpc_error(code)
        return "ok"

    return method, calls


def test_both_clients_retry_a_unary_call_alike():
    async def run_async(method):
        async def call(request, timeout=None, metadata=()):
            return method(request, timeout=timeout, metadata=metadata)

        client = AsyncClient("127.0.0.1:1", retry=FAST)
        try:
            return await client._unary(call, None, 5.0, FAST)
        finally:
            await client.close()

    for run in (lambda m: Client("127.0.0.1:1", retry=FAST)._unary(m, None, 5.0, FAST), lambda m: asyncio.run(run_async(m))):
        method, calls = flaky(2)
        assert run(method) == "ok" and len(calls) == 3
        method, calls = flaky(3)
        with pytest.raises(UnavailableError):
            run(method)
        assert len(calls) == 3
        method, calls = flaky(1, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(InvalidArgumentError):
            run(method)
        assert len(calls) == 1
