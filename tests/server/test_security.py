"""Bearer-token auth and TLS / mutual TLS, with certificates made by the test (openssl)."""

import shutil
import subprocess

import grpc
import pytest

from swaa_client import Client, UnauthenticatedError, UnavailableError
from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc
from swaa_engine.engine import LLMEngine
from swaa_server.app import ServerConfig, TLSConfig
from tests.server.conftest import running_server, tiny_engine_config

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def engine(tiny_qwen3):
    return LLMEngine(tiny_engine_config(tiny_qwen3[0]))


def test_missing_or_wrong_token_is_unauthenticated_but_health_passes(engine):
    with running_server(engine, ServerConfig(port=0, auth_tokens=(TOKEN, "other-token"))) as s:
        for token in ("", "wrong", TOKEN + "x"):
            with Client(s.target, token=token) as c:
                assert c.health() == "SERVING"  # probes need no token
                for call in (lambda: c.generate([1, 2], max_tokens=2), lambda: list(c.stream([1, 2], max_tokens=2)),
                             c.model_info, lambda: c.abort("x"), lambda: c.count_tokens("hi")):
                    with pytest.raises(UnauthenticatedError):
                        call()
        for token in (TOKEN, "other-token"):
            with Client(s.target, token=token) as c:
                assert c.generate([1, 2], max_tokens=3, ignore_eos=True).usage.completion_tokens == 3


# The scheme is case-insensitive and 1*SP separates it from the token (RFC 7235 §2.1, RFC 6750 §2.1);
# some HTTP/2 clients and proxies lower-case it.
SPELLINGS = ("Bearer {}", "bearer {}", "BEARER {}", "Bearer  {}", "bEaReR   {}")


def _every_rpc(stub, metadata) -> dict[str, grpc.StatusCode]:
    """Calls each rpc of Generation once with ``metadata``; the status code of each."""
    req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2, 3]), sampling=pb.SamplingParameters(max_tokens=2, ignore_eos=True))
    calls = {
        "Generate": lambda: list(stub.Generate(req, metadata=metadata, timeout=30)),
        "GenerateOnce": lambda: stub.GenerateOnce(req, metadata=metadata, timeout=30),
        "Abort": lambda: stub.Abort(pb.AbortRequest(request_id="no-such-request"), metadata=metadata, timeout=30),
        "CountTokens": lambda: stub.CountTokens(pb.CountTokensRequest(text="hello there"), metadata=metadata, timeout=30),
        "GetModelInfo": lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=metadata, timeout=30),
        "Detokenize": lambda: stub.Detokenize(pb.DetokenizeRequest(token_ids=[1, 2]), metadata=metadata, timeout=30),
    }
    assert set(calls) == set(pb.DESCRIPTOR.services_by_name["Generation"].methods_by_name), "a new rpc: add it here"
    codes = {}
    for name, call in calls.items():
        try:
            call()
            codes[name] = grpc.StatusCode.OK
        except grpc.RpcError as e:
            codes[name] = e.code()
    return codes


@pytest.fixture(scope="module")
def chat_engine(tiny_chat_folder):
    """Has a tokenizer, so CountTokens on text succeeds once authorized."""
    return LLMEngine(tiny_engine_config(tiny_chat_folder))


def test_bearer_scheme_in_any_case_with_any_spaces(chat_engine):
    with running_server(chat_engine, ServerConfig(port=0, auth_tokens=(TOKEN, "other-token"))) as s:
        with grpc.insecure_channel(s.target) as channel:
            stub = pb_grpc.GenerationStub(channel)
            ok = {name: grpc.StatusCode.OK for name in pb.DESCRIPTOR.services_by_name["Generation"].methods_by_name}
            for spelling in SPELLINGS:
                for token in (TOKEN, "other-token"):
                    assert _every_rpc(stub, (("authorization", spelling.format(token)),)) == ok, spelling
                for wrong in ("wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper(), "", " "):
                    denied = _every_rpc(stub, (("authorization", spelling.format(wrong)),))
                    assert set(denied.values()) == {grpc.StatusCode.UNAUTHENTICATED}, (spelling, wrong, denied)
            # not the bearer scheme, or no space after it: refused
            for value in (f"Bearer{TOKEN}", f"Basic {TOKEN}", f"Bearerx {TOKEN}", f"xBearer {TOKEN}", TOKEN, "Bearer"):
                denied = _every_rpc(stub, (("authorization", value),))
                assert set(denied.values()) == {grpc.StatusCode.UNAUTHENTICATED}, (value, denied)
        assert s.wait_idle()


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests need the openssl command to make certificates")
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=swaa-test-ca", cwd=d)
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    return d


def test_tls_round_trip(engine, certs):
    tls = TLSConfig(str(certs / "server.pem"), str(certs / "server.key"))
    with running_server(engine, ServerConfig(port=0, tls=tls)) as s:
        with Client(s.target, root_certificates=str(certs / "ca.pem"), timeout=30) as c:
            assert c.generate([1, 2, 3], max_tokens=4, ignore_eos=True).usage.completion_tokens == 4
        with Client(s.target, retry=_no_retry(), timeout=5) as plain:  # plaintext against TLS fails
            with pytest.raises(UnavailableError):
                plain.generate([1, 2], max_tokens=1)


def test_mutual_tls_needs_a_client_certificate(engine, certs):
    tls = TLSConfig(str(certs / "server.pem"), str(certs / "server.key"), client_ca_file=str(certs / "ca.pem"))
    with running_server(engine, ServerConfig(port=0, tls=tls)) as s:
        with Client(s.target, root_certificates=str(certs / "ca.pem"), client_certificate=str(certs / "client.pem"),
                    client_key=str(certs / "client.key"), timeout=30) as c:
            assert c.generate([1, 2, 3], max_tokens=4, ignore_eos=True).usage.completion_tokens == 4
            assert c.health() == "SERVING"
        with Client(s.target, root_certificates=str(certs / "ca.pem"), retry=_no_retry(), timeout=5) as anon:
            with pytest.raises(UnavailableError):
                anon.generate([1, 2], max_tokens=1)


def _no_retry():
    from swaa_client import NO_RETRY

    return NO_RETRY
