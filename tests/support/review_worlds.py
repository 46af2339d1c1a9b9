"""A small map and policy whose access can be worked out by hand, for the review tests.

Who may do what in the base world (acme-test is in shadow mode, which a diff ignores):

* alice (agent, scope acme-prod): quotes.get and quotes.create on acme-prod;
* bob (agent, scope acme-prod and acme-test): the same on both tenants;
* root (admin, no scope): every entry on every tenant of acme, and whoami;
* nobody else: health is public, so it is everyone's on both sides.
"""

from __future__ import annotations

from permgate.core.endpoints import EndpointMap
from permgate.manage.policy_file import parse_policy
from permgate.maps.loader import parse_map
from permgate.review.diff import Impact, Side, diff_access
from permgate.review.world import EMPTY_WORLD, World, overlay_policy

BASE_MAP = """\
version: 1
defaults:
  tenant: {path_param: tenantLocator}
endpoints:
  - id: quotes.get
    method: GET
    path: /policy/{tenantLocator}/quotes/{locator}
    permissions: [quotes.read]
  - id: quotes.issue
    method: POST
    path: /policy/{tenantLocator}/quotes/{locator}/issue
    permissions: [quotes.issue]
  - id: payments.get
    method: GET
    path: /billing/{tenantLocator}/payments/{locator}
    permissions: [payments.read, invoices.read]
  - id: quotes.create
    method: POST
    path: /policy/{tenantLocator}/quotes
    any_of: [quotes.write, quotes.create]
  - id: whoami
    method: GET
    path: /auth/whoami
    permissions: [users.read]
    tenant: none
  - id: health
    method: GET
    path: /health
    public: true
"""

BASE_POLICY = """\
accounts:
  - id: acme
    tenants:
      - {id: acme-prod, type: PRODUCTION}
      - {id: acme-test, type: TEST, enforcement: shadow}
    roles:
      - name: agent
        permissions: [quotes.read, quotes.write]
      - name: payer
        permissions: [payments.read, invoices.read]
    principals:
      - id: alice
        roles: [agent]
        tenants: [acme-prod]
      - id: bob
        roles: [agent]
        tenants: [acme-prod, acme-test]
      - id: root
        roles: [admin]
"""


def edited(text: str, *edits: tuple[str, str]) -> str:
    """``text`` with each (old, new) replaced exactly once (a typo fails loudly)."""
    for old, new in edits:
        assert text.count(old) == 1, f"{old!r} is not in the text exactly once"
        text = text.replace(old, new)
    return text


def world_of(policy_text: str) -> World:
    """The policy text on its own, as ``permgate diff --policy`` builds it."""
    return overlay_policy(EMPTY_WORLD, parse_policy(policy_text, "policy.yaml"))


def map_of(map_text: str) -> EndpointMap:
    """A validated map from its text."""
    return parse_map(map_text, "map.yaml")


def lines(impact: Impact) -> set[str]:
    """``+ principal tenant endpoint`` for each change, tenant ``-`` when there is none."""
    return {f"+ {c.principal} {c.tenant or '-'} {c.endpoint}" for c in impact.gained} | {
        f"- {c.principal} {c.tenant or '-'} {c.endpoint}" for c in impact.lost
    }


def impact_of(
    old_policy: str = BASE_POLICY,
    new_policy: str = BASE_POLICY,
    old_map: str = BASE_MAP,
    new_map: str = BASE_MAP,
) -> Impact:
    """The diff between two (policy, map) sides given as text."""
    return diff_access(
        Side(world_of(old_policy), map_of(old_map)), Side(world_of(new_policy), map_of(new_map))
    )
