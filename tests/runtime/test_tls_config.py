"""The TLS, mTLS and tracing keys of permgate.yaml: what they accept, where relative
paths point, and the combinations refused with one line each."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from permgate.config import ListenerTls, TracingSettings, UpstreamTls, load_settings
from permgate.core.errors import ConfigError


def write(tmp_path: Path, content: dict[str, Any]) -> Path:
    path = tmp_path / "conf" / "permgate.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


def problems(path: Path | None = None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env or {})
    return caught.value.problems


def test_tls_file_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    """Certificate, key and CA paths written in the file are relative to its folder,
    for every listener and for the upstream; absolute ones are kept."""
    pair = {"cert_file": "certs/tls.crt", "key_file": "/etc/keys/tls.key"}
    path = write(
        tmp_path,
        {
            "upstream": "https://api.internal:8443",
            "listen_tls": {**pair, "client_ca_file": "certs/clients.crt"},
            "admin_tls": pair,
            "upstream_tls": {"ca_file": "ca.crt", "cert_file": "c.crt", "key_file": "c.key"},
        },
    )
    folder = path.parent
    settings = load_settings(path, env={})
    listener = ListenerTls(
        cert_file=str(folder / "certs/tls.crt"),
        key_file="/etc/keys/tls.key",
        client_ca_file=str(folder / "certs/clients.crt"),
    )
    assert settings.listen_tls == listener
    assert settings.admin_tls == ListenerTls(str(folder / "certs/tls.crt"), "/etc/keys/tls.key")
    assert settings.upstream_tls == UpstreamTls(
        ca_file=str(folder / "ca.crt"),
        cert_file=str(folder / "c.crt"),
        key_file=str(folder / "c.key"),
    )


def test_everything_tls_and_tracing_is_off_by_default() -> None:
    """No TLS, no certificate identities and no tracing unless configured."""
    settings = load_settings(env={})
    assert (settings.listen_tls, settings.admin_tls, settings.upstream_tls) == (None, None, None)
    assert (settings.auth.mtls, settings.tracing) == (None, None)


@pytest.mark.parametrize(
    ("written", "expected"),
    [(1.3, "1.3"), ("1.3", "1.3"), (1.2, "1.2"), (None, "1.2")],
    ids=["yaml-number", "string", "yaml-number-1.2", "default"],
)
def test_min_version_as_written(tmp_path: Path, written: object, expected: str) -> None:
    """``min_version: 1.3`` (a YAML number) means the same as "1.3"; the default is 1.2."""
    tls: dict[str, Any] = {"cert_file": "/c", "key_file": "/k"}
    if written is not None:
        tls["min_version"] = written
    settings = load_settings(write(tmp_path, {"listen_tls": tls}), env={})
    assert settings.listen_tls is not None and settings.listen_tls.min_version == expected


def test_tracing_from_the_environment() -> None:
    """PERMGATE_TRACING__* variables configure tracing like the key does."""
    settings = load_settings(
        env={
            "PERMGATE_TRACING__OTLP_ENDPOINT": "http://collector:4318",
            "PERMGATE_TRACING__SAMPLE_RATIO": "0.25",
        }
    )
    assert settings.tracing == TracingSettings("http://collector:4318", 0.25, "permgate")


BAD = [
    (
        {"listen_tls": {"cert_file": "/c"}},
        "listen_tls.key_file: required",
    ),
    (
        {"admin_tls": {"cert_file": "/c", "key_file": "/k", "min_version": "1.1"}},
        "admin_tls.min_version: expected '1.2' or '1.3', got a string ('1.1')",
    ),
    (
        {"listen_tls": {"cert_file": "/c", "key_file": "/k", "verify": False}},
        "listen_tls.verify: unknown key (allowed: cert_file, client_ca_file, key_file, "
        "min_version)",
    ),
    (
        {"upstream": "https://api:8443", "upstream_tls": {"ca_file": "/ca", "verify": False}},
        "upstream_tls.verify: unknown key (allowed: ca_file, cert_file, key_file, server_name)",
    ),
    (
        {"upstream": "https://api:8443", "upstream_tls": {"ca_file": "/ca", "cert_file": "/c"}},
        "upstream_tls: cert_file and key_file go together",
    ),
    (
        {"upstream": "http://api:8000", "upstream_tls": {"ca_file": "/ca"}},
        "upstream_tls: set, but upstream 'http://api:8000' is not https://",
    ),
    (
        {"auth": {"mtls": {"principal_from": "san_uri"}}},
        "auth.mtls: client certificates identify principals only with listen_tls.client_ca_file",
    ),
    (
        {"auth": {"mtls": {"principal_from": "email"}}},
        "auth.mtls.principal_from: expected 'san_uri', 'san_dns' or 'subject_cn', "
        "got a string ('email')",
    ),
    (
        {"tracing": {"otlp_endpoint": "collector:4318"}},
        "tracing.otlp_endpoint: expected the collector's http(s) base URL",
    ),
    (
        {"tracing": {"otlp_endpoint": "http://c:4318", "sample_ratio": 1.5}},
        "tracing.sample_ratio: expected at most 1, got a number (1.5)",
    ),
    (
        {"tracing": {"sample_ratio": 0.5}},
        "tracing.otlp_endpoint: required",
    ),
]


@pytest.mark.parametrize(
    ("content", "message"),
    BAD,
    ids=[
        "listener-without-key",
        "tls-1.1",
        "listener-verify-off",
        "upstream-verify-off",
        "upstream-cert-without-key",
        "upstream-tls-for-http",
        "mtls-without-client-ca",
        "mtls-unknown-field",
        "otlp-endpoint-not-a-url",
        "ratio-above-one",
        "tracing-without-endpoint",
    ],
)
def test_refused_with_one_line(tmp_path: Path, content: dict[str, Any], message: str) -> None:
    """Each problem is one line naming the file, the line, the key and why
    (verification of the upstream cannot be turned off: there is no key for it)."""
    path = write(tmp_path, content)
    found = problems(path)
    line = re.compile(rf"{re.escape(str(path))}:\d+: {re.escape(message)}")
    assert any(line.match(p) for p in found), found
