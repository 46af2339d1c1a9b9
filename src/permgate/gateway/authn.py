"""Authentication: turn an ``Authorization`` header into an :class:`Identity`.

``Bearer <secret>`` with the token prefix is a personal access token: its id is read
from the secret, the record comes from the in-memory :class:`ModelCache`, and the hash
is compared in constant time. Any other bearer value is a JWT, checked by a
:class:`~permgate.gateway.jwks.JwtVerifier` once and then remembered until it expires, so the
hot path verifies no signature twice. The principal checks (exists, enabled, session
not revoked) run on every call, against memory.

A verified client certificate (mutual TLS) identifies a caller that presents no bearer
credential: :func:`certificate_principal` reads the principal id from it (the whole
first URI SAN, e.g. a SPIFFE id, the first DNS SAN, or the subject CN), and the
principal checks are the same. A bearer credential, when present, decides alone: the
certificate is then not consulted, so a bad token is refused even from a client with
a good certificate. The TLS layer hands over only certificates it verified.

Every refusal is an :class:`AuthFailure` with one reason from a closed set, and a
``detail`` saying which check failed (unknown token id, secret mismatch, expired,
revoked, owner disabled, session revoked, ...). The detail goes to the audit event
and to the ``permgate.gateway.authn`` debug log; the client sees only the reason. A detail
names a token by its id and never contains the credential.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

from cachetools import LRUCache

from permgate.core.errors import PermgateError
from permgate.core.model import AuthToken, Principal
from permgate.core.reasons import AUTH_REASONS, AuthReason
from permgate.core.token_secrets import secret_matches, token_id_of
from permgate.gateway.generations import Generations

if TYPE_CHECKING:
    from permgate.gateway.jwks import JwtVerifier
    from permgate.gateway.modelcache import ModelCache

__all__ = [
    "AUTH_FAILURE_REASONS",
    "AuthFailure",
    "AuthFailureReason",
    "Authenticator",
    "Identity",
    "PrincipalFrom",
    "certificate_principal",
]

# Which field of a verified client certificate is the principal id.
PrincipalFrom = Literal["san_uri", "san_dns", "subject_cn"]

# The closed set lives in permgate.core.reasons; these names stay for their importers.
AuthFailureReason = AuthReason
AUTH_FAILURE_REASONS: Final = AUTH_REASONS

log = logging.getLogger(__name__)

_CHALLENGE: Final = 'Bearer realm="permgate"'
# Longest Authorization value remembered: memory stays under known_max times this.
_KNOWN_VALUE_MAX: Final = 2048
_CHALLENGE_INVALID: Final = 'Bearer realm="permgate", error="invalid_token"'


class AuthFailure(PermgateError):
    """The request carries no usable credential: 401 with a stable ``reason``.

    ``detail`` is for logs and audit only; the client sees just the reason, so a
    prober learns nothing about which check failed beyond it.
    """

    status_code = 401
    error = "unauthenticated"

    def __init__(self, reason: AuthFailureReason, detail: str = "") -> None:
        self.reason: AuthFailureReason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` value (RFC 6750 §3: no error code when none was sent)."""
        return _CHALLENGE if self.reason == "missing_credentials" else _CHALLENGE_INVALID


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling and with what.

    ``credential_key`` names the credential for the decision cache without being it:
    ``t:<token id>``, ``j:<sha256 of the JWT>`` or ``c:<principal id>`` (a verified
    client certificate).
    """

    principal: Principal
    token: AuthToken | None
    claims: Mapping[str, object] | None
    credential_key: str


class _Known:
    """A credential verified a moment ago, and what keeps it valid: the model's epoch
    it was verified at, its own end (a token's expiry, a JWT's exp + leeway; wall
    clock) and when the cached records it was made from stop being trusted (the
    cache's clock)."""

    __slots__ = ("ends", "epoch", "fresh_until", "identity", "token_id")

    def __init__(self, identity: Identity, epoch: int, ends: float, fresh_until: float) -> None:
        self.identity = identity
        self.token_id = identity.token.id if identity.token is not None else None
        self.epoch = epoch
        self.ends = ends
        self.fresh_until = fresh_until


@dataclass(frozen=True, slots=True)
class _VerifiedJwt:
    claims: Mapping[str, object]
    # Epoch seconds after which the verifier itself would refuse it (exp + leeway).
    valid_until: float


class Authenticator:
    """Resolves ``Authorization`` headers to identities; one instance per gateway.

    Args:
        cache: the model, in memory.
        token_prefix: what marks a secret as a permgate auth token.
        jwt: the JWT verifier, or None when bearer JWTs are not accepted.
        jwt_cache_size: how many verified JWTs to remember (LRU).
        known_max: how many verified ``Authorization`` values to serve from memory
            (values up to 2 KiB: at most ~20 MiB however they are chosen).

    Remembered credentials: a bearer credential that passed every check is
    remembered by its whole ``Authorization`` value, so presenting it again costs a
    dict lookup instead of parsing, two model lookups and a SHA-256. It is served
    from memory only while the model's epoch is the one it was verified at (any
    change, here or in another worker, bumps it: a revoked or expired-by-admin token
    or a disabled owner bites on the very next request), its own end has not passed
    (checked against the clock on every use) and the model's records are still
    trusted (their TTL, the store's outage grace). Otherwise the full path runs again.

    Why this leaks nothing to a guesser: the lookup is a plain dict lookup by the
    presented value. Its cost depends on the presented string and on which hash slots
    are taken, never on how much of a stored secret matches: a stored entry is only
    compared byte-wise when its full 64-bit string hash (SipHash, keyed per process)
    equals the presented one's, which an attacker cannot aim at without that key. A
    miss then goes through the unchanged path: token id, record, SHA-256 of the secret
    and ``hmac.compare_digest``, so an unknown or wrong secret is refused exactly as
    before and is never stored (only verified credentials are).
    """

    def __init__(
        self,
        cache: ModelCache,
        *,
        token_prefix: str,
        jwt: JwtVerifier | None,
        jwt_cache_size: int = 10_000,
        known_max: int = 10_000,
    ) -> None:
        self._cache = cache
        self._prefix = token_prefix
        self._jwt = jwt
        self._verified: LRUCache[str, _VerifiedJwt] = LRUCache(maxsize=jwt_cache_size)
        # Bounded in two generations: only credentials that passed every check are put
        # here, so unknown or wrong secrets never take room; one in use stays.
        self._known: Generations[str, _Known] = Generations(known_max)
        self._uses: dict[str, float] = {}

    async def authenticate(
        self, authorization: str | None, certificate_id: str | None = None
    ) -> Identity:
        """The caller's identity, or :class:`AuthFailure`.

        A header with another scheme (``Basic ...``) counts as missing credentials:
        no bearer credential was presented, and the challenge tells the client which
        scheme to use (RFC 6750 §3.1). ``certificate_id`` is the principal id read
        from the client's *verified* certificate (:func:`certificate_principal`): it
        identifies the caller only when no bearer credential was presented.
        """
        if authorization is not None:
            identity = self.remembered(authorization)
            if identity is not None:
                return identity
        try:
            if certificate_id is not None and not _is_bearer(authorization):
                return await self._certificate(certificate_id)
            return await self._authenticate(authorization)
        except AuthFailure as failure:
            log.debug("credential refused: %s: %s", failure.reason, failure.detail)
            raise

    def remembered(self, authorization: str) -> Identity | None:
        """The identity of a credential verified a moment ago and still valid (see the
        class docstring), or None: the first step of :meth:`authenticate`, without a
        coroutine, for the gateway's path that never waits."""
        table = self._known
        known = table.get(authorization)
        if known is None:
            return None
        cache = self._cache
        if cache.unchanged_since(known.epoch):
            now = time.time()
            if now < known.ends and cache.now() < known.fresh_until:
                if known.token_id is not None:
                    self._uses[known.token_id] = now
                return known.identity
        table.pop(authorization)  # stale: verified afresh by authenticate()
        return None

    async def _authenticate(self, authorization: str | None) -> Identity:
        if not authorization:
            raise AuthFailure(AuthReason.MISSING_CREDENTIALS, "no Authorization header")
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthFailure(
                AuthReason.MISSING_CREDENTIALS, f"scheme {scheme[:20]!r} is not Bearer"
            )
        credential = credential.strip(" ")
        if not credential:
            raise AuthFailure(AuthReason.MISSING_CREDENTIALS, "empty bearer credential")
        # Read before any await: a change landing during the checks makes the entry stale.
        epoch = self._cache.epoch
        if credential.startswith(self._prefix):
            identity, ends = await self._auth_token(credential)
        else:
            identity, ends = await self._auth_jwt(credential)
        self._remember(authorization, identity, epoch, ends)
        return identity

    def _remember(self, authorization: str, identity: Identity, epoch: int, ends: float) -> None:
        """Serve ``authorization`` from memory from now on (see the class docstring)."""
        if len(authorization) > _KNOWN_VALUE_MAX:
            return  # a very large JWT: the full path each time rather than held here
        cache = self._cache
        fresh_until = cache.trusted_until("principal", identity.principal.id)
        if identity.token is not None:
            fresh_until = min(fresh_until, cache.trusted_until("token", identity.token.id))
        if ends > time.time() and fresh_until > cache.now():
            self._known.put(authorization, _Known(identity, epoch, ends, fresh_until))

    @property
    def known_credentials(self) -> int:
        """How many verified credentials are remembered (bounded by ``known_max``)."""
        return len(self._known)

    # -- client certificates -----------------------------------------------------------

    async def _certificate(self, principal_id: str) -> Identity:
        principal = await self._cache.principal(principal_id)
        if principal is None:
            raise AuthFailure(
                AuthReason.UNKNOWN_PRINCIPAL,
                f"certificate principal {principal_id[:100]!r} not found",
            )
        if principal.disabled:
            raise AuthFailure(
                AuthReason.DISABLED_PRINCIPAL, f"certificate principal {principal.id} is disabled"
            )
        return Identity(principal, None, None, f"c:{principal.id}")

    # -- auth tokens ------------------------------------------------------------------

    async def _auth_token(self, secret: str) -> tuple[Identity, float]:
        """The token's identity and when the token expires (epoch seconds, or inf)."""
        token_id = token_id_of(self._prefix, secret)
        if token_id is None:
            raise AuthFailure(
                AuthReason.INVALID_TOKEN,
                f"malformed auth token: {self._prefix!r} is not followed by a token id, '_' "
                "and the random part",
            )
        token = await self._cache.token(token_id)
        if token is None:
            raise AuthFailure(AuthReason.INVALID_TOKEN, f"unknown token id {token_id}")
        if not secret_matches(secret, token.secret_hash):
            raise AuthFailure(AuthReason.INVALID_TOKEN, f"secret mismatch for token {token_id}")
        now = time.time()
        if token.revoked_at is not None:
            raise AuthFailure(AuthReason.REVOKED_TOKEN, f"token {token_id} is revoked")
        ends = float("inf") if token.expires_at is None else _epoch(token.expires_at)
        if ends <= now:
            raise AuthFailure(AuthReason.EXPIRED_TOKEN, f"token {token_id} has expired")
        owner = await self._cache.principal(token.owner)
        # An owner in another account is, from the token's account, no principal at all.
        if owner is None or owner.account != token.account:
            raise AuthFailure(AuthReason.UNKNOWN_PRINCIPAL, f"owner of token {token_id} not found")
        if owner.disabled:
            raise AuthFailure(
                AuthReason.DISABLED_PRINCIPAL, f"owner {owner.id} of token {token_id} is disabled"
            )
        self._uses[token_id] = now
        return Identity(owner, token, None, f"t:{token_id}"), ends

    def drain_token_uses(self) -> dict[str, float]:
        """Token last-use times since the previous drain, for ``store.touch_tokens``."""
        uses, self._uses = self._uses, {}
        return uses

    # -- JWTs ---------------------------------------------------------------------------

    async def _auth_jwt(self, token: str) -> tuple[Identity, float]:
        """The JWT's identity and until when its verification holds (epoch seconds)."""
        if self._jwt is None:
            raise AuthFailure(
                AuthReason.INVALID_TOKEN, "not an auth token and JWTs are not configured"
            )
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        claims, ends = await self._verified_claims(self._jwt, token, digest)
        subject = claims.get(self._jwt.principal_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthFailure(AuthReason.INVALID_TOKEN, f"no {self._jwt.principal_claim!r} claim")
        principal = await self._cache.principal(subject)
        if principal is None:
            raise AuthFailure(
                AuthReason.UNKNOWN_PRINCIPAL, f"principal {subject[:100]!r} not found"
            )
        if principal.disabled:
            raise AuthFailure(
                AuthReason.DISABLED_PRINCIPAL, f"principal {principal.id} is disabled"
            )
        if principal.sessions_valid_after is not None:
            iat = claims.get("iat")
            # No iat, or issued before the forced logout: fail closed.
            if (
                not isinstance(iat, int | float)
                or isinstance(iat, bool)
                or iat < _epoch(principal.sessions_valid_after)
            ):
                raise AuthFailure(
                    AuthReason.SESSION_REVOKED, f"session of {principal.id} was revoked"
                )
        return Identity(principal, None, claims, f"j:{digest}"), ends

    async def _verified_claims(
        self, verifier: JwtVerifier, token: str, digest: str
    ) -> tuple[Mapping[str, object], float]:
        """The claims and until when they hold: exp + leeway, or -inf (a JWT without
        exp is verified on every use, never remembered)."""
        now = time.time()
        known = self._verified.get(digest)
        if known is not None and now < known.valid_until:
            return known.claims, known.valid_until
        claims: Mapping[str, object] = MappingProxyType(await verifier.verify(token))
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            valid_until = exp + verifier.leeway
            self._verified[digest] = _VerifiedJwt(claims, valid_until)
            return claims, valid_until
        return claims, float("-inf")


def _is_bearer(authorization: str | None) -> bool:
    return authorization is not None and authorization.partition(" ")[0].lower() == "bearer"


def certificate_principal(
    peercert: Mapping[str, Any] | None, principal_from: PrincipalFrom
) -> str | None:
    """The principal id a verified peer certificate names, or None.

    ``peercert`` is what ``SSLObject.getpeercert()`` returns: an empty dict (or None)
    when the client sent no certificate or it was not verified; the id is the whole
    value of the first URI SAN, the first DNS SAN or the subject's common name.
    """
    if not peercert:
        return None
    if principal_from == "subject_cn":
        for rdn in peercert.get("subject", ()):
            for name, value in rdn:
                if name == "commonName" and isinstance(value, str) and value:
                    return value
        return None
    wanted = "URI" if principal_from == "san_uri" else "DNS"
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == wanted and isinstance(value, str) and value:
            return value
    return None


def _epoch(moment: datetime) -> float:
    """Epoch seconds; a naive datetime from the store is UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
