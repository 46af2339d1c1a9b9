"""The Access map page: a principal's endpoint groups per tenant, or an endpoint's
callers per tenant."""

from __future__ import annotations

from aiohttp import web

from permgate.admin.render import ApiError
from permgate.console.accessmap import (
    NO_TENANT,
    endpoint_access,
    endpoint_group,
    principal_access,
)
from permgate.console.pages.common import (
    SIGNED_IN,
    PageBase,
    form_value,
    need,
    render,
)

__all__ = ["AccessPages"]


class AccessPages(PageBase):
    """Access pages (see the module docstring)."""

    async def access(self, request: web.Request) -> web.StreamResponse:
        """The access map: a principal's endpoint groups per tenant, or an endpoint's
        callers per tenant."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.explain")
        endpoint_map = self._endpoint_map()
        principals = await self._store.list_principals(caller.account)
        tenants = await self._store.list_tenants(caller.account)
        roles = await self._model.roles(caller.account)
        endpoint_id = form_value(request, "endpoint")
        principal_id = form_value(request, "principal") or (
            "" if endpoint_id else caller.identity.principal.id
        )
        grid = by_endpoint = None
        if principal_id:
            principal = next((p for p in principals if p.id == principal_id), None)
            if principal is None:
                raise ApiError(404, "not_found", f"principal {principal_id!r} not found")
            grid = principal_access(endpoint_map, principal, roles, tenants)
        if endpoint_id:
            endpoint = endpoint_map.get(endpoint_id)
            if endpoint is None:
                raise ApiError(404, "not_found", f"endpoint {endpoint_id!r} is not in the map")
            by_endpoint = endpoint_access(endpoint_map, endpoint, principals, roles, tenants)
        return render(
            request,
            "access.html",
            {
                "title": "Access map",
                "principals": principals,
                "endpoints": sorted(endpoint_map.endpoints, key=lambda e: e.id),
                "group_of": endpoint_group,
                "principal_id": principal_id,
                "endpoint_id": endpoint_id,
                "grid": grid,
                "by_endpoint": by_endpoint,
                "no_tenant": NO_TENANT,
            },
        )
