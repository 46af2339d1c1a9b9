"""The Tenants page: the account's tenants, adding one, and the one-way switch to
enforce (after a confirmation)."""

from __future__ import annotations

from typing import cast

from aiohttp import web

from permgate.admin.render import ApiError
from permgate.console.pages.common import (
    SIGNED_IN,
    PageBase,
    can,
    done,
    form_value,
    need,
    render,
)
from permgate.core.errors import InvalidInput
from permgate.core.model import (
    Enforcement,
    TenantType,
)

__all__ = ["TenantPages"]


class TenantPages(PageBase):
    """Tenant pages (see the module docstring)."""

    async def tenants(self, request: web.Request) -> web.StreamResponse:
        """The account's tenants, their type and enforcement mode."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tenants.list")
        tenants = await self._store.list_tenants(caller.account)
        return render(
            request,
            "tenants.html",
            {
                "title": "Tenants",
                "tenants": tenants,
                "may_write": can(caller, "admin.tenants.create"),
                "default_enforcement": self._service.default_enforcement,
                "new_id": form_value(request, "id"),
            },
        )

    async def tenant_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tenants.create")
        tenant_type = form_value(request, "type") or "PRODUCTION"
        mode = form_value(request, "enforcement") or None
        if tenant_type not in ("PRODUCTION", "TEST"):
            raise InvalidInput(f"tenant type {tenant_type!r} is invalid: PRODUCTION or TEST")
        if mode not in (None, "shadow", "enforce"):
            raise InvalidInput(f"enforcement {mode!r} is invalid: shadow or enforce")
        tenant = await self._service.create_tenant(
            caller.actor,
            caller.account,
            form_value(request, "id"),
            type=cast("TenantType", tenant_type),
            enforcement=cast("Enforcement | None", mode),
        )
        await self._committed()
        return done(request, "/tenants", f"Tenant {tenant.id} added ({tenant.enforcement}).")

    async def enforce_confirm(self, request: web.Request) -> web.StreamResponse:
        """The confirmation before the one-way switch to enforce."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tenants.enforcement")
        tenant = await self._store.get_tenant(form_value(request, "id"))
        if tenant is None or tenant.account != caller.account:
            raise ApiError(404, "not_found", f"tenant {form_value(request, 'id')!r} not found")
        return render(request, "enforce.html", {"title": "Switch to enforce", "tenant": tenant})

    async def tenant_enforce(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tenants.enforcement")
        if form_value(request, "confirm") != "one-way":
            raise InvalidInput(
                "confirm that the switch is one-way (tick the box) to switch to enforce"
            )
        tenant = await self._service.set_enforcement(
            caller.actor, form_value(request, "id"), "enforce"
        )
        await self._committed()
        return done(request, "/tenants", f"Tenant {tenant.id} now enforces its decisions.")
