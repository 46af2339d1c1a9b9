"""The exact access impact of a change, on a world small enough to work out by hand
(see ``worlds.py`` for who may do what before the change)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from permgate.review.diff import AccessChange
from review_worlds import BASE_MAP, BASE_POLICY, edited, impact_of, lines


@dataclass(frozen=True)
class Case:
    """One change to the base world and every decision it changes."""

    policy: tuple[tuple[str, str], ...] = ()
    map: tuple[tuple[str, str], ...] = ()
    expected: frozenset[str] = frozenset()


CASES = {
    "a role gains a permission: its holders gain the endpoint on every tenant in scope": Case(
        policy=(("[quotes.read, quotes.write]", "[quotes.read, quotes.write, quotes.issue]"),),
        expected=frozenset(
            {
                "+ alice acme-prod quotes.issue",
                "+ bob acme-prod quotes.issue",
                "+ bob acme-test quotes.issue",  # in shadow mode: still a change
            }
        ),
    ),
    "a principal loses a tenant: everything it had there is lost": Case(
        policy=(("tenants: [acme-prod, acme-test]", "tenants: [acme-prod]"),),
        expected=frozenset({"- bob acme-test quotes.get", "- bob acme-test quotes.create"}),
    ),
    "a map entry's permission changes: holders of the old one lose it, admin keeps it": Case(
        map=(
            ("{locator}\n    permissions: [quotes.read]", "{locator}\n    permissions: [q.fetch]"),
        ),
        expected=frozenset(
            {
                "- alice acme-prod quotes.get",
                "- bob acme-prod quotes.get",
                "- bob acme-test quotes.get",
            }
        ),
    ),
    "an any_of loses the alternative the agents hold": Case(
        map=(("any_of: [quotes.write, quotes.create]", "any_of: [quotes.create]"),),
        expected=frozenset(
            {
                "- alice acme-prod quotes.create",
                "- bob acme-prod quotes.create",
                "- bob acme-test quotes.create",
            }
        ),
    ),
    "an any_of gains an alternative nobody but admin holds: nothing changes": Case(
        map=(("any_of: [quotes.write, quotes.create]", "any_of: [quotes.write, q.x, q.y]"),),
    ),
    "a new tenant: the admin reaches it without any scope, the others do not": Case(
        policy=(
            (
                "      - {id: acme-test, type: TEST, enforcement: shadow}\n",
                "      - {id: acme-test, type: TEST, enforcement: shadow}\n"
                "      - {id: acme-new, type: PRODUCTION}\n",
            ),
        ),
        expected=frozenset(
            {
                "+ root acme-new quotes.get",
                "+ root acme-new quotes.issue",
                "+ root acme-new payments.get",
                "+ root acme-new quotes.create",
            }
        ),
    ),
    "a new TEST tenant reaches a type:test scope, not an id scope": Case(
        policy=(
            ("tenants: [acme-prod, acme-test]", "tenants: [acme-prod, type:test]"),
            (
                "      - {id: acme-test, type: TEST, enforcement: shadow}\n",
                "      - {id: acme-test, type: TEST, enforcement: shadow}\n"
                "      - {id: acme-qa, type: TEST}\n",
            ),
        ),
        expected=frozenset(
            {
                "+ bob acme-qa quotes.get",
                "+ bob acme-qa quotes.create",
                "+ root acme-qa quotes.get",
                "+ root acme-qa quotes.issue",
                "+ root acme-qa payments.get",
                "+ root acme-qa quotes.create",
            }
        ),
    ),
    "a role assigned on one tenant counts on that tenant only": Case(
        policy=(
            (
                "        tenants: [acme-prod, acme-test]\n",
                "        tenants: [acme-prod, acme-test]\n"
                "        tenant_roles: {acme-test: [payer]}\n",
            ),
        ),
        expected=frozenset({"+ bob acme-test payments.get"}),
    ),
    "a role assigned on a tenant outside the scope grants nothing": Case(
        policy=(
            (
                "        tenants: [acme-prod]\n",
                "        tenants: [acme-prod]\n        tenant_roles: {acme-test: [payer]}\n",
            ),
        ),
    ),
    "a principal only on the new side gains all it may do": Case(
        policy=(
            (
                "      - id: root\n",
                "      - id: dave\n        roles: [agent]\n        tenants: [acme-test]\n"
                "      - id: root\n",
            ),
        ),
        expected=frozenset({"+ dave acme-test quotes.get", "+ dave acme-test quotes.create"}),
    ),
    "a principal only on the old side loses all it could do": Case(
        policy=(("      - id: alice\n        roles: [agent]\n        tenants: [acme-prod]\n", ""),),
        expected=frozenset({"- alice acme-prod quotes.get", "- alice acme-prod quotes.create"}),
    ),
    "a disabled principal loses everything but public entries": Case(
        policy=(
            (
                "      - id: alice\n        roles: [agent]\n",
                "      - id: alice\n        disabled: true\n        roles: [agent]\n",
            ),
        ),
        expected=frozenset({"- alice acme-prod quotes.get", "- alice acme-prod quotes.create"}),
    ),
    "an entry without a tenant changes once per principal, tenant '-'": Case(
        policy=(("[quotes.read, quotes.write]", "[quotes.read, quotes.write, users.read]"),),
        expected=frozenset({"+ alice - whoami", "+ bob - whoami"}),
    ),
    "an entry that stops being public is lost by whoever lacks its permission": Case(
        map=(
            (
                "    path: /health\n    public: true\n",
                "    path: /health\n    permissions: [health.read]\n    tenant: none\n",
            ),
        ),
        expected=frozenset({"- alice - health", "- bob - health"}),
    ),
    "an entry moved from no tenant to a tenant parameter: the admin keeps it everywhere": Case(
        map=(
            (
                "    path: /auth/whoami\n    permissions: [users.read]\n    tenant: none\n",
                "    path: /auth/{tenantLocator}/whoami\n    permissions: [users.read]\n",
            ),
        ),
    ),
    "an entry removed from a deny-unmapped map is lost by everyone who had it": Case(
        map=(
            (
                "  - id: quotes.issue\n    method: POST\n"
                "    path: /policy/{tenantLocator}/quotes/{locator}/issue\n"
                "    permissions: [quotes.issue]\n",
                "",
            ),
        ),
        expected=frozenset({"- root acme-prod quotes.issue", "- root acme-test quotes.issue"}),
    ),
    "enforcement mode changes alone change no decision": Case(
        policy=(
            (
                "{id: acme-test, type: TEST, enforcement: shadow}",
                "{id: acme-test, type: TEST, enforcement: enforce}",
            ),
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_diff_lists_exactly_the_changed_decisions(case: Case) -> None:
    """The impact of each change is exactly the set worked out by hand."""
    impact = impact_of(
        new_policy=edited(BASE_POLICY, *case.policy), new_map=edited(BASE_MAP, *case.map)
    )
    assert lines(impact) == set(case.expected)


def test_unchanged_sides_have_no_impact() -> None:
    """The same policy and map on both sides: no change, and the impact is falsy."""
    impact = impact_of()
    assert not impact
    assert impact.gained == impact.lost == ()


def test_changes_carry_the_side_s_method_and_path() -> None:
    """A gain names the new entry's request, a loss the old one's."""
    impact = impact_of(
        new_map=edited(
            BASE_MAP,
            ("path: /policy/{tenantLocator}/quotes\n", "path: /v2/{tenantLocator}/quotes\n"),
            ("any_of: [quotes.write, quotes.create]", "any_of: [quotes.create]"),
        )
    )
    assert (
        AccessChange(
            "alice", "quotes.create", "acme-prod", "POST", "/policy/{tenantLocator}/quotes"
        )
        in impact.lost
    )


def test_changes_are_sorted_per_principal_then_endpoint_then_tenant() -> None:
    """Gains come grouped per principal, then per endpoint, then tenant."""
    impact = impact_of(
        new_policy=edited(
            BASE_POLICY,
            (
                "[quotes.read, quotes.write]",
                "[quotes.read, quotes.write, quotes.issue, users.read]",
            ),
        )
    )
    keys = [(c.principal, c.endpoint, c.tenant or "") for c in impact.gained]
    assert keys == [
        ("alice", "quotes.issue", "acme-prod"),
        ("alice", "whoami", ""),
        ("bob", "quotes.issue", "acme-prod"),
        ("bob", "quotes.issue", "acme-test"),
        ("bob", "whoami", ""),
    ]


def test_a_passthrough_map_gives_a_removed_entry_to_everyone() -> None:
    """Removing an entry from a map that passes unmapped requests through allows it to all."""
    passthrough = edited(BASE_MAP, ("version: 1\n", "version: 1\nunmapped: passthrough\n"))
    removed = edited(
        passthrough,
        (
            "  - id: payments.get\n    method: GET\n"
            "    path: /billing/{tenantLocator}/payments/{locator}\n"
            "    permissions: [payments.read, invoices.read]\n",
            "",
        ),
    )
    impact = impact_of(old_map=passthrough, new_map=removed)
    assert lines(impact) == {
        "+ alice acme-prod payments.get",
        "+ alice acme-test payments.get",
        "+ bob acme-prod payments.get",
        "+ bob acme-test payments.get",
    }
