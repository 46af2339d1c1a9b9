"""Passwords and native login on both stores: the policy floor and the configurable
rules, history, Argon2id hashes at rest, the lockout, the ``auth.login`` audit, and
console sessions with their timeouts and revocations."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from permgate.core.errors import Forbidden, InvalidInput
from permgate.core.model import Principal
from permgate.core.passwords import FLOOR, Lockout, PasswordPolicy, is_blocklisted, parse_policy
from permgate.manage.service import Actor, LoginRefused, ModelService, PolicyViolation
from permgate.store import Store

CLI = Actor.cli()
GOOD = "correct horse battery staple"
OTHER = "purple monkey dishwasher 42"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    """The service's clock."""
    return Clock()


@pytest.fixture
async def svc(store: Store, clock: Clock) -> AsyncIterator[ModelService]:
    """Account acme with admin ``root``, user ``alice`` and helper ``helpdesk``."""
    service = ModelService(store, clock=clock)
    await service.ensure_account(CLI, "acme")
    await service.create_tenant(CLI, "acme", "acme-prod")
    await service.create_principal(CLI, "acme", "root", roles=[("admin", None)])
    await service.create_principal(CLI, "acme", "alice", tenants=["acme-prod"])
    await service.create_principal(CLI, "acme", "helpdesk", roles=[("read-only", None)])
    yield service


async def _actor(svc: ModelService, principal_id: str) -> Actor:
    principal = await svc.store.get_principal(principal_id)
    assert principal is not None
    return Actor.of(principal)


async def _audit_text(svc: ModelService) -> str:
    rows = await svc.store.list_audit(None, limit=1000)
    return json.dumps([[r.actor, r.action, r.target, r.before, r.after] for r in rows])


# -- the floor and the configurable rules ------------------------------------------

FLOOR_CASES = [
    pytest.param("short1!", ["min_length"], id="too-short"),
    pytest.param("password1", ["common"], id="common"),
    pytest.param("PassWord1", ["common"], id="common-any-case"),
    pytest.param("ALICE-the-great", [], id="contains-id-is-fine"),
    pytest.param("Alice", ["min_length", "equals_id"], id="equals-id-and-short"),
    pytest.param("x" * 129, ["max_length"], id="too-long"),
    pytest.param(GOOD, [], id="passphrase-accepted"),
]


@pytest.mark.parametrize(("password", "rules"), FLOOR_CASES)
async def test_floor(svc: ModelService, password: str, rules: list[str]) -> None:
    """Without a configured policy only the floor applies: 8 to 128 characters, not a
    common or breached password, not the principal's id (ignoring case)."""
    if rules:
        with pytest.raises(PolicyViolation) as refused:
            await svc.set_password(CLI, "alice", password)
        assert list(refused.value.rules) == rules
    else:
        await svc.set_password(CLI, "alice", password)


async def test_equal_to_id_refused_ignoring_case(svc: ModelService) -> None:
    """A password equal to the principal's id, in any case, is refused."""
    await svc.create_principal(CLI, "acme", "svc-billing-2024")
    with pytest.raises(PolicyViolation) as refused:
        await svc.set_password(CLI, "svc-billing-2024", "SVC-Billing-2024")
    assert refused.value.rules == ("equals_id",)
    assert "it is the principal's id" in str(refused.value)


async def test_every_broken_rule_named(svc: ModelService) -> None:
    """A refusal names every rule the password breaks, in one message."""
    await svc.set_password_policy(
        CLI, "acme", PasswordPolicy(min_length=12, require_classes=("upper", "digit"))
    )
    with pytest.raises(PolicyViolation) as refused:
        await svc.set_password(CLI, "alice", "password")
    assert set(refused.value.rules) == {"min_length", "common", "require_classes"}
    message = str(refused.value)
    assert "shorter than 12 characters" in message
    assert "common and breached" in message
    assert "upper, digit" in message
    assert refused.value.status_code == 422


CONFIGURED_CASES = [
    pytest.param({"min_length": 14}, "abcdefghijklm", ["min_length"], id="min-length-14"),
    pytest.param({"min_length": 14}, "abcdefghijklmn", [], id="min-length-met"),
    pytest.param({"max_length": 20}, "abcdefghijklmnopqrstu", ["max_length"], id="max-length-20"),
    pytest.param({"require_classes": ["digit"]}, "no digits here", ["require_classes"], id="digit"),
    pytest.param({"require_classes": ["symbol"]}, "nosymbolshere1", ["require_classes"], id="sym"),
    pytest.param(
        {"require_classes": ["lower", "upper", "digit", "symbol"]}, "Ab1!efghij", [], id="all-four"
    ),
]


@pytest.mark.parametrize(("raw", "password", "rules"), CONFIGURED_CASES)
async def test_configured_rules(
    svc: ModelService, raw: dict[str, object], password: str, rules: list[str]
) -> None:
    """An account's configured rules apply on top of the floor."""
    policy, problems = parse_policy(raw)
    assert policy is not None and not problems
    await svc.set_password_policy(CLI, "acme", policy)
    if rules:
        with pytest.raises(PolicyViolation) as refused:
            await svc.set_password(CLI, "alice", password)
        assert list(refused.value.rules) == rules
    else:
        await svc.set_password(CLI, "alice", password)


BAD_POLICIES = [
    pytest.param({"min_length": 6}, "min_length", "floor of 8", id="below-floor"),
    pytest.param({"max_length": 200}, "max_length", "at most 128", id="above-128"),
    pytest.param({"min_length": 20, "max_length": 10}, "max_length", "below", id="min-over-max"),
    pytest.param({"require_classes": ["emoji"]}, "require_classes", "'emoji'", id="bad-class"),
    pytest.param({"history": -1}, "history", "from 0 to 24", id="negative-history"),
    pytest.param({"lockout": {"attempts": 0}}, "lockout.attempts", "from 1", id="no-attempts"),
    pytest.param({"lockout": {"attempts": 1000}}, "lockout.attempts", "to 100", id="too-many"),
    pytest.param({"rotate": True}, "rotate", "unknown key", id="unknown-key"),
    pytest.param({"max_age_days": 0}, "max_age_days", "from 1", id="zero-age"),
]


@pytest.mark.parametrize(("raw", "key", "words"), BAD_POLICIES)
def test_policy_problems(raw: dict[str, object], key: str, words: str) -> None:
    """A policy that would lower the floor or is malformed is refused, naming the key."""
    policy, problems = parse_policy(raw)
    assert policy is None
    assert [k for k, _ in problems] == [key]
    assert words in problems[0][1]


def test_blocklist_is_real() -> None:
    """The shipped blocklist holds thousands of common passwords, compared ignoring case."""
    from importlib.resources import files

    lines = files("permgate").joinpath("data/common-passwords.txt").read_text().splitlines()
    assert len([line for line in lines if not line.startswith("#")]) >= 5000
    assert is_blocklisted("Password123") or is_blocklisted("password123")
    assert is_blocklisted("QWERTYUIOP")
    assert not is_blocklisted(GOOD)


async def test_policy_floor_default(svc: ModelService) -> None:
    """An account without a configured policy has the floor as its effective policy."""
    assert await svc.password_policy("acme") == FLOOR
    assert FLOOR.min_length == 8 and FLOOR.max_length == 128 and FLOOR.max_age_days is None


async def test_policy_set_audited_and_idempotent(svc: ModelService) -> None:
    """Configuring a policy is an audited admin change; the same policy again changes
    nothing; None goes back to the floor."""
    policy = PasswordPolicy(min_length=10, history=3)
    assert await svc.set_password_policy(CLI, "acme", policy) is True
    assert await svc.set_password_policy(CLI, "acme", policy) is False
    assert await svc.password_policy("acme") == policy
    rows = [r for r in await svc.store.list_audit("acme") if r.action == "account.password_policy"]
    assert len(rows) == 1 and rows[0].after == policy.as_json()
    assert await svc.set_password_policy(CLI, "acme", None) is True
    assert await svc.password_policy("acme") == FLOOR


async def test_policy_admin_only(svc: ModelService) -> None:
    """Only admins configure the password policy."""
    with pytest.raises(Forbidden):
        await svc.set_password_policy(await _actor(svc, "helpdesk"), "acme", PasswordPolicy())


# -- setting passwords: who may, history, hashes at rest ------------------------


async def test_hash_at_rest_is_argon2id_phc(svc: ModelService, store: Store) -> None:
    """The stored password is an Argon2id PHC string with OWASP's parameters, never
    the password."""
    await svc.set_password(CLI, "alice", GOOD)
    async with svc.transaction() as tx:
        stored = await tx.get_password("alice")
    assert stored is not None
    assert stored.hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert GOOD not in stored.hash


async def test_password_never_in_audit(svc: ModelService) -> None:
    """Neither the password nor its hash appears in any audit record."""
    await svc.set_password(CLI, "alice", GOOD)
    with pytest.raises(LoginRefused):
        await svc.verify_login("alice", OTHER, client_ip="127.0.0.1")
    await svc.verify_login("alice", GOOD, client_ip="127.0.0.1")
    text = await _audit_text(svc)
    assert GOOD not in text and OTHER not in text and "$argon2" not in text
    assert "principal.password" in text


async def test_own_password_needs_current(svc: ModelService) -> None:
    """Changing one's own password needs the current one once one is set."""
    alice = await _actor(svc, "alice")
    await svc.set_password(alice, "alice", GOOD)  # none set yet: no current needed
    with pytest.raises(Forbidden, match="current_password is required"):
        await svc.set_password(alice, "alice", OTHER)
    with pytest.raises(Forbidden, match="does not match"):
        await svc.set_password(alice, "alice", OTHER, current_password="wrong password!")
    await svc.set_password(alice, "alice", OTHER, current_password=GOOD)
    await svc.verify_login("alice", OTHER, client_ip=None)


async def test_admin_sets_others_password(svc: ModelService) -> None:
    """An admin sets another principal's password without knowing the current one."""
    await svc.set_password(CLI, "alice", GOOD)
    await svc.set_password(await _actor(svc, "root"), "alice", OTHER)
    await svc.verify_login("alice", OTHER, client_ip=None)


async def test_non_admin_cannot_set_admins_password(svc: ModelService) -> None:
    """A non-admin (even a principals.write holder) cannot set an admin's password."""
    with pytest.raises(Forbidden, match="only admins"):
        await svc.set_password(await _actor(svc, "helpdesk"), "root", GOOD)


async def test_other_account_not_found(svc: ModelService) -> None:
    """An admin of another account does not see the principal at all."""
    await svc.ensure_account(CLI, "globex")
    await svc.create_principal(CLI, "globex", "gadmin", roles=[("admin", None)])
    with pytest.raises(Exception, match="not found"):
        await svc.set_password(await _actor(svc, "gadmin"), "alice", GOOD)


async def test_history(svc: ModelService) -> None:
    """With history 2, the last two passwords cannot be reused; the third-last can."""
    await svc.set_password_policy(CLI, "acme", PasswordPolicy(history=2))
    first, second, third = GOOD, OTHER, "a third passphrase here"
    await svc.set_password(CLI, "alice", first)
    await svc.set_password(CLI, "alice", second)
    for reused in (first, second):
        with pytest.raises(PolicyViolation) as refused:
            await svc.set_password(CLI, "alice", reused)
        assert refused.value.rules == ("history",)
    await svc.set_password(CLI, "alice", third)
    await svc.set_password(CLI, "alice", first)  # three back: allowed again
    async with svc.transaction() as tx:
        stored = await tx.get_password("alice")
    assert stored is not None and len(stored.previous) == 1


async def test_without_history_reuse_allowed(svc: ModelService) -> None:
    """Without a history rule the same password may be set again."""
    await svc.set_password(CLI, "alice", GOOD)
    await svc.set_password(CLI, "alice", GOOD)


async def test_set_password_sets_sessions_valid_after(svc: ModelService, clock: Clock) -> None:
    """Setting a password sets sessions_valid_after to now (older JWTs rejected)."""
    await svc.set_password(CLI, "alice", GOOD)
    alice = await svc.store.get_principal("alice")
    assert alice is not None and alice.sessions_valid_after is not None
    assert alice.sessions_valid_after.timestamp() == clock.now


async def test_disable_sets_sessions_valid_after(svc: ModelService, clock: Clock) -> None:
    """Disabling a principal sets sessions_valid_after to now; enabling does not."""
    await svc.update_principal(CLI, "alice", disabled=True)
    alice = await svc.store.get_principal("alice")
    assert alice is not None and alice.sessions_valid_after is not None
    assert alice.sessions_valid_after.timestamp() == clock.now
    clock.advance(5)
    await svc.update_principal(CLI, "alice", disabled=False)
    again = await svc.store.get_principal("alice")
    assert again is not None and again.sessions_valid_after == alice.sessions_valid_after


async def test_password_must_be_text(svc: ModelService) -> None:
    """A password that is not a string is invalid input."""
    with pytest.raises(InvalidInput, match="must be a string"):
        await svc.set_password(CLI, "alice", 12345678)  # type: ignore[arg-type]


# -- sign-in -------------------------------------------------------------------


async def _refusal(svc: ModelService, principal_id: str, password: str) -> str:
    with pytest.raises(LoginRefused) as refused:
        await svc.verify_login(principal_id, password, client_ip="10.0.0.9")
    return refused.value.reason


async def test_login_ok_and_audited(svc: ModelService) -> None:
    """The right password signs in and is audited as auth.login ok with the client."""
    await svc.set_password(CLI, "alice", GOOD)
    principal = await svc.verify_login("alice", GOOD, client_ip="10.0.0.9")
    assert isinstance(principal, Principal) and principal.id == "alice"
    rows = [r for r in await svc.store.list_audit("acme") if r.action == "auth.login"]
    assert rows[0].after == {
        "result": "ok",
        "reason": None,
        "principal": "alice",
        "client_ip": "10.0.0.9",
    }


async def test_login_case_insensitive_id(svc: ModelService) -> None:
    """Ids are unique regardless of case, so sign-in accepts the id in any case."""
    await svc.set_password(CLI, "alice", GOOD)
    assert (await svc.verify_login("ALICE", GOOD, client_ip=None)).id == "alice"


REFUSALS = [
    pytest.param("alice", OTHER, id="wrong-password"),
    pytest.param("nobody", GOOD, id="unknown-principal"),
    pytest.param("helpdesk", GOOD, id="no-password-set"),
    pytest.param("", GOOD, id="empty-id"),
]


@pytest.mark.parametrize(("who", "password"), REFUSALS)
async def test_bad_credentials_same_answer(svc: ModelService, who: str, password: str) -> None:
    """Unknown principal, no password, wrong password: all the same answer, audited
    as refused bad_credentials with the id as given."""
    await svc.set_password(CLI, "alice", GOOD)
    assert await _refusal(svc, who, password) == "bad_credentials"
    rows = [r for r in await svc.store.list_audit(None) if r.action == "auth.login"]
    assert rows[0].after == {
        "result": "refused",
        "reason": "bad_credentials",
        "principal": who,
        "client_ip": "10.0.0.9",
    }


async def test_unknown_takes_as_long_as_wrong(svc: ModelService) -> None:
    """An unknown principal's refusal verifies a dummy hash: it takes about as long as
    a wrong password (within a generous factor, never near-instant)."""
    import time

    await svc.set_password(CLI, "alice", GOOD)
    await svc.verify_login("alice", GOOD, client_ip=None)  # warm the thread pool

    async def timed(who: str) -> float:
        start = time.perf_counter()
        await _refusal(svc, who, OTHER)
        return time.perf_counter() - start

    wrong = min([await timed("alice") for _ in range(3)])
    unknown = min([await timed(f"ghost{i}") for i in range(3)])
    assert unknown > wrong / 3


async def test_disabled_told_only_with_right_password(svc: ModelService) -> None:
    """A disabled principal is refused as disabled with the right password, and as
    bad_credentials with a wrong one."""
    await svc.set_password(CLI, "alice", GOOD)
    await svc.update_principal(CLI, "alice", disabled=True)
    assert await _refusal(svc, "alice", OTHER) == "bad_credentials"
    assert await _refusal(svc, "alice", GOOD) == "disabled"


async def test_expired_password(svc: ModelService, clock: Clock) -> None:
    """With max_age_days, a password older than that is refused as expired_password
    (after the right password only); without it passwords never expire."""
    await svc.set_password(CLI, "alice", GOOD)
    clock.advance(400 * 86400)
    await svc.verify_login("alice", GOOD, client_ip=None)
    await svc.set_password_policy(CLI, "acme", PasswordPolicy(max_age_days=90))
    assert await _refusal(svc, "alice", GOOD) == "expired_password"
    assert await _refusal(svc, "alice", OTHER) == "bad_credentials"


async def test_lockout(svc: ModelService, clock: Clock) -> None:
    """attempts failures within the window lock sign-in for lock_seconds, even with
    the right password; after the lock, sign-in works again."""
    lockout = Lockout(attempts=3, window_seconds=60, lock_seconds=300)
    await svc.set_password_policy(CLI, "acme", PasswordPolicy(lockout=lockout))
    await svc.set_password(CLI, "alice", GOOD)
    for _ in range(3):
        assert await _refusal(svc, "alice", OTHER) == "bad_credentials"
    assert await _refusal(svc, "alice", GOOD) == "locked"
    clock.advance(299)
    assert await _refusal(svc, "alice", GOOD) == "locked"
    clock.advance(2)
    assert (await svc.verify_login("alice", GOOD, client_ip=None)).id == "alice"
    reasons = [
        r.after["reason"]  # type: ignore[index]
        for r in await svc.store.list_audit("acme")
        if r.action == "auth.login"
    ]
    assert reasons[:3] == [None, "locked", "locked"]


async def test_failures_outside_window_forgotten(svc: ModelService, clock: Clock) -> None:
    """Failures older than window_seconds do not count toward the lockout."""
    lockout = Lockout(attempts=2, window_seconds=60, lock_seconds=300)
    await svc.set_password_policy(CLI, "acme", PasswordPolicy(lockout=lockout))
    await svc.set_password(CLI, "alice", GOOD)
    await _refusal(svc, "alice", OTHER)
    clock.advance(61)
    await _refusal(svc, "alice", OTHER)
    assert (await svc.verify_login("alice", GOOD, client_ip=None)).id == "alice"


async def test_success_resets_failures(svc: ModelService) -> None:
    """A successful sign-in clears the failures counted so far."""
    lockout = Lockout(attempts=2, window_seconds=60, lock_seconds=300)
    await svc.set_password_policy(CLI, "acme", PasswordPolicy(lockout=lockout))
    await svc.set_password(CLI, "alice", GOOD)
    await _refusal(svc, "alice", OTHER)
    await svc.verify_login("alice", GOOD, client_ip=None)
    await _refusal(svc, "alice", OTHER)
    await svc.verify_login("alice", GOOD, client_ip=None)


async def test_unknown_ids_lock_too(svc: ModelService) -> None:
    """Unknown ids lock out like real ones (the floor's lockout), so the locked answer
    does not reveal which ids exist."""
    for _ in range(FLOOR.lockout.attempts):
        assert await _refusal(svc, "ghost", OTHER) == "bad_credentials"
    assert await _refusal(svc, "ghost", OTHER) == "locked"


async def test_concurrent_guesses_bounded(svc: ModelService) -> None:
    """A burst of concurrent guesses cannot outrun the lockout: at most ``attempts``
    of them get to verify a password."""
    import asyncio

    lockout = Lockout(attempts=3, window_seconds=60, lock_seconds=300)
    await svc.set_password_policy(CLI, "acme", PasswordPolicy(lockout=lockout))
    await svc.set_password(CLI, "alice", GOOD)

    async def attempt() -> str:
        try:
            await svc.verify_login("alice", OTHER, client_ip=None)
        except LoginRefused as refused:
            return refused.reason
        return "ok"

    reasons = await asyncio.gather(*(attempt() for _ in range(10)))
    assert reasons.count("bad_credentials") <= 3
    assert reasons.count("locked") >= 7


# -- console sessions --------------------------------------------------------------


async def _session(svc: ModelService, who: str = "alice", token_id: str | None = None) -> str:
    secret, csrf = await svc.create_console_session(
        who, token_id=token_id, idle_seconds=600, absolute_seconds=3600
    )
    assert secret and csrf and secret != csrf
    return secret


async def test_session_lookup(svc: ModelService, clock: Clock) -> None:
    """A new session is found by its secret, with its principal, CSRF and lifetime;
    only the secret's hash is stored."""
    secret, csrf = await svc.create_console_session(
        "alice", token_id=None, idle_seconds=600, absolute_seconds=3600
    )
    session = await svc.console_session(secret)
    assert session is not None
    assert session.principal_id == "alice" and session.csrf == csrf and session.token_id is None
    assert session.expires_at.timestamp() == clock.now + 3600
    async with svc.transaction() as tx:
        assert await tx.get_console_session(secret) is None  # stored by hash only
    assert await svc.console_session("not-a-session") is None


async def test_session_idle_expiry(svc: ModelService, clock: Clock) -> None:
    """A session unused for idle_seconds is over; use within it keeps it alive."""
    secret = await _session(svc)
    clock.advance(500)
    assert await svc.console_session(secret) is not None
    clock.advance(500)
    assert await svc.console_session(secret) is not None  # touched at 500
    clock.advance(600)
    assert await svc.console_session(secret) is None


async def test_session_absolute_expiry(svc: ModelService, clock: Clock) -> None:
    """However active, a session ends at its absolute lifetime."""
    secret = await _session(svc)
    for _ in range(6):
        clock.advance(590)
        assert await svc.console_session(secret) is not None
    clock.advance(100)
    assert await svc.console_session(secret) is None


async def test_session_end(svc: ModelService) -> None:
    """Signing out ends the session on the server; ending twice is harmless."""
    secret = await _session(svc)
    await svc.end_console_session(secret)
    assert await svc.console_session(secret) is None
    await svc.end_console_session(secret)


REVOCATIONS = ["password-set", "role-removed", "disabled", "deleted"]


@pytest.mark.parametrize("how", REVOCATIONS)
async def test_session_ends_when_principal_changes(
    svc: ModelService, clock: Clock, how: str
) -> None:
    """A session ends at once when its principal has its password set, loses a role,
    is disabled or deleted."""
    await svc.set_principal_roles(CLI, "alice", [("claims-only", None)])
    secret = await _session(svc)
    clock.advance(1)
    if how == "password-set":
        await svc.set_password(CLI, "alice", GOOD)
    elif how == "role-removed":
        await svc.set_principal_roles(CLI, "alice", [])
    elif how == "disabled":
        await svc.update_principal(CLI, "alice", disabled=True)
    else:
        await svc.delete_principal(CLI, "alice")
    assert await svc.console_session(secret) is None


async def test_session_survives_unrelated_change(svc: ModelService, clock: Clock) -> None:
    """Granting a role (not removing one) leaves the session alone."""
    secret = await _session(svc)
    clock.advance(1)
    await svc.set_principal_roles(CLI, "alice", [("claims-only", None)])
    assert await svc.console_session(secret) is not None


async def test_token_session_ends_with_token(svc: ModelService, clock: Clock) -> None:
    """A session opened with an auth token ends when that token is revoked or expires."""
    await svc.set_principal_roles(CLI, "root", [("admin", None)])
    token, _ = await svc.create_token(CLI, "root", "console", ["audit.read"], ["any"])
    short, _ = await svc.create_token(CLI, "root", "brief", ["audit.read"], ["any"], expires_in=60)
    revoked_one = await _session(svc, "root", token.id)
    expiring = await _session(svc, "root", short.id)
    assert await svc.console_session(revoked_one) is not None
    await svc.revoke_token(CLI, token.id)
    assert await svc.console_session(revoked_one) is None
    assert await svc.console_session(expiring) is not None
    clock.advance(61)
    assert await svc.console_session(expiring) is None


async def test_session_for_disabled_refused(svc: ModelService) -> None:
    """No console session is opened for a disabled principal."""
    await svc.update_principal(CLI, "alice", disabled=True)
    with pytest.raises(Exception, match="disabled"):
        await _session(svc)


async def test_old_parameters_rehashed_on_sign_in(svc: ModelService) -> None:
    """A hash made with older (weaker) Argon2id parameters still signs in, and is
    re-hashed with today's parameters then, keeping when the password was set."""
    from argon2 import PasswordHasher

    from permgate.store.sql import StoredPassword

    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(GOOD)
    async with svc.transaction() as tx:
        await tx.put_password("alice", StoredPassword(weak, 1_700_000_000.0, ()))
    await svc.verify_login("alice", GOOD, client_ip=None)
    async with svc.transaction() as tx:
        stored = await tx.get_password("alice")
    assert stored is not None and stored.hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert stored.set_at == 1_700_000_000.0


async def test_wrong_current_password_counts_toward_lockout(svc: ModelService) -> None:
    """Guessing the current password through a password change counts as failed
    sign-ins: after the lockout's attempts, both doors are locked."""
    lockout = Lockout(attempts=2, window_seconds=60, lock_seconds=300)
    await svc.set_password_policy(CLI, "acme", PasswordPolicy(lockout=lockout))
    await svc.set_password(CLI, "alice", GOOD)
    alice = await _actor(svc, "alice")
    for _ in range(2):
        with pytest.raises(Forbidden, match="does not match"):
            await svc.set_password(alice, "alice", OTHER, current_password="a wrong guess!")
    with pytest.raises(Forbidden, match="locked"):
        await svc.set_password(alice, "alice", OTHER, current_password=GOOD)
    assert await _refusal(svc, "alice", GOOD) == "locked"


def test_login_audit_event_shape() -> None:
    """A sign-in's audit record becomes an ``auth.login`` event with the result, the
    reason, the principal as given and the client address (and nothing else)."""
    from permgate.manage.service import audit_event
    from permgate.store.base import AuditRecord

    after = {"result": "refused", "reason": "locked", "principal": "Bob", "client_ip": "10.1.2.3"}
    record = AuditRecord(
        0, 1_800_000_000.0, "acme", "principal:Bob", "auth.login", "Bob", None, after
    )
    assert audit_event(record) == {
        "ts": "2027-01-15T08:00:00Z",
        "event": "auth.login",
        "account": "acme",
        **after,
    }
