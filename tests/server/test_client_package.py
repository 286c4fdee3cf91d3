"""`pip install ./client` in a clean venv (no torch) and the README's SDK example against a server
on the embedded SmolLM2-135M-Instruct."""

import os
import re
import subprocess
import venv

import pytest

from swaa_engine.config import CacheConfig, EngineConfig
from swaa_engine.defaults import EMBEDDED_SWAA
from swaa_engine.engine import LLMEngine
from swaa_server.app import ServerConfig
from tests.server.conftest import running_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_sdk_example() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"<!-- sdk-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README lost its SDK example"
    return m.group(1)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory):
    d = tmp_path_factory.mktemp("client-venv")
    venv.EnvBuilder(with_pip=True).create(d)
    py = str(d / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", os.path.join(ROOT, "client")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return py


def test_client_installs_alone_without_torch(client_venv):
    r = subprocess.run([client_venv, "-c", "import importlib.util as u, swaa_client; "
                        "print(u.find_spec('torch') is None, u.find_spec('swaa_engine') is None, swaa_client.Client.__name__)"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "Client"]


def test_readme_example_runs_against_the_embedded_model(client_venv, smollm2):
    hf, tok = smollm2
    # what `make serve` runs, with a smaller cache than its default so CI's memory is not spent on zeros
    engine = LLMEngine(EngineConfig(swaa=EMBEDDED_SWAA, cache=CacheConfig(budget_bytes=512 << 20)), hf_model=hf, tokenizer=tok)
    with running_server(engine, ServerConfig(port=0)) as s:
        r = subprocess.run([client_venv, "-c", readme_sdk_example()], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, SWAA_TARGET=s.target))
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert "Paris" in first and first.split()[-2] in ("stop", "eos", "length")
    assert f"window {EMBEDDED_SWAA.window}," in r.stdout
