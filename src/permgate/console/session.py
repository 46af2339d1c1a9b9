"""Console sessions as cookies, and CSRF tokens, on top of the service's session store.

The session itself lives in the store (:meth:`ModelService.create_console_session`), so
it works across ``serve --workers N`` and sidecars on one PostgreSQL; the browser
holds only its secret, in a cookie that is ``HttpOnly``, ``SameSite=Strict``, scoped to
``/console/`` and ``Secure`` whenever the request came over TLS. The service decides
whether a secret still opens a session (idle timeout, absolute lifetime, sign-out,
the principal's ``sessions_valid_after``, a disabled principal, a revoked token).

CSRF: every state-changing form carries the session's CSRF token in the field
``csrf``, compared in constant time. The sign-in form, before any session exists,
uses a double-submit cookie: a random value in a ``SameSite=Strict`` cookie that the
form must echo.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Final

from aiohttp import web

__all__ = [
    "COOKIE_PATH",
    "LOGIN_COOKIE",
    "NOTICE_COOKIE",
    "SESSION_COOKIE",
    "clear_cookie",
    "csrf_matches",
    "new_login_csrf",
    "set_cookie",
]

SESSION_COOKIE: Final = "permgate_console"
LOGIN_COOKIE: Final = "permgate_console_login"
NOTICE_COOKIE: Final = "permgate_console_notice"
COOKIE_PATH: Final = "/console/"


def set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, *, max_age: int
) -> None:
    """Set one of the console's cookies with the attributes every one of them needs."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def clear_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    """Expire one of the console's cookies (same path and attributes as when set)."""
    response.del_cookie(
        name, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=request.secure
    )


def new_login_csrf() -> str:
    """A fresh double-submit value for the sign-in form."""
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, sent: object) -> bool:
    """Whether the form's CSRF field equals the expected token (constant time); a
    missing or empty value on either side never matches (fail closed)."""
    if not expected or not isinstance(sent, str) or not sent:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode())
