"""The serving core imports without torch: scheduling, cache bookkeeping, sequences, configs and sampling
parameters are plain Python, so the CLI's parser, the router and the converters stay quick to import and a
newcomer can read and test them alone. Each module is imported in a fresh interpreter (this one has torch)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORE = ["swaa_engine", "swaa_engine.scheduler", "swaa_engine.kv_cache.manager", "swaa_engine.kv_cache.pools", "swaa_engine.kv_cache.resident",
        "swaa_engine.sequence", "swaa_engine.swaa", "swaa_engine.config", "swaa_engine.sampling_params",
        "swaa_engine.intake", "swaa_engine.outputs", "swaa_engine.detokenizer", "swaa_engine.models.registry",
        "swaa_engine.models.dims", "swaa_server.convert", "swaa_server.config", "swaa_server.cli", "swaa_train.config",
        "swaa_eval.harness"]


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_without_torch(module):
    path = os.pathsep.join([os.path.join(ROOT, d) for d in ("engine", "server", "client")] +
                           [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'triton') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", f"{module} loads {r.stdout.strip()}"


def test_the_package_top_level_is_lazy():
    """``swaa_engine.LLM`` still works: the top level imports the engine (and torch) only when asked."""
    import swaa_engine
    from swaa_engine.engine import LLM, LLMEngine

    assert swaa_engine.LLM is LLM and swaa_engine.LLMEngine is LLMEngine
