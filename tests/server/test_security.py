"""Bearer-token auth and TLS / mutual TLS, with certificates made by the test (openssl)."""

import shutil
import subprocess

import pytest

from swaa_client import Client, UnauthenticatedError, UnavailableError
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
