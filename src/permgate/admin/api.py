"""The admin API: tenants, roles, principals, tokens, explain and audit.

One aiohttp sub-application, mounted by the admin listener with
``admin_app.add_subapp("/v1", create_admin_api(...))``. Its single middleware,
:class:`~permgate.admin.guard.Guard`, is the gateway's own decision applied to the
admin API (route against ``admin_map.yaml``, authenticate, ``decide``), so an auth
token is capped by its owner here exactly as everywhere else. Handlers run only
after that, and every write goes through :class:`ModelService`, which enforces
the rules for changing the model and audits the change in the same transaction.

Scoping: every object belongs to the caller's account, taken from the authenticated
principal, never from the body. An object of another account answers 404 (as if it
did not exist, so ids cannot be probed); an object of the caller's own account that
the caller may not touch answers 403 with a ``reason``: ``missing_permission`` (the
map), ``admin_required`` (roles are admins' business), ``not_token_owner`` (another principal's
tokens, for non-admins).

After every successful write ``on_committed()`` is awaited before the answer is
sent, so the change is enforced by this gateway from its next request.

Query parameters are checked by the guard against the schemas the OpenAPI document
publishes (422 naming the parameter); handlers read them from ``request[QUERY]``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any, Final, cast
from urllib.parse import quote

import orjson
from aiohttp import web

from permgate.admin.explain import explain
from permgate.admin.guard import (
    ADMIN_MAP,
    ASSIGN_ROLES,
    CALLER,
    QUERY,
    Caller,
    Guard,
    authorize,
)
from permgate.admin.openapi import build_document
from permgate.admin.password_rule import check_password_setter
from permgate.admin.render import (
    ApiError,
    audit_json,
    json_response,
    password_policy_json,
    principal_json,
    role_json,
    tenant_json,
    token_json,
)
from permgate.admin.schemas import SCHEMAS, validate
from permgate.core.endpoints import EndpointMap
from permgate.core.errors import InvalidInput, ModelError
from permgate.core.model import Role, Tenant
from permgate.gateway.authn import Authenticator
from permgate.gateway.modelcache import ModelCache
from permgate.manage.service import ModelService

__all__ = ["ADMIN_MAP", "create_admin_api"]

log: Final = logging.getLogger("permgate.admin")


def _version() -> str:
    try:
        return package_version("permgate")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


def create_admin_api(
    *,
    service: ModelService,
    authenticator: Authenticator,
    model: ModelCache,
    endpoint_map: Callable[[], EndpointMap],
    on_committed: Callable[[], Awaitable[None]],
) -> web.Application:
    """The admin API as an aiohttp application, to be mounted at ``/v1``.

    Args:
        service: the one write path (the model's rules, audit).
        authenticator: the gateway's, so admin calls authenticate exactly like API calls.
        model: the gateway's in-memory model (callers' roles; explain).
        endpoint_map: returns the gateway's current map, for ``POST /v1/explain``.
        on_committed: awaited after every successful write, before answering; the app
            delivers the store's new changes to its caches there.
    """
    api = _AdminApi(service, authenticator, model, endpoint_map, on_committed)
    guard = Guard(authenticator, model)
    app = web.Application(middlewares=[guard.middleware])
    # allow_head=False: serve exactly the operations the map and document list.
    app.router.add_get("/openapi.json", api.openapi, allow_head=False)
    app.router.add_get("/tenants", api.tenants_list, allow_head=False)
    app.router.add_post("/tenants", api.tenants_create)
    app.router.add_get("/tenants/{id}", api.tenants_get, allow_head=False)
    app.router.add_put("/tenants/{id}/enforcement", api.tenants_enforcement)
    app.router.add_get("/roles", api.roles_list, allow_head=False)
    app.router.add_post("/roles", api.roles_create)
    app.router.add_get("/roles/{name}", api.roles_get, allow_head=False)
    app.router.add_patch("/roles/{name}", api.roles_update)
    app.router.add_delete("/roles/{name}", api.roles_delete)
    app.router.add_get("/principals", api.principals_list, allow_head=False)
    app.router.add_post("/principals", api.principals_create)
    app.router.add_get("/principals/{id}", api.principals_get, allow_head=False)
    app.router.add_patch("/principals/{id}", api.principals_update)
    app.router.add_put("/principals/{id}/roles", api.principals_roles)
    app.router.add_put("/principals/{id}/tenants", api.principals_tenants)
    app.router.add_put("/principals/{id}/password", api.principals_password)
    app.router.add_get("/principals/{id}/advice", api.principals_advice, allow_head=False)
    app.router.add_get("/password-policy", api.password_policy, allow_head=False)
    app.router.add_get("/tokens", api.tokens_list, allow_head=False)
    app.router.add_post("/tokens", api.tokens_create)
    app.router.add_delete("/tokens/{id}", api.tokens_revoke)
    app.router.add_post("/explain", api.explain)
    app.router.add_post("/diff", api.diff)
    app.router.add_get("/audit", api.audit, allow_head=False)
    return app


async def _body(request: web.Request, schema: str) -> Any:
    """The JSON body, checked against ``SCHEMAS[schema]``; 422 naming every problem."""
    raw = await request.read()
    if not raw.strip():
        raise InvalidInput("the request body is empty: expected a JSON document")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from exc
    validate(SCHEMAS[schema], value)
    return value


def _not_found(what: str, key: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} {key!r} not found")


class _AdminApi:
    """The handlers; they run only after :class:`Guard` admitted the caller."""

    def __init__(
        self,
        service: ModelService,
        authenticator: Authenticator,
        model: ModelCache,
        endpoint_map: Callable[[], EndpointMap],
        on_committed: Callable[[], Awaitable[None]],
    ) -> None:
        self._service = service
        self._store = service.store
        self._authenticator = authenticator
        self._model = model
        self._endpoint_map = endpoint_map
        self._on_committed = on_committed
        self._document = orjson.dumps(build_document(ADMIN_MAP, version=_version()))

    async def _committed(self) -> None:
        """Deliver the committed change to this gateway's caches before answering."""
        try:
            await self._on_committed()
        except Exception:
            # The change is committed; if delivery failed, forget everything rather
            # than keep serving what it replaced.
            log.exception("delivering a committed admin change failed; resetting the model")
            self._model.reset()

    # -- tenants -------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._document, content_type="application/json")

    async def tenants_list(self, request: web.Request) -> web.StreamResponse:
        tenants = await self._store.list_tenants(request[CALLER].account)
        return json_response({"items": [tenant_json(t) for t in tenants]})

    async def tenants_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        body = await _body(request, "TenantCreate")
        tenant = await self._service.create_tenant(
            caller.actor,
            caller.account,
            body["id"],
            type=body.get("type", "PRODUCTION"),
            enforcement=body.get("enforcement"),
        )
        await self._committed()
        return json_response(
            tenant_json(tenant), status=201, headers={"Location": f"/v1/tenants/{tenant.id}"}
        )

    async def _tenant(self, caller: Caller, tenant_id: str) -> Tenant:
        tenant = await self._store.get_tenant(tenant_id)
        if tenant is None or tenant.account != caller.account:
            raise _not_found("tenant", tenant_id)
        return tenant

    async def tenants_get(self, request: web.Request) -> web.StreamResponse:
        tenant = await self._tenant(request[CALLER], request.match_info["id"])
        return json_response(tenant_json(tenant))

    async def tenants_enforcement(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        body = await _body(request, "EnforcementPut")
        tenant = await self._service.set_enforcement(
            caller.actor, request.match_info["id"], body["enforcement"]
        )
        await self._committed()
        return json_response(tenant_json(tenant))

    # -- roles ---------------------------------------------------------------------

    async def roles_list(self, request: web.Request) -> web.StreamResponse:
        roles = await self._store.list_roles(request[CALLER].account)
        return json_response({"items": [role_json(r) for r in sorted(roles, key=_by_name)]})

    async def roles_get(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        name = request.match_info["name"]
        role = (await self._store.get_roles(caller.account)).get(name)
        if role is None:
            raise _not_found("role", name)
        return json_response(role_json(role))

    async def roles_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        body = await _body(request, "RoleCreate")
        role = await self._service.create_role(
            caller.actor, caller.account, body["name"], body["display_name"], body["permissions"]
        )
        await self._committed()
        return json_response(
            role_json(role), status=201, headers={"Location": f"/v1/roles/{role.name}"}
        )

    async def roles_update(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        body = await _body(request, "RolePatch")
        role = await self._service.update_role(
            caller.actor,
            caller.account,
            request.match_info["name"],
            permissions=body.get("permissions"),
            display_name=body.get("display_name"),
            new_name=body.get("name"),
        )
        await self._committed()
        return json_response(role_json(role))

    async def roles_delete(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        name = request.match_info["name"]
        try:
            await self._service.delete_role(caller.actor, caller.account, name)
        except ModelError as exc:
            holders = await self._store.role_holders(caller.account, name)
            if exc.status_code != 409 or not holders:
                raise
            raise ApiError(409, "conflict", str(exc), extra={"holders": holders}) from exc
        await self._committed()
        return web.Response(status=204)

    # -- principals ------------------------------------------------------------------

    async def principals_list(self, request: web.Request) -> web.StreamResponse:
        principals = await self._store.list_principals(request[CALLER].account)
        return json_response({"items": [principal_json(p) for p in principals]})

    async def principals_get(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        principal_id = request.match_info["id"]
        principal = await self._store.get_principal(principal_id)
        if principal is None or principal.account != caller.account:
            raise _not_found("principal", principal_id)
        return json_response(principal_json(principal))

    async def principals_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        body = await _body(request, "PrincipalCreate")
        roles = [(item["role"], item.get("tenant")) for item in body.get("roles", ())]
        if roles:
            # Giving roles at creation is assigning roles: the map's requirement for
            # that applies too (the service enforces that only admins assign roles).
            authorize(ASSIGN_ROLES, caller.subject)
        tenants = body.get("tenants", ())
        principal = await self._service.create_principal(
            caller.actor,
            caller.account,
            body["id"],
            kind=body.get("kind", "user"),
            tenants=tenants,
            disabled=body.get("disabled", False),
            roles=roles,
        )
        await self._committed()
        return json_response(
            principal_json(principal),
            status=201,
            # A SPIFFE id holds "/": the Location must address it as one segment.
            headers={"Location": f"/v1/principals/{quote(principal.id, safe='')}"},
        )

    async def principals_update(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        body = await _body(request, "PrincipalPatch")
        principal = await self._service.update_principal(
            caller.actor,
            request.match_info["id"],
            kind=body.get("kind"),
            disabled=body.get("disabled"),
        )
        await self._committed()
        return json_response(principal_json(principal))

    async def principals_roles(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        body = await _body(request, "RolesPut")
        principal = await self._service.set_principal_roles(
            caller.actor,
            request.match_info["id"],
            [(item["role"], item.get("tenant")) for item in body],
        )
        await self._committed()
        return json_response(principal_json(principal))

    async def principals_tenants(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        body = await _body(request, "TenantsPut")
        principal = await self._service.set_principal_tenants(
            caller.actor, request.match_info["id"], body
        )
        await self._committed()
        return json_response(principal_json(principal))

    async def principals_password(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        body = await _body(request, "PasswordPut")
        target = request.match_info["id"]
        await check_password_setter(caller, self._service, target)
        await self._service.set_password(
            caller.actor, target, body["password"], body.get("current_password")
        )
        await self._committed()
        return web.Response(status=204, headers={"Cache-Control": "no-store"})

    async def password_policy(self, request: web.Request) -> web.StreamResponse:
        policy = await self._service.password_policy(request[CALLER].account)
        return json_response(password_policy_json(policy))

    # -- tokens ----------------------------------------------------------------------

    async def tokens_list(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        # parse_query checked each value against its schema: the cast is safe.
        owner = cast("str | None", request[QUERY].get("owner"))
        tokens = await self._service.visible_tokens(caller.actor, owner)
        return json_response({"items": [token_json(t) for t in tokens]})

    async def tokens_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        body = await _body(request, "TokenCreate")
        permissions: list[str] = body["permissions"]
        tenants: list[str] = body.get("tenants", [])
        # The service caps the new token by the owner and, for a token-authenticated
        # caller, by the calling token (grants, tenants, lifetime).
        token, secret = await self._service.create_token(
            caller.actor,
            body.get("owner", caller.identity.principal.id),
            body["name"],
            permissions,
            tenants,
            body.get("expires_in"),
        )
        await self._committed()
        return json_response(
            {**token_json(token), "secret": secret},
            status=201,
            headers={"Cache-Control": "no-store"},
        )

    async def tokens_revoke(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        token, descendants = await self._service.revoke_lineage(
            caller.actor, request.match_info["id"]
        )
        await self._committed()
        return json_response(
            {**token_json(token), "revoked_descendants": [t.id for t in descendants]}
        )

    # -- access review: a principal's advice, the impact of a change -------------------

    async def principals_advice(self, request: web.Request) -> web.StreamResponse:
        from permgate.review.advise import UnknownSubject, advise

        caller = request[CALLER]
        principal_id = request.match_info["id"]
        try:
            advice = await advise(
                self._store,
                principal=principal_id,
                days=cast(int, request[QUERY]["days"]),
                account=caller.account,
            )
        except UnknownSubject as exc:
            raise _not_found("principal", principal_id) from exc
        return json_response(advice.as_dict())

    async def diff(self, request: web.Request) -> web.StreamResponse:
        from permgate.admin.review import diff_json

        body = await diff_json(
            self._store,
            request[CALLER].account,
            self._endpoint_map(),
            await request.read(),
            default_enforcement=self._service.default_enforcement,
        )
        return web.Response(body=body, content_type="application/json")

    # -- explain and audit ---------------------------------------------------------

    async def explain(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        body = await _body(request, "ExplainRequest")
        answer = await explain(
            body,
            caller=caller.identity.principal,
            model=self._model,
            authenticator=self._authenticator,
            endpoint_map=self._endpoint_map(),
        )
        return json_response(answer)

    async def audit(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        limit = cast(int, request[QUERY]["limit"])
        before = cast("int | None", request[QUERY].get("before"))
        records = await self._store.list_audit(caller.account, limit=limit + 1, before=before)
        page = records[:limit]
        following = page[-1].id if len(records) > limit else None
        return json_response({"items": [audit_json(r) for r in page], "next": following})


def _by_name(role: Role) -> str:
    return role.name
