"""The Explain page: the what-if, answered by the gateway's own stages."""

from __future__ import annotations

from aiohttp import web

from permgate.admin.explain import explain
from permgate.admin.schemas import SCHEMAS, validate
from permgate.console.pages.common import (
    SIGNED_IN,
    PageBase,
    form_value,
    need,
    render,
)

__all__ = ["ExplainPages"]


class ExplainPages(PageBase):
    """Explain pages (see the module docstring)."""

    async def explain(self, request: web.Request) -> web.StreamResponse:
        """The what-if: the gateway's own stages for a principal and a request."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.explain")
        principals = await self._store.list_principals(caller.account)
        asked = {
            key: form_value(request, key)
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
