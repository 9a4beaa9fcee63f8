"""The Kubernetes manifests (deploy/k8s) against the repository: ports, model names, flags, state.

No cluster here: the manifests are parsed with PyYAML, the overlay's JSON patches applied by a few
lines below, and every name and number the pods rely on is checked against the code that defines
it (the spec, the gateway's policy and command line, the writer, the Redis backend, the metrics).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys
import types
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from veil.model_repository import writer
from veil.model_repository.spec import DEFENDED, PLATFORMS, RAW, ServingOptions, describe
from veil.serving import cli
from veil.serving.policy import internal_triton_args
from veil.serving.state_store import POLICY
from veil.serving.upstreams import parse_addresses
from veil.wire import CLIENT_ID_KEY

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OPTS = ServingOptions(
    input_names=("input_ids", "attention_mask"), num_classes=2, label_names=("no", "yes"), classifier_sha256="ab" * 32
)


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def apply_json6902(doc: dict, ops: list[dict]) -> None:
    """``replace`` (the target must exist) and ``add`` (object key, or list end with ``-``)."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if op["op"] == "replace":
            index = int(last) if isinstance(node, list) else last
            node[index]
            node[index] = op["value"]
        elif op["op"] == "add":
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), op["value"])
            else:
                node[last] = op["value"]
        else:
            raise AssertionError(f"unsupported patch op {op['op']}")


def build(folder: Path) -> list[dict]:
    """What ``kustomize build`` would read: the resources, recursively, with the JSON patches applied."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        docs += build(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        targets = [
            d for d in docs if d["kind"] == patch["target"]["kind"] and d["metadata"]["name"] == patch["target"]["name"]
        ]
        assert len(targets) == 1, patch["target"]
        apply_json6902(targets[0], yaml.safe_load(patch["patch"]))
    return docs


def find(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def container(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]["containers"][0]


def ports(c: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


def env(c: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def script_commands(script: str) -> list[list[str]]:
    """Shell lines joined at backslashes, split like the shell would (variables left as written)."""
    joined = re.sub(r"\\\n\s*", " ", script)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out += [shlex.split(part) for part in line.split("&&")]
    return out


def command_args(commands: list[list[str]], program: str) -> list[str]:
    for cmd in commands:
        words = cmd[1:] if cmd[0] == "exec" else cmd
        if words[: len(program.split())] == program.split():
            return words[len(program.split()) :]
    raise AssertionError(f"{program} is not run")


@pytest.fixture(scope="module", params=["base", "overlays/gpu"])
def deployment(request) -> tuple[str, list[dict]]:
    return request.param, build(K8S / request.param)


def test_every_file_is_listed_and_every_resource_is_named():
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    seen = set()
    for doc in build(K8S / "base"):
        key = (doc["kind"], doc["metadata"]["name"])
        assert doc["apiVersion"] and key not in seen, key
        seen.add(key)


def test_triton_replicas_serve_the_spec(deployment):
    name, docs = deployment
    sts = find(docs, "StatefulSet", "veil-triton")
    c = container(sts)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:24\.\d\d-py3", c["image"])
    own = ports(c)
    assert own == {"http": 8000, "grpc": 8001, "metrics": 8002}
    variables = env(c)
    platform = variables["VEIL_PLATFORM"]
    assert platform in PLATFORMS and platform == ("nvidia" if name == "overlays/gpu" else "embedded")
    gpus = c["resources"].get("limits", {}).get("nvidia.com/gpu", 0)
    assert (gpus >= 1) == (platform == "nvidia")

    # The start script: the writer's command line (checked by the writer's own parser), then tritonserver.
    start = find(docs, "ConfigMap", "veil-triton-start")["data"]["start.sh"]
    commands = script_commands(start)
    argv = [a.replace("${VEIL_DEFENSE_INSTANCES}", str(variables["VEIL_DEFENSE_INSTANCES"])) for a in
            command_args(commands, "python3 -m veil.model_repository.writer")]  # fmt: skip
    written = writer.parser().parse_args(argv)
    assert written.mode == "production" and written.state_backend == "redis"
    models = {m.name: m for m in describe(dataclasses.replace(OPTS, **writer.changes_from(written)), platform)}
    assert DEFENDED in models and RAW not in models
    defense = models["mia_defense"]
    assert defense.instance_count == int(variables["VEIL_DEFENSE_INSTANCES"]) > 1
    assert defense.parameters["state_backend"] == "redis"
    assert defense.instance_kind == ("KIND_GPU" if platform == "nvidia" else "KIND_CPU")

    flags = command_args(commands, "tritonserver")
    assert [f.split("=", 1)[1] for f in flags if f.startswith("--model-repository=")] == [
        f"{written.out}/common",
        f"{written.out}/${{VEIL_PLATFORM}}",
    ]
    for flag in internal_triton_args("${VEIL_GATEWAY_KEY}", "${VEIL_ADMIN_KEY}"):
        assert flag in flags, flag
    assert f"--http-header-forward-pattern={CLIENT_ID_KEY}" in flags
    for kind in ("http", "grpc", "metrics"):
        assert f"--{kind}-port={own[kind]}" in flags
    for key in ("VEIL_GATEWAY_KEY", "VEIL_ADMIN_KEY"):
        assert variables[key] == {"secretKeyRef": {"name": "veil-keys", "key": key}}

    # Probes on Triton's health endpoints; metrics annotated for scraping; a headless Service.
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == own["metrics"]
    service = find(docs, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        k: (v, k) for k, v in own.items()
    }


def test_redis_is_shared_bounded_and_where_triton_looks(deployment):
    _, docs = deployment
    state_url = urlsplit(env(container(find(docs, "StatefulSet", "veil-triton")))["VEIL_STATE_URL"])
    assert state_url.scheme == "redis"
    service = find(docs, "Service", state_url.hostname)
    (port,) = service["spec"]["ports"]
    assert port["port"] == state_url.port
    redis = container(find(docs, "Deployment", service["spec"]["selector"]["app"]))
    assert ports(redis)[port["targetPort"]] == 6379
    assert re.fullmatch(r"redis:7[.\d]*(-\w+)?", redis["image"])
    conf = dict(
        line.split(" ", 1) for line in find(docs, "ConfigMap", "veil-redis-config")["data"]["redis.conf"].splitlines()
    )
    assert conf["maxmemory-policy"] == POLICY and re.fullmatch(r"\d+[kmg]b", conf["maxmemory"])
    assert conf["save"] == '""' and conf["appendonly"] == "no"


def test_the_gateway_lists_every_replica_with_its_key(deployment):
    _, docs = deployment
    sts = find(docs, "StatefulSet", "veil-triton")
    triton_ports = ports(container(sts))
    gateway = find(docs, "Deployment", "veil-gateway")
    c = container(gateway)
    args = command_args(script_commands(c["args"][0]), "python -m veil.serving.gateway")
    parsed = cli.parser().parse_args(args)
    replicas = parse_addresses(parsed.upstream_http, parsed.upstream_grpc)
    expected = [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}" for i in range(sts["spec"]["replicas"])]
    assert [(h.rsplit(":", 1)[0], g.rsplit(":", 1)[0]) for h, g in replicas] == [(e, e) for e in expected]
    assert {(int(h.rsplit(":", 1)[1]), int(g.rsplit(":", 1)[1])) for h, g in replicas} == {
        (triton_ports["http"], triton_ports["grpc"])
    }
    assert env(c)["VEIL_GATEWAY_KEY"] == env(container(sts))["VEIL_GATEWAY_KEY"]
    own = ports(c)
    assert own == {"http": parsed.http_port, "grpc": parsed.grpc_port} and parsed.host == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    service = find(docs, "Service", "veil-gateway")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(own)
    # Only the gateway reaches Triton's inference ports; only Triton reaches Redis.
    policy = find(docs, "NetworkPolicy", "veil-triton")["spec"]["ingress"][0]
    assert policy["from"][0]["podSelector"]["matchLabels"] == gateway["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in policy["ports"]} == {triton_ports["http"], triton_ports["grpc"]}


def test_prometheus_scrapes_the_metrics_port_and_alerts_on_real_metrics(deployment, monkeypatch):
    _, docs = deployment
    data = find(docs, "ConfigMap", "veil-prometheus")["data"]
    (job,) = yaml.safe_load(data["prometheus.yml"])["scrape_configs"]
    keep = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    sts = find(docs, "StatefulSet", "veil-triton")
    assert keep["__meta_kubernetes_pod_label_app"] == sts["spec"]["template"]["metadata"]["labels"]["app"]
    assert keep["__meta_kubernetes_pod_container_port_name"] in ports(container(sts))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    monkeypatch.delitem(sys.modules, "veil.python_backend.triton.telemetry", raising=False)
    from veil.python_backend.triton.telemetry import METRICS

    names = {m.name for m in METRICS}
    rules = yaml.safe_load(data["veil-alerts.yml"])["groups"][0]["rules"]
    for rule in rules:
        used = set(re.findall(r"veil_\w+", rule["expr"]))
        assert used and used <= names, rule["expr"]
