"""The console's aiohttp application: sign-in, sessions, CSRF, and the page routes.

Mounted by the admin listener at ``/console/``. Every page is rendered on the server
(Jinja2) and every form is a plain ``application/x-www-form-urlencoded`` post, so the
console works without JavaScript. One middleware signs the request in from its
session cookie (or sends it to the sign-in page), checks the CSRF token of every
post, and turns the admin API's refusals into a page that says what was refused.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Final
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web

from permgate.admin.guard import Caller
from permgate.admin.render import ApiError
from permgate.console.decisions import RecentDecisions
from permgate.console.pages import (
    ERROR,
    FORM,
    SIGNED_IN,
    Pages,
    Signed,
    refusal,
    render,
    see_other,
)
from permgate.console.session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    clear_cookie,
    csrf_matches,
    new_login_csrf,
    set_cookie,
)
from permgate.core.decision import Subject
from permgate.core.endpoints import EndpointMap
from permgate.core.errors import InvalidPermission, ModelError, StoreUnavailable
from permgate.core.passwords import LoginRefused
from permgate.core.reasons import AuthReason
from permgate.core.token_secrets import token_id_of
from permgate.gateway import hygiene
from permgate.gateway.authn import Authenticator, AuthFailure, Identity
from permgate.gateway.modelcache import ModelCache
from permgate.manage.service import Actor, ModelService

__all__ = ["IDLE_SECONDS", "LIFETIME_SECONDS", "create_console"]

log: Final = logging.getLogger("permgate.console")

# A console session ends after this long without a request, and in any case after
# the absolute lifetime, whatever the activity.
IDLE_SECONDS: Final = 30 * 60
LIFETIME_SECONDS: Final = 12 * 3600

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_LOGIN_REFUSALS: Final = {
    "bad_credentials": "Sign-in failed: the principal or the password is wrong.",
    "locked": "Sign-in is locked for a while after too many failed attempts: try again later.",
    "disabled": "Sign-in failed: this principal is disabled.",
    "expired_password": "Your password has expired: ask an administrator to set a new one.",
}
_NOT_FOUND: Final = {"heading": "Not found", "message": "There is no console page at this address."}
_TOKEN_REFUSED: Final = "Sign-in failed: the auth token is not valid, expired or revoked."
_FORM_EXPIRED: Final = (
    "The sign-in form had expired or did not come from this console: sign in again."
)


def create_console(
    *,
    service: ModelService,
    authenticator: Authenticator,
    model: ModelCache,
    endpoint_map: Callable[[], EndpointMap],
    on_committed: Callable[[], Awaitable[None]],
    decisions: RecentDecisions | None = None,
    idle_seconds: int = IDLE_SECONDS,
    lifetime_seconds: int = LIFETIME_SECONDS,
) -> web.Application:
    """The console as an aiohttp application, to be mounted at ``/console/``.

    Args:
        service: every change, with the signed-in principal as the actor.
        authenticator: the gateway's, for signing in with an auth token.
        model: the gateway's in-memory model (roles, principals; explain; access map).
        endpoint_map: returns the gateway's current map (the live one).
        on_committed: awaited after every change, as the admin API does.
        decisions: recent gateway decisions for the Audit page (None: none shown).
        idle_seconds: a session ends after this long without a request.
        lifetime_seconds: a session ends this long after sign-in, whatever happens.
    """
    console = _Console(service, authenticator, model, idle_seconds, lifetime_seconds)
    pages = Pages(service, authenticator, model, endpoint_map, on_committed, decisions)
    app = web.Application(middlewares=[console.middleware])
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("permgate.console", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        filters={"utc": _utc},
    )
    app.router.add_get("/login", console.login_form)
    app.router.add_post("/login", console.login)
    app.router.add_post("/logout", console.logout)
    app.router.add_static("/static", Path(str(files("permgate.console").joinpath("static"))))
    pages.add_routes(app.router)
    return app


class _Console:
    """Sign-in, sign-out and the middleware that signs every other request in."""

    def __init__(
        self,
        service: ModelService,
        authenticator: Authenticator,
        model: ModelCache,
        idle_seconds: int,
        lifetime_seconds: int,
    ) -> None:
        self._service = service
        self._authenticator = authenticator
        self._model = model
        self._idle = idle_seconds
        self._lifetime = lifetime_seconds

    # -- the middleware ----------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Sign in from the cookie, check CSRF on posts, render refusals as pages."""
        request_id = hygiene.request_id(request.headers)
        try:
            response = await self._handle(request, handler)
        except web.HTTPNotFound:
            response = render(request, "message.html", _NOT_FOUND, status=404)
        except StoreUnavailable:
            response = render(
                request,
                "message.html",
                {"heading": "Store unavailable", "message": "The store is unreachable: try again."},
                status=503,
            )
        except Exception:
            log.exception(
                "console: unexpected error answering %s %s (request id %s)",
                request.method,
                request.path,
                request_id,
            )
            text = f"An unexpected error occurred; the server log has it under id {request_id}."
            response = render(
                request, "message.html", {"heading": "Error", "message": text}, status=500
            )
        _harden(response)
        return response

    async def _handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.match_info.route.resource
        canonical = "" if path is None else path.canonical
        if canonical.endswith(("/login", "/logout")) or "/static" in canonical:
            return await handler(request)
        signed = await self._signed_in(request)
        if signed is None:
            response = see_other(_login_url(request))
            clear_cookie(request, response, SESSION_COOKIE)
            return response
        request[SIGNED_IN] = signed
        if request.method not in ("GET", "HEAD"):
            form = await request.post()
            request[FORM] = form
            if not csrf_matches(signed.csrf, form.get("csrf")):
                return render(
                    request,
                    "message.html",
                    {
                        "heading": "Request refused",
                        "message": "The form's CSRF token is missing or wrong: reload the page "
                        "and submit it again.",
                    },
                    status=403,
                )
        try:
            return await handler(request)
        except (ApiError, ModelError, InvalidPermission) as exc:
            status, text = refusal(exc)
            request[ERROR] = text
            return render(
                request, "message.html", {"heading": "Not allowed", "message": text}, status=status
            )

    async def _signed_in(self, request: web.Request) -> Signed | None:
        secret = request.cookies.get(SESSION_COOKIE)
        if not secret:
            return None
        session = await self._service.console_session(secret)
        if session is None:
            return None
        principal = await self._model.principal(session.principal_id)
        if principal is None or principal.disabled:
            return None
        token = None
        if session.token_id is not None:
            token = await self._model.token(session.token_id)
            if token is None or token.revoked_at is not None:
                return None
        credential = f"t:{token.id}" if token is not None else f"c:{principal.id}"
        identity = Identity(principal, token, None, credential)
        subject = Subject(principal, await self._model.roles(principal.account), token)
        caller = Caller(identity, subject, Actor.of(principal, token))
        return Signed(secret, session.csrf, caller)

    # -- sign-in and sign-out ----------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        """The sign-in page (or the console, for a request already signed in)."""
        if await self._signed_in(request) is not None:
            return see_other(_home(request))
        return self._login_page(request)

    def _login_page(
        self, request: web.Request, error: str | None = None, status: int = 200
    ) -> web.StreamResponse:
        csrf = request.cookies.get(LOGIN_COOKIE) or new_login_csrf()
        response = render(
            request,
            "login.html",
            {"login_csrf": csrf, "error": error, "next": request.query.get("next", "")},
            status=status,
        )
        set_cookie(request, response, LOGIN_COOKIE, csrf, max_age=3600)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Check the form's double-submit token, then the password or the token."""
        form = await request.post()
        if not csrf_matches(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
            return self._login_page(request, _FORM_EXPIRED, status=403)
        token_secret = _text(form.get("token"))
        if token_secret:
            # Audited as password sign-ins are: the token's id, never its secret.
            named = token_id_of(self._service.token_prefix, token_secret)
            try:
                identity = await self._authenticator.authenticate(f"Bearer {token_secret}")
            except AuthFailure as failure:
                await self._service.audit_token_login(
                    named, "refused", str(failure.reason), client_ip=request.remote
                )
                return self._login_page(request, _TOKEN_REFUSED, status=401)
            if identity.token is None:  # a JWT: the console signs in with auth tokens only
                await self._service.audit_token_login(
                    None, "refused", str(AuthReason.INVALID_TOKEN), client_ip=request.remote
                )
                return self._login_page(request, _TOKEN_REFUSED, status=401)
            principal_id, token_id = identity.principal.id, identity.token.id
            await self._service.audit_token_login(token_id, "ok", None, client_ip=request.remote)
        else:
            principal_id, token_id = _text(form.get("principal")), None
            try:
                principal = await self._service.verify_login(
                    principal_id, _text(form.get("password")), client_ip=request.remote
                )
            except LoginRefused as refused:
                text = _LOGIN_REFUSALS.get(refused.reason, _LOGIN_REFUSALS["bad_credentials"])
                return self._login_page(request, text, status=401)
            principal_id = principal.id
        secret, _csrf = await self._service.create_console_session(
            principal_id,
            token_id=token_id,
            idle_seconds=self._idle,
            absolute_seconds=self._lifetime,
        )
        response = see_other(_next(request, _text(form.get("next"))))
        set_cookie(request, response, SESSION_COOKIE, secret, max_age=self._lifetime)
        clear_cookie(request, response, LOGIN_COOKIE)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """End the session on the server (CSRF-checked), then forget the cookie."""
        secret = request.cookies.get(SESSION_COOKIE)
        form = await request.post()
        if secret:
            session = await self._service.console_session(secret)
            if session is not None and not csrf_matches(session.csrf, form.get("csrf")):
                return render(
                    request,
                    "message.html",
                    {
                        "heading": "Request refused",
                        "message": "The sign-out form's CSRF token is missing or wrong.",
                    },
                    status=403,
                )
            await self._service.end_console_session(secret)
        response = see_other(_login_url(request, keep_next=False))
        clear_cookie(request, response, SESSION_COOKIE)
        return response


def _utc(ts: float) -> str:
    """An epoch timestamp as the pages show it."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _prefix(request: web.Request) -> str:
    """Where the console is mounted (``/console``), from the matched route."""
    return str(request.app.router["home"].url_for()).rstrip("/")


def _home(request: web.Request) -> str:
    return _prefix(request) + "/"


def _login_url(request: web.Request, *, keep_next: bool = True) -> str:
    url = _prefix(request) + "/login"
    if keep_next and request.method == "GET" and request.path != _home(request):
        url += "?next=" + quote(request.path_qs, safe="")
    return url


def _next(request: web.Request, wanted: str) -> str:
    """Where to go after signing in: a page of the console only (never another site)."""
    home = _home(request)
    if wanted.startswith(home) and not wanted.startswith("//") and "\\" not in wanted:
        return wanted
    return home


def _harden(response: web.StreamResponse) -> None:
    """Headers every console answer carries: no framing, no caching of pages, no
    scripts or styles from anywhere but the console itself."""
    headers = response.headers
    headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    )
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    if headers.get("Content-Type", "").startswith("text/html") or response.status in (303,):
        headers.setdefault("Cache-Control", "no-store")
