"""Access review on the admin API: ``POST /v1/diff`` and a principal's advice.

``POST /v1/diff`` answers what ``permgate diff --json`` answers, confined to the
caller's account: the old side is the live store (the caller's account only) with the
gateway's current map; the new side is the store as ``permgate apply`` of the body's
``policy`` would leave it (``prune``: as ``apply --prune`` would), with the body's
``map`` (the current map when absent). ``policy`` and ``map`` are YAML text or the
same document as a JSON object; the policy may name only the caller's account.

The body is checked here rather than by the generic validator, which refuses line
breaks in strings (no id or name holds one), and YAML text is made of lines.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

import orjson

from permgate.admin.render import ApiError
from permgate.core.errors import MapError
from permgate.review.diff import Side, diff_access
from permgate.review.render import impact_json
from permgate.review.world import World, check_policy, overlay_policy

if TYPE_CHECKING:
    from permgate.core.endpoints import EndpointMap
    from permgate.core.model import Enforcement
    from permgate.store.base import Store

__all__ = ["DIFF_KEYS", "diff_body", "diff_json"]

DIFF_KEYS: Final = ("policy", "map", "prune")


def _invalid(detail: str) -> ApiError:
    return ApiError(422, "invalid", detail)


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise _invalid(f"body.{key}: empty; give YAML text or a JSON object")
        return value
    if isinstance(value, dict):
        return orjson.dumps(value).decode()  # YAML reads JSON as it is
    raise _invalid(f"body.{key}: expected YAML text (a string) or a JSON object")


def diff_body(raw: bytes) -> tuple[str | None, str | None, bool]:
    """The policy text, the map text and ``prune`` of a ``POST /v1/diff`` body."""
    if not raw.strip():
        raise _invalid("the request body is empty: expected a JSON document")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _invalid("body: expected an object with policy and/or map")
    unknown = sorted(k for k in body if k not in DIFF_KEYS)
    if unknown:
        raise _invalid(f"body: unknown field(s) {', '.join(map(repr, unknown))}")
    prune = body.get("prune", False)
    if not isinstance(prune, bool):
        raise _invalid("body.prune: expected true or false")
    policy, new_map = _text(body, "policy"), _text(body, "map")
    if policy is None and new_map is None:
        raise _invalid("body: give policy and/or map (the new side)")
    if prune and policy is None:
        raise _invalid("body.prune: applies to a policy; give policy too")
    return policy, new_map, prune


async def _account_world(store: Store, account: str) -> World:
    """The live store, the caller's account only."""
    tenants = {t.id: t for t in await store.list_tenants(account)}
    roles = {account: {r.name: r for r in await store.list_roles(account)}}
    principals = {p.id: p for p in await store.list_principals(account)}
    return World(tenants, roles, principals)


async def diff_json(
    store: Store,
    account: str,
    current_map: EndpointMap,
    raw: bytes,
    *,
    default_enforcement: Enforcement,
) -> bytes:
    """The JSON answer of ``POST /v1/diff`` for a caller of ``account``."""
    from permgate.manage.policy_file import PolicyError, parse_policy
    from permgate.maps.loader import parse_map

    policy_text, map_text, prune = diff_body(raw)
    try:
        new_map = current_map if map_text is None else parse_map(map_text, "body.map")
        policy = None if policy_text is None else parse_policy(policy_text, "body.policy")
    except (MapError, PolicyError) as exc:
        raise _invalid("; ".join(exc.errors)) from exc
    old_world = await _account_world(store, account)
    new_world = old_world
    if policy is not None:
        others = sorted({spec.id for spec in policy.accounts if spec.id != account})
        if others:
            raise _invalid(
                f"body.policy: names account(s) {', '.join(map(repr, others))}; "
                f"only the caller's account {account!r} can be compared"
            )
        try:
            await check_policy(store, policy, prune=prune)
        except PolicyError as exc:
            raise _invalid("; ".join(exc.errors)) from exc
        new_world = overlay_policy(
            old_world, policy, default_enforcement=default_enforcement, prune=prune
        )
    # Enumeration is CPU work: off the event loop the gateway's requests share.
    impact = await asyncio.to_thread(
        diff_access, Side(old_world, current_map), Side(new_world, new_map)
    )
    return impact_json(impact).encode()
