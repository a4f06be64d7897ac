"""The cluster deployment example (examples/k8s, examples/envoy) is valid and coherent.

Validity comes from the real schemas, offline: every Kubernetes manifest against the
Kubernetes OpenAPI JSON schemas of specific versions in strict mode (kubernetes-validate:
unknown fields rejected), the Envoy config against Envoy's own protobuf API and its PGV
rules (tests/deploy/envoy_config.py). Coherence is checked across files: the ports the
probes, Services and Envoy use are the ones the gateway's config binds; the grace periods
add up; selectors select; what is referenced exists. A real gateway started from the
ConfigMap answers SERVING to the probes' health service.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.settings import Settings, load_settings
from tests.deploy.envoy_config import EnvoyConfigError, load_bootstrap, unpack
from tests.support.inprocess import InProcessGateway

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "examples" / "k8s"
ENVOY_YAML = ROOT / "examples" / "envoy" / "envoy.yaml"
DOCKERFILE = K8S / "Dockerfile"
# The oldest Kubernetes the example supports (the kubelet's own preStop `sleep` is on by
# default from 1.30) and the newest whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
NAMESPACE = "inference-gateway"
# Time for a deleted pod to leave Envoy's host set: CoreDNS's TTL for cluster records (5 s
# by default) plus Envoy's STRICT_DNS refresh (5 s unless the cluster says otherwise).
DNS_PROPAGATION_S = 5 + 5
# What the gateway may still do after the drain and the request-log flush: the lifecycle's
# stop, unloading models, closing the database.
STOP_MARGIN_S = 5

Doc = dict[str, Any]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs() -> list[tuple[Path, Doc]]:
    return [(path, doc) for path in _manifest_files()
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _find(kind: str, name: str) -> Doc:
    found = [doc for _, doc in _docs()
             if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in {K8S}, found {len(found)}"
    return found[0]


def _container(deployment: Doc, name: str) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _container_port(container: Doc, name: str) -> int:
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == name))


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The ConfigMap's gateway.toml through the gateway's own (strict) settings loader,
    with the environment the Deployment gives it (values from the example Secret)."""
    return _load_config_map(tmp_path_factory.mktemp("configmap"))


def _load_config_map(directory: Path, overrides: dict[str, Any] | None = None) -> Settings:
    config = directory / "gateway.toml"
    config.write_text(_find("ConfigMap", "gateway-config")["data"]["gateway.toml"])
    return load_settings(config, env=_deployment_env(), overrides=overrides)


def _deployment_env() -> dict[str, str]:
    secret = _find("Secret", "gateway-secrets")["stringData"]
    env = {}
    for var in _container(_find("Deployment", "gateway"), "gateway")["env"]:
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "gateway-secrets", var
        assert ref["key"] in secret, f"{var['name']}: the Secret has no key {ref['key']!r}"
        env[var["name"]] = secret[ref["key"]]
    return env


# --- every manifest is valid Kubernetes --------------------------------------------------


def test_the_example_has_every_part() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in _docs()}
    assert kinds == {
        ("Namespace", NAMESPACE), ("ConfigMap", "gateway-config"),
        ("Secret", "gateway-secrets"), ("PersistentVolumeClaim", "gateway-artifacts"),
        ("Deployment", "gateway"), ("Service", "gateway-headless"),
        ("Service", "gateway-admin"), ("PodDisruptionBudget", "gateway"),
        ("Deployment", "envoy"), ("Service", "inference"),
    }
    for _, doc in _docs():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_in_strict_mode(version: str) -> None:
    for path, doc in _docs():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} "
                        f"invalid for Kubernetes {version} at "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c.__setitem__("readinesProbe", c.pop("readinessProbe")), "readinesProbe"),
    (lambda c: c["livenessProbe"]["grpc"].__setitem__("port", "grpc"), "is not of type"),
    (lambda c: c["lifecycle"]["preStop"]["sleep"].__setitem__("second", 15), "second"),
])
def test_the_validator_rejects_a_typo_and_a_wrong_type(change: Any, expected: str) -> None:
    """The strict schemas are not vacuous: a misspelt field, a named port where gRPC
    probes take only a number, a misspelt sleep field all fail."""
    deployment = json.loads(json.dumps(_find("Deployment", "gateway")))
    change(_container(deployment, "gateway"))
    with pytest.raises(kubernetes_validate.ValidationError, match=expected):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    expected = {p.name for p in _manifest_files()} - {"secret.example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(expected)


# --- the gateway's config and the pod that runs it --------------------------------------


def test_config_map_is_a_valid_gateway_config_on_postgresql(settings: Settings) -> None:
    assert settings.host == "0.0.0.0"
    assert (settings.database_url or "").startswith("postgresql+psycopg://")
    assert any(t.name == "env" and t.role == "operator" for t in settings.tokens)
    raw = tomllib.loads(_find("ConfigMap", "gateway-config")["data"]["gateway.toml"])
    assert "database" not in raw, "the database URL (a secret) belongs in the Secret"
    container = _container(_find("Deployment", "gateway"), "gateway")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _find("Deployment", "gateway")["spec"]["template"]
               ["spec"]["volumes"]}
    assert settings.data_dir == Path(mounts["data"])
    assert settings.effective_artifacts_dir == Path(mounts["artifacts"])
    assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == "gateway-artifacts"
    pvc = _find("PersistentVolumeClaim", "gateway-artifacts")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every replica shares the store"
    assert volumes["config"]["configMap"]["name"] == "gateway-config"
    config_path = container["args"][container["args"].index("--config") + 1]
    assert config_path == f"{mounts['config']}/gateway.toml"


def test_probes_ask_the_inference_port(settings: Settings) -> None:
    container = _container(_find("Deployment", "gateway"), "gateway")
    assert _container_port(container, "grpc") == settings.grpc_port
    assert _container_port(container, "http") == settings.http_port
    assert _container_port(container, "admin") == settings.admin_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == settings.grpc_port, probe


def test_probe_health_service_is_serving_on_a_gateway_started_from_the_config_map(
        tmp_path: Path) -> None:
    """The probes' and Envoy's health service names are ones the gateway answers SERVING:
    an unknown name would be NOT_FOUND and no pod would ever be ready."""
    container = _container(_find("Deployment", "gateway"), "gateway")
    services = {container[p]["grpc"].get("service", "")
                for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    services |= {h.grpc_health_check.service_name
                 for h in _envoy_cluster().health_checks}
    # Loopback, ports the OS picks and SQLite in tmp_path: what differs from the pod is
    # only where it binds and stores, not what it serves.
    settings = _load_config_map(tmp_path, overrides={
        "host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "admin_port": 0,
        "data_dir": tmp_path / "data", "artifacts_dir": tmp_path / "artifacts",
        "database_url": f"sqlite:///{tmp_path / 'gateway.db'}"})
    gateway = InProcessGateway(settings).start()
    try:
        with grpc.insecure_channel(gateway.grpc_address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in sorted(services):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    finally:
        gateway.stop()


def test_grace_periods_let_readiness_fail_before_the_drain(settings: Settings) -> None:
    pod = _find("Deployment", "gateway")["spec"]["template"]["spec"]
    container = _container(_find("Deployment", "gateway"), "gateway")
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The pod leaves the endpoints when deletion starts; the sleep keeps it serving until
    # DNS and Envoy have dropped it, and only then does SIGTERM start the drain.
    assert pre_stop >= DNS_PROPAGATION_S
    drain = settings.shutdown_grace_s + settings.request_log.stop_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + STOP_MARGIN_S, (
        "the kubelet would SIGKILL a gateway still draining or flushing its request log")
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain, (
        "the liveness probe could restart a gateway that is draining")
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 10
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, (
        "loading and warming every model must fit before liveness takes over")


def test_pdb_and_services_select_the_gateway_pods(settings: Settings) -> None:
    deployment = _find("Deployment", "gateway")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    pdb = _find("PodDisruptionBudget", "gateway")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"], (
        "a budget of every replica would block node drains")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    envoy_labels = _find("Deployment", "envoy")["spec"]["template"]["metadata"]["labels"]
    assert not _selects(pdb["spec"]["selector"]["matchLabels"], envoy_labels)

    container = _container(deployment, "gateway")
    headless = _find("Service", "gateway-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert not headless.get("publishNotReadyAddresses", False)
    admin = _find("Service", "gateway-admin")["spec"]
    for spec in (headless, admin):
        assert _selects(spec["selector"], labels)
        assert not _selects(spec["selector"], envoy_labels)
        for port in spec["ports"]:
            assert port["port"] == _container_port(container, port["targetPort"]), port
    assert {p["name"]: p["port"] for p in headless["ports"]} == {
        "grpc": settings.grpc_port, "http": settings.http_port}
    assert [p["port"] for p in admin["ports"]] == [settings.admin_port]

    envoy = _find("Deployment", "envoy")
    inference = _find("Service", "inference")["spec"]
    assert _selects(inference["selector"], envoy_labels)
    assert not _selects(inference["selector"], labels)
    envoy_container = _container(envoy, "envoy")
    for port in inference["ports"]:
        assert port["port"] == _container_port(envoy_container, port["targetPort"])


def test_dockerfile_runs_what_the_deployment_expects() -> None:
    instructions = _dockerfile_instructions()
    assert instructions["FROM"] == ["python:3.11-slim"]
    container = _container(_find("Deployment", "gateway"), "gateway")
    assert json.loads(instructions["ENTRYPOINT"][0]) == ["gateway"]
    assert json.loads(instructions["CMD"][0]) == container["args"]
    pod = _find("Deployment", "gateway")["spec"]["template"]["spec"]
    user = instructions["USER"][-1].split(":")
    assert int(user[0]) == pod["securityContext"]["runAsUser"]
    assert int(user[1]) == pod["securityContext"]["runAsGroup"]
    exposed = {int(p) for line in instructions["EXPOSE"] for p in line.split()}
    assert exposed == {p["containerPort"] for p in container["ports"]}
    run = " ".join(instructions["RUN"])
    assert "-c constraints.txt" in run and "grpc_tools.protoc" in run
    # The install needs the generated code: protoc runs before `pip install .`.
    assert run.index("grpc_tools.protoc") < run.index("pip install -c constraints.txt .")


def _dockerfile_instructions() -> dict[str, list[str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.setdefault(keyword.upper(), []).append(rest.strip())
    return instructions


# --- Envoy ---------------------------------------------------------------------------------


def _envoy_cluster() -> cluster_pb2.Cluster:
    clusters = load_bootstrap(ENVOY_YAML).static_resources.clusters
    return next(c for c in clusters if c.name == "gateway")


def test_envoy_config_is_valid_for_envoy() -> None:
    bootstrap = load_bootstrap(ENVOY_YAML)
    assert [c.name for c in bootstrap.static_resources.clusters] == ["gateway"]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("static_resources:", "unknown_top_level: 1\nstatic_resources:", "unknown_top_level"),
    ("stat_prefix: inference", "stat_prefix: inference\n                statprefix: x",
     "statprefix"),
    ("choice_count: 2", "choice_count: 2\n                chioce_count: 3", "chioce_count"),
    ("connect_timeout: 1s", "connect_timeout: 0s", "connect_timeout"),
    ("choice_count: 2", "choice_count: 1", "choice_count"),
    ("connect_timeout: 1s", "connect_timeout: 1s\n      dns_refresh_rate: 5s", "deprecated"),
    ("V4_ONLY", "V4_ONLY_PLEASE", "V4_ONLY_PLEASE"),
    ("router.v3.Router", "router.v3.Routr", "no such message"),
])
def test_the_envoy_validator_rejects(tmp_path: Path, old: str, new: str, expected: str) -> None:
    """Unknown fields (top level, inside typed configs), PGV rules (a zero timeout, fewer
    than two least-request choices), deprecated fields, bad enums and unknown types."""
    text = ENVOY_YAML.read_text(encoding="utf-8")
    assert old in text
    broken = tmp_path / "envoy.yaml"
    broken.write_text(text.replace(old, new, 1))
    with pytest.raises(EnvoyConfigError, match=expected):
        load_bootstrap(broken)


def test_envoy_balances_grpc_calls_over_the_headless_service(settings: Settings) -> None:
    cluster = _envoy_cluster()
    assert cluster.type == cluster_pb2.Cluster.STRICT_DNS
    [locality] = cluster.load_assignment.endpoints
    [endpoint] = locality.lb_endpoints
    address = endpoint.endpoint.address.socket_address
    headless = _find("Service", "gateway-headless")
    assert address.address == f"{headless['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    grpc_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc")
    assert address.port_value == grpc_port == settings.grpc_port
    # Per call, not per connection: an HTTP load balancer over HTTP/2 upstreams.
    [policy] = cluster.load_balancing_policy.policies
    assert isinstance(unpack(policy.typed_extension_config.typed_config),
                      least_request_pb2.LeastRequest)
    [(key, packed)] = cluster.typed_extension_protocol_options.items()
    options = unpack(packed)
    assert isinstance(options, http_protocol_options_pb2.HttpProtocolOptions)
    assert key == options.DESCRIPTOR.full_name, "Envoy finds the options by this key"
    assert options.explicit_http_config.HasField("http2_protocol_options")
    # Health: gRPC health checks, and a pod gone from DNS leaves at once.
    assert cluster.health_checks and all(h.HasField("grpc_health_check")
                                         for h in cluster.health_checks)
    assert cluster.ignore_health_on_host_removal
    [thresholds] = cluster.circuit_breakers.thresholds
    assert thresholds.retry_budget.budget_percent.value > 0


def test_envoy_routes_retry_unary_calls_and_leave_streams_alone() -> None:
    bootstrap = load_bootstrap(ENVOY_YAML)
    [listener] = bootstrap.static_resources.listeners
    envoy = _container(_find("Deployment", "envoy"), "envoy")
    assert listener.address.socket_address.port_value == _container_port(envoy, "grpc")
    mount = next(m for m in envoy["volumeMounts"] if m["name"] == "config")["mountPath"]
    assert envoy["args"][envoy["args"].index("--config-path") + 1] == f"{mount}/envoy.yaml"
    [manager] = [unpack(f.typed_config) for chain in listener.filter_chains
                 for f in chain.filters]
    assert isinstance(manager, http_connection_manager_pb2.HttpConnectionManager)
    routes = list(_routes(manager))
    assert all(r.route.cluster == "gateway" for r in routes)
    stream = next(r for r in routes
                  if r.match.path == "/inference.GRPCInferenceService/ModelStreamInfer")
    # Unset, a route's timeout is 15 s: a stream must say 0 (none) explicitly.
    assert stream.route.HasField("timeout") and stream.route.timeout.ToSeconds() == 0
    assert not stream.route.HasField("retry_policy")
    unary = [r for r in routes if r is not stream]
    assert unary, "no route for unary calls"
    for route in unary:
        action = route.route
        assert action.timeout.ToSeconds() > 0
        assert action.max_stream_duration.grpc_timeout_header_max.ToSeconds() > 0
        retry_on = set(action.retry_policy.retry_on.split(","))
        assert "unavailable" in retry_on, "a draining gateway answers UNAVAILABLE"
        assert "reset" not in retry_on, "a reset call may have run: never retried"
        assert action.retry_policy.num_retries.value >= 1
        assert [p.name for p in action.retry_policy.retry_host_predicate] == [
            "envoy.retry_host_predicates.previous_hosts"]


def _routes(manager: http_connection_manager_pb2.HttpConnectionManager) -> Iterator[Any]:
    for host in manager.route_config.virtual_hosts:
        yield from host.routes

