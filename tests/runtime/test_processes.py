"""permgate as real processes: `permgate demo`; `permgate serve` draining on SIGTERM;
its workers sharing the sockets the parent bound, and not outliving it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

import permgate
from demo_client import EXPECTED_OUTCOMES, running_demo, try_printed_lines
from gateway_procs import seed_sqlite, serve_env, serve_sqlite, stop_serve, write_sqlite_config
from harness import eventually, free_port

pytestmark = pytest.mark.slow


async def test_demo_prints_curl_lines_that_show_each_outcome(tmp_path: Path) -> None:
    """`permgate demo` run from an empty directory (its map comes from the package) on a
    fresh temp store: the printed lines give 200, 401, 403, 403, then 201 and 200."""
    command = [sys.executable, "-m", "permgate", "demo", "--port", "0", "--admin-port", "0"]
    async with running_demo(command, cwd=tmp_path) as demo:
        assert await try_printed_lines(demo.text) == EXPECTED_OUTCOMES


@pytest.fixture
async def slow_upstream() -> AsyncIterator[tuple[str, list[str]]]:
    """An upstream whose /slow answers after one second; records what completed."""
    done: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        done.append(request.path)
        return web.json_response({"slow": True})

    app = web.Application()
    app.router.add_get("/slow/{tenant}", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", done
    await runner.cleanup()


async def test_sigterm_finishes_in_flight_requests_then_exits(
    tmp_path: Path, slow_upstream: tuple[str, list[str]]
) -> None:
    """On SIGTERM the gateway stops accepting, finishes what it started, writes its
    audit events and exits 0."""
    upstream_url, done = slow_upstream
    async with serve_sqlite(tmp_path, upstream_url) as served, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {served.tokens['bob']}"}
        in_flight = asyncio.create_task(http.get(served.url + "/slow/acme-prod", headers=headers))
        await asyncio.sleep(0.3)
        served.process.send_signal(signal.SIGTERM)
        response = await in_flight
        assert response.status == 200
        assert await response.json() == {"slow": True}
        response.release()
        assert await asyncio.wait_for(served.process.wait(), timeout=30) == 0
    assert done == ["/slow/acme-prod"]
    decisions = [e for e in served.events() if e["event"] == "decision"]
    assert [(e["endpoint"], e["status"]) for e in decisions] == [("slow", 200)]


async def test_demo_serves_the_map_shipped_inside_the_package(tmp_path: Path) -> None:
    """Without --map the demo serves the package's own copy of the shipped map, wherever
    it is started."""
    command = [sys.executable, "-m", "permgate", "demo", "--port", "0", "--admin-port", "0"]
    async with running_demo(command, cwd=tmp_path) as demo:
        packaged = Path(permgate.__file__).parent / "data" / "endpoint_map.yaml"
        assert Path(demo.map_path) == packaged


async def test_demo_map_option_overrides_the_shipped_map(tmp_path: Path) -> None:
    """--map MAP (relative to the current directory) replaces the shipped map."""
    shutil.copy(Path(permgate.__file__).parent / "data" / "endpoint_map.yaml", tmp_path / "m.yaml")
    command = [sys.executable, "-m", "permgate", "demo", "--port", "0", "--admin-port", "0"]
    async with running_demo([*command, "--map", "m.yaml"], cwd=tmp_path) as demo:
        assert Path(demo.map_path) == (tmp_path / "m.yaml").resolve()


def test_demo_with_a_missing_map_is_one_clear_line(tmp_path: Path) -> None:
    """--map naming no file: exit 2 and one line naming the file and the option."""
    result = subprocess.run(
        [sys.executable, "-m", "permgate", "demo", "--port", "0", "--map", "nope.yaml"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("PERMGATE_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "permgate demo: endpoint map 'nope.yaml' not found (--map)"
    ]


def _serving(served_log: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in served_log if str(r["message"]).startswith("permgate serving")]


async def test_two_workers_on_port_zero_share_the_one_port_the_log_names(tmp_path: Path) -> None:
    """`listen: 127.0.0.1:0` with --workers 2: the parent binds once, logs the real
    address, and both workers serve that very port (the sockets are inherited)."""
    dsn, _ = await seed_sqlite(tmp_path)
    config = write_sqlite_config(
        tmp_path, "http://127.0.0.1:9", listen="127.0.0.1:0", admin_listen="127.0.0.1:0", store=dsn
    )
    log = tmp_path / "serve.stderr"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "permgate", "serve", "--config", str(config),
            "--workers", "2", env=serve_env(tmp_path), stderr=stderr,
        )  # fmt: skip
    try:

        def records() -> list[dict[str, object]]:
            return [orjson.loads(line) for line in log.read_text().splitlines()]

        await eventually(lambda: len(_serving(records())) == 2, "both workers serving", 60)
        parent = next(r for r in records() if "workers on" in str(r["message"]))
        workers = _serving(records())
        assert {(r["listen"], r["admin_listen"]) for r in workers} == {
            (parent["listen"], parent["admin_listen"])
        }
        assert not str(parent["listen"]).endswith(":0")
        assert len({r["pid"] for r in workers}) == 2
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{parent['admin_listen']}/readyz") as response:
                assert response.status == 200
            async with http.get(f"http://{parent['listen']}/policy/acme-prod/quotes/q1") as r:
                assert r.status == 401  # the gateway answers on the logged port
    finally:
        await stop_serve(process)
    assert process.returncode == 0


async def test_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL to the parent of --workers 2: the workers notice, drain and exit, and
    the address is free again (no orphan keeps serving the inherited socket)."""
    async with serve_sqlite(tmp_path, "http://127.0.0.1:9", workers=2) as served:
        await eventually(
            lambda: len(_serving(served.log_records())) == 2, "both workers serving", 60
        )
        pids = [int(str(r["pid"])) for r in _serving(served.log_records())]
        served.process.kill()
        await served.process.wait()

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        await eventually(lambda: all(gone(pid) for pid in pids), "the workers to exit", 30)
    host, port = served.url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.bind((host, int(port)))  # free again
    stopped = [r for r in served.log_records() if "parent process is gone" in str(r["message"])]
    assert len(stopped) == 2
