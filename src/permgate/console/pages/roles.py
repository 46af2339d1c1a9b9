"""The Roles pages: the list, the create form with the permission picker, a role's
grants (editable by admins), and deleting a role."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from permgate.admin.guard import ADMIN_MAP, Caller
from permgate.admin.render import ApiError
from permgate.console.accessmap import (
    permission_catalogue,
)
from permgate.console.pages.common import (
    FORM,
    SIGNED_IN,
    PageBase,
    can,
    done,
    form_value,
    form_values,
    need,
    render,
    split_grants,
)
from permgate.core.model import (
    Role,
)

__all__ = ["RolePages"]


class RolePages(PageBase):
    """Role pages (see the module docstring)."""

    async def roles(self, request: web.Request) -> web.StreamResponse:
        """Every role of the account, with its grants."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.roles.list")
        roles = sorted(await self._store.list_roles(caller.account), key=lambda r: r.name)
        return render(
            request,
            "roles.html",
            {
                "title": "Roles",
                "roles": roles,
                "may_write": self._service.may_manage_roles(caller.actor)
                and can(caller, "admin.roles.create"),
            },
        )

    def _picker(self) -> dict[str, Any]:
        return {"catalogue": permission_catalogue([self._endpoint_map(), ADMIN_MAP])}

    async def role_new(self, request: web.Request) -> web.StreamResponse:
        """The create-role form: name, display name, and the permission picker."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.roles.create")
        self._service.require_admin(caller.actor, "create roles")  # a form only: no change
        chosen = set(form_values(request, "permissions"))
        return render(
            request,
            "role_form.html",
            {
                "title": "Create role",
                "role": None,
                "name": form_value(request, "name"),
                "display_name": form_value(request, "display_name"),
                "chosen": chosen,
                "extra": form_value(request, "extra"),
                **self._picker(),
            },
        )

    async def role_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.roles.create")
        permissions = list(
            dict.fromkeys(
                [*form_values(request, "permissions"), *split_grants(form_value(request, "extra"))]
            )
        )
        role = await self._service.create_role(
            caller.actor,
            caller.account,
            form_value(request, "name"),
            form_value(request, "display_name"),
            permissions,
        )
        await self._committed()
        return done(request, "/roles", f"Role {role.name} created.")

    async def _role(self, caller: Caller, name: str) -> Role:
        role = (await self._store.get_roles(caller.account)).get(name)
        if role is None:
            raise ApiError(404, "not_found", f"role {name!r} not found")
        return role

    async def role_edit(self, request: web.Request) -> web.StreamResponse:
        """A role's grants, editable by admins; its name and display name are fixed."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.roles.get")
        role = await self._role(caller, form_value(request, "name"))
        picker = self._picker()
        listed = {u.permission for unlocks in picker["catalogue"].values() for u in unlocks}
        posted = request.get(FORM) is not None
        chosen = set(form_values(request, "permissions")) if posted else set(role.permissions)
        extra = (
            form_value(request, "extra")
            if posted
            else " ".join(p for p in role.permissions if p not in listed)
        )
        holders = await self._store.role_holders(caller.account, role.name)
        return render(
            request,
            "role_form.html",
            {
                "title": f"Role {role.name}",
                "role": role,
                "name": role.name,
                "display_name": role.display_name,
                "chosen": chosen,
                "extra": extra,
                "holders": holders,
                "may_write": self._service.may_manage_roles(caller.actor)
                and can(caller, "admin.roles.update"),
                **picker,
            },
        )

    async def role_update(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.roles.update")
        permissions = list(
            dict.fromkeys(
                [*form_values(request, "permissions"), *split_grants(form_value(request, "extra"))]
            )
        )
        role = await self._service.update_role(
            caller.actor, caller.account, form_value(request, "name"), permissions=permissions
        )
        await self._committed()
        return done(request, "/roles", f"Role {role.name} saved.")

    async def role_delete(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.roles.delete")
        role = await self._service.delete_role(
            caller.actor, caller.account, form_value(request, "name")
        )
        await self._committed()
        return done(request, "/roles", f"Role {role.name} deleted.")
