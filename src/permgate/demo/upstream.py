"""A small stand-in for the insurance API: a few real routes of the shipped map.

It answers plausible JSON and echoes what the gateway told it (the identity
headers), so a newcomer sees both sides of the sidecar.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["sample_api"]


def _identity(request: web.Request) -> dict[str, Any]:
    return {
        "principal": request.headers.get("X-Permgate-Principal"),
        "tenant": request.headers.get("X-Permgate-Tenant"),
        "token_id": request.headers.get("X-Permgate-Token-Id"),
        "request_id": request.headers.get("X-Request-Id"),
        "saw_credential": "Authorization" in request.headers,
    }


async def fetch_fnol(request: web.Request) -> web.Response:
    tenant, locator = request.match_info["tenantLocator"], request.match_info["locator"]
    return web.json_response(
        {
            "locator": locator,
            "tenantLocator": tenant,
            "type": "fnol",
            "lossDate": "2026-10-03",
            "description": "Rear-end collision at low speed; bumper damage.",
            "status": "open",
            "reservedAmount": "1250.00",
            "currency": "USD",
            "seenByApi": _identity(request),
        }
    )


async def add_fnol(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else {}
    return web.json_response(
        {
            "locator": "F-2001",
            "status": "draft",
            "submitted": body,
            "seenByApi": _identity(request),
        },
        status=201,
    )


async def fetch_quote(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "locator": request.match_info["locator"],
            "productName": "PersonalAuto",
            "quoteState": "quoted",
            "premium": {"total": "842.17", "currency": "USD"},
            "term": {"startTime": "2026-12-01T00:00:00Z", "endTime": "2027-12-01T00:00:00Z"},
            "seenByApi": _identity(request),
        }
    )


async def create_quote(request: web.Request) -> web.Response:
    return web.json_response(
        {"locator": "Q-3001", "quoteState": "draft", "seenByApi": _identity(request)}, status=201
    )


async def fetch_policy(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "locator": request.match_info["locator"],
            "productName": "PersonalAuto",
            "policyNumber": "PA-000123",
            "status": "issued",
            "seenByApi": _identity(request),
        }
    )


async def billing_events(request: web.Request) -> web.Response:
    return web.json_response(
        {"events": ["invoice.created", "payment.posted", "delinquency.started"]}
    )


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"user": request.headers.get("X-Permgate-Principal")})


def sample_api() -> web.Application:
    """The sample upstream application."""
    app = web.Application()
    app.router.add_get("/claim/{tenantLocator}/fnols/{locator}", fetch_fnol)
    app.router.add_post("/claim/{tenantLocator}/fnols", add_fnol)
    app.router.add_get("/policy/{tenantLocator}/quotes/{locator}", fetch_quote)
    app.router.add_post("/policy/{tenantLocator}/quotes", create_quote)
    app.router.add_get("/policy/{tenantLocator}/policies/{locator}", fetch_policy)
    app.router.add_get("/billing/events", billing_events)
    app.router.add_get("/auth/users/whoami", whoami)
    return app
