"""Findings about the roles a policy defines, checked against an endpoint map.

Four rules, each derived from the map and the decision core rather than from a list
written here:

* ``needs_partner``: a grant that unlocks no endpoint on its own. Endpoints that need
  it exist, but every one of them also needs a permission the role lacks (a role that
  may read payments but not invoices, where every payment endpoint needs both).
* ``unused_permission``: a grant that covers no permission any endpoint requires
  (usually a typo, such as ``claim.read`` for ``claims.read``).
* ``identical_roles``: a role whose grants are the same as another role's of its
  account, built-in ones included (``admin`` excepted: its implicit access to every
  tenant sets it apart from any role with ``*.*``). Grants are compared after
  dropping what another grant of the same role already covers, so ``quotes.*`` equals
  ``[quotes.*, quotes.read]``.
* ``wildcard``: ``*.*`` in a role other than ``admin`` and ``full-access``.

Only the roles the policy defines are judged; built-in roles never are, even when the
policy edits their grants. Public endpoints require nothing, so they count for no rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from permgate.core.decision import missing_permissions
from permgate.core.endpoints import Endpoint, EndpointMap
from permgate.core.model import Role
from permgate.core.permissions import GrantSet
from permgate.core.roles import ADMIN, BUILTIN_ROLE_NAMES, FULL_ACCESS, role_grants
from permgate.review.world import EMPTY_WORLD, World, overlay_policy

if TYPE_CHECKING:
    from permgate.manage.policy_file import Policy

__all__ = [
    "RULES",
    "Finding",
    "LintRole",
    "Rule",
    "lint_roles",
    "roles_from_policy",
    "roles_from_world",
]

Rule = Literal["needs_partner", "unused_permission", "identical_roles", "wildcard"]
RULES: Final[tuple[Rule, ...]] = (
    "needs_partner",
    "unused_permission",
    "identical_roles",
    "wildcard",
)


@dataclass(frozen=True, slots=True)
class LintRole:
    """A role to judge: the role, the other roles of its account, and where it is
    written (``FILE:LINE`` for a policy file, ``store`` for the live store)."""

    role: Role
    account_roles: Mapping[str, Role]
    where: str


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding. ``grant`` is None for ``identical_roles``; ``roles`` (the roles it
    is identical to) is empty for the other rules."""

    rule: Rule
    account: str
    role: str
    grant: str | None
    where: str
    message: str
    roles: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        """The JSON form: rule, role, grant, roles, account, where, message."""
        return {
            "rule": self.rule,
            "role": self.role,
            "grant": self.grant,
            "roles": list(self.roles),
            "account": self.account,
            "where": self.where,
            "message": self.message,
        }


class _MapIndex:
    """The map's non-public endpoints and who they need, for repeated questions."""

    def __init__(self, endpoint_map: EndpointMap) -> None:
        self.read_actions = endpoint_map.read_actions
        self.source = endpoint_map.source
        self.endpoints = [e for e in endpoint_map.endpoints if not e.public]

    def needing(self, grant: str) -> list[Endpoint]:
        """The endpoints whose permissions or any_of include one this grant covers."""
        alone = GrantSet.from_grants([grant])
        return [
            e
            for e in self.endpoints
            if any(alone.covers(p, self.read_actions) for p in (*e.permissions, *e.any_of))
        ]

    def missing(self, grants: GrantSet, endpoint: Endpoint) -> list[str]:
        """What ``grants`` lacks for ``endpoint`` (the decision core's rule)."""

        def covered(permission: str) -> bool:
            return grants.covers(permission, self.read_actions)

        return missing_permissions(covered, endpoint.permissions, endpoint.any_of)


def _canonical(grants: GrantSet, read_actions: Iterable[str]) -> tuple[object, ...]:
    """Grants without what the same set already covers otherwise, to compare roles."""
    if grants.everything:
        return ("*.*",)
    wider = GrantSet(groups=grants.groups, reads=grants.reads)
    actions = frozenset(read_actions)
    exact = frozenset(p for p in grants.exact if not wider.covers(p, actions))
    return (grants.groups, exact, grants.reads)


def _grant_findings(item: LintRole, index: _MapIndex) -> Iterable[Finding]:
    role = item.role
    grants = role_grants(role)
    for grant in dict.fromkeys(role.permissions):
        if grant == "*.*":
            if role.name not in (ADMIN, FULL_ACCESS):
                yield Finding(
                    "wildcard",
                    role.account,
                    role.name,
                    grant,
                    item.where,
                    f"role {role.name!r} grants '*.*' (everything, including permissions "
                    "added later): only admin and full-access should",
                )
            continue
        needing = index.needing(grant)
        if not needing:
            yield Finding(
                "unused_permission",
                role.account,
                role.name,
                grant,
                item.where,
                f"role {role.name!r} grants {grant!r}, which no endpoint of "
                f"{index.source} requires",
            )
            continue
        gaps = [index.missing(grants, e) for e in needing]
        if all(gaps):
            yield Finding(
                "needs_partner",
                role.account,
                role.name,
                grant,
                item.where,
                f"role {role.name!r} grants {grant!r}, which unlocks no endpoint on its own: "
                f"every endpoint needing it ({len(needing)}) also needs a permission the role "
                f"lacks; grant {_closest(gaps)} too, or drop it",
            )


def _closest(gaps: list[list[str]], shown: int = 3) -> str:
    """The smallest missing sets, as ``a and b or c`` (at most ``shown`` of them)."""
    fewest = min(len(gap) for gap in gaps)
    options = sorted({tuple(sorted(gap)) for gap in gaps if len(gap) == fewest})
    words = [" and ".join(option) for option in options[:shown]]
    more = f" (or {len(options) - shown} other sets)" if len(options) > shown else ""
    return " or ".join(words) + more


def _identical(item: LintRole, read_actions: Iterable[str]) -> Finding | None:
    role = item.role
    mine = _canonical(role_grants(role), read_actions)
    twins = sorted(
        other.name
        for other in item.account_roles.values()
        if other.name not in (role.name, ADMIN)
        and _canonical(role_grants(other), read_actions) == mine
    )
    if not twins:
        return None
    return Finding(
        "identical_roles",
        role.account,
        role.name,
        None,
        item.where,
        f"role {role.name!r} grants the same as {', '.join(repr(t) for t in twins)}",
        tuple(twins),
    )


def lint_roles(roles: Sequence[LintRole], endpoint_map: EndpointMap) -> list[Finding]:
    """Every finding on ``roles`` (built-in names skipped), role by role in order."""
    index = _MapIndex(endpoint_map)
    findings: list[Finding] = []
    for item in roles:
        if item.role.name in BUILTIN_ROLE_NAMES:
            continue
        findings.extend(_grant_findings(item, index))
        twin = _identical(item, endpoint_map.read_actions)
        if twin is not None:
            findings.append(twin)
    return findings


def roles_from_policy(policy: Policy) -> list[LintRole]:
    """The roles a policy file defines, each beside its account's other roles (the
    built-in ones, as the file may have edited them)."""
    world = overlay_policy(EMPTY_WORLD, policy)
    return [
        LintRole(
            world.account_roles(spec.id)[role.name],
            world.account_roles(spec.id),
            f"{policy.source}:{role.line}",
        )
        for spec in policy.accounts
        for role in spec.roles
    ]


def roles_from_world(world: World) -> list[LintRole]:
    """The roles the live model defines: every role that is not built in, each
    located as ``store: account ID``."""
    return [
        LintRole(role, world.account_roles(account), f"store: account {account}")
        for account in sorted(world.roles)
        for role in sorted(world.account_roles(account).values(), key=lambda r: r.name)
        if not role.builtin
    ]
