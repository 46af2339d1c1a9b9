"""Passwords for native login: the policy, its mandatory floor, and Argon2id hashing.

The floor binds every account and no configuration lowers it (NIST SP 800-63B rev 4:
length over composition, a blocklist, no forced rotation): at least 8 characters, not
in the list of common and breached passwords shipped with permgate (compared ignoring
case), not equal to the principal's id (ignoring case). An account's
``password_policy`` adds rules on top: a longer minimum, a maximum (at most 128),
required character classes, a history of passwords that may not be reused, a maximum
age, and the sign-in lockout.

Hashes are Argon2id in PHC string form (``$argon2id$v=19$m=19456,t=2,p=1$...``) with
OWASP's recommended parameters for Argon2id (19 MiB of memory, 2 passes, 1 lane):
RFC 9106's low-memory profile (64 MiB, 3 passes, 4 lanes) costs three times the memory
per sign-in, and a sidecar on a small node must sustain a burst of sign-ins without
exhausting its memory; OWASP's profile is the documented equivalent-strength trade of
memory for passes. Hashing and verifying run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib.resources import files
from typing import Final, Literal

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from permgate.core.errors import InvalidInput

__all__ = [
    "CHARACTER_CLASSES",
    "FLOOR",
    "FLOOR_MIN_LENGTH",
    "MAX_LENGTH",
    "Lockout",
    "LoginRefused",
    "PasswordPolicy",
    "PolicyViolation",
    "broken_rules",
    "dummy_verify",
    "hash_password",
    "is_blocklisted",
    "needs_rehash",
    "parse_policy",
    "verify_password",
]

FLOOR_MIN_LENGTH: Final = 8
MAX_LENGTH: Final = 128
MAX_HISTORY: Final = 24
MAX_LOCKOUT_ATTEMPTS: Final = 100  # NIST: at most 100 consecutive failures before a limit
MAX_SECONDS: Final = 7 * 24 * 3600
MAX_AGE_DAYS: Final = 3650
CharacterClass = Literal["lower", "upper", "digit", "symbol"]
CHARACTER_CLASSES: Final[tuple[CharacterClass, ...]] = ("lower", "upper", "digit", "symbol")

LoginRefusal = Literal["bad_credentials", "locked", "disabled", "expired_password"]


@dataclass(frozen=True, slots=True)
class Lockout:
    """``attempts`` failed sign-ins within ``window_seconds`` lock sign-in for
    ``lock_seconds``."""

    attempts: int = 10
    window_seconds: int = 900
    lock_seconds: int = 900


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    """An account's effective password policy (the floor already applied).

    ``require_classes`` names character classes a password must contain; ``history``
    is how many previous passwords may not be reused; ``max_age_days`` None means
    passwords never expire. Without a configured policy, :data:`FLOOR` applies.
    """

    min_length: int = FLOOR_MIN_LENGTH
    max_length: int = MAX_LENGTH
    require_classes: tuple[CharacterClass, ...] = ()
    history: int = 0
    max_age_days: int | None = None
    lockout: Lockout = field(default_factory=Lockout)

    def as_json(self) -> dict[str, object]:
        """The policy under its ``policy.yaml`` key names."""
        out = asdict(self)
        out["require_classes"] = list(self.require_classes)
        return out

    def with_floor(self) -> PasswordPolicy:
        """This policy with the floor imposed (stored policies are validated already;
        this holds the line for any other writer)."""
        min_length = max(self.min_length, FLOOR_MIN_LENGTH)
        max_length = min(max(self.max_length, min_length), MAX_LENGTH)
        lockout = Lockout(
            attempts=min(max(self.lockout.attempts, 1), MAX_LOCKOUT_ATTEMPTS),
            window_seconds=max(self.lockout.window_seconds, 1),
            lock_seconds=max(self.lockout.lock_seconds, 1),
        )
        return PasswordPolicy(
            min_length=min(min_length, MAX_LENGTH),
            max_length=max_length,
            require_classes=self.require_classes,
            history=min(max(self.history, 0), MAX_HISTORY),
            max_age_days=self.max_age_days,
            lockout=lockout,
        )


FLOOR: Final = PasswordPolicy()


class PolicyViolation(InvalidInput):
    """A password the policy refuses (422); ``rules`` names every rule it breaks
    (``min_length``, ``max_length``, ``common``, ``equals_id``, ``require_classes``,
    ``history``) and the message says each in words."""

    def __init__(self, broken: list[tuple[str, str]]) -> None:
        self.rules = tuple(rule for rule, _ in broken)
        super().__init__("password refused: " + "; ".join(text for _, text in broken))


class LoginRefused(Exception):
    """A sign-in refused, with ``reason`` from a closed set. An unknown principal and
    a wrong password are both ``bad_credentials``; ``disabled`` and
    ``expired_password`` are told only to a caller who gave the right password."""

    def __init__(self, reason: LoginRefusal, principal_id: str | None = None) -> None:
        self.reason: LoginRefusal = reason
        self.principal_id = principal_id
        super().__init__(reason)


# -- policy from configuration ---------------------------------------------------

# The keys of a password_policy mapping and of its lockout section.
POLICY_KEYS: Final = (
    "min_length",
    "max_length",
    "require_classes",
    "history",
    "max_age_days",
    "lockout",
)
LOCKOUT_KEYS: Final = ("attempts", "window_seconds", "lock_seconds")


def parse_policy(raw: object) -> tuple[PasswordPolicy | None, list[tuple[str, str]]]:
    """A ``password_policy`` mapping as written in ``policy.yaml`` or JSON: the policy
    (None when there are problems) and every problem as (key path, message)."""
    problems: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        return None, [("password_policy", "must be a mapping of policy keys")]
    known = set(POLICY_KEYS)
    for key in raw:
        if key not in known:
            problems.append((str(key), f"unknown key {key!r}: expected one of {sorted(known)}"))
    min_length = _int(raw, "min_length", FLOOR_MIN_LENGTH, FLOOR_MIN_LENGTH, MAX_LENGTH, problems)
    max_length = _int(raw, "max_length", MAX_LENGTH, FLOOR_MIN_LENGTH, MAX_LENGTH, problems)
    if min_length > max_length:
        problems.append(("max_length", f"max_length {max_length} is below min_length {min_length}"))
    history = _int(raw, "history", 0, 0, MAX_HISTORY, problems)
    max_age = raw.get("max_age_days")
    if max_age is not None:
        max_age = _int(raw, "max_age_days", 0, 1, MAX_AGE_DAYS, problems)
    classes = _classes(raw.get("require_classes", []), problems)
    lockout = _lockout(raw.get("lockout", {}), problems)
    if problems:
        return None, problems
    policy = PasswordPolicy(min_length, max_length, classes, history, max_age, lockout)
    return policy, []


def _int(
    raw: dict[object, object],
    key: str,
    default: int,
    low: int,
    high: int,
    problems: list[tuple[str, str]],
    prefix: str = "",
) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        why = ""
        if key == "min_length" and isinstance(value, int) and value < low:
            why = " (the floor of 8 characters cannot be lowered)"
        if key == "max_length" and isinstance(value, int) and value > high:
            why = " (at most 128)"
        problems.append(
            (prefix + key, f"{prefix + key} {value!r} must be an integer from {low} to {high}{why}")
        )
        return default
    return value


def _classes(value: object, problems: list[tuple[str, str]]) -> tuple[CharacterClass, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.append(
            ("require_classes", f"require_classes must be a list of {list(CHARACTER_CLASSES)}")
        )
        return ()
    chosen: list[CharacterClass] = []
    for item in value:
        if item not in CHARACTER_CLASSES:
            problems.append(
                (
                    "require_classes",
                    f"character class {item!r} is unknown: expected some of "
                    f"{list(CHARACTER_CLASSES)}",
                )
            )
        else:
            chosen.append(item)
    return tuple(c for c in CHARACTER_CLASSES if c in chosen)


def _lockout(value: object, problems: list[tuple[str, str]]) -> Lockout:
    if not isinstance(value, dict):
        problems.append(
            ("lockout", "lockout must be a mapping {attempts, window_seconds, lock_seconds}")
        )
        return Lockout()
    for key in value:
        if key not in LOCKOUT_KEYS:
            problems.append(
                (
                    f"lockout.{key}",
                    f"unknown key {key!r}: expected attempts, window_seconds, lock_seconds",
                )
            )
    default = Lockout()
    return Lockout(
        attempts=_int(
            value, "attempts", default.attempts, 1, MAX_LOCKOUT_ATTEMPTS, problems, "lockout."
        ),
        window_seconds=_int(
            value, "window_seconds", default.window_seconds, 1, MAX_SECONDS, problems, "lockout."
        ),
        lock_seconds=_int(
            value, "lock_seconds", default.lock_seconds, 1, MAX_SECONDS, problems, "lockout."
        ),
    )


def policy_from_json(text: str | None) -> PasswordPolicy:
    """A stored policy (None: only the floor), floor applied."""
    if text is None:
        return FLOOR
    policy, problems = parse_policy(json.loads(text))
    # A stored policy that no longer parses fails closed to the floor's stricter
    # reading rather than to no policy at all.
    return FLOOR if policy is None or problems else policy.with_floor()


# -- the rules --------------------------------------------------------------------


def normalize(password: str) -> str:
    """NFKC, as NIST asks, so the same password typed on two keyboards is one."""
    return unicodedata.normalize("NFKC", password)


@cache
def _blocklist() -> frozenset[str]:
    text = files("permgate").joinpath("data/common-passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().casefold()
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


def is_blocklisted(password: str) -> bool:
    """True when the password is a common or breached one (ignoring case)."""
    return normalize(password).casefold() in _blocklist()


def _classes_of(password: str) -> set[CharacterClass]:
    found: set[CharacterClass] = set()
    for char in password:
        if char.islower():
            found.add("lower")
        elif char.isupper():
            found.add("upper")
        elif char.isdigit():
            found.add("digit")
        else:
            found.add("symbol")
    return found


def broken_rules(password: str, principal_id: str, policy: PasswordPolicy) -> list[tuple[str, str]]:
    """Every rule of the floor and of ``policy`` that ``password`` breaks, as
    (rule, words); empty when it is acceptable. History is checked by the caller."""
    policy = policy.with_floor()
    text = normalize(password)
    broken: list[tuple[str, str]] = []
    if len(text) < policy.min_length:
        broken.append(("min_length", f"it is shorter than {policy.min_length} characters"))
    if len(text) > policy.max_length:
        broken.append(("max_length", f"it is longer than {policy.max_length} characters"))
    if text.casefold() in _blocklist():
        broken.append(("common", "it is in the list of common and breached passwords"))
    if text.casefold() == principal_id.casefold():
        broken.append(("equals_id", "it is the principal's id"))
    missing = [c for c in policy.require_classes if c not in _classes_of(text)]
    if missing:
        broken.append(
            ("require_classes", "it lacks the required character classes: " + ", ".join(missing))
        )
    return broken


# -- hashing ------------------------------------------------------------------------

_HASHER: Final = PasswordHasher(
    time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16, type=Type.ID
)
# Longer input is refused without hashing more than this many characters.
_VERIFY_LIMIT: Final = 4 * MAX_LENGTH


async def hash_password(password: str) -> str:
    """The Argon2id PHC string of ``password``, computed off the event loop."""
    return await asyncio.to_thread(_HASHER.hash, normalize(password))


@cache
def _dummy_hash() -> str:
    """Verified when the principal is unknown or has no password (or the input is
    absurdly long), so that such an answer takes as long as a wrong password."""
    return _HASHER.hash("permgate dummy password, never anyone's")


def _verify(stored: str, password: str) -> bool:
    if len(password) > _VERIFY_LIMIT:
        _verify(_dummy_hash(), password[:_VERIFY_LIMIT])  # same work, never a match
        return False
    try:
        return _HASHER.verify(stored, normalize(password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str, password: str) -> bool:
    """True when ``password`` matches the PHC string ``stored``; off the event loop."""
    return await asyncio.to_thread(_verify, stored, password)


async def dummy_verify(password: str) -> None:
    """Spend the time a real verification takes, for an answer that has no hash."""
    await asyncio.to_thread(_verify_dummy, password)


def _verify_dummy(password: str) -> None:
    _verify(_dummy_hash(), password)


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with other parameters than today's."""
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True
