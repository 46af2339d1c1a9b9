"""What every console page shares: the signed-in caller, the permission checks (the
admin API's own rule table), rendering, form fields, and the base of the page classes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from permgate.admin.guard import ADMIN_MAP, Caller, authorize
from permgate.admin.render import ApiError
from permgate.console.decisions import RecentDecisions
from permgate.console.session import NOTICE_COOKIE, clear_cookie, set_cookie
from permgate.core.decision import decide
from permgate.core.endpoints import EndpointMap, Match
from permgate.core.errors import InvalidInput, InvalidPermission, ModelError
from permgate.gateway.authn import Authenticator
from permgate.gateway.modelcache import ModelCache
from permgate.manage.service import ModelService
from permgate.review.advise import MAX_DAYS, UnknownSubject, advise
from permgate.store.base import Store

__all__ = [
    "ADVICE_DAYS",
    "ERROR",
    "FORM",
    "NAV",
    "SIGNED_IN",
    "Handler",
    "PageBase",
    "Signed",
    "advice_context",
    "base_url",
    "can",
    "done",
    "form_action",
    "form_value",
    "form_values",
    "need",
    "raw_value",
    "refusal",
    "render",
    "see_other",
    "split_grants",
    "user_url",
]


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
# The advice window when the page does not ask for one (as the admin API).
ADVICE_DAYS: Final = 90


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


def base_url(request: web.Request) -> str:
    return str(request.app.router["home"].url_for()).rstrip("/")


def render(
    request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200
) -> web.Response:
    """A page, with what every page shows: the signed-in principal, the navigation,
    the CSRF token for its forms, and a notice left by the previous action."""
    signed = request.get(SIGNED_IN)
    notice = request.cookies.get(NOTICE_COOKIE)
    full: dict[str, Any] = {
        "base": base_url(request),
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


def form_value(request: web.Request, name: str) -> str:
    """A value from the posted form, else from the query string; "" when absent."""
    form = request.get(FORM)
    value = form.get(name) if form is not None else None
    if value is None:
        value = request.query.get(name)
    return value.strip() if isinstance(value, str) else ""


def form_values(request: web.Request, name: str) -> list[str]:
    """Every value of a repeated form field (checkboxes)."""
    form = request.get(FORM)
    values = form.getall(name, []) if form is not None else request.query.getall(name, [])
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def split_grants(text: str) -> list[str]:
    """Grants typed into a text field: separated by commas, spaces or lines."""
    return [part for part in text.replace(",", " ").split() if part]


def see_other(location: str) -> web.Response:
    """A 303 to ``location``: after a post, the browser fetches it with GET."""
    return web.Response(status=303, headers={"Location": location})


def done(request: web.Request, location: str, notice: str) -> web.StreamResponse:
    """After a change: back to a page (a reload does not repeat the post) with a notice."""
    response = see_other(base_url(request) + location)
    set_cookie(request, response, NOTICE_COOKIE, notice.replace('"', "'"), max_age=60)
    return response


def raw_value(request: web.Request, name: str) -> str:
    """A posted value as typed (a password keeps its spaces)."""
    form = request.get(FORM)
    value = form.get(name) if form is not None else None
    return value if isinstance(value, str) else ""


def user_url(principal_id: str) -> str:
    return "/users/view?id=" + quote(principal_id, safe="")


async def advice_context(
    store: Store,
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
    text = form_value(request, "days")
    days = ADVICE_DAYS
    if text:
        if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
            raise InvalidInput(
                f"days {text[:20]!r} is invalid: a whole number from 1 to {MAX_DAYS}"
            )
        days = int(text)
    try:
        advice = await advise(
            store, principal=principal, token=token, days=days, account=caller.account
        )
    except UnknownSubject as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    return {"may_advise": True, "advice": advice}


def form_action(action: Handler, back: Handler) -> Handler:
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


class PageBase:
    """What every page needs: the service (every change), the store (reads), the
    authenticator, the model cache, the live endpoint map and the commit hook."""

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

    async def _committed(self) -> None:
        try:
            await self._on_committed()
        except Exception:
            self._model.reset()  # the change is committed: forget rather than serve stale
