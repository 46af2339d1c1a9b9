"""``password_policy`` per account in policy.yaml: applied idempotently on both stores,
every error on its line, the floor never lowered, and --prune back to the floor."""

from __future__ import annotations

import textwrap

import pytest

from permgate.core.passwords import FLOOR, Lockout, PasswordPolicy
from permgate.manage.policy_file import PolicyError, apply_plan, parse_policy, plan_policy
from permgate.manage.service import Actor, ModelService

CLI = Actor.cli()

POLICY = textwrap.dedent(
    """\
    accounts:
      - id: acme
        password_policy:
          min_length: 12
          max_length: 64
          require_classes: [upper, digit]
          history: 5
          max_age_days: 365
          lockout: {attempts: 5, window_seconds: 300, lock_seconds: 900}
        principals:
          - id: root
            roles: [admin]
    """
)


async def _apply(service: ModelService, text: str, *, prune: bool = False) -> list[str]:
    policy = parse_policy(text, "policy.yaml")
    actions = await plan_policy(service.store, policy, prune=prune)
    return await apply_plan(service, CLI, actions)


async def test_apply_sets_the_policy(service: ModelService) -> None:
    """Applying a file with password_policy configures the account's policy, printed."""
    lines = await _apply(service, POLICY)
    assert lines == ["+ account acme", "+ account acme password_policy", "+ principal root"]
    assert await service.password_policy("acme") == PasswordPolicy(
        min_length=12,
        max_length=64,
        require_classes=("upper", "digit"),
        history=5,
        max_age_days=365,
        lockout=Lockout(attempts=5, window_seconds=300, lock_seconds=900),
    )


async def test_apply_is_idempotent(service: ModelService) -> None:
    """Applying the same file again changes nothing."""
    await _apply(service, POLICY)
    assert await _apply(service, POLICY) == []


async def test_apply_changes_the_policy(service: ModelService) -> None:
    """A changed policy in the file is one '~' change, audited."""
    await _apply(service, POLICY)
    changed = POLICY.replace("history: 5", "history: 2")
    assert await _apply(service, changed) == ["~ account acme password_policy"]
    assert (await service.password_policy("acme")).history == 2
    actions = [r.action for r in await service.store.list_audit("acme")]
    assert actions.count("account.password_policy") == 2


async def test_absent_policy_left_alone(service: ModelService) -> None:
    """A file without password_policy leaves the stored one alone."""
    await _apply(service, POLICY)
    without = (
        POLICY.split("    password_policy:")[0] + "    principals: [{id: root, roles: [admin]}]\n"
    )
    assert await _apply(service, without) == []
    assert (await service.password_policy("acme")).min_length == 12


async def test_prune_goes_back_to_floor(service: ModelService) -> None:
    """With --prune an account without password_policy goes back to the floor alone."""
    await _apply(service, POLICY)
    without = (
        POLICY.split("    password_policy:")[0] + "    principals: [{id: root, roles: [admin]}]\n"
    )
    lines = await _apply(service, without, prune=True)
    assert lines == ["- account acme password_policy (back to the floor)"]
    assert await service.password_policy("acme") == FLOOR
    assert await service.configured_password_policy("acme") is None


ERRORS = [
    pytest.param("min_length: 12", "min_length: 6", 4, "floor of 8", id="below-floor"),
    pytest.param("max_length: 64", "max_length: 256", 5, "at most 128", id="above-128"),
    pytest.param("history: 5", "history: many", 7, "history 'many'", id="history-not-int"),
    pytest.param("[upper, digit]", "[upper, kanji]", 6, "'kanji'", id="unknown-class"),
    pytest.param("attempts: 5", "attempts: 0", 9, "lockout.attempts 0", id="zero-attempts"),
]


@pytest.mark.parametrize(("old", "new", "line", "words"), ERRORS)
def test_errors_name_the_line(old: str, new: str, line: int, words: str) -> None:
    """Every password_policy problem is reported on its own line, naming the account."""
    with pytest.raises(PolicyError) as info:
        parse_policy(POLICY.replace(old, new), "policy.yaml")
    assert len(info.value.errors) == 1
    error = info.value.errors[0]
    assert error.startswith(f"policy.yaml:{line}: password_policy of account 'acme': ")
    assert words in error


def test_not_a_mapping() -> None:
    """A password_policy that is not a mapping is one error on its line, read as any
    value of the wrong type in the file is."""
    text = "accounts:\n  - id: acme\n    password_policy: strict\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "policy.yaml")
    assert info.value.errors == [
        "policy.yaml:3: accounts[0].password_policy: expected a mapping, got a string ('strict')"
    ]


KEY_ERRORS = [
    pytest.param(
        "max_age_days: 365",
        "rotate_days: 30",
        "policy.yaml:8: accounts[0].password_policy.rotate_days: unknown key (allowed: min_length,",
        id="unknown-key",
    ),
    pytest.param(
        "max_age_days: 365",
        "history: 6",
        "policy.yaml:8: accounts[0].password_policy.history: repeated key (first on line 7)",
        id="repeated-key",
    ),
    pytest.param(
        "attempts: 5",
        "tries: 5",
        "policy.yaml:9: accounts[0].password_policy.lockout.tries: unknown key (allowed: attempts,",
        id="unknown-lockout-key",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), KEY_ERRORS)
def test_keys_read_as_in_the_rest_of_the_file(old: str, new: str, expected: str) -> None:
    """Unknown and repeated keys of password_policy read as anywhere in the file."""
    with pytest.raises(PolicyError) as info:
        parse_policy(POLICY.replace(old, new), "policy.yaml")
    (error,) = info.value.errors
    assert error.startswith(expected), error


def test_every_error_reported_at_once() -> None:
    """Several problems are all reported, each on its line."""
    text = POLICY.replace("min_length: 12", "min_length: 4").replace("history: 5", "history: -3")
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "policy.yaml")
    assert [e.split(":")[1] for e in info.value.errors] == ["4", "7"]
