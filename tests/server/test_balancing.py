"""The SDK balances per call over a target that names several servers (a headless Service's DNS name in Kubernetes;
two local servers here): round robin by default, where one HTTP/2 connection used to carry every call."""

import contextlib
import urllib.request

import pytest

from swaa_client import Client
from swaa_engine.engine import LLMEngine
from swaa_server.app import ServerConfig
from tests.server.conftest import running_server, tiny_engine_config


@pytest.fixture(scope="module")
def two_servers(tiny_qwen3):
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(running_server(LLMEngine(tiny_engine_config(tiny_qwen3[0])),
                                                      ServerConfig(port=0, grace_s=1, metrics_port=0)))
                   for _ in range(2)]
        yield servers


def finished(server) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(l.split()[-1]) for l in body.splitlines() if l.startswith("swaa_requests_total{"))


def calls_per_server(servers, n: int, **client_kw) -> list[float]:
    before = [finished(s) for s in servers]
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    with Client(target, timeout=30, **client_kw) as c:
        assert c.health() == "SERVING"
        for _ in range(n):
            c.generate([1, 2, 3], max_tokens=2, ignore_eos=True)
    return [finished(s) - b for s, b in zip(servers, before)]


def test_round_robin_spreads_calls_over_both_servers(two_servers):
    counts = calls_per_server(two_servers, 20)
    assert sum(counts) == 20 and min(counts) >= 8, counts  # strict alternation once both are connected


def test_pick_first_keeps_one_server(two_servers):
    """What a plain ClusterIP gives too: every call rides one connection."""
    counts = calls_per_server(two_servers, 10, load_balancing="pick_first")
    assert sorted(counts) == [0, 10], counts


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="load_balancing"):
        Client("127.0.0.1:9", load_balancing="random")
