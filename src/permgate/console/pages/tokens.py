"""The Auth tokens pages: the list, creating and revoking tokens, and one token's page
with its least-privilege advice."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlencode

from aiohttp import web

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
    render,
    split_grants,
)
from permgate.core.errors import InvalidInput
from permgate.core.model import (
    SCOPE_ANY,
    SCOPE_TYPE_TEST,
)
from permgate.review.advise import Advice

__all__ = ["TokenPages"]

SECONDS_PER_DAY: Final = 86400


class TokenPages(PageBase):
    """Token pages (see the module docstring)."""

    async def tokens(self, request: web.Request) -> web.StreamResponse:
        """Tokens the caller may see (an admin: the account's; others: their own)."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tokens.list")
        tokens = await self._service.visible_tokens(caller.actor)
        owners = await self._service.token_owners(caller.actor)
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
                    "owner": form_value(request, "owner"),
                    "name": form_value(request, "name"),
                    "permissions": form_value(request, "permissions"),
                    "tenants": set(form_values(request, "tenants")),
                    "expires_days": form_value(request, "expires_days"),
                },
            },
        )

    async def token(self, request: web.Request) -> web.StreamResponse:
        """One auth token and its least-privilege advice (with the narrower token to
        replace it). As the token list: an admin sees the account's, others their own."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tokens.list")
        token_id = form_value(request, "id")
        token = await self._service.visible_token(caller.actor, token_id)
        if token is None:
            raise ApiError(404, "not_found", f"token {token_id!r} not found")
        found = await advice_context(self._store, request, caller, token=token.id)
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
                else narrower_url(advice),
            },
        )

    async def token_create(self, request: web.Request) -> web.StreamResponse:
        caller = request[SIGNED_IN].caller
        need(caller, "admin.tokens.create")
        days = form_value(request, "expires_days")
        expires_in: float | None = None
        if days:
            try:
                expires_in = float(days) * SECONDS_PER_DAY
            except ValueError:
                raise InvalidInput(f"expires in {days!r} days is not a number") from None
        token, secret = await self._service.create_token(
            caller.actor,
            form_value(request, "owner") or caller.identity.principal.id,
            form_value(request, "name"),
            split_grants(form_value(request, "permissions")),
            form_values(request, "tenants"),
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
        token, descendants = await self._service.revoke_lineage(
            caller.actor, form_value(request, "id")
        )
        await self._committed()
        more = f" with {len(descendants)} token(s) it created" if descendants else ""
        return done(request, "/tokens", f"Token {token.name} ({token.id}) revoked{more}.")


def narrower_url(advice: Advice) -> str:
    """The create-token form filled in with the advice's narrower token."""
    query = [
        ("owner", advice.owner or ""),
        ("name", f"{advice.name} (narrowed)"),
        ("permissions", " ".join(advice.suggested_grants)),
        *(("tenants", tenant) for tenant in advice.suggested_tenants),
    ]
    return "/tokens?" + urlencode(query)
