"""`swaa serve` as a real process: CLI clients, JSON request logs without prompt text, SIGTERM drain (delay, then grace)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from swaa_client import NO_RETRY, Client, FinishReason, UnavailableError

MARKER = "Confidential-Prompt-Marker-7431"
DRAIN_DELAY = 1.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _swaa(*args, **kw):
    return subprocess.run([sys.executable, "-m", "swaa_server.cli", *args], capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def proc(tiny_chat_folder, tmp_path_factory):
    port = _free_port()
    env = dict(os.environ, SWAA_AUTH_TOKENS="tok-1,tok-2")
    p = subprocess.Popen([sys.executable, "-m", "swaa_server.cli", "serve", "--model", tiny_chat_folder, "--port", str(port),
                          "--metrics-port", "-1", "--grace", "20", "--drain-delay", str(DRAIN_DELAY), "--window", "16",
                          "--sinks", "2", "--fa-decode",
                          "--max-model-len", "1024", "--cache-bytes", str(8 << 20)],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(p.stderr.readline, "")), daemon=True).start()
    target = f"127.0.0.1:{port}"
    end = time.monotonic() + 120
    with Client(target, token="tok-1") as c:
        while time.monotonic() < end:
            try:
                if c.health() == "SERVING":
                    break
            except UnavailableError:
                pass
            assert p.poll() is None, "".join(lines)
            time.sleep(0.2)
    yield p, target, lines
    if p.poll() is None:
        p.kill()


def test_cli_clients(proc):
    p, target, _ = proc
    env = dict(os.environ, SWAA_TOKEN="tok-2")
    out = _swaa("generate", "Say hi", "--target", target, "--max-tokens", "5", env=env)
    assert out.returncode == 0, out.stderr
    assert "5 generated tokens" in out.stderr
    assert out.stdout.endswith("\n") and out.stderr.startswith("[")  # the answer ends its line; the stats go below
    assert _swaa("health", "--target", target).stdout.strip() == "SERVING"
    info = _swaa("info", "--target", target, "--json", env=env)
    assert info.returncode == 0, info.stderr
    layout = json.loads(info.stdout)
    assert layout["window"] == 16 and {l["attention"] for l in layout["layers"]} == {"sliding_fa_decode"}
    assert layout["cache_bytes"] <= 8 << 20 and layout["cache_budget"] == "set by budget_bytes (--cache-bytes)"
    summary = _swaa("info", "--target", target, env=env).stdout  # a short human summary by default
    assert len(summary.splitlines()) < 12 and "window 16" in summary and "--cache-bytes" in summary
    assert "no layer keeps a ring" in summary  # fa_decode everywhere: what the config trades is said
    denied = _swaa("info", "--target", target)  # no token
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr


def test_unknown_chat_role_is_refused_by_the_server_and_logged_with_an_id(proc):
    """Sent past the SDK's own check (raw stub): the engine refuses the role and names the field."""
    import grpc

    from swaa_client._pb.swaa.v1 import generation_pb2 as pb
    from swaa_client._pb.swaa.v1 import generation_pb2_grpc as pb_grpc

    p, target, lines = proc
    req = pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="wizard", content="hi")]))
    with grpc.insecure_channel(target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GenerationStub(ch).GenerateOnce(req, metadata=[("authorization", "Bearer tok-1")], timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "messages[0].role" in e.value.details()
    time.sleep(0.3)
    rejected = [json.loads(l) for l in lines if '"request.rejected"' in l]
    assert rejected and all(r["request_id"] for r in rejected)  # was null when the client sent no id


def test_sigterm_lets_streams_finish_then_exits_zero(proc):
    p, target, lines = proc
    results, errors, started = {}, [], threading.Semaphore(0)
    n_tokens = 800

    def run(i):
        try:
            with Client(target, token="tok-1", timeout=60) as c:
                chunks = []
                for chunk in c.stream([{"role": "user", "content": f"{MARKER} number {i}"}], max_tokens=n_tokens,
                                      ignore_eos=True, request_id=f"drain-{i}"):
                    if not chunks:
                        started.release()
                    chunks.append(chunk)
                results[i] = chunks
        except Exception as e:  # pragma: no cover - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in threads:
        assert started.acquire(timeout=30)
    t_term = time.monotonic()
    p.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with Client(target, token="tok-1", retry=NO_RETRY, timeout=10) as late:
        # the drain delay: health says NOT_SERVING at once, so probes take the pod out, but calls are still served
        assert late.health() == "NOT_SERVING"
        assert late.generate([1, 2, 3], max_tokens=2).usage.completion_tokens == 2
        assert time.monotonic() - t_term < DRAIN_DELAY, "the checks above must land inside the delay"
        time.sleep(DRAIN_DELAY - (time.monotonic() - t_term) + 0.5)
        with pytest.raises(UnavailableError):  # then new calls are refused while in-flight streams finish
            late.generate([1, 2, 3], max_tokens=2)
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert p.wait(60) == 0
    for i in range(4):
        last = results[i][-1]
        assert last.finish_reason == FinishReason.LENGTH and sum(len(c.token_ids) for c in results[i]) == n_tokens
    log = "".join(lines)
    assert MARKER not in log  # no prompt text in logs by default
    events = [json.loads(l) for l in lines if l.startswith("{")]
    names = [e["event"] for e in events]
    assert "server.draining" in names and names[-1] == "server.stopped"
    drain = next(e for e in events if e["event"] == "server.draining")
    assert drain["running"]["running"] + drain["running"]["waiting"] > 0  # SIGTERM really landed mid-stream
    refusing = next(e for e in events if e["event"] == "server.refusing_new_calls")
    assert refusing["running"]["running"] > 0  # the streams outlived the delay: they were given the grace
    finished = {e["request_id"] for e in events if e["event"] == "request.finished"}
    accepted = {e["request_id"] for e in events if e["event"] == "request.accepted"}
    assert {f"drain-{i}" for i in range(4)} <= finished & accepted
    assert all(e.get("request_id") for e in events if e["event"].startswith("request."))


def test_every_serve_flag_can_come_from_the_environment():
    from swaa_server.cli import build_parser

    env = {"SWAA_PORT": "6000", "SWAA_FA_DECODE": "all", "SWAA_WINDOW": "256", "SWAA_LOG_PROMPTS": "true",
           "SWAA_CACHE_BYTES": "1048576"}
    a = build_parser(env).parse_args(["serve"])
    assert (a.port, a.fa_decode, a.window, a.log_prompts, a.cache_bytes) == (6000, "all", 256, True, 1 << 20)
    assert build_parser(env).parse_args(["serve", "--port", "7"]).port == 7  # flags win
    with pytest.raises(SystemExit):
        build_parser({"SWAA_PORT": "many"})
