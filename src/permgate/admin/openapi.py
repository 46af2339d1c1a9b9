"""The admin API's OpenAPI 3.1 document, served at ``/v1/openapi.json``.

Paths, methods and ``x-permissions`` come from the admin endpoint map (the same map
that protects the routes) and request bodies from :data:`.schemas.SCHEMAS` (the same
schemas that validate them); this module adds only words and response shapes. An
entry of the map without documentation here is an error at start, and a test checks
that the served routes and the document list exactly the same operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from permgate.admin.schemas import SCHEMAS
from permgate.core.endpoints import EndpointMap

__all__ = ["build_document", "query_schemas"]

_STRING: Final = {"type": "string"}
_STRINGS: Final = {"type": "array", "items": _STRING}
_TIME: Final = {"type": ["string", "null"], "format": "date-time"}
_OWNER: Final = {"type": "string", "minLength": 1, "maxLength": 255}
# The largest id either store can hold (a signed 64-bit integer).
_INT64_MAX: Final = 2**63 - 1

_RESPONSES: Final[dict[str, dict[str, Any]]] = {
    "Tenant": {
        "type": "object",
        "properties": {
            "id": _STRING,
            "account": _STRING,
            "type": {"type": "string", "enum": ["PRODUCTION", "TEST"]},
            "enforcement": {"type": "string", "enum": ["shadow", "enforce"]},
        },
        "required": ["id", "account", "type", "enforcement"],
    },
    "Role": {
        "type": "object",
        "properties": {
            "name": _STRING,
            "display_name": _STRING,
            "permissions": _STRINGS,
            "builtin": {"type": "boolean"},
        },
        "required": ["name", "display_name", "permissions", "builtin"],
    },
    "Principal": {
        "type": "object",
        "properties": {
            "id": _STRING,
            "account": _STRING,
            "kind": {"type": "string", "enum": ["user", "client"]},
            "roles": {"type": "array", "items": {"$ref": "#/components/schemas/Assignment"}},
            "tenants": _STRINGS,
            "disabled": {"type": "boolean"},
            "sessions_valid_after": _TIME,
        },
        "required": ["id", "account", "kind", "roles", "tenants", "disabled"],
    },
    "Token": {
        "type": "object",
        "properties": {
            "id": _STRING,
            "owner": _STRING,
            "name": _STRING,
            "permissions": _STRINGS,
            "tenants": _STRINGS,
            "expires_at": _TIME,
            "created_at": _TIME,
            "last_used_at": _TIME,
            "revoked_at": _TIME,
            "parent_token_id": {
                "type": ["string", "null"],
                "description": (
                    "the auth token whose caller created this one; revoking it revokes this"
                ),
            },
        },
        "required": ["id", "owner", "name", "permissions", "tenants"],
    },
    "TokenCreated": {
        "allOf": [
            {"$ref": "#/components/schemas/Token"},
            {
                "type": "object",
                "properties": {"secret": {"type": "string", "description": "shown once"}},
                "required": ["secret"],
            },
        ]
    },
    "TokenRevoked": {
        "allOf": [
            {"$ref": "#/components/schemas/Token"},
            {
                "type": "object",
                "properties": {
                    "revoked_descendants": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "ids of the tokens descended from it that this call revoked",
                    }
                },
                "required": ["revoked_descendants"],
            },
        ]
    },
    "Advice": {
        "type": "object",
        "properties": {
            "subject": _STRING,
            "kind": {"type": "string", "enum": ["principal", "token"]},
            "days": {"type": "integer"},
            "used": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "permission": _STRING,
                        "tenant": {"type": ["string", "null"]},
                        "count": {"type": "integer"},
                        "last_used": {"type": "string", "format": "date-time"},
                    },
                    "required": ["permission", "tenant", "count", "last_used"],
                },
            },
            "unused_grants": {**_STRINGS, "description": "held grants covering nothing used"},
            "suggested_grants": {
                **_STRINGS,
                "description": "exact permissions covering everything used, never wildcards",
            },
            "suggested_tenants": _STRINGS,
        },
        "required": [
            "subject",
            "days",
            "used",
            "unused_grants",
            "suggested_grants",
            "suggested_tenants",
        ],
    },
    "Impact": {
        "type": "object",
        "properties": {
            "gained": {"type": "array", "items": {"$ref": "#/components/schemas/AccessChange"}},
            "lost": {"type": "array", "items": {"$ref": "#/components/schemas/AccessChange"}},
        },
        "required": ["gained", "lost"],
    },
    "AccessChange": {
        "type": "object",
        "properties": {
            "principal": _STRING,
            "tenant": {"type": ["string", "null"]},
            "endpoint": _STRING,
            "method": _STRING,
            "path": _STRING,
        },
        "required": ["principal", "tenant", "endpoint", "method", "path"],
    },
    "PasswordPolicy": {
        "type": "object",
        "description": (
            "the caller's account's effective password policy, the floor applied (at least "
            "8 characters, not a common or breached password, not the principal's id)"
        ),
        "properties": {
            "min_length": {"type": "integer", "minimum": 8},
            "max_length": {"type": "integer", "maximum": 128},
            "require_classes": {
                "type": "array",
                "items": {"type": "string", "enum": ["lower", "upper", "digit", "symbol"]},
            },
            "history": {
                "type": "integer",
                "description": "how many previous passwords may not be reused",
            },
            "max_age_days": {
                "type": ["integer", "null"],
                "description": "null: passwords never expire",
            },
            "lockout": {
                "type": "object",
                "description": (
                    "attempts failed sign-ins within window_seconds lock sign-in for lock_seconds"
                ),
                "properties": {
                    "attempts": {"type": "integer"},
                    "window_seconds": {"type": "integer"},
                    "lock_seconds": {"type": "integer"},
                },
                "required": ["attempts", "window_seconds", "lock_seconds"],
            },
        },
        "required": [
            "min_length",
            "max_length",
            "require_classes",
            "history",
            "max_age_days",
            "lockout",
        ],
    },
    "AuditRecord": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "ts": {"type": "string", "format": "date-time"},
            "actor": _STRING,
            "action": _STRING,
            "target": _STRING,
            "before": {},
            "after": {},
        },
    },
    "AuditPage": {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/AuditRecord"}},
            "next": {
                "type": ["integer", "null"],
                "description": "pass as ?before= for the next (older) page; null at the end",
            },
        },
        "required": ["items", "next"],
    },
    "Decision": {
        "type": "object",
        "properties": {
            "decision": {"type": "string", "enum": ["allow", "deny"]},
            "reason": _STRING,
            "endpoint": {"type": ["string", "null"]},
            "tenant": {"type": ["string", "null"]},
            "required": _STRINGS,
            "any_of": _STRINGS,
            "missing_permissions": _STRINGS,
            "detail": _STRING,
            "principal": {"type": ["string", "null"]},
            "token_id": {"type": ["string", "null"]},
            "enforcement": {"type": ["string", "null"], "enum": ["shadow", "enforce", None]},
        },
        "required": ["decision", "reason"],
    },
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "string",
                "enum": [
                    "invalid",
                    "conflict",
                    "not_found",
                    "forbidden",
                    "unauthenticated",
                    "bad_request",
                    "method_not_allowed",
                    "unavailable",
                    "internal",
                ],
            },
            "reason": _STRING,
            "missing_permissions": _STRINGS,
            "holders": _STRINGS,
            "detail": _STRING,
            "request_id": _STRING,
        },
        "required": ["error", "detail", "request_id"],
    },
}

_ERRORS: Final = {
    400: "a duplicated Authorization header",
    401: "no usable credential (reason: missing_credentials, invalid_token, ...)",
    403: "missing permission, or an admin-only rule (reason says which)",
    404: "no such object in the caller's account",
    409: "the change conflicts with the model's rules",
    422: "the body or query is invalid (detail names every problem)",
    500: "an unexpected error (error: internal); the server log has it under request_id",
    503: "the store is unreachable",
}


@dataclass(frozen=True, slots=True)
class _Doc:
    summary: str
    ok: int
    response: str | None  # a component name, "list:NAME", or None (no body)
    body: str | None = None  # a SCHEMAS name
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, str, dict[str, Any]], ...] = ()


_DOCS: Final[dict[str, _Doc]] = {
    "admin.openapi": _Doc("This document (public)", 200, None),
    "admin.tenants.list": _Doc("List the account's tenants", 200, "list:Tenant"),
    "admin.tenants.create": _Doc("Create a tenant", 201, "Tenant", "TenantCreate", (409, 422)),
    "admin.tenants.get": _Doc("Get a tenant", 200, "Tenant", None, (404,)),
    "admin.tenants.enforcement": _Doc(
        "Switch a tenant to enforce (one-way: back to shadow is 409, audited)",
        200,
        "Tenant",
        "EnforcementPut",
        (404, 409, 422),
    ),
    "admin.roles.list": _Doc("List the account's roles", 200, "list:Role"),
    "admin.roles.create": _Doc(
        "Create a role (admins only)", 201, "Role", "RoleCreate", (409, 422)
    ),
    "admin.roles.get": _Doc("Get a role", 200, "Role", None, (404,)),
    "admin.roles.update": _Doc(
        "Change a role's permissions (admins only; name and display_name are immutable)",
        200,
        "Role",
        "RolePatch",
        (404, 422),
    ),
    "admin.roles.delete": _Doc(
        "Delete an unassigned, non-builtin role (admins only; 409 lists its holders)",
        204,
        None,
        None,
        (404, 409),
    ),
    "admin.principals.list": _Doc("List the account's principals", 200, "list:Principal"),
    "admin.principals.create": _Doc(
        "Create a user or client (giving it roles needs an admin and roles.write)",
        201,
        "Principal",
        "PrincipalCreate",
        (409, 422),
    ),
    "admin.principals.get": _Doc("Get a principal", 200, "Principal", None, (404,)),
    "admin.principals.update": _Doc(
        "Change a principal's kind or disabled flag", 200, "Principal", "PrincipalPatch", (404, 422)
    ),
    "admin.principals.roles": _Doc(
        "Replace a principal's role assignments (admins only; removing a role logs it out)",
        200,
        "Principal",
        "RolesPut",
        (404, 422),
    ),
    "admin.principals.tenants": _Doc(
        "Replace a principal's tenant scope", 200, "Principal", "TenantsPut", (404, 422)
    ),
    "admin.principals.password": _Doc(
        "Set a principal's password: one's own (current_password required once one is "
        "set), or another's with principals.write (not an admin's unless admin). It ends "
        "the principal's console sessions and older JWTs",
        204,
        None,
        "PasswordPut",
        (404, 409, 422),
    ),
    "admin.principals.advice": _Doc(
        "A principal's grants never used in the window, and the exact permissions and "
        "tenants covering everything it (and its tokens) did",
        200,
        "Advice",
        None,
        (404, 422),
        (
            (
                "days",
                "the window: uses in the last N days",
                {"type": "integer", "minimum": 1, "maximum": 3650, "default": 90},
            ),
        ),
    ),
    "admin.password_policy": _Doc(
        "The caller's account's effective password policy (the floor applied)",
        200,
        "PasswordPolicy",
    ),
    "admin.tokens.list": _Doc(
        "List auth tokens: the caller's own, or (admins) the account's or one owner's",
        200,
        "list:Token",
        None,
        (404, 422),
        (("owner", "a principal id of the account", _OWNER),),
    ),
    "admin.tokens.create": _Doc(
        "Create an auth token; the secret is in this answer only. It never exceeds its "
        "owner; a caller using an auth token cannot exceed that token either (grants, "
        "tenants, expiry: an expiring caller must give expires_in, up to its own expiry) "
        "and becomes the new token's parent_token_id",
        201,
        "TokenCreated",
        "TokenCreate",
        (404, 409, 422),
    ),
    "admin.tokens.revoke": _Doc(
        "Revoke an auth token and every token descended from it (own tokens; admins: any "
        "of the account)",
        200,
        "TokenRevoked",
        None,
        (404,),
    ),
    "admin.explain": _Doc(
        "What the gateway would decide for a principal or token and a request",
        200,
        "Decision",
        "ExplainRequest",
        (404, 422),
    ),
    "admin.diff": _Doc(
        "Who gains and loses which endpoint on which tenant (the caller's account) if "
        "the policy and/or the map were replaced: the live store and the current map "
        "against the store as apply of the policy would leave it and the given map",
        200,
        "Impact",
        "DiffRequest",
        (422,),
    ),
    "admin.audit": _Doc(
        "Admin changes of the account, newest first",
        200,
        "AuditPage",
        None,
        (422,),
        (
            (
                "limit",
                "page size",
                {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
            ),
            (
                "before",
                "an audit id (a page's next): the page starts below it",
                {"type": "integer", "minimum": 1, "maximum": _INT64_MAX},
            ),
        ),
    ),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _response_schema(response: str) -> dict[str, Any]:
    if response.startswith("list:"):
        return {
            "type": "object",
            "properties": {"items": {"type": "array", "items": _ref(response[5:])}},
            "required": ["items"],
        }
    return _ref(response)


def build_document(admin_map: EndpointMap, *, version: str) -> dict[str, Any]:
    """The OpenAPI document for every entry of ``admin_map``."""
    undocumented = [e.id for e in admin_map.endpoints if e.id not in _DOCS]
    if undocumented:
        raise ValueError(f"admin map entries without OpenAPI docs: {', '.join(undocumented)}")
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in admin_map.endpoints:
        doc = _DOCS[endpoint.id]
        params = [s[1:-1] for s in endpoint.path.split("/") if s.startswith("{")]
        operation: dict[str, Any] = {
            "operationId": endpoint.id,
            "summary": doc.summary,
            "x-permissions": list(endpoint.permissions),
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": _STRING} for name in params
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "description": text, "schema": schema}
            for name, text, schema in doc.query
        ]
        if parameters:
            operation["parameters"] = parameters
        if doc.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(doc.body)}},
            }
        ok: dict[str, Any] = {"description": "success"}
        if endpoint.id == "admin.openapi":
            ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        elif doc.response is not None:
            ok["content"] = {"application/json": {"schema": _response_schema(doc.response)}}
        responses: dict[str, Any] = {str(doc.ok): ok}
        codes = (500,) if endpoint.public else (400, 401, 403, *doc.errors, 500, 503)
        for code in sorted(set(codes)):
            responses[str(code)] = {
                "description": _ERRORS[code],
                "content": {"application/json": {"schema": _ref("Error")}},
            }
        operation["responses"] = responses
        if endpoint.public:
            operation["security"] = []
        for method in sorted(endpoint.methods):
            paths.setdefault(endpoint.path, {})[method.lower()] = operation
    schemas = {**SCHEMAS, **_RESPONSES, "Assignment": SCHEMAS["RolesPut"]["items"]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "permgate admin API",
            "version": version,
            "description": (
                "Tenants, roles, principals and auth tokens of the caller's account. "
                "Every object is scoped to the authenticated caller's account: "
                "another account's object answers 404. Each operation needs the permissions "
                "in its x-permissions; everything about roles also needs the admin role."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an auth token (its secret) or a JWT of the identity provider",
                }
            },
        },
    }


def query_schemas(endpoint_id: str) -> dict[str, dict[str, Any]]:
    """The query parameters an operation accepts, by name, with the schemas their
    values are checked against (any other parameter is refused with 422)."""
    doc = _DOCS.get(endpoint_id)
    return {} if doc is None else {name: schema for name, _, schema in doc.query}
