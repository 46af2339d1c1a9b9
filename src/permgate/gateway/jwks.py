"""Bearer JWT verification against static PEM keys or an IdP's JWKS.

Only asymmetric algorithms are ever accepted: ``none`` and every ``HS*`` algorithm are
refused when the configuration is loaded, ``oct`` keys in a JWKS are ignored, and a
key is only tried with an algorithm of its own family (and curve), so neither an
unsigned token nor an HMAC signed with a public key (key confusion) can pass.

JWKS keys are fetched over one shared ``aiohttp.ClientSession``, kept in memory and
refetched when a token names an unknown ``kid`` (key rotation), at most once per
``jwks_min_refresh_seconds`` however many such tokens arrive, so a flood of random
kids cannot turn the gateway against the IdP. Signatures, ``exp`` (required), ``nbf``
and ``iat`` (when present), ``iss`` and ``aud`` (when configured) are checked with
``leeway_seconds``. PyJWT errors become :class:`~permgate.gateway.authn.AuthFailure` here,
with a ``detail`` that says which check failed (expired, not yet valid, wrong
audience or issuer, bad signature, unknown key id, algorithm not allowed,
malformed) for the audit log. A detail names header fields and claims of the
token, truncated, and never the token itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from permgate.config import JwtSettings
from permgate.core.errors import ConfigError
from permgate.core.reasons import AuthReason
from permgate.gateway.authn import AuthFailure

__all__ = ["SUPPORTED_ALGORITHMS", "JwtVerifier"]

log = logging.getLogger(__name__)

# Algorithm -> key family. Only asymmetric signatures: nothing here takes a shared secret.
SUPPORTED_ALGORITHMS: Final[Mapping[str, str]] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
_EC_CURVES: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_JWK_FAMILY_LOADERS: Final[Mapping[str, Any]] = {
    "RSA": RSAAlgorithm,
    "EC": ECAlgorithm,
    "OKP": OKPAlgorithm,
}
_MAX_JWKS_BYTES: Final = 1 << 20
_FETCH_TIMEOUT: Final = aiohttp.ClientTimeout(total=5.0)
# Until a first JWKS arrives, retry this often rather than wait a whole refresh window.
_FIRST_FETCH_RETRY: Final = 1.0
# Keys are refreshed in the background this long after the last fetch, so a key the
# IdP withdrew stops being trusted even if no token ever names an unknown kid.
_MAX_KEYS_AGE: Final = 600.0
# How much of a token-supplied value (kid, alg, aud, iss) a refusal's detail repeats.
_SHOWN: Final = 64


def _shown(value: object) -> str:
    """A token-supplied value for a detail: its repr, cut to a bounded length."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


@dataclass(frozen=True, slots=True)
class _Key:
    """A public key and what it may verify: its family, curve and pinned ``alg``."""

    kid: str | None
    family: str
    curve: str | None
    alg: str | None
    key: Any

    def fits(self, alg: str) -> bool:
        if SUPPORTED_ALGORITHMS[alg] != self.family:
            return False
        if self.alg is not None and self.alg != alg:
            return False
        return self.family != "EC" or _EC_CURVES[alg] == self.curve


def _key_of(public: object, kid: str | None, alg: str | None) -> _Key | None:
    """Wrap a public key object, or None when it is not a usable asymmetric key."""
    if isinstance(public, rsa.RSAPublicKey):
        return _Key(kid, "RSA", None, alg, public)
    if isinstance(public, ec.EllipticCurvePublicKey):
        return _Key(kid, "EC", public.curve.name, alg, public)
    if isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return _Key(kid, "OKP", None, alg, public)
    return None


def _load_pem(pem: str) -> object:
    data = pem.strip().encode("ascii")
    if b"CERTIFICATE" in data.split(b"\n", 1)[0]:
        return x509.load_pem_x509_certificate(data).public_key()
    return load_pem_public_key(data)


class JwtVerifier:
    """Verifies bearer JWTs; one per gateway process.

    Args:
        settings: the ``auth.jwt`` section; its algorithms and keys are checked here
            and a bad value raises :class:`ConfigError` naming it.
        session_factory: makes the ClientSession used for the JWKS (owned and closed
            by the verifier).
        clock: monotonic seconds for the refetch rate limit; injectable for tests.
    """

    def __init__(
        self,
        settings: JwtSettings,
        *,
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problems = _algorithm_problems(settings.algorithms)
        self._algorithms = frozenset(settings.algorithms)
        self._static: list[_Key] = []
        for index, pem in enumerate(settings.keys):
            where = f"auth.jwt.keys[{index}]"
            try:
                key = _key_of(_load_pem(pem), None, None)
            except (ValueError, TypeError, UnicodeEncodeError) as exc:
                problems.append(f"{where}: not a PEM public key or certificate ({exc})")
                continue
            if key is None:
                problems.append(f"{where}: not an RSA, EC or Ed25519/Ed448 public key")
            elif not any(key.fits(alg) for alg in self._algorithms if alg in SUPPORTED_ALGORITHMS):
                problems.append(
                    f"{where}: a {key.family} key, but no algorithm in auth.jwt.algorithms "
                    f"{list(settings.algorithms)} can use it"
                )
            else:
                self._static.append(key)
        if not settings.keys and not settings.jwks_url:
            problems.append("auth.jwt: set jwks_url or keys, or remove the jwt section")
        if problems:
            raise ConfigError(problems)
        self.settings = settings
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._clock = clock
        self._jwks: list[_Key] = []
        self._jwks_loaded = False
        self._last_attempt = float("-inf")
        self._last_success = float("-inf")
        self._fetching: asyncio.Future[bool] | None = None
        self._background: asyncio.Future[bool] | None = None
        self.fetches = 0
        """JWKS fetch attempts so far (for metrics and tests)."""

    @property
    def principal_claim(self) -> str:
        """The claim naming the principal."""
        return self.settings.principal_claim

    @property
    def leeway(self) -> float:
        """Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``."""
        return self.settings.leeway_seconds

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the JWKS once so the first request does not wait; an IdP that is down
        is logged, not fatal: tokens are refused until keys arrive."""
        if self.settings.jwks_url:
            await self._refresh()

    async def close(self) -> None:
        """Stop background work and close the HTTP session."""
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- verification -------------------------------------------------------------------

    async def verify(self, token: str) -> dict[str, object]:
        """The token's claims when it is valid; :class:`AuthFailure` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthFailure(
                AuthReason.INVALID_TOKEN, f"malformed JWT: {str(exc)[:100]}"
            ) from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            allowed = ", ".join(sorted(self._algorithms))
            raise AuthFailure(
                AuthReason.INVALID_TOKEN,
                f"algorithm {_shown(alg)} is not allowed (allowed: {allowed})",
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthFailure(AuthReason.INVALID_TOKEN, "malformed JWT: kid is not a string")
        self._refresh_if_old()
        claims = self._try_keys(token, alg, kid)
        if claims is None and self._wants_refetch(kid) and await self._refresh():
            claims = self._try_keys(token, alg, kid)
        if claims is None:
            raise AuthFailure(AuthReason.INVALID_TOKEN, self._no_key_detail(alg, kid))
        return claims

    def _no_key_detail(self, alg: str, kid: str | None) -> str:
        """Why no key verified a token: a bad signature, or no key to try at all."""
        if self._candidates(alg, kid):
            named = "" if kid is None else f" with kid {_shown(kid)}"
            return f"bad signature: no {alg} key{named} verifies it"
        if self.settings.jwks_url and not self._jwks_loaded and not self._static:
            return "no keys yet: the JWKS has not been fetched"
        if kid is not None:
            return f"unknown key id {_shown(kid)} (no {alg} key has it)"
        return f"no key can verify {alg}"

    def _candidates(self, alg: str, kid: str | None) -> list[_Key]:
        # Static PEMs and kid-less JWKs have no kid to match: they are tried for any kid.
        return [
            key
            for key in (*self._static, *self._jwks)
            if (kid is None or key.kid is None or key.kid == kid) and key.fits(alg)
        ]

    def _try_keys(self, token: str, alg: str, kid: str | None) -> dict[str, object] | None:
        """Claims from the first key whose signature matches; None when none does."""
        settings = self.settings
        for key in self._candidates(alg, kid):
            try:
                claims: dict[str, object] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=settings.audience,
                    issuer=settings.issuer,
                    leeway=settings.leeway_seconds,
                    options={"require": ["exp"], "verify_aud": settings.audience is not None},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise AuthFailure(
                    AuthReason.EXPIRED_TOKEN,
                    f"expired: exp has passed (leeway {settings.leeway_seconds}s)",
                ) from None
            except jwt.PyJWTError as exc:
                raise AuthFailure(
                    AuthReason.INVALID_TOKEN, self._claim_detail(token, exc)
                ) from None
            return claims
        return None

    def _claim_detail(self, token: str, exc: jwt.PyJWTError) -> str:
        """Which claim check failed. PyJWT checks claims only after the signature, so
        the token's own ``aud``/``iss`` may be quoted (cut short), never the token."""
        settings = self.settings
        if isinstance(exc, jwt.ImmatureSignatureError):
            which = "iat" if "(iat)" in str(exc) else "nbf"
            return f"not yet valid: {which} is in the future (leeway {settings.leeway_seconds}s)"
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"missing claim {exc.claim!r}"
        if isinstance(exc, jwt.InvalidAudienceError | jwt.InvalidIssuerError):
            claim, expected = "aud", settings.audience
            if isinstance(exc, jwt.InvalidIssuerError):
                claim, expected = "iss", settings.issuer
            name = "audience" if claim == "aud" else "issuer"
            try:
                got = jwt.decode(token, options={"verify_signature": False}).get(claim)
            except jwt.PyJWTError:  # pragma: no cover - it decoded a moment ago
                got = None
            return f"wrong {name}: {claim} is {_shown(got)}, expected {expected!r}"
        if isinstance(exc, jwt.DecodeError):
            return f"malformed JWT: {str(exc)[:100]}"
        return f"invalid JWT: {str(exc)[:100]}"

    # -- JWKS -----------------------------------------------------------------------------

    def _wants_refetch(self, kid: str | None) -> bool:
        """A JWKS might now hold the key: the token names a kid we have not seen."""
        if not self.settings.jwks_url:
            return False
        return kid is None or all(key.kid != kid for key in self._jwks)

    def _refresh_if_old(self) -> None:
        if (
            self.settings.jwks_url
            and self._jwks_loaded
            and self._clock() - self._last_success > _MAX_KEYS_AGE
            and self._background is None
        ):
            self._background = asyncio.ensure_future(self._refresh())
            self._background.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[bool]) -> None:
        self._background = None
        if not task.cancelled():
            task.exception()

    async def _refresh(self) -> bool:
        """Refetch the JWKS unless the rate limit forbids it; True when new keys arrived
        (from our fetch or from one already in flight, which we join)."""
        if self._fetching is None:
            interval = self.settings.jwks_min_refresh_seconds
            if not self._jwks_loaded:
                interval = min(interval, _FIRST_FETCH_RETRY)
            if self._clock() - self._last_attempt < interval:
                return False
            # Counted at the attempt, not the success: a failing IdP is not hammered either.
            self._last_attempt = self._clock()
            self._fetching = asyncio.ensure_future(self._fetch())
            self._fetching.add_done_callback(self._fetched)
        return await asyncio.shield(self._fetching)

    def _fetched(self, task: asyncio.Future[bool]) -> None:
        self._fetching = None
        if not task.cancelled():
            task.exception()

    async def _fetch(self) -> bool:
        """One JWKS fetch; True when it gave us keys. On failure the old keys stay."""
        url = self.settings.jwks_url
        if url is None:
            return False
        self.fetches += 1
        if self._session is None:
            self._session = self._session_factory()
        try:
            async with self._session.get(
                url, timeout=_FETCH_TIMEOUT, headers={"Accept": "application/json"}
            ) as response:
                if response.status != 200:
                    log.warning("JWKS %s answered %d; keeping old keys", url, response.status)
                    return False
                body = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > _MAX_JWKS_BYTES:
                        log.warning("JWKS %s is over %d bytes; ignored", url, _MAX_JWKS_BYTES)
                        return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("JWKS %s unreachable (%s); keeping old keys", url, exc)
            return False
        keys = _parse_jwks(bytes(body), self._algorithms)
        if keys is None:
            log.warning("JWKS %s is not a JSON key set; keeping old keys", url)
            return False
        self._jwks = keys
        self._jwks_loaded = True
        self._last_success = self._clock()
        return True


def _parse_jwks(body: bytes, algorithms: frozenset[str]) -> list[_Key] | None:
    """The usable signing keys of a JWKS document; None when it is not one."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return None
    keys: list[_Key] = []
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        loader = _JWK_FAMILY_LOADERS.get(str(jwk.get("kty")))  # "oct" and others: never
        alg = jwk.get("alg")
        if loader is None or (alg is not None and alg not in algorithms):
            continue
        kid = jwk.get("kid")
        try:
            public = loader.from_jwk(jwk)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if hasattr(public, "private_bytes"):  # a JWKS leaking private parts: use the public
            public = public.public_key()
        key = _key_of(public, kid if isinstance(kid, str) else None, alg)
        if key is not None:
            keys.append(key)
    return keys


def _algorithm_problems(algorithms: tuple[str, ...]) -> list[str]:
    problems: list[str] = []
    if not algorithms:
        problems.append("auth.jwt.algorithms: empty; list at least one, e.g. [RS256, ES256]")
    for alg in algorithms:
        if alg.lower() == "none":
            problems.append(f"auth.jwt.algorithms: {alg!r} is refused: it accepts unsigned tokens")
        elif alg.upper().startswith("HS"):
            problems.append(
                f"auth.jwt.algorithms: {alg!r} is refused: HMAC takes a shared secret and "
                "opens key confusion; use an asymmetric algorithm"
            )
        elif alg not in SUPPORTED_ALGORITHMS:
            problems.append(
                f"auth.jwt.algorithms: {alg!r} is not supported "
                f"(expected some of {', '.join(SUPPORTED_ALGORITHMS)})"
            )
    return problems
