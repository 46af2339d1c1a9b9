"""``permgate demo``: the sample insurance API behind the gateway, ready to curl.

Everything lives in a temporary folder (the SQLite store, the audit file) and is
gone when the demo stops. The printed curl lines show an allow, a 401, a tenant
deny and a permission deny against real routes of the shipped endpoint map.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from permgate.cli._common import add_common_arguments

if TYPE_CHECKING:
    from permgate.demo.seed import Cast


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser, json_output=False, unused="the demo seeds its own store in a temporary folder"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8080,
        metavar="P",
        help="gateway port (default 8080; 0: any free)",
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=9090,
        metavar="P",
        help="admin port (default 9090; 0: any free)",
    )
    parser.add_argument(
        "--map",
        default=None,
        metavar="MAP",
        help="endpoint map (default: the insurance platform's map shipped inside the package)",
    )


def run(args: argparse.Namespace) -> int:
    if args.map is None:
        # The shipped map is package data, so the demo works from any directory.
        # as_file gives a real path even if the package is ever loaded from a zip.
        shipped = resources.files("permgate") / "data" / "endpoint_map.yaml"
        with resources.as_file(shipped) as map_path:
            if not map_path.is_file():
                print(
                    f"permgate demo: the endpoint map shipped with permgate is missing "
                    f"({map_path}); reinstall permgate or pass --map PATH",
                    file=sys.stderr,
                )
                return 2
            return _run(args, map_path)
    map_path = Path(args.map)
    if not map_path.is_file():
        print(f"permgate demo: endpoint map {str(map_path)!r} not found (--map)", file=sys.stderr)
        return 2
    return _run(args, map_path)


def _run(args: argparse.Namespace, map_path: Path) -> int:
    from permgate.runtime.app import install_uvloop

    install_uvloop()
    try:
        asyncio.run(_demo(map_path.resolve(), _port(args.port), _port(args.admin_port)))
    except OSError as exc:
        print(f"permgate demo: cannot listen: {exc}; try --port/--admin-port", file=sys.stderr)
        return 2
    return 0


def _port(wanted: int) -> int:
    if wanted:
        return wanted
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _demo(map_path: Path, port: int, admin_port: int) -> None:
    from aiohttp import web

    from permgate.config import load_settings
    from permgate.demo.seed import seed
    from permgate.demo.upstream import sample_api
    from permgate.manage.service import ModelService
    from permgate.runtime.app import serve
    from permgate.store import open_store

    with tempfile.TemporaryDirectory(prefix="permgate-demo-") as folder:
        dsn = f"sqlite://{folder}/permgate.db"
        store = await open_store(dsn)
        try:
            cast = await seed(ModelService(store))
        finally:
            await store.close()

        upstream = web.AppRunner(sample_api(), access_log=None)
        await upstream.setup()
        site = web.TCPSite(upstream, "127.0.0.1", 0)
        await site.start()
        upstream_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        settings = load_settings(
            env={},
            overrides={
                "listen": f"127.0.0.1:{port}",
                "admin_listen": f"127.0.0.1:{admin_port}",
                "upstream": f"http://127.0.0.1:{upstream_port}",
                "endpoint_map": str(map_path),
                "store": dsn,
                "audit.sink": f"file:{folder}/audit.log",
            },
        )
        try:
            await serve(
                settings,
                on_ready=lambda runtime: _print_instructions(
                    port, admin_port, cast, folder, map_path
                ),
            )
        finally:
            await upstream.cleanup()


def _print_instructions(
    port: int, admin_port: int, cast: Cast, folder: str, map_path: Path
) -> None:
    gw = f"http://127.0.0.1:{port}"
    lines = [
        "permgate demo is running: a sample insurance API behind the gateway.",
        f"  gateway {gw}   admin http://127.0.0.1:{admin_port}   data {folder}",
        f"  endpoint map {map_path}",
        "  account acme: tenants acme-prod (PRODUCTION) and acme-test (TEST)",
        "  adjuster@acme: claims-only on acme-prod | auditor@acme: read-only on any tenant",
        "  agent@acme: Sales Agent on type:test tenants",
        "",
        f"ADJUSTER={cast.adjuster}",
        f"AUDITOR={cast.auditor}",
        f"AGENT={cast.agent}",
        "",
        "# allow: the adjuster reads a claim (FNOL) on its tenant -> 200",
        f'curl -i -H "Authorization: Bearer $ADJUSTER" {gw}/claim/acme-prod/fnols/F-1001',
        "# no credential -> 401 missing_credentials",
        f"curl -i {gw}/claim/acme-prod/fnols/F-1001",
        "# tenant deny: the adjuster tries the TEST tenant -> 403 tenant_out_of_scope",
        f'curl -i -H "Authorization: Bearer $ADJUSTER" {gw}/claim/acme-test/fnols/F-1001',
        "# permission deny: the read-only auditor creates a quote -> 403 missing_permission",
        f'curl -i -X POST -H "Authorization: Bearer $AUDITOR" {gw}/policy/acme-prod/quotes',
        "# allow: the sales agent creates a quote on the TEST tenant -> 201",
        f'curl -i -X POST -H "Authorization: Bearer $AGENT" {gw}/policy/acme-test/quotes',
        "# public: no credential needed -> 200",
        f"curl -i {gw}/billing/events",
        "# the decisions, as a dashboard sees them",
        f"curl -s http://127.0.0.1:{admin_port}/metrics | grep ^permgate_decisions_total",
        "",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)
