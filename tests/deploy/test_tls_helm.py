"""The chart's TLS and tracing values: certificate Secrets mounted as directories, the
permgate.yaml that names them, probes over HTTPS, and the refused combinations."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_helm_chart import (  # the chart tests' helpers
    HELM,
    ROOT,
    container,
    permgate_config,
    pod_spec,
    refused,
    render,
)

from permgate.config import load_settings


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary, fetched like the chart tests do (a skip, or a failure under
    CI=true, when it cannot be)."""
    if not HELM.is_file():
        command = ["bash", ".ci/deploy-check.sh", "--tools-only"]
        subprocess.run(command, cwd=ROOT, capture_output=True, timeout=300, check=False)
    if not HELM.is_file():
        message = f"{HELM} is missing: run `bash .ci/deploy-check.sh --tools-only` first"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return HELM


TLS = {
    "tls": {
        "gateway": {"enabled": True, "secretName": "gw-tls", "clientCa": True, "minVersion": "1.3"},
        "admin": {"enabled": True, "secretName": "admin-tls"},
        "mtlsPrincipalFrom": "san_uri",
        "upstream": {"enabled": True, "secretName": "api-tls", "serverName": "api.internal"},
    },
    "tracing": {"enabled": True, "otlpEndpoint": "http://collector:4318", "sampleRatio": 0.5},
}


def test_tls_values_write_a_config_permgate_accepts(helm: Path, tmp_path: Path) -> None:
    """The rendered permgate.yaml loads, with every TLS file under the mounted Secrets,
    the upstream over https with its server name, mTLS identities and tracing."""
    config = permgate_config(render(helm, tmp_path, TLS))
    path = tmp_path / "permgate.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    settings = load_settings(path, env={})
    assert settings.listen_tls is not None and settings.admin_tls is not None
    assert settings.listen_tls.cert_file == "/etc/permgate/tls/gateway/tls.crt"
    assert settings.listen_tls.client_ca_file == "/etc/permgate/tls/gateway/ca.crt"
    assert settings.listen_tls.min_version == "1.3"
    assert settings.admin_tls.key_file == "/etc/permgate/tls/admin/tls.key"
    assert settings.upstream == "https://127.0.0.1:8000"
    assert settings.upstream_tls is not None
    assert (settings.upstream_tls.ca_file, settings.upstream_tls.server_name) == (
        "/etc/permgate/tls/upstream/ca.crt",
        "api.internal",
    )
    assert settings.auth.mtls is not None and settings.auth.mtls.principal_from == "san_uri"
    assert settings.tracing is not None and settings.tracing.sample_ratio == 0.5


def test_certificate_secrets_are_directory_mounts(helm: Path, tmp_path: Path) -> None:
    """Each Secret is mounted as a directory, never with subPath: the kubelet's
    renewals (a ..data symlink swap) reach the running process."""
    manifests = render(helm, tmp_path, TLS)
    mounts = {m["name"]: m for m in container(manifests, "permgate")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    for name, secret in (("gateway", "gw-tls"), ("admin", "admin-tls"), ("upstream", "api-tls")):
        mount = mounts[f"tls-{name}"]
        assert mount == {
            "name": f"tls-{name}",
            "mountPath": f"/etc/permgate/tls/{name}",
            "readOnly": True,
        }
        assert volumes[f"tls-{name}"]["secret"] == {"secretName": secret}


def test_probes_speak_https_when_the_admin_port_does(helm: Path, tmp_path: Path) -> None:
    """With tls.admin.enabled the sidecar's probes use scheme HTTPS; without, HTTP."""
    secure = container(render(helm, tmp_path, TLS), "permgate")
    plain = container(render(helm, tmp_path), "permgate")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert secure[probe]["httpGet"]["scheme"] == "HTTPS"
        assert "scheme" not in plain[probe]["httpGet"]


def test_defaults_have_no_tls_and_no_tracing(helm: Path, tmp_path: Path) -> None:
    """Nothing TLS or tracing is rendered unless enabled."""
    manifests = render(helm, tmp_path)
    config = permgate_config(manifests)
    assert not {"listen_tls", "admin_tls", "upstream_tls", "tracing"} & set(config)
    assert "mtls" not in config["auth"]
    assert not [v for v in pod_spec(manifests)["volumes"] if v["name"].startswith("tls-")]


DECISION_TLS = {
    "decisionService": {"enabled": True, "trustedProxies": ["10.0.0.0/8"]},
    "tls": {"decision": {"enabled": True, "secretName": "authz-tls", "clientCa": True}},
}


def test_decision_service_tls_writes_a_config_permgate_accepts(helm: Path, tmp_path: Path) -> None:
    """tls.decision puts the decision listener on HTTPS: authz_tls names the files of the
    mounted Secret, and permgate loads the rendered permgate.yaml."""
    config = permgate_config(render(helm, tmp_path, DECISION_TLS))
    path = tmp_path / "permgate.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    settings = load_settings(path, env={})
    assert settings.authz_tls is not None
    assert (
        settings.authz_tls.cert_file,
        settings.authz_tls.key_file,
        settings.authz_tls.client_ca_file,
    ) == (
        "/etc/permgate/tls/decision/tls.crt",
        "/etc/permgate/tls/decision/tls.key",
        "/etc/permgate/tls/decision/ca.crt",
    )


def test_decision_service_mounts_its_certificate_secret(helm: Path, tmp_path: Path) -> None:
    """The decision service's Deployment mounts the Secret as a directory (renewals reach
    the process) where authz_tls looks for it."""
    manifests = render(helm, tmp_path, DECISION_TLS)
    mounts = {m["name"]: m for m in container(manifests, "permgate")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    assert mounts["tls-decision"] == {
        "name": "tls-decision",
        "mountPath": "/etc/permgate/tls/decision",
        "readOnly": True,
    }
    assert volumes["tls-decision"]["secret"] == {"secretName": "authz-tls"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls": {"gateway": {"enabled": True}}}, "tls.gateway.enabled=true needs tls.gateway"),
        ({"tls": {"upstream": {"enabled": True}}}, "tls.upstream.enabled=true needs tls.upstream"),
        (
            {"tls": {"mtlsPrincipalFrom": "san_uri"}},
            "tls.mtlsPrincipalFrom needs tls.gateway.enabled=true and tls.gateway.clientCa=true",
        ),
        ({"tracing": {"enabled": True}}, "tracing.enabled=true needs tracing.otlpEndpoint"),
        (
            {"tls": {"decision": {"enabled": True, "secretName": "authz-tls"}}},
            "tls.decision.enabled=true needs decisionService.enabled=true",
        ),
        (
            {**DECISION_TLS, "tls": {"decision": {"enabled": True}}},
            "tls.decision.enabled=true needs tls.decision.secretName",
        ),
        ({"tls": {"gateway": {"minVersion": "1.1"}}}, "minVersion"),
        ({"tracing": {"sampleRatio": 2}}, "sampleRatio"),
    ],
    ids=[
        "gateway-without-secret",
        "upstream-without-secret",
        "mtls-without-client-ca",
        "tracing-without-endpoint",
        "decision-tls-without-decision-service",
        "decision-tls-without-secret",
        "tls-1.1",
        "ratio-above-one",
    ],
)
def test_refused_values(helm: Path, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    """Combinations that could not work fail the install, saying what to set."""
    assert message in refused(helm, tmp_path, values)
