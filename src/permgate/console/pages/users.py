"""The Users pages: the principals of the account and one principal's roles, tenants,
status, password and least-privilege advice."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from aiohttp import web

from permgate.admin.guard import ASSIGN_ROLES, Caller, authorize
from permgate.admin.password_rule import check_password_setter
from permgate.admin.render import ApiError
from permgate.console.pages.common import (
    SIGNED_IN,
    PageBase,
    advice_context,
    can,
    done,
    form_value,
    form_values,
    need,
    raw_value,
    render,
    user_url,
)
from permgate.core.errors import InvalidInput
from permgate.core.model import (
    SCOPE_ANY,
    SCOPE_TYPE_TEST,
    Principal,
    PrincipalKind,
    RoleAssignment,
)

__all__ = ["UserPages"]


class UserPages(PageBase):
    """User pages (see the module docstring)."""

    async def users(self, request: web.Request) -> web.StreamResponse:
        """Every principal of the account."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.principals.list")
        principals = await self._store.list_principals(caller.account)
        return render(
            request,
            "users.html",
            {
                "title": "Users",
                "principals": principals,
                "may_create": can(caller, "admin.principals.create"),
                "new_id": form_value(request, "id"),
            },
        )

    async def user_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.principals.create")
        kind = form_value(request, "kind") or "user"
        if kind not in ("user", "client"):
            raise InvalidInput(f"kind {kind!r} is invalid: expected user or client")
        principal = await self._service.create_principal(
            caller.actor,
            caller.account,
            form_value(request, "id"),
            kind=cast("PrincipalKind", kind),
        )
        await self._committed()
        return done(request, user_url(principal.id), f"Principal {principal.id} created.")

    async def _principal(self, caller: Caller, principal_id: str) -> Principal:
        principal = await self._store.get_principal(principal_id)
        if principal is None or principal.account != caller.account:
            raise ApiError(404, "not_found", f"principal {principal_id!r} not found")
        return principal

    async def user(self, request: web.Request) -> web.StreamResponse:
        """One principal: its Roles and Tenants tabs, status and password. Everyone may
        open their own page (to set their own password); others' need principals.read."""
        caller = request[SIGNED_IN].caller
        if form_value(request, "id") != caller.identity.principal.id:
            need(caller, "admin.principals.get")
        principal = await self._principal(caller, form_value(request, "id"))
        tab = "tenants" if form_value(request, "tab") == "tenants" else "roles"
        roles = sorted(await self._store.list_roles(caller.account), key=lambda r: r.name)
        tenants = await self._store.list_tenants(caller.account)
        me = caller.identity.principal
        return render(
            request,
            "user.html",
            {
                "title": f"User {principal.id}",
                "principal": principal,
                "tab": tab,
                "roles": roles,
                "tenants": tenants,
                "scope_keywords": (SCOPE_ANY, SCOPE_TYPE_TEST),
                "may_assign": self._service.may_manage_roles(caller.actor)
                and can(caller, "admin.principals.roles"),
                "may_write": can(caller, "admin.principals.update"),
                "may_scope": can(caller, "admin.principals.tenants"),
                "is_me": principal.id == me.id,
                "url": user_url(principal.id),
                **await advice_context(self._store, request, caller, principal=principal.id),
                "advice_path": "/users/view",
                "narrower_url": None,
            },
        )

    async def _set_roles(
        self, request: web.Request, change: Callable[[list[RoleAssignment]], list[RoleAssignment]]
    ) -> Principal:
        caller = request[SIGNED_IN].caller
        authorize(ASSIGN_ROLES, caller.subject)
        principal = await self._principal(caller, form_value(request, "id"))
        wanted = change(list(principal.roles))
        updated = await self._service.set_principal_roles(
            caller.actor, principal.id, [(a.role, a.tenant) for a in wanted]
        )
        await self._committed()
        return updated

    async def user_role_add(self, request: web.Request) -> web.StreamResponse:
        assignment = RoleAssignment(
            form_value(request, "role"), form_value(request, "tenant") or None
        )
        if not assignment.role:
            raise InvalidInput("choose a role to add")
        principal = await self._set_roles(request, lambda held: [*held, assignment])
        where = f" on {assignment.tenant}" if assignment.tenant else ""
        return done(
            request,
            user_url(principal.id),
            f"Role {assignment.role}{where} added to {principal.id}.",
        )

    async def user_role_remove(self, request: web.Request) -> web.StreamResponse:
        assignment = RoleAssignment(
            form_value(request, "role"), form_value(request, "tenant") or None
        )
        principal = await self._set_roles(
            request, lambda held: [a for a in held if a != assignment]
        )
        return done(
            request,
            user_url(principal.id),
            f"Role {assignment.role} removed from {principal.id}; its sessions have ended.",
        )

    async def user_tenants(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.principals.tenants")
        principal = await self._principal(caller, form_value(request, "id"))
        await self._service.set_principal_tenants(
            caller.actor, principal.id, form_values(request, "tenants")
        )
        await self._committed()
        return done(
            request, user_url(principal.id) + "&tab=tenants", f"Tenants of {principal.id} saved."
        )

    async def user_status(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.principals.update")
        disabled = form_value(request, "disabled") == "true"
        principal = await self._service.update_principal(
            caller.actor, form_value(request, "id"), disabled=disabled
        )
        await self._committed()
        state = "disabled; its sessions have ended" if disabled else "enabled"
        return done(request, user_url(principal.id), f"Principal {principal.id} {state}.")

    async def user_password(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        principal = await self._principal(caller, form_value(request, "id"))
        # The admin API's rule: another's password, or a token session's first one,
        # needs principals.write.
        await check_password_setter(caller, self._service, principal.id)
        current = form_value(request, "current_password") or None
        await self._service.set_password(
            caller.actor, principal.id, raw_value(request, "password"), current_password=current
        )
        await self._committed()
        return done(
            request,
            user_url(principal.id),
            f"Password of {principal.id} set; its sessions have ended.",
        )
