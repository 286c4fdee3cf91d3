"""The Docker image's entry point, run outside a container: the same command and environment the
Dockerfile sets, on the embedded model; its own HEALTHCHECK command passes and one generation works."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

from swaa_client import Client

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dockerfile():
    text = open(os.path.join(ROOT, "Dockerfile")).read().replace("\\\n", " ")
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    health = json.loads(re.search(r"^HEALTHCHECK .*CMD (\[.*\])$", text, re.M).group(1))
    env = {}
    for line in re.findall(r"^ENV (.*)$", text, re.M):
        env.update(dict(kv.split("=", 1) for kv in line.split()))
    return entry, health, env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_entrypoint_serves_the_embedded_model():
    entry, health, env = dockerfile()
    assert entry == ["swaa", "serve"] and env["SWAA_HOST"] == "0.0.0.0"
    port = _free_port()
    env = {**os.environ, **{k: v for k, v in env.items() if k.startswith(("SWAA_", "HF_", "TRANSFORMERS_"))},
           # a free port and a small cache for the test; everything else as in the image
           "SWAA_PORT": str(port), "SWAA_METRICS_PORT": "-1", "SWAA_CACHE_BYTES": str(512 << 20)}
    exe = shutil.which(entry[0], path=os.path.dirname(sys.executable)) or entry[0]
    proc = subprocess.Popen([exe, *entry[1:]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        check = [shutil.which(health[0], path=os.path.dirname(sys.executable)) or health[0], *health[1:]]
        check[check.index("--target") + 1] = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read()
            r = subprocess.run(check, capture_output=True, text=True, timeout=30)
            if r.returncode == 0:
                break
            assert time.monotonic() < deadline, r.stdout + r.stderr
            time.sleep(1)
        assert r.stdout.strip() == "SERVING"
        with Client(f"127.0.0.1:{port}", timeout=120) as c:
            out = c.generate([{"role": "user", "content": "What is the capital of France?"}], max_tokens=16)
            assert "Paris" in out.text
            assert c.model_info().window == 1024  # the embedded default from docs/quality.md
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
