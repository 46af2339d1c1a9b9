"""What the admin API sends: objects as JSON, and the admin API's error shape.

Every error body is ``{"error", "detail", "request_id"}`` (an unexpected failure too:
``error`` "internal", status 500, never a text page); a 403 adds ``reason`` and
``missing_permissions``, a 401 adds ``reason`` (the gateway's shape). A token is
rendered without its hash, ever; its secret appears only in the creation answer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import orjson
from aiohttp import web

from permgate.core.model import AuthToken, Principal, Role, Tenant
from permgate.core.passwords import PasswordPolicy
from permgate.store.base import AuditRecord

__all__ = [
    "ApiError",
    "audit_json",
    "json_response",
    "password_policy_json",
    "principal_json",
    "role_json",
    "tenant_json",
    "timestamp",
    "token_json",
]

_JSON: Final = "application/json"


class ApiError(Exception):
    """An answer other than success, raised by handlers and rendered by the middleware.

    Args:
        status: the HTTP status.
        error: ``invalid`` | ``conflict`` | ``not_found`` | ``forbidden`` | ``unauthenticated`` …
        detail: exactly what is wrong, for a human.
        reason: a stable reason id (403 and 401 answers).
        extra: more body fields (``missing_permissions``, ``holders``…).
        headers: response headers (``WWW-Authenticate``, ``Allow``).
    """

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        reason: str | None = None,
        extra: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.reason = reason
        self.extra = extra or {}
        self.headers = headers

    def response(self, request_id: str) -> web.Response:
        """The JSON answer, tagged with the request's id."""
        body: dict[str, object] = {"error": self.error}
        if self.reason is not None:
            body["reason"] = self.reason
        if self.status == 403:
            body.setdefault("missing_permissions", [])
        body.update(self.extra)
        body["detail"] = self.detail
        body["request_id"] = request_id
        return json_response(body, status=self.status, headers=self.headers)


def json_response(
    body: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer serialised with orjson."""
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON, headers=headers)


def timestamp(moment: datetime | float | None) -> str | None:
    """RFC 3339 UTC with a ``Z``; a naive datetime from the store is UTC."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tenant_json(tenant: Tenant) -> dict[str, object]:
    return {
        "id": tenant.id,
        "account": tenant.account,
        "type": tenant.type,
        "enforcement": tenant.enforcement,
    }


def role_json(role: Role) -> dict[str, object]:
    return {
        "name": role.name,
        "display_name": role.display_name,
        "permissions": list(role.permissions),
        "builtin": role.builtin,
    }


def principal_json(principal: Principal) -> dict[str, object]:
    return {
        "id": principal.id,
        "account": principal.account,
        "kind": principal.kind,
        "roles": [{"role": a.role, "tenant": a.tenant} for a in principal.roles],
        "tenants": list(principal.tenants),
        "disabled": principal.disabled,
        "sessions_valid_after": timestamp(principal.sessions_valid_after),
    }


def token_json(token: AuthToken) -> dict[str, object]:
    """A token's public fields: never its hash."""
    return {
        "id": token.id,
        "owner": token.owner,
        "name": token.name,
        "permissions": list(token.permissions),
        "tenants": list(token.tenants),
        "expires_at": timestamp(token.expires_at),
        "created_at": timestamp(token.created_at),
        "last_used_at": timestamp(token.last_used_at),
        "revoked_at": timestamp(token.revoked_at),
        "parent_token_id": token.parent_token_id,
    }


def audit_json(record: AuditRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "ts": timestamp(record.ts),
        "actor": record.actor,
        "action": record.action,
        "target": record.target,
        "before": record.before,
        "after": record.after,
    }


def password_policy_json(policy: PasswordPolicy) -> dict[str, object]:
    """An effective password policy under its ``policy.yaml`` key names."""
    return policy.as_json()
