"""Client certificates as identities (mutual TLS on the gateway listener).

A certificate verified against ``listen_tls.client_ca_file`` names a principal by
``auth.mtls.principal_from``; a bearer credential, when present, decides instead; a
certificate from another CA is refused at the handshake and identifies nobody.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from harness import Gateway, eventually, start_gateway
from permgate.gateway.authn import certificate_principal
from permgate.manage.service import Actor
from tlsfiles import client_cert, client_context, write_ca, write_leaf

PATH = "/policy/acme-prod/quotes/q1"
SPIFFE = "spiffe://acme/svc-billing"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def gw(
    tmp_path: Path, ca: trustme.CA, request: pytest.FixtureRequest
) -> AsyncIterator[Gateway]:
    principal_from = getattr(request, "param", "san_uri")
    cert, key = write_leaf(tmp_path / "server", ca.issue_cert("127.0.0.1"))
    async with start_gateway(
        tmp_path,
        listen_tls={
            "cert_file": str(cert),
            "key_file": str(key),
            "client_ca_file": str(write_ca(tmp_path, ca)),  # the CA of both sides here
        },
        **{"auth.mtls": {"principal_from": principal_from}},
    ) as gateway:
        for principal_id in (SPIFFE, "billing.acme.internal", "svc-billing"):
            await gateway.service.create_principal(
                Actor.cli(),
                "acme",
                principal_id,
                kind="client",
                tenants=["acme-prod"],
                roles=[("reader", None)],
            )
        yield gateway


async def call(
    gw: Gateway, context: ssl.SSLContext, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = gw.url.replace("http://", "https://") + PATH
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.get(url, headers=headers) as response,
    ):
        body: dict[str, Any] = await response.json()
        return response.status, body


async def last_decision(gw: Gateway) -> dict[str, Any]:
    """The last decision event, once the audit log has written it."""

    def decisions() -> list[dict[str, Any]]:
        events = [json.loads(line) for line in gw.audit_lines()]
        return [e for e in events if e["event"] == "decision"]

    found: list[dict[str, Any]] = await eventually(decisions, "a decision audit event")
    return found[-1]


@pytest.mark.parametrize(
    ("gw", "expected"),
    [("san_uri", SPIFFE), ("san_dns", "billing.acme.internal"), ("subject_cn", "svc-billing")],
    ids=["san-uri-spiffe", "san-dns", "subject-cn"],
    indirect=["gw"],
)
async def test_a_verified_certificate_names_the_principal(
    gw: Gateway, ca: trustme.CA, tmp_path: Path, expected: str
) -> None:
    """Without a bearer token, the verified certificate's field chosen by
    principal_from is the principal id, whole (a SPIFFE id with its slashes)."""
    cert = client_cert(
        ca, tmp_path / "client", uri=SPIFFE, dns="billing.acme.internal", common_name="svc-billing"
    )
    status, body = await call(gw, client_context(tmp_path / "ca.crt", cert))
    assert status == 200, body
    headers = gw.upstream.seen[-1]["headers"]
    assert headers["X-Permgate-Principal"] == expected
    assert headers["X-Permgate-Principal-Kind"] == "client"
    assert "X-Permgate-Token-Id" not in headers
    event = await last_decision(gw)
    assert (event["principal"]["id"], event["token_id"]) == (expected, None)


async def test_a_client_without_a_certificate_still_connects(gw: Gateway, tmp_path: Path) -> None:
    """Client certificates are optional: a client without one connects and is
    refused only for lacking credentials, or served with its bearer token."""
    context = client_context(tmp_path / "ca.crt")
    status, body = await call(gw, context)
    assert (status, body["reason"]) == (401, "missing_credentials")
    status, _ = await call(gw, context, gw.tokens["alice"])
    assert status == 200
    assert gw.upstream.seen[-1]["headers"]["X-Permgate-Principal"] == "alice"


@pytest.mark.parametrize(
    ("token", "status", "principal"),
    [("alice", 200, "alice"), ("pgt_bogus_secret", 401, None)],
    ids=["valid-bearer-wins", "invalid-bearer-is-refused-despite-the-certificate"],
)
async def test_a_bearer_credential_decides_over_a_certificate(
    gw: Gateway,
    ca: trustme.CA,
    tmp_path: Path,
    token: str,
    status: int,
    principal: str | None,
) -> None:
    """With both, the bearer credential alone decides: a good one is the caller, a
    bad one is refused even though the certificate would have been accepted."""
    cert = client_cert(ca, tmp_path / "client", uri=SPIFFE)
    secret = gw.tokens.get(token, token)
    got, body = await call(gw, client_context(tmp_path / "ca.crt", cert), secret)
    assert got == status, body
    if principal is not None:
        assert gw.upstream.seen[-1]["headers"]["X-Permgate-Principal"] == principal
    else:
        assert body["reason"] == "invalid_token"
        assert gw.upstream.seen == []


async def test_a_certificate_from_another_ca_is_refused(gw: Gateway, tmp_path: Path) -> None:
    """A certificate that does not verify against client_ca_file ends the handshake:
    it identifies nobody and nothing reaches the upstream."""
    stranger = client_cert(trustme.CA(), tmp_path / "stranger", uri=SPIFFE)
    with pytest.raises(aiohttp.ClientError):
        await call(gw, client_context(tmp_path / "ca.crt", stranger))
    assert gw.upstream.seen == []


async def test_a_certificate_naming_no_known_principal_is_refused(
    gw: Gateway, ca: trustme.CA, tmp_path: Path
) -> None:
    """A verified certificate whose id is no principal is 401 unknown_principal,
    with the id in the audit detail."""
    cert = client_cert(ca, tmp_path / "client", uri="spiffe://acme/nobody")
    status, body = await call(gw, client_context(tmp_path / "ca.crt", cert))
    assert (status, body["reason"]) == (401, "unknown_principal")
    assert "spiffe://acme/nobody" in (await last_decision(gw))["detail"]


@pytest.mark.parametrize(
    ("peercert", "principal_from", "expected"),
    [
        ({}, "san_uri", None),
        (None, "subject_cn", None),
        ({"subjectAltName": (("DNS", "a.example"), ("URI", "spiffe://x/y"))}, "san_uri",
         "spiffe://x/y"),
        ({"subjectAltName": (("URI", "spiffe://x/y"), ("DNS", "a"), ("DNS", "b"))}, "san_dns",
         "a"),
        ({"subjectAltName": (("DNS", "a"),)}, "san_uri", None),
        ({"subject": ((("organizationName", "Acme"),), (("commonName", "svc"),))}, "subject_cn",
         "svc"),
    ],
    ids=["no-certificate", "none", "first-uri", "first-dns", "no-uri-san", "cn"],
)  # fmt: skip
def test_certificate_principal(
    peercert: dict[str, Any] | None, principal_from: Any, expected: str | None
) -> None:
    """The id is the whole value of the first SAN of the chosen kind, or the CN."""
    assert certificate_principal(peercert, principal_from) == expected
