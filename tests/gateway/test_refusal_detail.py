"""Why a credential was refused: in the audit event's ``detail`` and the debug log,
never the credential itself; and ``tokens revoke`` given a secret names only its id.

Each refusal is a real request to a real gateway (``harness.start_gateway``); the
audit stream and every log record of the test are then searched for the credential.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from aiohttp import web

from harness import AUDIENCE, ISSUER, Gateway, eventually, free_port, rsa_key, start_gateway
from permgate.cli import main
from permgate.manage.service import Actor

PATH = "/policy/acme-prod/quotes/q1"

# A case builds the Authorization header (None: send none) against a running gateway.
Credential = Callable[[Gateway], Awaitable[str | None]]


def signed(gw: Gateway, key: Any = None, alg: str = "RS256", **claims: Any) -> str:
    """A JWT for alice with the test IdP's claims, overridden by ``claims``."""
    now = int(time.time())
    payload = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    payload.update(claims)
    return jwt.encode(payload, gw.jwt_key if key is None else key, algorithm=alg)


def token_id(secret: str) -> str:
    """The id inside an auth token secret (``pgt_<id>_<random>``)."""
    return secret.split("_")[1]


async def bearer(value: str) -> str:
    return f"Bearer {value}"


async def expired_jwt(gw: Gateway) -> str:
    return await bearer(signed(gw, exp=int(time.time()) - 3600))


async def future_jwt(gw: Gateway) -> str:
    return await bearer(signed(gw, nbf=int(time.time()) + 3600))


async def other_audience(gw: Gateway) -> str:
    return await bearer(signed(gw, aud="billing-api"))


async def other_issuer(gw: Gateway) -> str:
    return await bearer(signed(gw, iss="https://evil.test/"))


async def foreign_key(gw: Gateway) -> str:
    return await bearer(signed(gw, key=rsa_key()[0]))


async def hmac_signed(gw: Gateway) -> str:
    return await bearer(signed(gw, key="a-shared-secret-of-32-bytes-or-more!", alg="HS256"))


async def garbage_jwt(gw: Gateway) -> str:
    return await bearer("not-a-jwt.at-all")


async def unknown_subject(gw: Gateway) -> str:
    return await bearer(signed(gw, sub="nobody"))


async def revoked_session(gw: Gateway) -> str:
    credential = signed(gw, iat=int(time.time()) - 60)
    await gw.service.set_principal_roles(Actor.cli(), "alice", [])
    return await bearer(credential)


async def malformed_token(gw: Gateway) -> str:
    return await bearer("pgt_tooshort")


async def unknown_token(gw: Gateway) -> str:
    return await bearer("pgt_0123456789abcdef_" + "A" * 43)


async def wrong_secret(gw: Gateway) -> str:
    real = gw.tokens["bob"]
    return await bearer(real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"))


async def revoked_token(gw: Gateway) -> str:
    secret = gw.tokens["bob"]
    await gw.service.revoke_token(Actor.cli(), token_id(secret))
    return await bearer(secret)


async def expired_token(gw: Gateway) -> str:
    _, secret = await gw.service.create_token(
        Actor.cli(), "bob", "brief", ["quotes.read"], ["any"], expires_in=0.05
    )
    await asyncio.sleep(0.2)
    return await bearer(secret)


async def disabled_owner(gw: Gateway) -> str:
    return await bearer(gw.tokens["carol"])


async def no_header(gw: Gateway) -> None:
    return None


async def basic_scheme(gw: Gateway) -> str:
    return "Basic YWxpY2U6cGFzc3dvcmQ="


# (id, credential, reason, words the detail must contain)
REFUSALS: list[tuple[str, Credential, str, list[str]]] = [
    ("jwt-expired", expired_jwt, "expired_token", ["expired", "exp has passed"]),
    ("jwt-not-yet-valid", future_jwt, "invalid_token", ["not yet valid", "nbf"]),
    (
        "jwt-wrong-audience",
        other_audience,
        "invalid_token",
        ["wrong audience", "'billing-api'", f"expected '{AUDIENCE}'"],
    ),
    (
        "jwt-wrong-issuer",
        other_issuer,
        "invalid_token",
        ["wrong issuer", "'https://evil.test/'", f"expected '{ISSUER}'"],
    ),
    ("jwt-bad-signature", foreign_key, "invalid_token", ["bad signature", "RS256"]),
    ("jwt-algorithm-not-allowed", hmac_signed, "invalid_token", ["'HS256'", "not allowed"]),
    ("jwt-malformed", garbage_jwt, "invalid_token", ["malformed JWT"]),
    ("jwt-unknown-principal", unknown_subject, "unknown_principal", ["'nobody'", "not found"]),
    ("jwt-session-revoked", revoked_session, "session_revoked", ["session of alice", "revoked"]),
    ("token-malformed", malformed_token, "invalid_token", ["malformed auth token"]),
    ("token-unknown-id", unknown_token, "invalid_token", ["unknown token id 0123456789abcdef"]),
    ("token-secret-mismatch", wrong_secret, "invalid_token", ["secret mismatch for token"]),
    ("token-revoked", revoked_token, "revoked_token", ["is revoked"]),
    ("token-expired", expired_token, "expired_token", ["has expired"]),
    ("token-owner-disabled", disabled_owner, "disabled_principal", ["owner carol", "disabled"]),
    ("no-credentials", no_header, "missing_credentials", ["no Authorization header"]),
    ("other-scheme", basic_scheme, "missing_credentials", ["'Basic'", "not Bearer"]),
]


async def decision_event(gw: Gateway, request_id: str) -> dict[str, Any]:
    """The audit ``decision`` event of one request, once the writer has flushed it."""

    def found() -> dict[str, Any] | None:
        for line in gw.audit_lines():
            event = orjson.loads(line)
            if event["event"] == "decision" and event["request_id"] == request_id:
                return dict(event)
        return None

    result: dict[str, Any] = await eventually(found, f"the audit event of {request_id}")
    return result


def secret_parts(authorization: str) -> list[str]:
    """What must never be written: the header's credential, and its secret part alone
    (a JWT's signature, a token's random part)."""
    credential = authorization.partition(" ")[2]
    parts = [credential]
    if credential.count(".") == 2:
        parts.append(credential.rsplit(".", 1)[1])
    elif credential.startswith("pgt_") and credential.count("_") >= 2:
        parts.append(credential.split("_", 2)[2])
    return [part for part in parts if len(part) >= 8]


@pytest.mark.parametrize(
    ("make", "reason", "words"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS]
)
async def test_refusal_detail_is_audited_and_logged_without_the_credential(
    gw: Gateway,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    make: Credential,
    reason: str,
    words: list[str],
) -> None:
    """A refused credential: 401 with only the reason for the client; the audit event
    says which check failed in ``detail``, so does the permgate.gateway.authn debug log, and
    the credential appears in neither, nor in any other log record."""
    caplog.set_level(logging.DEBUG)
    authorization = await make(gw)
    headers = {} if authorization is None else {"Authorization": authorization}
    async with http.get(gw.url + PATH, headers=headers) as response:
        assert response.status == 401
        body = await response.json()
    assert body["reason"] == reason
    assert "detail" not in body
    event = await decision_event(gw, body["request_id"])
    assert event["reason"] == reason
    for word in words:
        assert word in event["detail"], event["detail"]
    debug = [
        r.getMessage()
        for r in caplog.records
        if r.name == "permgate.gateway.authn" and r.levelno == 10
    ]
    assert debug == [f"credential refused: {reason}: {event['detail']}"]
    if authorization is not None:
        written = gw.audit.getvalue() + "\n".join(r.getMessage() for r in caplog.records)
        for secret in secret_parts(authorization):
            assert secret not in written


@pytest.fixture
async def jwks_gateway(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Any]]:
    """A gateway whose JWT keys come from a real JWKS server holding one key, kid k1."""
    key, _ = rsa_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")

    async def keys(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/jwks.json", keys)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    jwt_settings = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_url": f"http://127.0.0.1:{port}/jwks.json",
        "algorithms": ["RS256"],
        "jwks_min_refresh_seconds": 60,
    }
    try:
        async with start_gateway(tmp_path, **{"auth.jwt": jwt_settings}) as gw:
            yield gw, key
    finally:
        await runner.cleanup()


async def test_unknown_key_id_is_named_in_the_detail(
    jwks_gateway: tuple[Gateway, Any], http: aiohttp.ClientSession
) -> None:
    """A JWT naming a kid the JWKS does not have is refused with 'unknown key id' (and
    the kid); one naming the known kid passes, so the detail is about the kid alone."""
    gw, key = jwks_gateway
    now = int(time.time())
    claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    async with http.get(gw.url + PATH, headers={"Authorization": f"Bearer {good}"}) as response:
        assert response.status == 200
    stray = jwt.encode(claims, rsa_key()[0], algorithm="RS256", headers={"kid": "k2"})
    async with http.get(gw.url + PATH, headers={"Authorization": f"Bearer {stray}"}) as response:
        assert response.status == 401
        body = await response.json()
    event = await decision_event(gw, body["request_id"])
    assert (event["reason"], event["detail"]) == (
        "invalid_token",
        "unknown key id 'k2' (no RS256 key has it)",
    )
    assert stray not in gw.audit.getvalue()


# --------------------------------------------------------------------------- tokens revoke


@pytest.fixture
def cli_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[str], str, str]:
    """A SQLite store with an account's first admin; (common options, token id, secret)."""
    (tmp_path / "permgate.yaml").write_text("audit: {sink: stdout}\n", encoding="utf-8")
    common = ["--config", str(tmp_path / "permgate.yaml"), "--store", f"sqlite://{tmp_path}/p.db"]
    assert main(["bootstrap", "--account", "acme", "--json", *common]) == 0
    boot = json.loads(capsys.readouterr().out)
    return common, boot["token_id"], boot["secret"]


def test_revoke_given_a_secret_revokes_by_its_id(
    cli_store: tuple[list[str], str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`tokens revoke SECRET` revokes the token the secret belongs to and names only its
    id: the secret is in neither stdout, stderr, nor the audit lines."""
    common, token, secret = cli_store
    assert main(["tokens", "revoke", secret, *common]) == 0
    out, err = capsys.readouterr()
    assert out == f"revoked {token}\n"
    assert f"that is a token secret: revoking token {token}, the id inside it" in err
    assert secret not in out + err
    assert secret.split("_", 2)[2] not in out + err
    assert main(["tokens", "list", "--owner", "admin", "--json", *common]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["id"], row["revoked_at"] is not None) == (token, True)


@pytest.mark.parametrize(
    "given",
    [
        "pgt_0123456789abcdef_truncat",
        "xyz_0123456789abcdef_" + "A" * 43,
        "Bearer pgt_x",
        "eyJhbGciOi.eyJzdWIi.c2ln",
    ],
    ids=["truncated-secret", "other-prefix", "pasted-header", "jwt"],
)
def test_revoke_of_something_else_never_echoes_it(
    cli_store: tuple[list[str], str, str], capsys: pytest.CaptureFixture[str], given: str
) -> None:
    """An argument that is neither an id nor a well-formed secret may still be a
    credential: the error (exit 2) says what was expected and does not repeat it."""
    common, _, _ = cli_store
    assert main(["tokens", "revoke", given, *common]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("permgate tokens: the argument (")
    assert "not shown in case it is a credential" in err
    assert given not in err


def test_revoke_of_an_unknown_secret_names_only_the_id(
    cli_store: tuple[list[str], str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A well-formed secret of no token: not found, naming the id inside, not the secret."""
    common, _, _ = cli_store
    secret = "pgt_0123456789abcdef_" + "B" * 43
    assert main(["tokens", "revoke", secret, *common]) == 2
    err = capsys.readouterr().err
    assert "token '0123456789abcdef' not found" in err
    assert "B" * 43 not in err


def test_revoke_reads_the_secret_from_stdin(
    cli_store: tuple[list[str], str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`tokens revoke -` takes the secret on stdin (out of the shell history), in a real
    process; the output names the id only."""
    common, token, secret = cli_store
    done = subprocess.run(
        [sys.executable, "-m", "permgate", "tokens", "revoke", "-", *common],
        input=secret + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"revoked {token}\n"
    assert secret not in done.stdout + done.stderr
