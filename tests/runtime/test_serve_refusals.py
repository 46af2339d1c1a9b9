"""`permgate serve` refusals as real processes: each is exit code 2 and exactly one line
on stderr naming what, where and why, never a traceback.

A second `serve` on the addresses a running one holds is refused, whether either of
them runs workers: two instances must never silently split the traffic."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway_procs import (
    Exited,
    echo_upstream,
    run_to_exit,
    seed_sqlite,
    serve_sqlite,
    write_sqlite_config,
)
from harness import eventually, free_port

pytestmark = pytest.mark.slow


def assert_refused(exited: Exited, *fragments: str) -> None:
    """Exit 2, one line on stderr saying each fragment, no traceback."""
    assert "Traceback" not in exited.stderr, exited.stderr
    assert exited.stderr.count("\n") == 1, exited.stderr
    line = exited.stderr.strip()
    assert line.startswith("permgate serve: "), line
    for fragment in fragments:
        assert fragment in line, line
    assert exited.code == 2


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """The harness's echo upstream; its URL."""
    async with echo_upstream() as url:
        yield url


@pytest.fixture
def stranger() -> Iterator[int]:
    """A loopback port that another program (a plain listening socket) holds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2], ids=["one process", "two workers"])
@pytest.mark.parametrize("key", ["listen", "admin_listen"], ids=["gateway", "admin"])
async def test_a_port_held_by_another_program_is_refused_naming_the_key(
    tmp_path: Path, upstream: str, stranger: int, key: str, workers: int
) -> None:
    """The gateway's or the admin listener's port in use: the key, the address, why."""
    held = f"127.0.0.1:{stranger}"
    addresses = {"listen": f"127.0.0.1:{free_port()}", "admin_listen": f"127.0.0.1:{free_port()}"}
    addresses[key] = held
    dsn, _ = await seed_sqlite(tmp_path)
    config = write_sqlite_config(tmp_path, upstream, store=dsn, **addresses)
    exited = await run_to_exit(
        "serve", "--config", str(config), "--workers", str(workers), cwd=tmp_path
    )
    assert_refused(exited, f"{key} {held}:", "already in use")


async def test_an_address_of_no_interface_is_refused(tmp_path: Path, upstream: str) -> None:
    """`listen` on an address this machine does not have (192.0.2.1 is reserved for
    documentation) says so, rather than a bare errno."""
    dsn, _ = await seed_sqlite(tmp_path)
    config = write_sqlite_config(
        tmp_path,
        upstream,
        listen="192.0.2.1:8080",
        admin_listen=f"127.0.0.1:{free_port()}",
        store=dsn,
    )
    exited = await run_to_exit("serve", "--config", str(config), cwd=tmp_path)
    assert_refused(exited, "listen 192.0.2.1:8080: no network interface of this machine has")


async def test_the_admin_listener_on_the_gateway_address_is_refused(
    tmp_path: Path, upstream: str
) -> None:
    """`admin_listen` equal to `listen` is a mistake in the config, not another process."""
    address = f"127.0.0.1:{free_port()}"
    dsn, _ = await seed_sqlite(tmp_path)
    config = write_sqlite_config(
        tmp_path, upstream, listen=address, admin_listen=address, store=dsn
    )
    exited = await run_to_exit("serve", "--config", str(config), cwd=tmp_path)
    assert_refused(exited, f"admin_listen {address}: the same address as listen")


@pytest.mark.parametrize("workers", [1, 2], ids=["one process", "two workers"])
async def test_a_store_in_a_missing_folder_is_refused_naming_the_folder(
    tmp_path: Path, upstream: str, workers: int
) -> None:
    """`store: sqlite:///…/missing/p.db`: the DSN and that the folder does not exist,
    before anything else is logged (with workers, said once by the parent)."""
    dsn = f"sqlite://{tmp_path}/missing/p.db"
    config = write_sqlite_config(
        tmp_path,
        upstream,
        listen=f"127.0.0.1:{free_port()}",
        admin_listen=f"127.0.0.1:{free_port()}",
        store=dsn,
    )
    exited = await run_to_exit(
        "serve", "--config", str(config), "--workers", str(workers), cwd=tmp_path
    )
    assert_refused(exited, dsn, f"the folder {tmp_path}/missing does not exist")


SECOND_SERVE = [
    pytest.param(1, 1, id="one process, then another"),
    pytest.param(2, 1, id="two workers, then one process"),
    pytest.param(1, 2, id="one process, then two workers"),
    pytest.param(2, 2, id="two workers, then two workers"),
]


@pytest.mark.parametrize(("first", "second"), SECOND_SERVE)
async def test_a_second_serve_on_held_addresses_is_refused_and_the_first_keeps_all_traffic(
    tmp_path: Path, upstream: str, first: int, second: int
) -> None:
    """A second `serve` with the same config is refused naming the gateway address;
    the first answers every request (each on a new connection) and audits each one."""
    async with serve_sqlite(tmp_path, upstream, workers=first) as served:
        exited = await run_to_exit(
            "serve", "--config", str(served.config), "--workers", str(second), cwd=tmp_path
        )
        listen = served.url.removeprefix("http://")
        assert_refused(exited, f"listen {listen}:", "already in use", "another permgate serve")
        headers = {"Authorization": f"Bearer {served.tokens['bob']}"}
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(20):
                async with http.get(
                    served.url + "/policy/acme-prod/quotes/q1", headers=headers
                ) as r:
                    assert r.status == 200
        assert served.process.returncode is None
        await eventually(
            lambda: len([e for e in served.events() if e["event"] == "decision"]) == 20,
            "an audit event for each of the 20 requests",
        )
