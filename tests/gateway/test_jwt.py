"""JwtVerifier against a real JWKS endpoint on loopback, with keys made in the test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from permgate.config import JwtSettings
from permgate.core.errors import ConfigError
from permgate.gateway.authn import AuthFailure
from permgate.gateway.jwks import JwtVerifier

ISSUER = "https://idp.test/"
AUDIENCE = "insurance-api"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk_of(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        found = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        found = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**found, "kid": kid, "use": "sig"}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, alg: str = "RS256", kid: str | None = "rsa-1", **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], secret: bytes | None) -> str:
    """A JWT built by hand, for what PyJWT refuses to sign (alg none, HMAC over a PEM)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@dataclass
class Idp:
    """The identity provider's JWKS endpoint: serves ``keys`` and counts fetches."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    status: int = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response({"keys": self.keys})


class Clock:
    """A hand-driven monotonic clock for the refetch rate limit."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp() -> Idp:
    return Idp(keys=[jwk_of(RSA_KEY, "rsa-1"), jwk_of(EC_KEY, "ec-1")])


@pytest.fixture
async def idp_server(
    idp: Idp, aiohttp_server: Callable[[web.Application], Awaitable[TestServer]]
) -> TestServer:
    app = web.Application()
    app.router.add_get("/jwks.json", idp.handle)
    return await aiohttp_server(app)


@pytest.fixture
def settings(idp_server: TestServer) -> JwtSettings:
    return JwtSettings(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=str(idp_server.make_url("/jwks.json")),
        algorithms=("RS256", "ES256"),
        leeway_seconds=30.0,
        jwks_min_refresh_seconds=30.0,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def verifier(settings: JwtSettings, clock: Clock) -> AsyncIterator[JwtVerifier]:
    v = JwtVerifier(settings, clock=clock)
    await v.start()
    yield v
    await v.close()


async def reason_of(verifier: JwtVerifier, token: str) -> str:
    return (await failure_of(verifier, token)).reason


async def failure_of(verifier: JwtVerifier, token: str) -> AuthFailure:
    """The refusal of ``token``, which must be refused."""
    with pytest.raises(AuthFailure) as failure:
        await verifier.verify(token)
    return failure.value


VALID = [
    ("RS256", RSA_KEY, "rsa-1"),
    ("ES256", EC_KEY, "ec-1"),
]


@pytest.mark.parametrize(("alg", "key", "kid"), VALID, ids=[v[0] for v in VALID])
async def test_valid_token_gives_claims(
    verifier: JwtVerifier, alg: str, key: Any, kid: str
) -> None:
    """A token signed by a JWKS key with good claims is accepted."""
    found = await verifier.verify(sign(key, alg, kid))
    assert found["sub"] == "alice"


async def test_keys_fetched_once_at_start(verifier: JwtVerifier, idp: Idp) -> None:
    """Verifying known keys costs no fetch beyond the one at start."""
    for _ in range(5):
        await verifier.verify(sign(RSA_KEY))
    assert idp.fetches == 1


EXPIRY = [
    ("beyond-leeway", -60, "expired_token"),
    ("within-leeway", -10, None),
]


@pytest.mark.parametrize(
    ("exp_offset", "reason"), [e[1:] for e in EXPIRY], ids=[e[0] for e in EXPIRY]
)
async def test_expiry_honours_leeway(
    verifier: JwtVerifier, exp_offset: int, reason: str | None
) -> None:
    """exp is checked with leeway_seconds of tolerated clock skew."""
    token = sign(RSA_KEY, exp=int(time.time()) + exp_offset, iat=int(time.time()) - 600)
    if reason is None:
        assert (await verifier.verify(token))["sub"] == "alice"
    else:
        assert await reason_of(verifier, token) == reason


def _future() -> int:
    return int(time.time()) + 600


# (id, claims to override, the refusal's detail)
INVALID_CLAIMS: list[tuple[str, dict[str, Any], str]] = [
    ("nbf-in-future", {"nbf": _future()}, "not yet valid: nbf is in the future (leeway 30.0s)"),
    (
        "iat-in-future",
        {"iat": _future(), "exp": _future() + 60},
        "not yet valid: iat is in the future (leeway 30.0s)",
    ),
    (
        "wrong-iss",
        {"iss": "https://evil.test/"},
        f"wrong issuer: iss is 'https://evil.test/', expected '{ISSUER}'",
    ),
    ("missing-iss", {"iss": None}, "missing claim 'iss'"),
    (
        "wrong-aud",
        {"aud": "other-api"},
        f"wrong audience: aud is 'other-api', expected '{AUDIENCE}'",
    ),
    ("missing-aud", {"aud": None}, "missing claim 'aud'"),
    ("missing-exp", {"exp": None}, "missing claim 'exp'"),
    (
        "long-aud-is-cut",
        {"aud": "x" * 500},
        f"wrong audience: aud is '{'x' * 60}..., expected '{AUDIENCE}'",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [c[1:] for c in INVALID_CLAIMS],
    ids=[c[0] for c in INVALID_CLAIMS],
)
async def test_bad_claims_are_invalid_token(
    verifier: JwtVerifier, overrides: dict[str, Any], detail: str
) -> None:
    """nbf, iat, iss, aud and a required exp are all enforced; the detail says which
    check failed and quotes a token's own value only cut short."""
    failure = await failure_of(verifier, sign(RSA_KEY, **overrides))
    assert (failure.reason, failure.detail) == ("invalid_token", detail)


async def test_audience_not_checked_when_not_configured(
    settings: JwtSettings, clock: Clock
) -> None:
    """Without a configured audience, a token's aud does not matter."""
    verifier = JwtVerifier(replace(settings, audience=None), clock=clock)
    try:
        assert (await verifier.verify(sign(RSA_KEY, aud="anything")))["sub"] == "alice"
    finally:
        await verifier.close()


NOT_ALLOWED = "is not allowed (allowed: ES256, RS256)"
# (id, the token, the start of the refusal's detail)
FORGED: list[tuple[str, Callable[[], str], str]] = [
    (
        "alg-none",
        lambda: handmade({"alg": "none", "typ": "JWT"}, None),
        f"algorithm 'none' {NOT_ALLOWED}",
    ),
    ("alg-None-case", lambda: handmade({"alg": "None", "typ": "JWT"}, None), "algorithm 'None'"),
    (
        "hs256-with-public-key",
        lambda: handmade({"alg": "HS256", "kid": "rsa-1"}, public_pem(RSA_KEY).encode()),
        f"algorithm 'HS256' {NOT_ALLOWED}",
    ),
    (
        "other-key-same-kid",
        lambda: sign(RSA_KEY_2, kid="rsa-1"),
        "bad signature: no RS256 key with kid 'rsa-1' verifies it",
    ),
    (
        "es256-naming-rsa-kid",
        lambda: sign(EC_KEY, "ES256", kid="rsa-1"),
        "unknown key id 'rsa-1' (no ES256 key has it)",
    ),
    ("rs384-not-allowed", lambda: sign(RSA_KEY, "RS384"), f"algorithm 'RS384' {NOT_ALLOWED}"),
    ("garbage", lambda: "not.a.jwt", "malformed JWT: "),
    ("two-parts", lambda: "abc.def", "malformed JWT: Not enough segments"),
    (
        "tampered-payload",
        lambda: _tamper(sign(RSA_KEY)),
        "bad signature: no RS256 key with kid 'rsa-1' verifies it",
    ),
    (
        "kid-not-a-string",
        lambda: handmade({"alg": "RS256", "kid": 7}, None),
        "malformed JWT: Key ID header parameter must be a string",
    ),
]


def _tamper(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64(json.dumps(claims(sub='root')).encode())}.{signature}"


@pytest.mark.parametrize(("make", "detail"), [f[1:] for f in FORGED], ids=[f[0] for f in FORGED])
async def test_forged_tokens_are_invalid(
    verifier: JwtVerifier, make: Callable[[], str], detail: str
) -> None:
    """Unsigned, key-confused, wrongly signed or malformed tokens never pass; the detail
    tells an algorithm refused, a bad signature, an unknown kid and a malformed token
    apart, and never contains the token."""
    token = make()
    failure = await failure_of(verifier, token)
    assert failure.reason == "invalid_token"
    assert failure.detail.startswith(detail), failure.detail
    assert token not in failure.detail


async def test_oct_keys_in_jwks_are_ignored(verifier: JwtVerifier, idp: Idp, clock: Clock) -> None:
    """A symmetric key published in the JWKS cannot verify anything."""
    secret = b"s" * 32
    idp.keys.append({"kty": "oct", "kid": "hmac-1", "k": b64(secret)})
    clock.now += 31
    token = handmade({"alg": "HS256", "kid": "hmac-1"}, secret)
    assert await reason_of(verifier, token) == "invalid_token"


async def test_unknown_kid_refetches_after_rotation(
    verifier: JwtVerifier, idp: Idp, clock: Clock
) -> None:
    """A token naming a new kid triggers one refetch and passes once the IdP has rotated."""
    idp.keys = [jwk_of(RSA_KEY_2, "rsa-2")]
    clock.now += 31
    assert (await verifier.verify(sign(RSA_KEY_2, kid="rsa-2")))["sub"] == "alice"
    assert idp.fetches == 2


async def test_unknown_kid_within_window_does_not_refetch(verifier: JwtVerifier, idp: Idp) -> None:
    """Within jwks_min_refresh_seconds of the last fetch, an unknown kid is just refused."""
    idp.keys = [jwk_of(RSA_KEY_2, "rsa-2")]
    assert await reason_of(verifier, sign(RSA_KEY_2, kid="rsa-2")) == "invalid_token"
    assert idp.fetches == 1


async def test_burst_of_random_kids_fetches_at_most_once(
    verifier: JwtVerifier, idp: Idp, clock: Clock
) -> None:
    """50 concurrent tokens with random kids cost one JWKS fetch per refresh window."""
    clock.now += 31
    tokens = [sign(RSA_KEY_2, kid=f"random-{i}") for i in range(50)]
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(r, AuthFailure) and r.reason == "invalid_token" for r in results)
    assert idp.fetches == 2
    clock.now += 10
    for token in tokens[:10]:
        assert await reason_of(verifier, token) == "invalid_token"
    assert idp.fetches == 2


async def test_idp_down_at_start_recovers(settings: JwtSettings, idp: Idp, clock: Clock) -> None:
    """An IdP failing at start is not fatal; keys are fetched once it answers."""
    idp.status = 503
    verifier = JwtVerifier(settings, clock=clock)
    try:
        await verifier.start()
        failure = await failure_of(verifier, sign(RSA_KEY))
        assert failure.reason == "invalid_token"
        assert failure.detail == "no keys yet: the JWKS has not been fetched"
        idp.status = 200
        clock.now += 1.1
        assert (await verifier.verify(sign(RSA_KEY)))["sub"] == "alice"
    finally:
        await verifier.close()


async def test_failed_refetch_keeps_old_keys(verifier: JwtVerifier, idp: Idp, clock: Clock) -> None:
    """A JWKS error answer does not throw away the keys already known."""
    idp.status = 500
    clock.now += 31
    assert await reason_of(verifier, sign(RSA_KEY_2, kid="rsa-2")) == "invalid_token"
    assert idp.fetches == 2
    assert (await verifier.verify(sign(RSA_KEY)))["sub"] == "alice"


STATIC = [
    ("rsa-pem", RSA_KEY, "RS256"),
    ("ec-pem", EC_KEY, "ES256"),
]


@pytest.mark.parametrize(("key", "alg"), [s[1:] for s in STATIC], ids=[s[0] for s in STATIC])
async def test_static_pem_keys(key: Any, alg: str) -> None:
    """Without a JWKS URL, tokens verify against the configured PEM public keys."""
    settings = JwtSettings(
        issuer=ISSUER, audience=AUDIENCE, keys=(public_pem(RSA_KEY), public_pem(EC_KEY))
    )
    verifier = JwtVerifier(settings)
    try:
        assert (await verifier.verify(sign(key, alg, kid=None)))["sub"] == "alice"
        assert await reason_of(verifier, sign(RSA_KEY_2, kid=None)) == "invalid_token"
        assert verifier.fetches == 0
    finally:
        await verifier.close()


BAD_CONFIG = [
    ("alg-none", {"algorithms": ("RS256", "none")}, "'none'"),
    ("alg-hs256", {"algorithms": ("HS256",)}, "'HS256'"),
    ("alg-hs512-lower", {"algorithms": ("hs512",)}, "'hs512'"),
    ("alg-unknown", {"algorithms": ("XY999",)}, "'XY999'"),
    ("alg-empty", {"algorithms": ()}, "auth.jwt.algorithms"),
    ("key-not-pem", {"keys": ("hello",)}, "auth.jwt.keys[0]"),
    ("key-family-unused", {"keys": (public_pem(EC_KEY),), "algorithms": ("RS256",)}, "EC key"),
    ("no-keys-no-url", {"jwks_url": None}, "jwks_url or keys"),
]


@pytest.mark.parametrize(
    ("overrides", "named"), [b[1:] for b in BAD_CONFIG], ids=[b[0] for b in BAD_CONFIG]
)
def test_bad_config_is_refused_naming_the_value(overrides: dict[str, Any], named: str) -> None:
    """none, HMAC, unknown algorithms and unusable keys are config errors at construction."""
    settings = replace(JwtSettings(jwks_url="https://idp.test/jwks.json"), **overrides)
    with pytest.raises(ConfigError) as error:
        JwtVerifier(settings)
    assert any(named in problem for problem in error.value.problems)
