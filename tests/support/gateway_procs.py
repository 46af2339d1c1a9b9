"""Real `permgate serve` processes for tests: config, start, readiness, a store
seeded with the harness cast on a fresh PostgreSQL database, an echo upstream.

Shared by the fleet and the store-outage tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web

from harness import TEST_MAP, Upstream, eventually, free_port, seed
from permgate.manage.service import ModelService
from permgate.store import open_store

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
BOUND = 1.0  # a change reaches every gateway on the store within one second
POLL = 0.02  # how often the other gateway is asked while a change is made

# -- PostgreSQL --------------------------------------------------------------------------


async def seed_store(dsn: str) -> dict[str, str]:
    """The harness cast, written through ModelService; token secrets by name."""
    store = await open_store(dsn)
    try:
        return await seed(ModelService(store))
    finally:
        await store.close()


# -- processes --------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """The test's environment without PERMGATE_* settings (the config file rules)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PERMGATE_")}


@dataclass
class GatewayProcess:
    """One `permgate serve` process: its URLs, its config and its log."""

    name: str
    url: str
    admin_url: str
    config: Path
    log: Path
    process: asyncio.subprocess.Process | None = None

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()
            await process.wait()


def write_gateway_config(
    tmp_path: Path, name: str, *, store: str, upstream: str, extra: dict[str, Any] | None = None
) -> GatewayProcess:
    """A config file (own ports and audit file, the shared map) for gateway ``name``."""
    map_path = tmp_path / "endpoint_map.yaml"
    if not map_path.exists():
        map_path.write_text(TEST_MAP, encoding="utf-8")
    port, admin_port = free_port(), free_port()
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "upstream": upstream,
        "endpoint_map": str(map_path),
        "store": store,
        "audit": {"sink": f"file:{tmp_path / f'audit-{name}.log'}"},
        **(extra or {}),
    }
    path = tmp_path / f"gateway-{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return GatewayProcess(
        name=name,
        url=f"http://127.0.0.1:{port}",
        admin_url=f"http://127.0.0.1:{admin_port}",
        config=path,
        log=tmp_path / f"gateway-{name}.stderr",
    )


async def start_gateway_process(gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    """Start `permgate serve` and wait (bounded) until its /readyz answers 200."""
    with gateway.log.open("wb") as log:
        gateway.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "permgate",
            "serve",
            "--config",
            str(gateway.config),
            cwd=gateway.config.parent,
            env=clean_env(),
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if gateway.process.returncode is not None:
            raise AssertionError(f"gateway {gateway.name} exited:\n{gateway.log_text()}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{gateway.admin_url}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    await gateway.stop()
    raise AssertionError(f"gateway {gateway.name} not ready in time:\n{gateway.log_text()}")


async def run_permgate(*args: str, cwd: Path) -> str:
    """Run a `permgate` command to completion (bounded); its stdout; fails on non-zero."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "permgate",
        *args,
        cwd=cwd,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"permgate {' '.join(args)} failed:\n{err.decode()}"
    return out.decode()


@contextlib.asynccontextmanager
async def echo_upstream() -> AsyncIterator[str]:
    """The harness's echo upstream in the test's event loop; its URL."""
    runner = web.AppRunner(Upstream().app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


Outcome = tuple[int, str | None]


async def outcome(http: aiohttp.ClientSession, method: str, url: str, credential: str) -> Outcome:
    """Status and refusal reason (None when forwarded) of one request."""
    headers = {"Authorization": f"Bearer {credential}"}
    async with http.request(method, url, headers=headers) as response:
        body = await response.read()
        if response.status < 400:
            return response.status, None
        return response.status, orjson.loads(body).get("reason")


# -- one gateway on SQLite ------------------------------------------------------------

START_SECONDS = 60.0
WAIT_SECONDS = 10.0


@dataclass
class Served:
    """A running `permgate serve` and what a test needs to reach it."""

    process: asyncio.subprocess.Process
    url: str
    admin_url: str
    tokens: dict[str, str]
    tmp_path: Path
    config: Path

    @property
    def log(self) -> Path:
        """Where the process's stderr (its log) goes."""
        return self.tmp_path / "serve.stderr"

    def audit_files(self) -> list[Path]:
        return sorted(self.tmp_path.glob("audit*.log"))

    def events(self, path: Path | None = None) -> list[dict[str, Any]]:
        files = [path] if path is not None else self.audit_files()
        return [
            orjson.loads(line)
            for file in files
            if file.exists()
            for line in file.read_text().splitlines()
            if line.strip()
        ]

    def log_lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()

    def log_records(self) -> list[dict[str, Any]]:
        """Every log line as the JSON object it must be (JSON is the default off a terminal)."""
        return [orjson.loads(line) for line in self.log_lines()]


async def seed_sqlite(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A SQLite store in ``tmp_path`` seeded with the harness cast: its DSN, the secrets."""
    dsn = f"sqlite://{tmp_path}/permgate.db"
    store = await open_store(dsn)
    try:
        return dsn, await seed(ModelService(store))
    finally:
        await store.close()


def write_sqlite_config(
    tmp_path: Path,
    upstream_url: str,
    *,
    listen: str,
    admin_listen: str,
    store: str,
    extra: str = "",
) -> Path:
    """``tmp_path/permgate.yaml`` for `permgate serve`: the test map, a file audit sink."""
    map_path = tmp_path / "endpoint_map.yaml"
    if not map_path.exists():
        map_path.write_text(TEST_MAP, encoding="utf-8")
    config = tmp_path / "permgate.yaml"
    config.write_text(
        f"""
listen: {listen}
admin_listen: {admin_listen}
upstream: {upstream_url}
endpoint_map: {map_path}
store: {store}
audit: {{sink: "file:{tmp_path}/audit.log"}}
{extra}
""",
        encoding="utf-8",
    )
    return config


def serve_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment without PERMGATE_* settings, with a metrics folder."""
    env = clean_env()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")  # not created: serve does
    return env


@dataclass(frozen=True)
class Exited:
    """A `permgate` process that ran to its end."""

    code: int
    stdout: str
    stderr: str


async def run_to_exit(*args: str, cwd: Path, timeout: float = START_SECONDS) -> Exited:
    """Run ``permgate ARGS`` until it exits by itself (bounded); its code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "permgate",
        *args,
        cwd=cwd,
        env=serve_env(cwd),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"permgate {' '.join(args)} did not exit within {timeout} s") from None
    assert process.returncode is not None
    return Exited(process.returncode, out.decode(), err.decode())


@contextlib.asynccontextmanager
async def serve_sqlite(
    tmp_path: Path, upstream_url: str, *, workers: int = 1, extra: str = ""
) -> AsyncIterator[Served]:
    """Seed a store, write a config with a file audit sink, run `permgate serve`
    (its stderr in ``Served.log``) until ready; stop it on the way out if the test
    did not."""
    dsn, tokens = await seed_sqlite(tmp_path)
    port, admin_port = free_port(), free_port()
    config = write_sqlite_config(
        tmp_path,
        upstream_url,
        listen=f"127.0.0.1:{port}",
        admin_listen=f"127.0.0.1:{admin_port}",
        store=dsn,
        extra=extra,
    )
    with (tmp_path / "serve.stderr").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "permgate",
            "serve",
            "--config",
            str(config),
            "--workers",
            str(workers),
            env=serve_env(tmp_path),
            stderr=log,
        )
    served = Served(
        process,
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{admin_port}",
        tokens,
        tmp_path,
        config,
    )
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                if process.returncode is not None:
                    raise AssertionError(
                        f"permgate serve exited with {process.returncode}:\n"
                        + "\n".join(served.log_lines())
                    )
                if len(served.audit_files()) < workers:  # each worker opens its own
                    return False
                # Every worker serving, not only the one that answers /readyz: a
                # signal sent to a worker still starting would simply end it.
                if served.log.read_text(errors="replace").count("permgate serving") < workers:
                    return False
                try:
                    async with http.get(served.admin_url + "/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(ready, "permgate serve to be ready", START_SECONDS)
        yield served
    finally:
        await stop_serve(process)


async def stop_serve(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, so that a parent stops its workers too; SIGKILL if that takes too long."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), START_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
