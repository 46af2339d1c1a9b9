"""The Audit page: admin changes from the store and this process's recent gateway
decisions, filtered."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from permgate.console.pages.common import (
    SIGNED_IN,
    PageBase,
    form_value,
    need,
    render,
)

__all__ = ["AuditPages"]

# The newest changes read from the store, and the most decisions shown.
AUDIT_ROWS: Final = 200


class AuditPages(PageBase):
    """Audit pages (see the module docstring)."""

    async def audit(self, request: web.Request) -> web.StreamResponse:
        """Admin changes (from the store) and recent decisions (this process), filtered."""
        caller = request[SIGNED_IN].caller
        need(caller, "admin.audit")
        filters = {
            key: form_value(request, key)
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
