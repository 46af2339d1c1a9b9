"""``https://`` upstreams through the lean client: verified always, failures are 502s
whose reason is in the audit event's ``detail``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from harness import Gateway, Upstream, eventually, free_port, start_gateway
from permgate.config import UpstreamTls
from permgate.runtime.tls import upstream_context
from tlsfiles import client_cert, der, leaf_pems, secret_folder, swap_secret, write_ca, write_leaf

PATH = "/policy/acme-prod/quotes/q1"


@contextlib.asynccontextmanager
async def tls_upstream(
    tmp_path: Path,
    leaf: trustme.LeafCert,
    client_ca: trustme.CA | None = None,
) -> AsyncIterator[tuple[int, Upstream]]:
    """The echo upstream over TLS with ``leaf``; with ``client_ca`` it requires a
    client certificate from that CA."""
    cert, key = write_leaf(tmp_path / "upstream", leaf)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.load_verify_locations(cadata=client_ca.cert_pem.bytes().decode())
        context.verify_mode = ssl.CERT_REQUIRED
    upstream = Upstream()
    runner = web.AppRunner(upstream.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield port, upstream
    finally:
        await runner.cleanup()


async def call(url: str, token: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + PATH, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status, await response.json()


async def last_decision(gw: Gateway) -> dict[str, object]:
    """The last decision event, once the audit log has written it."""

    def decisions() -> list[dict[str, object]]:
        events = [json.loads(line) for line in gw.audit_lines()]
        return [e for e in events if e["event"] == "decision"]

    found: list[dict[str, object]] = await eventually(decisions, "a decision audit event")
    return found[-1]


async def test_an_https_upstream_verified_against_its_ca(tmp_path: Path) -> None:
    """With upstream_tls.ca_file, an upstream whose certificate chains to that CA and
    names the host is reached over TLS; keep-alive reuses the TLS connection."""
    ca = trustme.CA()
    async with tls_upstream(tmp_path, ca.issue_cert("127.0.0.1", "localhost")) as (port, up):
        ca_file = write_ca(tmp_path, ca)
        async with start_gateway(
            tmp_path,
            upstream_url=f"https://localhost:{port}",
            upstream_tls={"ca_file": str(ca_file)},
        ) as gw:
            for _ in range(3):
                status, body = await call(gw.url, gw.tokens["alice"])
                assert status == 200, body
            assert [seen["raw_path"] for seen in up.seen] == [PATH] * 3
            assert gw.runtime.upstream.open_connections == 1


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("another-ca", "certificate verify failed"),
        ("wrong-name", "certificate verify failed: IP address mismatch"),
    ],
    ids=["certificate-from-another-ca", "certificate-for-another-name"],
)
async def test_an_upstream_that_does_not_verify_is_a_502_with_the_reason_audited(
    tmp_path: Path, case: str, why: str
) -> None:
    """A failed TLS handshake (verification included) is 502 upstream_unavailable;
    the audit event's detail says why, and nothing reached the upstream."""
    ca, other = trustme.CA(), trustme.CA()
    leaf = (other if case == "another-ca" else ca).issue_cert(
        "127.0.0.1" if case == "another-ca" else "elsewhere.example"
    )
    async with (
        tls_upstream(tmp_path, leaf) as (port, up),
        start_gateway(
            tmp_path,
            upstream_url=f"https://127.0.0.1:{port}",
            upstream_tls={"ca_file": str(write_ca(tmp_path, ca))},
        ) as gw,
    ):
        status, body = await call(gw.url, gw.tokens["alice"])
        assert (status, body["reason"]) == (502, "upstream_unavailable")
        event = await last_decision(gw)
        assert event["status"] == 502
        assert str(event["detail"]).startswith(f"TLS handshake with the upstream failed: {why}")
        assert up.seen == []


async def test_server_name_is_the_name_verified(tmp_path: Path) -> None:
    """upstream_tls.server_name is the name the upstream's certificate must carry
    (SNI and verification) when the upstream is addressed by IP."""
    ca = trustme.CA()
    tls = {"ca_file": str(write_ca(tmp_path, ca)), "server_name": "api.internal"}
    async with (
        tls_upstream(tmp_path, ca.issue_cert("api.internal")) as (port, up),
        start_gateway(tmp_path, upstream_url=f"https://127.0.0.1:{port}", upstream_tls=tls) as gw,
    ):
        status, _ = await call(gw.url, gw.tokens["alice"])
        assert status == 200
        assert len(up.seen) == 1


async def test_a_client_certificate_for_an_upstream_that_requires_one(tmp_path: Path) -> None:
    """upstream_tls.cert_file/key_file are presented to an upstream that requires
    client certificates; without them the same upstream refuses (502)."""
    ca, clients = trustme.CA(), trustme.CA()
    cert, key = client_cert(clients, tmp_path / "client", dns="permgate.internal")
    async with tls_upstream(tmp_path, ca.issue_cert("127.0.0.1"), client_ca=clients) as (
        port,
        up,
    ):
        ca_file = write_ca(tmp_path, ca)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with_cert = {"ca_file": str(ca_file), "cert_file": str(cert), "key_file": str(key)}
        async with start_gateway(
            tmp_path / "a", upstream_url=f"https://127.0.0.1:{port}", upstream_tls=with_cert
        ) as gw:
            assert (await call(gw.url, gw.tokens["alice"]))[0] == 200
        async with start_gateway(
            tmp_path / "b",
            upstream_url=f"https://127.0.0.1:{port}",
            upstream_tls={"ca_file": str(ca_file)},
        ) as gw:
            assert (await call(gw.url, gw.tokens["alice"]))[0] == 502
        assert len(up.seen) == 1


async def test_a_rotated_client_certificate_is_presented_on_new_connections(
    tmp_path: Path,
) -> None:
    """The upstream client's certificate is re-read like a listener's: after a
    Secret-style swap, new connections present the new certificate."""
    ca, clients = trustme.CA(), trustme.CA()
    first, second = clients.issue_cert("permgate-a"), clients.issue_cert("permgate-b")
    folder = tmp_path / "client"
    cert, key = secret_folder(folder, first)
    server_cert, server_key = write_leaf(tmp_path / "server", ca.issue_cert("127.0.0.1"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(server_cert), str(server_key))
    server.load_verify_locations(cadata=clients.cert_pem.bytes().decode())
    server.verify_mode = ssl.CERT_REQUIRED
    presented: list[bytes] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        presented.append(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        writer.close()

    listening = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=server)
    port = listening.sockets[0].getsockname()[1]
    settings = UpstreamTls(
        ca_file=str(write_ca(tmp_path, ca)), cert_file=str(cert), key_file=str(key)
    )
    reloading = upstream_context(settings)

    async def connect() -> None:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=reloading.context, server_hostname="127.0.0.1"
        )
        await asyncio.sleep(0.05)
        writer.close()

    try:
        await connect()
        assert not reloading.refresh()  # nothing changed
        swap_secret(folder, *leaf_pems(second), version=2)
        assert reloading.refresh()
        await connect()
        await eventually(lambda: len(presented) == 2, "two handshakes")
        assert presented == [der(first), der(second)]
    finally:
        listening.close()
        await listening.wait_closed()
