"""The console's pages: Roles, Users, Tenants, Auth tokens, Audit, Explain, Access map.

Each page asks the admin API's own rule table (the admin endpoint map, through
:func:`permgate.admin.guard.authorize`) whether the signed-in principal may see or do
what it shows, and every change goes through :class:`ModelService` with that
principal (and its auth token, when it signed in with one) as the actor, so the
console can do exactly what the admin API lets the same caller do. A refused change
shows the service's own words on the page it came from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import quote, urlencode

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from permgate.admin.explain import explain
from permgate.admin.guard import ADMIN_MAP, ASSIGN_ROLES, Caller, authorize, require_admin
from permgate.admin.password_rule import check_password_setter
from permgate.admin.render import ApiError
from permgate.admin.schemas import SCHEMAS, validate
from permgate.authn import Authenticator
from permgate.console.accessmap import (
    NO_TENANT,
    endpoint_access,
    endpoint_group,
    permission_catalogue,
    principal_access,
)
from permgate.console.decisions import RecentDecisions
from permgate.console.session import NOTICE_COOKIE, clear_cookie, set_cookie
from permgate.decision import decide, scope_beyond
from permgate.endpoints import EndpointMap, Match
from permgate.errors import InvalidInput, InvalidPermission, ModelError
from permgate.model import (
    SCOPE_ANY,
    SCOPE_TYPE_TEST,
    Enforcement,
    Principal,
    PrincipalKind,
    Role,
    RoleAssignment,
    TenantType,
)
from permgate.modelcache import ModelCache
from permgate.review.advise import MAX_DAYS, Advice, UnknownSubject, advise
from permgate.service import ModelService

__all__ = ["ERROR", "FORM", "SIGNED_IN", "Pages", "Signed", "refusal", "render", "see_other"]


@dataclass(frozen=True, slots=True)
class Signed:
    """The signed-in caller of one request, with its session's secret and CSRF token."""

    secret: str
    csrf: str
    caller: Caller


SIGNED_IN: Final = web.RequestKey("permgate_console_signed", Signed)
FORM: Final = web.RequestKey("permgate_console_form", MultiDictProxy[Any])
ERROR: Final = web.RequestKey("permgate_console_error", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The navigation: (label, path, the admin endpoint whose permission the page needs).
NAV: Final = (
    ("Roles", "/roles", "admin.roles.list"),
    ("Users", "/users", "admin.principals.list"),
    ("Tenants", "/tenants", "admin.tenants.list"),
    ("Auth tokens", "/tokens", "admin.tokens.list"),
    ("Audit", "/audit", "admin.audit"),
    ("Explain", "/explain", "admin.explain"),
    ("Access map", "/access", "admin.explain"),
)
SECONDS_PER_DAY: Final = 86400
# The advice window when the page does not ask for one (as the admin API).
ADVICE_DAYS: Final = 90
AUDIT_ROWS: Final = 200


def refusal(exc: ApiError | ModelError | InvalidPermission) -> tuple[int, str]:
    """The status and the text a refused action shows (the service's own words)."""
    if isinstance(exc, ApiError):
        return exc.status, exc.detail
    if isinstance(exc, ModelError):
        return exc.status_code, str(exc)
    return 422, str(exc)


def can(caller: Caller, endpoint_id: str) -> bool:
    """Whether the admin API would let ``caller`` call the admin endpoint."""
    endpoint = ADMIN_MAP.get(endpoint_id)
    if endpoint is None:
        return False
    return decide(ADMIN_MAP, Match(endpoint), caller.subject, None, None).allowed


def need(caller: Caller, endpoint_id: str) -> None:
    """Refuse (403, naming what is missing) unless :func:`can`; the admin API's check."""
    endpoint = ADMIN_MAP.get(endpoint_id)
    if endpoint is None:
        raise ApiError(403, "forbidden", f"no admin operation {endpoint_id!r}")
    authorize(endpoint, caller.subject)


def _base(request: web.Request) -> str:
    return str(request.app.router["home"].url_for()).rstrip("/")


def render(
    request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200
) -> web.Response:
    """A page, with what every page shows: the signed-in principal, the navigation,
    the CSRF token for its forms, and a notice left by the previous action."""
    signed = request.get(SIGNED_IN)
    notice = request.cookies.get(NOTICE_COOKIE)
    full: dict[str, Any] = {
        "base": _base(request),
        "me": None if signed is None else signed.caller.identity.principal,
        "via_token": None if signed is None else signed.caller.identity.token,
        "csrf": "" if signed is None else signed.csrf,
        "nav": [] if signed is None else [n for n in NAV if can(signed.caller, n[2])],
        "path": request.path,
        "notice": notice,
        "error": request.get(ERROR),
    }
    full.update(context)
    response = aiohttp_jinja2.render_template(template, request, full, status=status)
    if notice is not None:
        clear_cookie(request, response, NOTICE_COOKIE)
    return response


def _field(request: web.Request, name: str) -> str:
    """A value from the posted form, else from the query string; "" when absent."""
    form = request.get(FORM)
    value = form.get(name) if form is not None else None
    if value is None:
        value = request.query.get(name)
    return value.strip() if isinstance(value, str) else ""


def _fields(request: web.Request, name: str) -> list[str]:
    """Every value of a repeated form field (checkboxes)."""
    form = request.get(FORM)
    values = form.getall(name, []) if form is not None else request.query.getall(name, [])
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def _grants(text: str) -> list[str]:
    """Grants typed into a text field: separated by commas, spaces or lines."""
    return [part for part in text.replace(",", " ").split() if part]


def see_other(location: str) -> web.Response:
    """A 303 to ``location``: after a post, the browser fetches it with GET."""
    return web.Response(status=303, headers={"Location": location})


def _done(request: web.Request, location: str, notice: str) -> web.StreamResponse:
    """After a change: back to a page (a reload does not repeat the post) with a notice."""
    response = see_other(_base(request) + location)
    set_cookie(request, response, NOTICE_COOKIE, notice.replace('"', "'"), max_age=60)
    return response


class Pages:
    """Every page and every form action (see the module docstring)."""

    def __init__(
        self,
        service: ModelService,
        authenticator: Authenticator,
        model: ModelCache,
        endpoint_map: Callable[[], EndpointMap],
        on_committed: Callable[[], Awaitable[None]],
        decisions: RecentDecisions | None,
    ) -> None:
        self._service = service
        self._store = service.store
        self._authenticator = authenticator
        self._model = model
        self._endpoint_map = endpoint_map
        self._on_committed = on_committed
        self._decisions = decisions

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """The pages (GET) and the forms (POST; on refusal the page is shown again
        with the service's message and the refusal's status)."""
        router.add_get("/", self.home, name="home")
        gets: dict[str, Handler] = {
            "/roles": self.roles,
            "/roles/new": self.role_new,
            "/roles/edit": self.role_edit,
            "/users": self.users,
            "/users/view": self.user,
            "/tenants": self.tenants,
            "/tenants/enforce": self.enforce_confirm,
            "/tokens": self.tokens,
            "/tokens/view": self.token,
            "/audit": self.audit,
            "/explain": self.explain,
            "/access": self.access,
        }
        for path, handler in gets.items():
            router.add_get(path, handler)
        posts: dict[str, tuple[Handler, Handler]] = {
            "/roles": (self.role_create, self.role_new),
            "/roles/edit": (self.role_update, self.role_edit),
            "/roles/delete": (self.role_delete, self.roles),
            "/users": (self.user_create, self.users),
            "/users/roles/add": (self.user_role_add, self.user),
            "/users/roles/remove": (self.user_role_remove, self.user),
            "/users/tenants": (self.user_tenants, self.user),
            "/users/status": (self.user_status, self.user),
            "/users/password": (self.user_password, self.user),
            "/tenants": (self.tenant_create, self.tenants),
            "/tenants/enforce": (self.tenant_enforce, self.enforce_confirm),
            "/tokens": (self.token_create, self.tokens),
            "/tokens/revoke": (self.token_revoke, self.tokens),
        }
        for path, (action, back) in posts.items():
            router.add_post(path, _form(action, back))

    async def _committed(self) -> None:
        try:
            await self._on_committed()
        except Exception:
            self._model.reset()  # the change is committed: forget rather than serve stale

    # -- overview --------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.StreamResponse:
        """What the signed-in principal can open from here."""
        caller = request[SIGNED_IN].caller
        me = caller.identity.principal
        return render(
            request,
            "home.html",
            {"title": "Console", "roles": [(a.role, a.tenant) for a in me.roles]},
        )

    # -- roles ---------------------------------------------------------------------

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
                "may_write": caller.actor.is_admin and can(caller, "admin.roles.create"),
            },
        )

    def _picker(self) -> dict[str, Any]:
        return {"catalogue": permission_catalogue([self._endpoint_map(), ADMIN_MAP])}

    async def role_new(self, request: web.Request) -> web.StreamResponse:
        """The create-role form: name, display name, and the permission picker."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.roles.create")
        require_admin(caller, "create roles")
        chosen = set(_fields(request, "permissions"))
        return render(
            request,
            "role_form.html",
            {
                "title": "Create role",
                "role": None,
                "name": _field(request, "name"),
                "display_name": _field(request, "display_name"),
                "chosen": chosen,
                "extra": _field(request, "extra"),
                **self._picker(),
            },
        )

    async def role_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.roles.create")
        require_admin(caller, "create roles")
        permissions = list(
            dict.fromkeys([*_fields(request, "permissions"), *_grants(_field(request, "extra"))])
        )
        role = await self._service.create_role(
            caller.actor,
            caller.account,
            _field(request, "name"),
            _field(request, "display_name"),
            permissions,
        )
        await self._committed()
        return _done(request, "/roles", f"Role {role.name} created.")

    async def _role(self, caller: Caller, name: str) -> Role:
        role = (await self._store.get_roles(caller.account)).get(name)
        if role is None:
            raise ApiError(404, "not_found", f"role {name!r} not found")
        return role

    async def role_edit(self, request: web.Request) -> web.StreamResponse:
        """A role's grants, editable by admins; its name and display name are fixed."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.roles.get")
        role = await self._role(caller, _field(request, "name"))
        picker = self._picker()
        listed = {u.permission for unlocks in picker["catalogue"].values() for u in unlocks}
        posted = request.get(FORM) is not None
        chosen = set(_fields(request, "permissions")) if posted else set(role.permissions)
        extra = (
            _field(request, "extra")
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
                "may_write": caller.actor.is_admin and can(caller, "admin.roles.update"),
                **picker,
            },
        )

    async def role_update(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.roles.update")
        require_admin(caller, "update roles")
        permissions = list(
            dict.fromkeys([*_fields(request, "permissions"), *_grants(_field(request, "extra"))])
        )
        role = await self._service.update_role(
            caller.actor, caller.account, _field(request, "name"), permissions=permissions
        )
        await self._committed()
        return _done(request, "/roles", f"Role {role.name} saved.")

    async def role_delete(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.roles.delete")
        require_admin(caller, "delete roles")
        role = await self._service.delete_role(
            caller.actor, caller.account, _field(request, "name")
        )
        await self._committed()
        return _done(request, "/roles", f"Role {role.name} deleted.")

    # -- users (principals) --------------------------------------------------------

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
                "new_id": _field(request, "id"),
            },
        )

    async def user_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.principals.create")
        kind = _field(request, "kind") or "user"
        if kind not in ("user", "client"):
            raise InvalidInput(f"kind {kind!r} is invalid: expected user or client")
        principal = await self._service.create_principal(
            caller.actor, caller.account, _field(request, "id"), kind=cast("PrincipalKind", kind)
        )
        await self._committed()
        return _done(request, _user_url(principal.id), f"Principal {principal.id} created.")

    async def _principal(self, caller: Caller, principal_id: str) -> Principal:
        principal = await self._store.get_principal(principal_id)
        if principal is None or principal.account != caller.account:
            raise ApiError(404, "not_found", f"principal {principal_id!r} not found")
        return principal

    async def user(self, request: web.Request) -> web.StreamResponse:
        """One principal: its Roles and Tenants tabs, status and password. Everyone may
        open their own page (to set their own password); others' need principals.read."""
        caller = request[SIGNED_IN].caller
        if _field(request, "id") != caller.identity.principal.id:
            need(caller, "admin.principals.get")
        principal = await self._principal(caller, _field(request, "id"))
        tab = "tenants" if _field(request, "tab") == "tenants" else "roles"
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
                "may_assign": caller.actor.is_admin and can(caller, "admin.principals.roles"),
                "may_write": can(caller, "admin.principals.update"),
                "may_scope": can(caller, "admin.principals.tenants"),
                "is_me": principal.id == me.id,
                "url": _user_url(principal.id),
                **await self._advice(request, caller, principal=principal.id),
                "advice_path": "/users/view",
                "narrower_url": None,
            },
        )

    async def _advice(
        self,
        request: web.Request,
        caller: Caller,
        *,
        principal: str | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        """The least-privilege advice for a principal or a token (the one of
        ``permgate advise`` and the admin API), when the caller holds what the admin
        API's advice route needs (principals.read); else none."""
        if not can(caller, "admin.principals.advice"):
            return {"may_advise": False, "advice": None}
        text = _field(request, "days")
        days = ADVICE_DAYS
        if text:
            if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
                raise InvalidInput(
                    f"days {text[:20]!r} is invalid: a whole number from 1 to {MAX_DAYS}"
                )
            days = int(text)
        try:
            advice = await advise(
                self._store, principal=principal, token=token, days=days, account=caller.account
            )
        except UnknownSubject as exc:
            raise ApiError(404, "not_found", str(exc)) from exc
        return {"may_advise": True, "advice": advice}

    async def _set_roles(
        self, request: web.Request, change: Callable[[list[RoleAssignment]], list[RoleAssignment]]
    ) -> Principal:
        caller = request[SIGNED_IN].caller
        require_admin(caller, "assign roles")
        authorize(ASSIGN_ROLES, caller.subject)
        principal = await self._principal(caller, _field(request, "id"))
        wanted = change(list(principal.roles))
        updated = await self._service.set_principal_roles(
            caller.actor, principal.id, [(a.role, a.tenant) for a in wanted]
        )
        await self._committed()
        return updated

    async def user_role_add(self, request: web.Request) -> web.StreamResponse:
        assignment = RoleAssignment(_field(request, "role"), _field(request, "tenant") or None)
        if not assignment.role:
            raise InvalidInput("choose a role to add")
        principal = await self._set_roles(request, lambda held: [*held, assignment])
        where = f" on {assignment.tenant}" if assignment.tenant else ""
        return _done(
            request,
            _user_url(principal.id),
            f"Role {assignment.role}{where} added to {principal.id}.",
        )

    async def user_role_remove(self, request: web.Request) -> web.StreamResponse:
        assignment = RoleAssignment(_field(request, "role"), _field(request, "tenant") or None)
        principal = await self._set_roles(
            request, lambda held: [a for a in held if a != assignment]
        )
        return _done(
            request,
            _user_url(principal.id),
            f"Role {assignment.role} removed from {principal.id}; its sessions have ended.",
        )

    async def user_tenants(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.principals.tenants")
        principal = await self._principal(caller, _field(request, "id"))
        if not caller.actor.is_admin:
            # As the admin API: a non-admin cannot hand out tenants beyond its own scope.
            known = {t.id: t for t in await self._store.list_tenants(caller.account)}
            outside = scope_beyond(
                caller.identity.principal.tenants, _fields(request, "tenants"), known
            )
            if outside:
                raise ApiError(
                    403,
                    "forbidden",
                    f"cannot grant tenants beyond your own scope: {', '.join(outside)}",
                )
        await self._service.set_principal_tenants(
            caller.actor, principal.id, _fields(request, "tenants")
        )
        await self._committed()
        return _done(
            request, _user_url(principal.id) + "&tab=tenants", f"Tenants of {principal.id} saved."
        )

    async def user_status(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.principals.update")
        disabled = _field(request, "disabled") == "true"
        principal = await self._service.update_principal(
            caller.actor, _field(request, "id"), disabled=disabled
        )
        await self._committed()
        state = "disabled; its sessions have ended" if disabled else "enabled"
        return _done(request, _user_url(principal.id), f"Principal {principal.id} {state}.")

    async def user_password(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        principal = await self._principal(caller, _field(request, "id"))
        # The admin API's rule: another's password, or a token session's first one,
        # needs principals.write.
        await check_password_setter(caller, self._service, principal.id)
        current = _field(request, "current_password") or None
        await self._service.set_password(
            caller.actor, principal.id, _raw(request, "password"), current_password=current
        )
        await self._committed()
        return _done(
            request,
            _user_url(principal.id),
            f"Password of {principal.id} set; its sessions have ended.",
        )

    # -- tenants -------------------------------------------------------------------

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
                "new_id": _field(request, "id"),
            },
        )

    async def tenant_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tenants.create")
        tenant_type = _field(request, "type") or "PRODUCTION"
        mode = _field(request, "enforcement") or None
        if tenant_type not in ("PRODUCTION", "TEST"):
            raise InvalidInput(f"tenant type {tenant_type!r} is invalid: PRODUCTION or TEST")
        if mode not in (None, "shadow", "enforce"):
            raise InvalidInput(f"enforcement {mode!r} is invalid: shadow or enforce")
        tenant = await self._service.create_tenant(
            caller.actor,
            caller.account,
            _field(request, "id"),
            type=cast("TenantType", tenant_type),
            enforcement=cast("Enforcement | None", mode),
        )
        await self._committed()
        return _done(request, "/tenants", f"Tenant {tenant.id} added ({tenant.enforcement}).")

    async def enforce_confirm(self, request: web.Request) -> web.StreamResponse:
        """The confirmation before the one-way switch to enforce."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tenants.enforcement")
        tenant = await self._store.get_tenant(_field(request, "id"))
        if tenant is None or tenant.account != caller.account:
            raise ApiError(404, "not_found", f"tenant {_field(request, 'id')!r} not found")
        return render(request, "enforce.html", {"title": "Switch to enforce", "tenant": tenant})

    async def tenant_enforce(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tenants.enforcement")
        if _field(request, "confirm") != "one-way":
            raise InvalidInput(
                "confirm that the switch is one-way (tick the box) to switch to enforce"
            )
        tenant = await self._service.set_enforcement(caller.actor, _field(request, "id"), "enforce")
        await self._committed()
        return _done(request, "/tenants", f"Tenant {tenant.id} now enforces its decisions.")

    # -- auth tokens -----------------------------------------------------------------

    async def tokens(self, request: web.Request) -> web.StreamResponse:
        """Tokens the caller may see (an admin: the account's; others: their own)."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tokens.list")
        me = caller.identity.principal
        if caller.actor.is_admin:
            tokens = await self._store.list_tokens(account=caller.account)
            owners = [p.id for p in await self._store.list_principals(caller.account)]
        else:
            tokens = await self._store.list_tokens(owner=me.id)
            owners = [me.id]
        return render(
            request,
            "tokens.html",
            {
                "title": "Auth tokens",
                "tokens": sorted(tokens, key=lambda t: (t.revoked_at is not None, t.owner, t.name)),
                "owners": owners,
                "tenants": await self._store.list_tenants(caller.account),
                "scope_keywords": (SCOPE_ANY, SCOPE_TYPE_TEST),
                "may_write": can(caller, "admin.tokens.create"),
                "form": {
                    "owner": _field(request, "owner"),
                    "name": _field(request, "name"),
                    "permissions": _field(request, "permissions"),
                    "tenants": set(_fields(request, "tenants")),
                    "expires_days": _field(request, "expires_days"),
                },
            },
        )

    async def token(self, request: web.Request) -> web.StreamResponse:
        """One auth token and its least-privilege advice (with the narrower token to
        replace it). As the token list: an admin sees the account's, others their own."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tokens.list")
        token_id = _field(request, "id")
        token = await self._store.get_token(token_id)
        if (
            token is None
            or token.account != caller.account
            or not (caller.actor.is_admin or token.owner == caller.identity.principal.id)
        ):
            raise ApiError(404, "not_found", f"token {token_id!r} not found")
        found = await self._advice(request, caller, token=token.id)
        advice: Advice | None = found["advice"]
        return render(
            request,
            "token.html",
            {
                "title": f"Auth token {token.name}",
                "token": token,
                **found,
                "advice_path": "/tokens/view",
                "narrower_url": None
                if advice is None or not can(caller, "admin.tokens.create")
                else _narrower_url(advice),
            },
        )

    async def token_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tokens.create")
        days = _field(request, "expires_days")
        expires_in: float | None = None
        if days:
            try:
                expires_in = float(days) * SECONDS_PER_DAY
            except ValueError:
                raise InvalidInput(f"expires in {days!r} days is not a number") from None
        token, secret = await self._service.create_token(
            caller.actor,
            _field(request, "owner") or caller.identity.principal.id,
            _field(request, "name"),
            _grants(_field(request, "permissions")),
            _fields(request, "tenants"),
            expires_in,
        )
        await self._committed()
        response = render(
            request,
            "token_created.html",
            {"title": "Token created", "token": token, "secret": secret},
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    async def token_revoke(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tokens.revoke")
        token, descendants = await self._service.revoke_lineage(caller.actor, _field(request, "id"))
        await self._committed()
        more = f" with {len(descendants)} token(s) it created" if descendants else ""
        return _done(request, "/tokens", f"Token {token.name} ({token.id}) revoked{more}.")

    # -- audit, explain, access map -------------------------------------------------------

    async def audit(self, request: web.Request) -> web.StreamResponse:
        """Admin changes (from the store) and recent decisions (this process), filtered."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.audit")
        filters = {
            key: _field(request, key)
            for key in ("action", "actor", "target", "decision", "principal", "tenant")
        }
        records = await self._store.list_audit(caller.account, limit=AUDIT_ROWS)
        changes = [
            r
            for r in records
            if filters["action"] in r.action
            and filters["actor"] in r.actor
            and filters["target"] in r.target
        ]
        decisions = [] if self._decisions is None else self._decisions.events(caller.account)
        decisions = [
            d
            for d in decisions
            if (not filters["decision"] or d.get("decision") == filters["decision"])
            and filters["principal"] in str((d.get("principal") or {}).get("id", ""))
            and filters["tenant"] in str(d.get("tenant") or "")
        ][:AUDIT_ROWS]
        return render(
            request,
            "audit.html",
            {
                "title": "Audit",
                "changes": changes,
                "decisions": decisions,
                "filters": filters,
                "tracking": self._decisions is not None,
            },
        )

    async def explain(self, request: web.Request) -> web.StreamResponse:
        """The what-if: the gateway's own stages for a principal and a request."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.explain")
        principals = await self._store.list_principals(caller.account)
        asked = {
            key: _field(request, key)
            for key in ("principal", "method", "path", "header_name", "header_value")
        }
        answer: dict[str, object] | None = None
        if asked["principal"] and asked["path"]:
            body: dict[str, object] = {
                "principal": asked["principal"],
                "method": asked["method"] or "GET",
                "path": asked["path"],
            }
            if asked["header_name"]:
                body["headers"] = {asked["header_name"]: asked["header_value"]}
            validate(SCHEMAS["ExplainRequest"], body)
            answer = await explain(
                body,
                caller=caller.identity.principal,
                model=self._model,
                authenticator=self._authenticator,
                endpoint_map=self._endpoint_map(),
            )
        return render(
            request,
            "explain.html",
            {"title": "Explain", "principals": principals, "asked": asked, "answer": answer},
        )

    async def access(self, request: web.Request) -> web.StreamResponse:
        """The access map: a principal's endpoint groups per tenant, or an endpoint's
        callers per tenant."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.explain")
        endpoint_map = self._endpoint_map()
        principals = await self._store.list_principals(caller.account)
        tenants = await self._store.list_tenants(caller.account)
        roles = await self._model.roles(caller.account)
        endpoint_id = _field(request, "endpoint")
        principal_id = _field(request, "principal") or (
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


def _user_url(principal_id: str) -> str:
    return "/users/view?id=" + quote(principal_id, safe="")


def _narrower_url(advice: Advice) -> str:
    """The create-token form filled in with the advice's narrower token."""
    query = [
        ("owner", advice.owner or ""),
        ("name", f"{advice.name} (narrowed)"),
        ("permissions", " ".join(advice.suggested_grants)),
        *(("tenants", tenant) for tenant in advice.suggested_tenants),
    ]
    return "/tokens?" + urlencode(query)


def _raw(request: web.Request, name: str) -> str:
    """A posted value as typed (a password keeps its spaces)."""
    form = request.get(FORM)
    value = form.get(name) if form is not None else None
    return value if isinstance(value, str) else ""


def _form(action: Handler, back: Handler) -> Handler:
    """A form's action; when the model's rules refuse it, the page it came from is
    shown again with the refusal's words and status."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await action(request)
        except (ApiError, ModelError, InvalidPermission) as exc:
            status, text = refusal(exc)
            request[ERROR] = text
            response = await back(request)
            response.set_status(status)
            return response

    return handler
