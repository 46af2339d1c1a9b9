"""The console's pages: Roles, Users, Tenants, Auth tokens, Audit, Explain, Access map.

Each page asks the admin API's own rule table (the admin endpoint map, through
:func:`permgate.admin.guard.authorize`) whether the signed-in principal may see or do
what it shows, and every change goes through :class:`ModelService` with that
principal (and its auth token, when it signed in with one) as the actor, so the
console can do exactly what the admin API lets the same caller do. A refused change
shows the service's own words on the page it came from.

One module per page: :mod:`.roles`, :mod:`.users`, :mod:`.tenants`, :mod:`.tokens`,
:mod:`.audit`, :mod:`.explain` and :mod:`.access`; what they share is in :mod:`.common`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from permgate.console.decisions import RecentDecisions
from permgate.console.pages.access import AccessPages
from permgate.console.pages.audit import AuditPages
from permgate.console.pages.common import (
    ERROR,
    FORM,
    SIGNED_IN,
    Handler,
    Signed,
    form_action,
    refusal,
    render,
    see_other,
)
from permgate.console.pages.explain import ExplainPages
from permgate.console.pages.roles import RolePages
from permgate.console.pages.tenants import TenantPages
from permgate.console.pages.tokens import TokenPages
from permgate.console.pages.users import UserPages
from permgate.core.endpoints import EndpointMap
from permgate.gateway.authn import Authenticator
from permgate.gateway.modelcache import ModelCache
from permgate.manage.service import ModelService

__all__ = ["ERROR", "FORM", "SIGNED_IN", "Pages", "Signed", "refusal", "render", "see_other"]


class Pages:
    """Every page and every form action, routed to the module of its page."""

    def __init__(
        self,
        service: ModelService,
        authenticator: Authenticator,
        model: ModelCache,
        endpoint_map: Callable[[], EndpointMap],
        on_committed: Callable[[], Awaitable[None]],
        decisions: RecentDecisions | None,
    ) -> None:
        deps = (service, authenticator, model, endpoint_map, on_committed, decisions)
        self._roles = RolePages(*deps)
        self._users = UserPages(*deps)
        self._tenants = TenantPages(*deps)
        self._tokens = TokenPages(*deps)
        self._audit = AuditPages(*deps)
        self._explain = ExplainPages(*deps)
        self._access = AccessPages(*deps)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """The pages (GET) and the forms (POST; on refusal the page is shown again
        with the service's message and the refusal's status)."""
        router.add_get("/", self.home, name="home")
        gets: dict[str, Handler] = {
            "/roles": self._roles.roles,
            "/roles/new": self._roles.role_new,
            "/roles/edit": self._roles.role_edit,
            "/users": self._users.users,
            "/users/view": self._users.user,
            "/tenants": self._tenants.tenants,
            "/tenants/enforce": self._tenants.enforce_confirm,
            "/tokens": self._tokens.tokens,
            "/tokens/view": self._tokens.token,
            "/audit": self._audit.audit,
            "/explain": self._explain.explain,
            "/access": self._access.access,
        }
        for path, handler in gets.items():
            router.add_get(path, handler)
        posts: dict[str, tuple[Handler, Handler]] = {
            "/roles": (self._roles.role_create, self._roles.role_new),
            "/roles/edit": (self._roles.role_update, self._roles.role_edit),
            "/roles/delete": (self._roles.role_delete, self._roles.roles),
            "/users": (self._users.user_create, self._users.users),
            "/users/roles/add": (self._users.user_role_add, self._users.user),
            "/users/roles/remove": (self._users.user_role_remove, self._users.user),
            "/users/tenants": (self._users.user_tenants, self._users.user),
            "/users/status": (self._users.user_status, self._users.user),
            "/users/password": (self._users.user_password, self._users.user),
            "/tenants": (self._tenants.tenant_create, self._tenants.tenants),
            "/tenants/enforce": (self._tenants.tenant_enforce, self._tenants.enforce_confirm),
            "/tokens": (self._tokens.token_create, self._tokens.tokens),
            "/tokens/revoke": (self._tokens.token_revoke, self._tokens.tokens),
        }
        for path, (action, back) in posts.items():
            router.add_post(path, form_action(action, back))

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
