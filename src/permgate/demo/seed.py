"""The demo's cast: one account, two tenants, three people, a token each.

Everything goes through :class:`ModelService`, the same path ``permgate apply``
and the admin API take, so the demo exercises the real rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from permgate.manage.service import Actor, ModelService

ACCOUNT: Final = "acme"
PRODUCTION: Final = "acme-prod"
TEST: Final = "acme-test"

# The platform's example "Sales Agent" role (create and quote policies, manage but not issue quotes,
# policyholders, aux data, quote documents, the UI's fetches), in the permission
# names of the Insurance Suite API that the shipped map describes.
SALES_AGENT: Final = (
    "quotes.read",
    "quotes.write",
    "quotes.create",
    "quotes.update",
    "quotes.price",
    "quotes.discard",
    "quotes.validate",
    "policies.read",
    "contacts.read",
    "contacts.write",
    "auxdata.*",
    "documents.write",
    "tenants.read",
)


@dataclass(frozen=True, slots=True)
class Cast:
    """The secrets the demo prints (they exist only in its temporary store)."""

    adjuster: str
    auditor: str
    agent: str


async def seed(service: ModelService) -> Cast:
    """Create the demo's account, tenants, roles, principals and tokens."""
    cli = Actor.cli()
    await service.ensure_account(cli, ACCOUNT)
    await service.create_tenant(cli, ACCOUNT, PRODUCTION, type="PRODUCTION")
    await service.create_tenant(cli, ACCOUNT, TEST, type="TEST")
    await service.create_role(cli, ACCOUNT, "sales-agent", "Sales Agent", SALES_AGENT)
    await service.create_principal(
        cli, ACCOUNT, "adjuster@acme", tenants=[PRODUCTION], roles=[("claims-only", None)]
    )
    await service.create_principal(
        cli, ACCOUNT, "auditor@acme", tenants=["any"], roles=[("read-only", None)]
    )
    await service.create_principal(
        cli, ACCOUNT, "agent@acme", tenants=["type:test"], roles=[("sales-agent", None)]
    )
    _, adjuster = await service.create_token(
        cli, "adjuster@acme", "claims desk", ["fnols.*", "quotes.read"], [PRODUCTION]
    )
    _, auditor = await service.create_token(
        cli,
        "auditor@acme",
        "quarterly audit",
        ["quotes.read", "fnols.read", "policies.read"],
        ["any"],
    )
    _, agent = await service.create_token(
        cli,
        "agent@acme",
        "quoting script",
        ["quotes.read", "quotes.write", "quotes.create"],
        ["type:test"],
    )
    return Cast(adjuster=adjuster, auditor=auditor, agent=agent)
