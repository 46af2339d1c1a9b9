"""Permission grammar and grant coverage: group.action, group.*, *.*, the union of roles."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from permgate.core.errors import InvalidPermission
from permgate.core.permissions import DEFAULT_READ_ACTIONS, GrantSet, parse_grant, parse_permission

VALID_PERMISSIONS = [
    "quotes.write",
    "invoice.writeOff",
    "auxData.read",
    "quote-schedules.schedule-read",
    "a.b",
    "A1_-.x9_-",
]

INVALID_PERMISSIONS = [
    ("", "exactly one '.'"),
    ("quotes", "exactly one '.'"),
    ("quotes.write.now", "exactly one '.'"),
    ("quotes.", "action is empty"),
    (".write", "group is empty"),
    ("quotes.*", "never contains '*'"),
    ("*.*", "never contains '*'"),
    ("quotes .write", "must match"),
    ("quotes.write ", "must match"),
    ("1quotes.write", "must match"),
    ("quotes.-write", "must match"),
    ("quötes.write", "must match"),
]


@pytest.mark.parametrize("text", VALID_PERMISSIONS, ids=VALID_PERMISSIONS)
def test_valid_permission_parses_into_group_and_action(text: str) -> None:
    """A well-formed permission splits at its one dot."""
    group, action = parse_permission(text)
    assert f"{group}.{action}" == text


@pytest.mark.parametrize(
    ("text", "why"), INVALID_PERMISSIONS, ids=[repr(t) for t, _ in INVALID_PERMISSIONS]
)
def test_invalid_permission_is_refused_naming_string_and_reason(text: str, why: str) -> None:
    """A malformed permission raises an error that quotes it and says why."""
    with pytest.raises(InvalidPermission) as caught:
        parse_permission(text)
    assert repr(text) in str(caught.value)
    assert why in str(caught.value)


def test_non_string_permission_is_refused() -> None:
    """A number where a permission belongs is an error, not a crash."""
    with pytest.raises(InvalidPermission, match="not a string"):
        parse_permission(42)


GRANTS = [
    ("quotes.write", True),
    ("quotes.*", True),
    ("*.*", True),
    ("*.write", False),
    ("*", False),
    ("quotes.", False),
    (".write", False),
    ("*.", False),
    ("quo*tes.write", False),
    ("quotes.wr*", False),
    ("quotes.* ", False),
    ("Quotes.Write", True),
]


@pytest.mark.parametrize(("text", "valid"), GRANTS, ids=[g for g, _ in GRANTS])
def test_grant_grammar(text: str, valid: bool) -> None:
    """Grants allow group.* and *.*, never *.action."""
    if valid:
        parse_grant(text)
    else:
        with pytest.raises(InvalidPermission):
            parse_grant(text)


COVERAGE = [
    # grants, reads, required, covered
    (["quotes.write"], False, "quotes.write", True),
    (["quotes.write"], False, "quotes.read", False),
    (["quotes.write"], False, "Quotes.write", False),  # case-sensitive
    (["quotes.*"], False, "quotes.anything", True),
    (["quotes.*"], False, "quote.read", False),
    (["*.*"], False, "invoice.writeOff", True),
    ([], True, "quotes.read", True),
    ([], True, "policies.list", True),
    ([], True, "invoice.fetch", True),
    ([], True, "quote-schedules.schedule-read", True),
    ([], True, "quotes.write", False),
    ([], True, "quotes.Read", False),
    ([], False, "quotes.read", False),
]


@pytest.mark.parametrize(
    ("grants", "reads", "required", "covered"),
    COVERAGE,
    ids=[f"{g}{'+reads' if r else ''}->{p}" for g, r, p, _ in COVERAGE],
)
def test_coverage_table(grants: list[str], reads: bool, required: str, covered: bool) -> None:
    """Exact grants, group wildcards, *.*, and the read-action rule."""
    assert GrantSet.from_grants(grants, reads=reads).covers(required) is covered


def test_read_actions_come_from_the_caller() -> None:
    """A map may declare its own read actions; the read rule follows them."""
    reads = GrantSet(reads=True)
    assert not reads.covers("quotes.peek")
    assert reads.covers("quotes.peek", frozenset({"peek"}))


def test_union_covers_what_either_side_covers() -> None:
    """Holding two roles gives the permissions of both."""
    union = GrantSet.from_grants(["quotes.write"]).union(GrantSet.from_grants(["invoices.*"]))
    assert union.covers("quotes.write") and union.covers("invoices.pay")
    assert not union.covers("quotes.read")


_idents = st.sampled_from(["quotes", "invoices", "policy", "auxData"])
_actions = st.sampled_from(["read", "write", "list", "fetch", "writeOff", "schedule-read"])
_grant = st.one_of(
    st.builds(lambda g, a: f"{g}.{a}", _idents, _actions),
    st.builds(lambda g: f"{g}.*", _idents),
    st.just("*.*"),
)


def _expand(grant: str) -> set[str]:
    """Brute force: every concrete permission of the finite universe a grant names."""
    universe = {f"{g}.{a}" for g, a in itertools.product(_idents.elements, _actions.elements)}
    group, action = grant.split(".")
    return {
        p for p in universe if group in ("*", p.split(".")[0]) and action in ("*", p.split(".")[1])
    }


@given(st.lists(_grant, max_size=5), _idents, _actions)
def test_wildcard_coverage_agrees_with_brute_force_expansion(
    grants: list[str], group: str, action: str
) -> None:
    """covers() is exactly membership in the union of the grants' expansions."""
    expanded = set().union(*(_expand(g) for g in grants)) if grants else set()
    required = f"{group}.{action}"
    assert GrantSet.from_grants(grants).covers(required) is (required in expanded)


def test_default_read_actions_are_the_designs() -> None:
    """read, list, fetch and schedule-read are the read actions unless a map says otherwise."""
    assert frozenset({"read", "list", "fetch", "schedule-read"}) == DEFAULT_READ_ACTIONS


BEYOND = [
    # held, requested, beyond
    (["quotes.read"], ["quotes.read"], []),
    (["quotes.read"], ["quotes.write", "quotes.read"], ["quotes.write"]),
    (["quotes.*"], ["quotes.write", "quotes.*"], []),
    (["quotes.read", "quotes.write"], ["quotes.*"], ["quotes.*"]),
    (["quotes.*"], ["*.*"], ["*.*"]),
    (["*.*"], ["*.*", "invoice.writeOff"], []),
]


@pytest.mark.parametrize(
    ("held", "requested", "beyond"), BEYOND, ids=[f"{h}>{r}" for h, r, _ in BEYOND]
)
def test_grants_beyond_a_set(held: list[str], requested: list[str], beyond: list[str]) -> None:
    """A wildcard is within a set only if the set holds that wildcard or *.*."""
    assert GrantSet.from_grants(held).beyond(requested) == beyond


def test_read_rule_contains_exact_read_grants_only() -> None:
    """The read rule holds quotes.read, never quotes.* (which grows with new actions)."""
    reads = GrantSet(reads=True)
    assert reads.beyond(["quotes.read", "quotes.list", "quotes.*"]) == ["quotes.*"]


def test_beyond_validates_every_requested_grant() -> None:
    """An invalid grant is refused even when the set holds everything."""
    with pytest.raises(InvalidPermission):
        GrantSet(everything=True).beyond(["*.write"])
