"""TLS on the gateway and admin listeners: HTTPS, minimum versions, rotation on disk.

Real gateways on loopback with trustme certificates; rotation is written the way a
mounted Kubernetes Secret changes (a ``..data`` symlink swap).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme

from gateway_procs import echo_upstream, run_to_exit, serve_sqlite, write_sqlite_config
from harness import eventually, start_gateway
from permgate.config import load_settings
from permgate.core.errors import ConfigError
from permgate.manage.service import Actor, ModelService
from permgate.runtime.tls import TlsSetup
from permgate.store import open_store
from rawhttp import read_response, request
from tlsfiles import (
    client_cert,
    client_context,
    der,
    leaf_pems,
    secret_folder,
    swap_secret,
    write_ca,
    write_leaf,
)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def listener_tls(tmp_path: Path, ca: trustme.CA, name: str, **extra: str) -> dict[str, str]:
    cert, key = write_leaf(tmp_path / name, ca.issue_cert("127.0.0.1", "localhost"))
    return {"cert_file": str(cert), "key_file": str(key), **extra}


def https(url: str) -> str:
    return url.replace("http://", "https://")


async def get(url: str, context: ssl.SSLContext, **headers: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.get(url, headers=headers) as response,
    ):
        return response.status, await response.text()


async def peer_certificate(host: str, port: int, context: ssl.SSLContext) -> bytes:
    """The certificate a new handshake with ``host:port`` presents (DER)."""
    _reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        obj = writer.get_extra_info("ssl_object")
        cert: bytes = obj.getpeercert(binary_form=True)
        return cert
    finally:
        writer.close()
        await writer.wait_closed()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_https_on_the_gateway_and_admin_listeners(tmp_path: Path, ca: trustme.CA) -> None:
    """With listen_tls and admin_tls, both listeners answer HTTPS with the configured
    certificate, verified by a client that trusts its CA."""
    ca_file = write_ca(tmp_path, ca)
    async with start_gateway(
        tmp_path,
        listen_tls=listener_tls(tmp_path, ca, "gw"),
        admin_tls=listener_tls(tmp_path, ca, "admin"),
    ) as gw:
        context = client_context(ca_file)
        status, _ = await get(https(gw.url) + "/health", context)
        assert status == 200
        status, _body = await get(https(gw.admin_url) + "/healthz", context)
        assert status == 200
        token = gw.tokens["alice"]
        status, _ = await get(
            https(gw.url) + "/policy/acme-prod/quotes/q1", context, Authorization=f"Bearer {token}"
        )
        assert status == 200
        assert gw.upstream.seen[-1]["headers"]["X-Forwarded-Proto"] == "https"


async def test_plain_http_to_a_tls_listener_gets_no_answer(tmp_path: Path, ca: trustme.CA) -> None:
    """A listener with TLS speaks nothing else: a plain HTTP request is not served."""
    async with start_gateway(tmp_path, listen_tls=listener_tls(tmp_path, ca, "gw")) as gw:
        with pytest.raises(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session:
                await session.get(gw.url + "/health", timeout=aiohttp.ClientTimeout(total=5))
        assert gw.upstream.seen == []


@pytest.mark.parametrize(
    ("min_version", "client_max", "accepted"),
    [
        ("1.2", ssl.TLSVersion.TLSv1_2, True),
        ("1.2", ssl.TLSVersion.TLSv1_3, True),
        ("1.3", ssl.TLSVersion.TLSv1_2, False),
        ("1.3", ssl.TLSVersion.TLSv1_3, True),
    ],
    ids=["1.2-accepts-1.2", "1.2-accepts-1.3", "1.3-refuses-1.2", "1.3-accepts-1.3"],
)
async def test_minimum_version(
    tmp_path: Path, ca: trustme.CA, min_version: str, client_max: ssl.TLSVersion, accepted: bool
) -> None:
    """min_version is the oldest protocol a listener accepts (admin listener too)."""
    ca_file = write_ca(tmp_path, ca)
    tls = listener_tls(tmp_path, ca, "gw", min_version=min_version)
    async with start_gateway(tmp_path, listen_tls=tls, admin_tls=tls) as gw:
        context = client_context(ca_file, maximum=client_max)
        for url in (https(gw.url) + "/health", https(gw.admin_url) + "/healthz"):
            if accepted:
                assert (await get(url, context))[0] == 200
            else:
                with pytest.raises(aiohttp.ClientConnectorError):
                    await get(url, context)


async def test_rotation_is_seen_by_new_handshakes_while_an_open_connection_keeps_working(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """A Secret update (``..data`` swapped to a new folder) is used by new handshakes
    within seconds, without a restart, and a keep-alive connection opened before it
    keeps being served."""
    ca_file = write_ca(tmp_path, ca)
    first, second = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    folder = tmp_path / "secret"
    cert, key = secret_folder(folder, first)
    async with start_gateway(
        tmp_path, listen_tls={"cert_file": str(cert), "key_file": str(key)}
    ) as gw:
        port = port_of(gw.url)
        context = client_context(ca_file)
        assert await peer_certificate("127.0.0.1", port, context) == der(first)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        try:
            writer.write(request("GET", "/health"))
            assert (await read_response(reader)).status == 200
            swap_secret(folder, *leaf_pems(second), version=2)

            async def rotated() -> bool:
                return await peer_certificate("127.0.0.1", port, context) == der(second)

            await eventually(rotated, "the new certificate on new handshakes", timeout=10)
            writer.write(request("GET", "/health"))  # the same connection, still served
            answer = await read_response(reader)
            assert answer.status == 200
            assert "close" not in answer.headers.get("Connection", "")
            peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            assert peer == der(first)
        finally:
            writer.close()


async def test_a_bad_new_certificate_keeps_the_old_one_and_logs_why(
    tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotated key that does not match its certificate is refused: the previous
    certificate stays in use and one error line says what was wrong."""
    ca_file = write_ca(tmp_path, ca)
    first, second, third = (ca.issue_cert("127.0.0.1") for _ in range(3))
    folder = tmp_path / "secret"
    cert, key = secret_folder(folder, first)
    caplog.set_level(logging.INFO, logger="permgate.tls")
    async with start_gateway(
        tmp_path, listen_tls={"cert_file": str(cert), "key_file": str(key)}
    ) as gw:
        port = port_of(gw.url)
        context = client_context(ca_file)
        mismatched = (leaf_pems(second)[0], leaf_pems(third)[1])
        swap_secret(folder, *mismatched, version=2)
        await eventually(
            lambda: any(r.levelno == logging.ERROR for r in caplog.records),
            "an error about the new files",
        )
        error = next(r for r in caplog.records if r.levelno == logging.ERROR).getMessage()
        assert "listen_tls" in error and "previous certificate stays in use" in error
        assert await peer_certificate("127.0.0.1", port, context) == der(first)
        assert (await get(https(gw.url) + "/health", context))[0] == 200


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("missing-cert", "listen_tls.cert_file: {cert}: cannot read: no such file"),
        ("garbage-cert", "listen_tls: {cert} and {key}: not a PEM certificate chain"),
        ("missing-ca", "listen_tls.client_ca_file: {ca}: cannot read: no such file"),
    ],
    ids=["missing-cert", "garbage-cert", "missing-client-ca"],
)
def test_unusable_files_are_one_line_each(
    tmp_path: Path, ca: trustme.CA, which: str, expected: str
) -> None:
    """Certificate files that cannot be used stop the start with one line naming the
    key, the file and why."""
    cert, key = write_leaf(tmp_path, ca.issue_cert("localhost"))
    ca_file = tmp_path / "client-ca.pem"
    tls: dict[str, str] = {"cert_file": str(cert), "key_file": str(key)}
    if which == "missing-cert":
        cert.unlink()
    elif which == "garbage-cert":
        cert.write_text("not a certificate\n")
    else:
        tls["client_ca_file"] = str(ca_file)
    settings = load_settings(env={}, overrides={"listen_tls": tls})
    with pytest.raises(ConfigError) as caught:
        TlsSetup.from_settings(settings)
    assert len(caught.value.problems) == 1
    assert "\n" not in caught.value.problems[0]
    assert caught.value.problems[0].startswith(expected.format(cert=cert, key=key, ca=ca_file))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
async def test_serve_refuses_unusable_certificate_files_in_one_line(
    tmp_path: Path, workers: int
) -> None:
    """A real `permgate serve` whose certificate file is missing exits 2 with one
    line naming the key and the file, before any worker starts."""
    config = write_sqlite_config(
        tmp_path,
        "http://127.0.0.1:9",
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        store=f"sqlite://{tmp_path}/permgate.db",
        extra="listen_tls: {cert_file: certs/tls.crt, key_file: certs/tls.key}\n",
    )
    exited = await run_to_exit(
        "serve", "--config", str(config), "--workers", str(workers), cwd=tmp_path
    )
    assert exited.code == 2
    assert exited.stderr.splitlines() == [
        f"permgate serve: listen_tls.cert_file: {tmp_path}/certs/tls.crt: cannot read: no such file"
    ]


@pytest.mark.slow
async def test_serve_with_two_workers_answers_https_and_identifies_certificates(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """Both workers of a real `serve --workers 2` serve TLS with the file's relative
    certificate paths, and map a client certificate's SPIFFE id to the principal."""
    write_leaf(tmp_path / "certs", ca.issue_cert("127.0.0.1"))
    write_ca(tmp_path / "certs", ca)
    extra = (
        "listen_tls: {cert_file: certs/tls.crt, key_file: certs/tls.key,"
        " client_ca_file: certs/ca.crt}\n"
        "auth: {mtls: {principal_from: san_uri}}\n"
    )
    cert = client_cert(ca, tmp_path / "client", uri="spiffe://acme/svc-billing")
    async with (
        echo_upstream() as upstream,
        serve_sqlite(tmp_path, upstream, workers=2, extra=extra) as served,
    ):
        store = await open_store(f"sqlite://{tmp_path}/permgate.db")
        try:
            await ModelService(store).create_principal(
                Actor.cli(),
                "acme",
                "spiffe://acme/svc-billing",
                kind="client",
                tenants=["acme-prod"],
                roles=[("reader", None)],
            )
        finally:
            await store.close()
        context = client_context(tmp_path / "certs" / "ca.crt", cert)
        url = https(served.url) + "/policy/acme-prod/quotes/q1"

        async def served_by_certificate() -> bool:
            status, body = await get(url, context)
            return status == 200 and "spiffe://acme/svc-billing" in body

        await eventually(served_by_certificate, "the certificate's principal to be served")
        statuses = {(await get(https(served.url) + "/health", context))[0] for _ in range(8)}
        assert statuses == {200}


async def test_https_on_the_decision_service_listener(tmp_path: Path, ca: trustme.CA) -> None:
    """With authz_tls, the decision service answers forward-auth checks over HTTPS."""
    ca_file = write_ca(tmp_path, ca)
    async with start_gateway(
        tmp_path,
        authz_listen="127.0.0.1:0",
        authz_tls=listener_tls(tmp_path, ca, "authz"),
    ) as gw:
        status, _ = await get(
            gw.authz_url.replace("http:", "https:") + "/forward-auth",
            client_context(ca_file),
            Authorization=f"Bearer {gw.tokens['alice']}",
            **{"X-Original-Method": "GET", "X-Original-URI": "/policy/acme-prod/quotes/q1"},
        )
        assert status == 200


async def test_a_client_certificate_on_the_decision_listener_identifies_no_one(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """A proxy's client certificate on authz_listen never names the principal being
    decided, even with auth.mtls on: a check without a bearer credential is 401."""
    ca_file = write_ca(tmp_path, ca)
    async with start_gateway(
        tmp_path,
        listen_tls=listener_tls(tmp_path, ca, "gw", client_ca_file=str(ca_file)),
        **{"auth.mtls": {"principal_from": "subject_cn"}},
        authz_listen="127.0.0.1:0",
        authz_tls=listener_tls(tmp_path, ca, "authz", client_ca_file=str(ca_file)),
    ) as gw:
        context = client_context(ca_file, client_cert(ca, tmp_path / "client", common_name="alice"))
        status, body = await get(
            gw.authz_url.replace("http:", "https:") + "/forward-auth",
            context,
            **{"X-Original-Method": "GET", "X-Original-URI": "/policy/acme-prod/quotes/q1"},
        )
        assert status == 401, body
        assert gw.tokens  # the world is seeded: alice exists and would be allowed


def test_authz_tls_without_authz_listen_is_refused(tmp_path: Path, ca: trustme.CA) -> None:
    """authz_tls for a decision service that is not served is a config mistake."""
    with pytest.raises(ConfigError) as raised:
        load_settings(env={}, overrides={"authz_tls": listener_tls(tmp_path, ca, "authz")})
    assert "authz_tls: set, but authz_listen is not" in str(raised.value)
