"""``permgate explain (--token SECRET | --principal ID) METHOD PATH``: the decision
the gateway would make, with its reasons, from the configured map and store.

The tenant comes from where the endpoint says: a path parameter, or (for header or
claim endpoints) ``--tenant-header VALUE``. A token is checked as the gateway would
check it (known, secret matches, not revoked or expired, owner enabled); when it
fails, the answer is a deny with the authentication reason. The exit code is 0
whenever a decision was made; read ``decision`` for the outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from permgate.cli._common import add_common_arguments, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Who (--token or --principal), METHOD, PATH, --tenant-header, --map."""
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--token", metavar="SECRET", help="an auth token secret")
    who.add_argument("--principal", metavar="ID", help="a principal id (as a JWT would name)")
    parser.add_argument(
        "method",
        metavar="METHOD",
        help="the HTTP method, case-sensitive as the gateway matches it (GET, POST...)",
    )
    parser.add_argument("path", metavar="PATH", help="the request path, without the query")
    parser.add_argument(
        "--tenant-header",
        metavar="VALUE",
        help="the tenant for endpoints that read it from a header or a JWT claim",
    )
    parser.add_argument("--map", metavar="FILE", help="endpoint map (default: the config's)")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Print the decision (text, or one JSON document with --json)."""
    from permgate.endpoints import load_map

    settings = settings_from_args(args)
    endpoint_map = load_map(args.map or settings.endpoint_map)
    result = asyncio.run(_explain(settings, endpoint_map, args))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['decision']}: {result['reason']}")
    for key in ("endpoint", "principal", "token_id", "tenant", "enforcement"):
        if result.get(key):
            print(f"  {key}: {result[key]}")
    print(f"  required: {' '.join(result['required']) or '-'}")
    if result["any_of"]:
        print(f"  any of: {' '.join(result['any_of'])}")
    if result["missing_permissions"]:
        print(f"  missing: {' '.join(result['missing_permissions'])}")
    if result["detail"]:
        print(f"  detail: {result['detail']}")
    return 0


def _auth_failure(reason: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "decision": "deny",
        "reason": reason,
        "endpoint": None,
        "tenant": None,
        "required": [],
        "any_of": [],
        "missing_permissions": [],
        "detail": detail,
        **extra,
    }


async def _explain(settings: Any, endpoint_map: Any, args: argparse.Namespace) -> dict[str, Any]:
    from permgate.decision import Subject, decide, resolve_tenant_id
    from permgate.store import open_store
    from permgate.token_secrets import secret_matches, token_id_of

    method = args.method  # case-sensitive, as the gateway matches it
    match = endpoint_map.match(method, args.path)
    store = await open_store(settings.store)
    try:
        token = None
        principal_id = args.principal
        if args.token is not None:
            token_id = token_id_of(settings.auth.token_prefix, args.token)
            token = await store.get_token(token_id) if token_id else None
            if token is None or not secret_matches(args.token, token.secret_hash):
                return _auth_failure("invalid_token", "no token has this secret")
            if token.revoked_at is not None:
                return _auth_failure("revoked_token", f"token {token.id} is revoked")
            if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
                return _auth_failure("expired_token", f"token {token.id} has expired")
            principal_id = token.owner
        principal = await store.get_principal(principal_id)
        if principal is None:
            return _auth_failure("unknown_principal", f"no principal {principal_id!r}")
        if principal.disabled:
            return _auth_failure("disabled_principal", f"principal {principal.id} is disabled")
        subject = Subject(principal, await store.get_roles(principal.account), token)
        tenant_id = None
        tenant = None
        if match is not None:
            source = match.endpoint.tenant
            headers = {}
            claims: dict[str, object] = {}
            if args.tenant_header is not None and source.name is not None:
                headers[source.name] = args.tenant_header
                claims[source.name] = args.tenant_header
            tenant_id = resolve_tenant_id(match.endpoint, match.params, headers, claims)
            tenant = await store.get_tenant(tenant_id) if tenant_id else None
        decision = decide(endpoint_map, match, subject, tenant, tenant_id)
    finally:
        await store.close()
    return {
        "decision": "allow" if decision.allowed else "deny",
        "reason": str(decision.reason),
        "endpoint": decision.endpoint_id,
        "tenant": decision.tenant,
        "required": list(decision.required),
        "any_of": list(decision.any_of),
        "missing_permissions": list(decision.missing),
        "detail": str(decision.detail),
        "principal": principal.id,
        "token_id": token.id if token is not None else None,
        "enforcement": tenant.enforcement if tenant is not None else None,
    }
