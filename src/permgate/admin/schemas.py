"""Request bodies of the admin API: one JSON Schema per body, and the validator.

The same schema objects are what requests are checked against and what the OpenAPI
document publishes, so the document cannot drift from what is enforced. The
validator implements the small subset of JSON Schema 2020-12 these schemas use
(``type``, ``properties``, ``required``, ``additionalProperties``, ``items``,
``enum``, ``minLength``, ``maxLength``, ``minProperties``, ``exclusiveMinimum``,
``maxItems``, and ``oneOf`` of ``required`` lists) and reports every problem at once,
each naming where it is, so a client can fix its body in one go.

Query parameters are checked the same way (:func:`parse_query`) against the schemas
the OpenAPI document lists for them: unknown, repeated, malformed and out-of-range
values are all reported, each naming the parameter.

Only the *shape* is checked here; the model's rules (permission grammar, tenant
existence, who may change what) stay in :class:`permgate.manage.service.ModelService`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from permgate.core.errors import InvalidInput
from permgate.core.model import ENFORCEMENTS, PRINCIPAL_KINDS, TENANT_TYPES

__all__ = ["SCHEMAS", "parse_query", "validate"]

Schema = dict[str, Any]

_TEXT: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": 255}
_STRINGS: Final[Schema] = {"type": "array", "items": _TEXT, "maxItems": 1000}
_GRANTS: Final[Schema] = {
    **_STRINGS,
    "description": "grants: group.action, group.* or *.*",
}
_SCOPE: Final[Schema] = {
    **_STRINGS,
    "description": "tenant scope: tenant ids, 'any' or 'type:test'",
}

# A password: never echoed in an error (writeOnly), bounded so that a huge body is not
# hashed; the password policy reports the real maximum (at most 128 characters).
_SECRET: Final[Schema] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 4096,
    "format": "password",
    "writeOnly": True,
}

ASSIGNMENT: Final[Schema] = {
    "type": "object",
    "properties": {
        "role": _TEXT,
        "tenant": {
            "type": ["string", "null"],
            "description": "null: on every tenant in scope; a tenant id: on that tenant only",
        },
    },
    "required": ["role"],
    "additionalProperties": False,
}

SCHEMAS: Final[dict[str, Schema]] = {
    "TenantCreate": {
        "type": "object",
        "properties": {
            "id": _TEXT,
            "type": {"type": "string", "enum": list(TENANT_TYPES)},
            "enforcement": {"type": "string", "enum": list(ENFORCEMENTS)},
        },
        "required": ["id"],
        "additionalProperties": False,
    },
    "EnforcementPut": {
        "type": "object",
        "properties": {"enforcement": {"type": "string", "enum": list(ENFORCEMENTS)}},
        "required": ["enforcement"],
        "additionalProperties": False,
    },
    "RoleCreate": {
        "type": "object",
        "properties": {"name": _TEXT, "display_name": _TEXT, "permissions": _GRANTS},
        "required": ["name", "display_name", "permissions"],
        "additionalProperties": False,
    },
    "RolePatch": {
        "type": "object",
        "description": "name and display_name are immutable: accepted only unchanged",
        "properties": {"name": _TEXT, "display_name": _TEXT, "permissions": _GRANTS},
        "minProperties": 1,
        "additionalProperties": False,
    },
    "PrincipalCreate": {
        "type": "object",
        "properties": {
            "id": _TEXT,
            "kind": {"type": "string", "enum": list(PRINCIPAL_KINDS)},
            "tenants": _SCOPE,
            "disabled": {"type": "boolean"},
            "roles": {"type": "array", "items": ASSIGNMENT, "maxItems": 1000},
        },
        "required": ["id"],
        "additionalProperties": False,
    },
    "PrincipalPatch": {
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": list(PRINCIPAL_KINDS)},
            "disabled": {"type": "boolean"},
        },
        "minProperties": 1,
        "additionalProperties": False,
    },
    "RolesPut": {"type": "array", "items": ASSIGNMENT, "maxItems": 1000},
    "TenantsPut": _SCOPE,
    "PasswordPut": {
        "type": "object",
        "description": (
            "the new password, and the current one when changing one's own password "
            "once one is set; a refused password is 422 naming every rule it breaks"
        ),
        "properties": {"password": _SECRET, "current_password": _SECRET},
        "required": ["password"],
        "additionalProperties": False,
    },
    "TokenCreate": {
        "type": "object",
        "properties": {
            "name": _TEXT,
            "permissions": _GRANTS,
            "tenants": _SCOPE,
            "owner": {**_TEXT, "description": "a principal of the account (default: the caller)"},
            "expires_in": {"type": "number", "exclusiveMinimum": 0, "description": "seconds"},
        },
        "required": ["name", "permissions"],
        "additionalProperties": False,
    },
    "DiffRequest": {
        "type": "object",
        "description": (
            "the new side: a policy (applied over the live store) and/or an endpoint map "
            "(default: the current one); each as YAML text or a JSON object"
        ),
        "properties": {
            "policy": {"type": ["string", "object"], "description": "a policy.yaml"},
            "map": {"type": ["string", "object"], "description": "an endpoint_map.yaml"},
            "prune": {"type": "boolean", "description": "as apply --prune would"},
        },
        "minProperties": 1,
        "additionalProperties": False,
    },
    "ExplainRequest": {
        "type": "object",
        "properties": {
            "principal": _TEXT,
            "token": {
                "type": "string",
                "minLength": 1,
                "maxLength": 8192,
                "description": "a bearer credential the gateway accepts: an auth token or a JWT",
            },
            "method": {"type": "string", "minLength": 1, "maxLength": 32},
            "path": {"type": "string", "minLength": 1, "maxLength": 8192},
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "request headers, for endpoints that read the tenant from one",
            },
        },
        "required": ["method", "path"],
        "oneOf": [{"required": ["principal"]}, {"required": ["token"]}],
        "additionalProperties": False,
    },
}

# Fields a client may see in responses but never set: a pointed reason beats "unknown".
_READ_ONLY: Final[dict[str, str]] = {
    "account": "the account comes from the authenticated caller and cannot be set",
    "builtin": "builtin is set by permgate for the base and special roles only",
    "sessions_valid_after": (
        "sessions_valid_after is set by permgate when roles are removed, the principal is "
        "disabled or its password is set"
    ),
    "secret": "a token's secret is generated by permgate",
    "created_at": "created_at is set by permgate",
    "revoked_at": "revoke a token with DELETE /v1/tokens/{id}",
    "last_used_at": "last_used_at is set by permgate",
    "expires_at": "give expires_in (seconds) instead",
}

# C0 controls but tab, and DEL.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_TYPE_NAMES: Final = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a number",
    "null": "null",
}


def _type_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is(value: object, kind: str) -> bool:
    actual = _type_of(value)
    return actual == kind or (kind == "number" and actual == "integer")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(schema: Schema, value: object, where: str = "body") -> None:
    """Raise :class:`InvalidInput` naming every place where ``value`` breaks ``schema``."""
    problems: list[str] = []
    _check(schema, value, where, problems)
    if problems:
        raise InvalidInput("; ".join(problems))


def _check(schema: Schema, value: object, where: str, problems: list[str]) -> None:
    kinds = schema.get("type")
    if kinds is not None:
        allowed = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is(value, kind) for kind in allowed):
            expected = " or ".join(_TYPE_NAMES[k] for k in allowed)
            hidden = isinstance(value, dict | list) or schema.get("writeOnly")
            problems.append(
                f"{where}: expected {expected}, got {_TYPE_NAMES[_type_of(value)]}"
                + ("" if hidden else f" ({_show(value)})")
            )
            return
    if "enum" in schema and value not in schema["enum"]:
        options = ", ".join(repr(option) for option in schema["enum"])
        problems.append(f"{where}: {_show(value)} is not one of {options}")
    if isinstance(value, str):
        if _CONTROL.search(value) is not None:
            # No id, name or path holds one; in a log or a PostgreSQL text column a NUL
            # or a line break would do harm.
            problems.append(f"{where}: contains a control character")
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{where}: must not be empty")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{where}: longer than {schema['maxLength']} characters")
    if _is(value, "number") and not isinstance(value, bool):
        bound = schema.get("exclusiveMinimum")
        if bound is not None and not value > bound:
            problems.append(f"{where}: must be greater than {bound}, got {_show(value)}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{where}: more than {schema['maxItems']} items")
        items = schema.get("items")
        if items is not None:
            for index, item in enumerate(value):
                _check(items, item, f"{where}[{index}]", problems)
    if isinstance(value, dict):
        _check_object(schema, value, where, problems)


def _check_object(
    schema: Schema, value: dict[str, object], where: str, problems: list[str]
) -> None:
    properties: dict[str, Schema] = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if _CONTROL.search(key) is not None:
            problems.append(f"{where}: a field name contains a control character")
            continue
        if key in properties:
            _check(properties[key], item, f"{where}.{key}", problems)
        elif isinstance(extra, dict):
            _check(extra, item, f"{where}.{key}", problems)
        elif extra is False:
            hint = _READ_ONLY.get(key)
            if hint is not None:
                problems.append(f"{where}: field {key!r} is not accepted: {hint}")
            else:
                allowed = ", ".join(properties) or "none"
                problems.append(f"{where}: unknown field {key!r} (allowed: {allowed})")
    for key in schema.get("required", ()):
        if key not in value:
            problems.append(f"{where}: missing required field {key!r}")
    if len(value) < schema.get("minProperties", 0):
        allowed = ", ".join(properties)
        problems.append(f"{where}: nothing to change: give at least one of {allowed}")
    alternatives = schema.get("oneOf")
    if alternatives:
        sets = [alt["required"] for alt in alternatives]
        given = [keys for keys in sets if all(key in value for key in keys)]
        if len(given) != 1:
            names = " or ".join(repr(keys[0]) for keys in sets)
            what = "both" if given else "neither"
            problems.append(f"{where}: give exactly one of {names} ({what} given)")


_INTEGER: Final = re.compile(r"-?[0-9]{1,40}")


def parse_query(
    schemas: Mapping[str, Schema], items: Iterable[tuple[str, str]]
) -> dict[str, object]:
    """The query parameters, each parsed and checked against its schema, with the
    schemas' defaults filled in; :class:`InvalidInput` names every bad parameter."""
    given: dict[str, list[str]] = {}
    for name, raw in items:
        given.setdefault(name, []).append(raw)
    problems: list[str] = []
    values: dict[str, object] = {}
    for name, raws in given.items():
        schema = schemas.get(name)
        if schema is None:
            accepted = ", ".join(schemas) or "none"
            problems.append(
                f"unknown query parameter {_show(name)} (this operation accepts: {accepted})"
            )
        elif len(raws) > 1:
            problems.append(f"query parameter {name!r} is given {len(raws)} times (once at most)")
        else:
            value = _query_value(schema, raws[0], f"query parameter {name!r}", problems)
            if value is not None:
                values[name] = value
    if problems:
        raise InvalidInput("; ".join(problems))
    for name, schema in schemas.items():
        if name not in values and "default" in schema:
            values[name] = schema["default"]
    return values


def _query_value(schema: Schema, raw: str, where: str, problems: list[str]) -> object:
    if schema.get("type") != "integer":
        _check(schema, raw, where, problems)
        return raw
    low, high = schema.get("minimum"), schema.get("maximum")
    if _INTEGER.fullmatch(raw) is None:
        if raw.lstrip("-").isdigit() and raw.lstrip("-").isascii():
            # More digits than any bound: out of range, not malformed.
            problems.append(f"{where}: must be from {low} to {high}, got {_show(raw)}")
        else:
            problems.append(f"{where}: expected an integer, got {_show(raw)}")
        return None
    value = int(raw)
    if (low is not None and value < low) or (high is not None and value > high):
        problems.append(f"{where}: must be from {low} to {high}, got {_show(raw)}")
        return None
    return value
