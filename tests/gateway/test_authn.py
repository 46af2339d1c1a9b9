"""Authenticator: every 401 reason for auth tokens and JWTs, and what an Identity carries."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from memstore import MemStore
from permgate.config import JwtSettings
from permgate.core.errors import StoreUnavailable
from permgate.core.model import AuthToken, Principal
from permgate.core.token_secrets import hash_secret, new_secret
from permgate.gateway.authn import AUTH_FAILURE_REASONS, Authenticator, AuthFailure, Identity
from permgate.gateway.jwks import JwtVerifier
from permgate.gateway.modelcache import ModelCache

PREFIX = "pgt_"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = (
    KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
NOW = datetime.now(UTC)
SECRETS: dict[str, str] = {}


def issue(token_id: str, owner: str = "alice", account: str = "acme", **fields: Any) -> AuthToken:
    """A token whose secret is remembered in SECRETS for the test to present."""
    secret = new_secret(PREFIX, token_id)
    SECRETS[token_id] = secret
    return AuthToken(token_id, owner, account, "ci", secret_hash=hash_secret(secret), **fields)


def bearer(credential: str) -> str:
    return f"Bearer {credential}"


def make_jwt(sub: str | None = "alice", **overrides: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 300, **overrides}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, KEY, algorithm="RS256")


class CountingVerifier(JwtVerifier):
    """The real verifier, counting how often a signature is actually checked."""

    calls = 0

    async def verify(self, token: str) -> dict[str, object]:
        self.calls += 1
        return await super().verify(token)


@pytest.fixture
def store() -> MemStore:
    s = MemStore()
    s.put_principal(Principal("alice", "acme"))
    s.put_principal(Principal("dora", "acme", disabled=True))
    s.put_principal(Principal("gus", "globex"))
    s.put_principal(Principal("lou", "acme", sessions_valid_after=NOW))
    for token in (
        issue("aaaaaaaaaaaaaaaa"),
        issue("bbbbbbbbbbbbbbbb", revoked_at=NOW - timedelta(minutes=1)),
        issue("cccccccccccccccc", expires_at=NOW - timedelta(seconds=1)),
        issue("dddddddddddddddd", expires_at=(NOW - timedelta(seconds=1)).replace(tzinfo=None)),
        issue("eeeeeeeeeeeeeeee", owner="ghost"),
        issue("ffffffffffffffff", owner="dora"),
        issue("1111111111111111", owner="gus", account="acme"),
        issue("2222222222222222", expires_at=NOW + timedelta(days=1)),
    ):
        s.put_token(token)
    return s


@pytest.fixture
def verifier() -> CountingVerifier:
    return CountingVerifier(JwtSettings(keys=(PEM,), algorithms=("RS256",)))


@pytest.fixture
async def authn(store: MemStore, verifier: CountingVerifier) -> Authenticator:
    cache = ModelCache(store)
    await cache.attach(store)
    return Authenticator(cache, token_prefix=PREFIX, jwt=verifier)


async def reason_of(authn: Authenticator, header: str | None) -> str:
    return (await failure_of(authn, header)).reason


async def failure_of(authn: Authenticator, header: str | None) -> AuthFailure:
    """The refusal of ``header``, which must be refused."""
    with pytest.raises(AuthFailure) as failure:
        await authn.authenticate(header)
    return failure.value


# -- no credentials ---------------------------------------------------------------------

MISSING = [
    ("no-header", None, "no Authorization header"),
    ("empty", "", "no Authorization header"),
    ("bearer-alone", "Bearer", "empty bearer credential"),
    ("bearer-blank", "Bearer    ", "empty bearer credential"),
    ("basic-scheme", "Basic YWxpY2U6c2VjcmV0", "scheme 'Basic' is not Bearer"),
    ("other-scheme", "Token abc", "scheme 'Token' is not Bearer"),
]


@pytest.mark.parametrize(
    ("header", "detail"), [m[1:] for m in MISSING], ids=[m[0] for m in MISSING]
)
async def test_no_bearer_credential_is_missing_credentials(
    authn: Authenticator, header: str | None, detail: str
) -> None:
    """No bearer credential at all (another scheme included) is missing_credentials,
    and the detail says which: no header, an empty one, or another scheme."""
    failure = await failure_of(authn, header)
    assert (failure.reason, failure.detail) == ("missing_credentials", detail)


@pytest.mark.parametrize("reason", AUTH_FAILURE_REASONS, ids=AUTH_FAILURE_REASONS)
def test_www_authenticate_value(reason: Any) -> None:
    """Only missing credentials get a challenge without error="invalid_token" (RFC 6750)."""
    failure = AuthFailure(reason)
    assert failure.status_code == 401
    assert failure.error == "unauthenticated"
    if reason == "missing_credentials":
        assert failure.www_authenticate == 'Bearer realm="permgate"'
    else:
        assert failure.www_authenticate == 'Bearer realm="permgate", error="invalid_token"'


# -- auth tokens ------------------------------------------------------------------------


async def test_valid_token_identifies_owner(authn: Authenticator) -> None:
    """A good token resolves to its owner, the token, and a ``t:<id>`` cache key."""
    identity = await authn.authenticate(bearer(SECRETS["2222222222222222"]))
    assert identity.principal.id == "alice"
    assert identity.token is not None and identity.token.id == "2222222222222222"
    assert identity.claims is None
    assert identity.credential_key == "t:2222222222222222"


async def test_scheme_is_case_insensitive(authn: Authenticator) -> None:
    """``bearer`` and ``BEARER`` work as ``Bearer`` does (RFC 7235)."""
    identity = await authn.authenticate(f"bEaReR {SECRETS['aaaaaaaaaaaaaaaa']}")
    assert identity.principal.id == "alice"


MALFORMED = "malformed auth token: 'pgt_' is not followed by a token id, '_' and the random part"
TOKEN_FAILURES: list[tuple[str, Callable[[], str], str, str]] = [
    ("malformed", lambda: PREFIX + "not-a-token", "invalid_token", MALFORMED),
    (
        "unknown-id",
        lambda: new_secret(PREFIX, "9999999999999999"),
        "invalid_token",
        "unknown token id 9999999999999999",
    ),
    (
        "wrong-secret",
        lambda: new_secret(PREFIX, "aaaaaaaaaaaaaaaa"),
        "invalid_token",
        "secret mismatch for token aaaaaaaaaaaaaaaa",
    ),
    ("trailing-junk", lambda: SECRETS["aaaaaaaaaaaaaaaa"] + " x", "invalid_token", MALFORMED),
    (
        "revoked",
        lambda: SECRETS["bbbbbbbbbbbbbbbb"],
        "revoked_token",
        "token bbbbbbbbbbbbbbbb is revoked",
    ),
    (
        "expired",
        lambda: SECRETS["cccccccccccccccc"],
        "expired_token",
        "token cccccccccccccccc has expired",
    ),
    (
        "expired-naive-utc",
        lambda: SECRETS["dddddddddddddddd"],
        "expired_token",
        "token dddddddddddddddd has expired",
    ),
    (
        "owner-unknown",
        lambda: SECRETS["eeeeeeeeeeeeeeee"],
        "unknown_principal",
        "owner of token eeeeeeeeeeeeeeee not found",
    ),
    (
        "owner-disabled",
        lambda: SECRETS["ffffffffffffffff"],
        "disabled_principal",
        "owner dora of token ffffffffffffffff is disabled",
    ),
    (
        "owner-other-account",
        lambda: SECRETS["1111111111111111"],
        "unknown_principal",
        "owner of token 1111111111111111 not found",
    ),
]


@pytest.mark.parametrize(
    ("secret", "reason", "detail"),
    [f[1:] for f in TOKEN_FAILURES],
    ids=[f[0] for f in TOKEN_FAILURES],
)
async def test_token_failures(
    authn: Authenticator, secret: Callable[[], str], reason: str, detail: str
) -> None:
    """Each way an auth token can be unusable has its own reason, and a detail that
    names the token by its id only."""
    credential = secret()
    failure = await failure_of(authn, bearer(credential))
    assert (failure.reason, failure.detail) == (reason, detail)
    assert credential not in str(failure)


async def test_refusal_is_logged_at_debug(
    authn: Authenticator, caplog: pytest.LogCaptureFixture
) -> None:
    """Every refusal is one DEBUG record of permgate.gateway.authn: the reason and the detail."""
    caplog.set_level(logging.DEBUG, logger="permgate.gateway.authn")
    secret = SECRETS["bbbbbbbbbbbbbbbb"]
    await failure_of(authn, bearer(secret))
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [
        (
            "permgate.gateway.authn",
            logging.DEBUG,
            "credential refused: revoked_token: token bbbbbbbbbbbbbbbb is revoked",
        )
    ]


async def test_owner_disabled_after_first_use_is_refused(
    authn: Authenticator, store: MemStore
) -> None:
    """Disabling the owner takes effect on the token's next request."""
    header = bearer(SECRETS["aaaaaaaaaaaaaaaa"])
    await authn.authenticate(header)
    store.put_principal(Principal("alice", "acme", disabled=True))
    assert await reason_of(authn, header) == "disabled_principal"


async def test_token_use_is_recorded_for_touch(authn: Authenticator) -> None:
    """Successful uses are collected for store.touch_tokens and drained once."""
    before = time.time()
    await authn.authenticate(bearer(SECRETS["aaaaaaaaaaaaaaaa"]))
    with pytest.raises(AuthFailure):
        await authn.authenticate(bearer(SECRETS["bbbbbbbbbbbbbbbb"]))
    uses = authn.drain_token_uses()
    assert list(uses) == ["aaaaaaaaaaaaaaaa"]
    assert before <= uses["aaaaaaaaaaaaaaaa"] <= time.time()
    assert authn.drain_token_uses() == {}


# -- JWTs ---------------------------------------------------------------------------------


async def test_valid_jwt_identifies_principal(authn: Authenticator) -> None:
    """A good JWT resolves to the principal its ``sub`` names, keyed by its sha256."""
    token = make_jwt()
    identity = await authn.authenticate(bearer(token))
    assert identity.principal.id == "alice"
    assert identity.token is None
    assert identity.claims is not None and identity.claims["sub"] == "alice"
    assert identity.credential_key == "j:" + hashlib.sha256(token.encode()).hexdigest()


async def test_principal_claim_is_configurable(store: MemStore) -> None:
    """``principal_claim`` picks the claim that names the principal."""
    verifier = JwtVerifier(JwtSettings(keys=(PEM,), algorithms=("RS256",), principal_claim="uid"))
    authn = Authenticator(ModelCache(store), token_prefix=PREFIX, jwt=verifier)
    identity = await authn.authenticate(bearer(make_jwt(sub="gus", uid="alice")))
    assert identity.principal.id == "alice"


JWT_FAILURES: list[tuple[str, Callable[[], str], str, str]] = [
    ("not-a-jwt", lambda: "hello", "invalid_token", "malformed JWT: Not enough segments"),
    ("no-principal-claim", lambda: make_jwt(sub=None), "invalid_token", "no 'sub' claim"),
    (
        "expired",
        lambda: make_jwt(exp=int(time.time()) - 3600),
        "expired_token",
        "expired: exp has passed (leeway 30.0s)",
    ),
    (
        "unknown-principal",
        lambda: make_jwt(sub="ghost"),
        "unknown_principal",
        "principal 'ghost' not found",
    ),
    (
        "disabled-principal",
        lambda: make_jwt(sub="dora"),
        "disabled_principal",
        "principal dora is disabled",
    ),
    (
        "issued-before-logout",
        lambda: make_jwt(sub="lou", iat=int(NOW.timestamp()) - 60),
        "session_revoked",
        "session of lou was revoked",
    ),
    (
        "no-iat-after-logout",
        lambda: make_jwt(sub="lou", iat=None),
        "session_revoked",
        "session of lou was revoked",
    ),
]


@pytest.mark.parametrize(
    ("token", "reason", "detail"),
    [f[1:] for f in JWT_FAILURES],
    ids=[f[0] for f in JWT_FAILURES],
)
async def test_jwt_failures(
    authn: Authenticator, token: Callable[[], str], reason: str, detail: str
) -> None:
    """Each way a JWT can be unusable has its own reason and a detail without the JWT."""
    credential = token()
    failure = await failure_of(authn, bearer(credential))
    assert (failure.reason, failure.detail) == (reason, detail)
    assert credential not in str(failure)


async def test_jwt_issued_after_logout_is_accepted(authn: Authenticator) -> None:
    """A JWT issued after sessions_valid_after is a new session and passes."""
    token = make_jwt(sub="lou", iat=int(NOW.timestamp()) + 1)
    assert (await authn.authenticate(bearer(token))).principal.id == "lou"


async def test_jwt_without_verifier_is_invalid(store: MemStore) -> None:
    """With no JWT settings, a non-token bearer value is simply invalid."""
    authn = Authenticator(ModelCache(store), token_prefix=PREFIX, jwt=None)
    assert await reason_of(authn, bearer(make_jwt())) == "invalid_token"


async def test_verified_jwt_is_not_reverified(
    authn: Authenticator, verifier: CountingVerifier
) -> None:
    """The signature of a JWT is checked once, then remembered until it expires."""
    header = bearer(make_jwt())
    for _ in range(5):
        await authn.authenticate(header)
    assert verifier.calls == 1


async def test_remembered_jwt_still_checks_principal(authn: Authenticator, store: MemStore) -> None:
    """A remembered JWT is refused once its principal is disabled or logged out."""
    header = bearer(make_jwt(iat=int(time.time()) - 10))
    await authn.authenticate(header)
    store.put_principal(Principal("alice", "acme", sessions_valid_after=datetime.now(UTC)))
    assert await reason_of(authn, header) == "session_revoked"
    store.put_principal(Principal("alice", "acme", disabled=True))
    assert await reason_of(authn, header) == "disabled_principal"


# -- what an Identity must never hold ---------------------------------------------------


async def test_credential_key_never_contains_the_secret(authn: Authenticator) -> None:
    """Decision-cache keys name credentials without carrying them."""
    secret = SECRETS["aaaaaaaaaaaaaaaa"]
    token = make_jwt()
    identities: list[Identity] = [
        await authn.authenticate(bearer(secret)),
        await authn.authenticate(bearer(token)),
    ]
    random_part = secret.rsplit("_", 1)[1]
    signature = token.rsplit(".", 1)[1]
    for identity in identities:
        assert random_part not in identity.credential_key
        assert signature not in identity.credential_key
        assert token not in identity.credential_key


async def test_failure_message_never_contains_the_secret(authn: Authenticator) -> None:
    """Log-bound failure details name a token by id, never by secret."""
    secret = new_secret(PREFIX, "aaaaaaaaaaaaaaaa")
    with pytest.raises(AuthFailure) as failure:
        await authn.authenticate(bearer(secret))
    assert secret.rsplit("_", 1)[1] not in str(failure.value)


def test_identity_is_frozen() -> None:
    """An identity cannot be altered after authentication."""
    identity = Identity(Principal("a", "acme"), None, None, "t:x")
    with pytest.raises(AttributeError):
        identity.credential_key = "t:y"  # type: ignore[misc]
    assert replace(identity, credential_key="t:y").credential_key == "t:y"


# -- remembered credentials ------------------------------------------------------------


async def test_verified_token_is_remembered_and_served_again(authn: Authenticator) -> None:
    """A token that passed every check is remembered once and answers the same identity
    from memory, still recording its use for last_used_at."""
    header = bearer(SECRETS["aaaaaaaaaaaaaaaa"])
    first = await authn.authenticate(header)
    authn.drain_token_uses()
    again = await authn.authenticate(header)
    assert authn.known_credentials == 1
    assert again is first
    assert list(authn.drain_token_uses()) == ["aaaaaaaaaaaaaaaa"]


async def test_remembered_token_revoked_is_refused_on_the_next_request(
    authn: Authenticator, store: MemStore
) -> None:
    """Revocation bites at once even for a token answered from memory."""
    header = bearer(SECRETS["aaaaaaaaaaaaaaaa"])
    await authn.authenticate(header)
    await authn.authenticate(header)  # from memory
    token = store.tokens["aaaaaaaaaaaaaaaa"]
    store.put_token(replace(token, revoked_at=NOW))
    assert await reason_of(authn, header) == "revoked_token"
    assert authn.known_credentials == 0


async def test_remembered_token_of_a_disabled_owner_is_refused_on_the_next_request(
    authn: Authenticator, store: MemStore
) -> None:
    """Disabling the owner bites at once even for a token answered from memory."""
    header = bearer(SECRETS["aaaaaaaaaaaaaaaa"])
    await authn.authenticate(header)
    await authn.authenticate(header)  # from memory
    store.put_principal(Principal("alice", "acme", disabled=True))
    assert await reason_of(authn, header) == "disabled_principal"


async def test_remembered_token_that_expires_is_refused_once_expired(
    authn: Authenticator, store: MemStore
) -> None:
    """A token's expiry is checked against the clock on every use from memory: no
    change notification is needed for it to bite."""
    token = issue("3333333333333333", expires_at=datetime.now(UTC) + timedelta(seconds=0.3))
    store.put_token(token)
    header = bearer(SECRETS["3333333333333333"])
    await authn.authenticate(header)
    assert authn.known_credentials == 1
    await asyncio.sleep(0.35)
    assert await reason_of(authn, header) == "expired_token"


async def test_wrong_secret_of_a_remembered_token_is_not_served_from_memory(
    authn: Authenticator,
) -> None:
    """Another random part behind a remembered token's id goes through the hash
    comparison and is refused; it is not remembered either."""
    await authn.authenticate(bearer(SECRETS["aaaaaaaaaaaaaaaa"]))
    guess = new_secret(PREFIX, "aaaaaaaaaaaaaaaa")
    failure = await failure_of(authn, bearer(guess))
    assert (failure.reason, failure.detail) == (
        "invalid_token",
        "secret mismatch for token aaaaaaaaaaaaaaaa",
    )
    assert authn.known_credentials == 1


async def test_remembered_token_is_not_served_past_the_outage_grace(store: MemStore) -> None:
    """With the store down past the outage grace, memory is not trusted: the request
    is refused with StoreUnavailable, as a lookup in the model would be."""
    now = [1000.0]
    cache = ModelCache(store, outage_grace_seconds=5.0, clock=lambda: now[0])
    await cache.attach(store)
    authn = Authenticator(cache, token_prefix=PREFIX, jwt=None)
    header = bearer(SECRETS["aaaaaaaaaaaaaaaa"])
    await authn.authenticate(header)
    store.down = True
    now[0] += 6.0
    with pytest.raises(StoreUnavailable):
        await authn.authenticate(header)


async def test_remembered_credentials_are_bounded(store: MemStore) -> None:
    """Many distinct valid tokens used once each never hold more than known_max
    entries, and a flood of wrong secrets adds none."""
    cache = ModelCache(store)
    await cache.attach(store)
    authn = Authenticator(cache, token_prefix=PREFIX, jwt=None, known_max=100)
    for index in range(1000):
        token_id = f"{index:016x}"
        store.put_token(issue(token_id), notify=False)
        await authn.authenticate(bearer(SECRETS[token_id]))
        assert authn.known_credentials <= 100
    for _ in range(2000):
        with pytest.raises(AuthFailure):
            await authn.authenticate(bearer(new_secret(PREFIX, "aaaaaaaaaaaaaaaa")))
    assert 50 <= authn.known_credentials <= 100


async def test_remembered_jwt_of_a_disabled_principal_is_refused(
    authn: Authenticator, store: MemStore
) -> None:
    """A JWT answered from memory still loses its principal at once."""
    header = bearer(make_jwt())
    await authn.authenticate(header)
    await authn.authenticate(header)  # from memory
    assert authn.known_credentials == 1
    store.put_principal(Principal("alice", "acme", disabled=True))
    assert await reason_of(authn, header) == "disabled_principal"


async def test_very_large_credential_is_accepted_but_not_remembered(
    authn: Authenticator,
) -> None:
    """An Authorization value over 2 KiB is checked through the full path each time,
    so what remembered credentials hold stays bounded in bytes, not only in count."""
    header = bearer(make_jwt(padding="x" * 3000))
    identity = await authn.authenticate(header)
    assert identity.principal.id == "alice"
    assert (await authn.authenticate(header)).principal.id == "alice"
    assert authn.known_credentials == 0


async def test_credential_in_use_survives_a_stream_of_new_ones(store: MemStore) -> None:
    """A credential used again and again stays remembered while many others come and
    go: the bound evicts those not used since, never the one in use."""
    cache = ModelCache(store)
    await cache.attach(store)
    authn = Authenticator(cache, token_prefix=PREFIX, jwt=None, known_max=10)
    busy = bearer(SECRETS["aaaaaaaaaaaaaaaa"])
    first = await authn.authenticate(busy)
    for index in range(100):
        token_id = f"{index:016x}"
        store.put_token(issue(token_id), notify=False)
        await authn.authenticate(bearer(SECRETS[token_id]))
        assert await authn.authenticate(busy) is first  # never verified afresh
