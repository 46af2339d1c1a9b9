"""``permgate explain (--token CREDENTIAL | --principal ID) METHOD TARGET``: the
decision the gateway would make, with its reasons, from the configured map and store.

It runs the gateway's own evaluation (:mod:`permgate.gateway.evaluate`) with the
authenticator the gateway builds from the same settings (auth tokens, and JWTs with
the configured keys or JWKS): request hygiene, route, public, authenticate, tenant,
permissions. ``--token`` takes any bearer credential the gateway accepts (an auth
token or a JWT); ``--principal`` asks for a principal with a fresh credential. The
tenant comes from where the endpoint says: a path parameter, or (for header or claim
endpoints) ``--tenant-header VALUE``. A hygiene refusal or an authentication failure
is a ``deny`` with the gateway's reason. The exit code is 0 for every decision; read
``decision`` for the outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING, Any

from permgate.cli._common import add_common_arguments, settings_from_args

if TYPE_CHECKING:
    from permgate.config import Settings
    from permgate.core.endpoints import EndpointMap


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Who (--token or --principal), METHOD, TARGET, --tenant-header, --map."""
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--token",
        metavar="CREDENTIAL",
        help="a bearer credential the gateway accepts: an auth token secret or a JWT",
    )
    who.add_argument("--principal", metavar="ID", help="a principal id (as a JWT would name)")
    parser.add_argument(
        "method",
        metavar="METHOD",
        help="the HTTP method, case-sensitive as the gateway matches it (GET, POST...)",
    )
    parser.add_argument(
        "path", metavar="TARGET", help="the request target as a client sends it (path, ?query)"
    )
    parser.add_argument(
        "--tenant-header",
        metavar="VALUE",
        help="the tenant for endpoints that read it from a header or a JWT claim",
    )
    parser.add_argument("--map", metavar="FILE", help="endpoint map (default: the config's)")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Print the decision (text, or one JSON document with --json)."""
    from permgate.maps.loader import load_map

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


async def _explain(
    settings: Settings, endpoint_map: EndpointMap, args: argparse.Namespace
) -> dict[str, Any]:
    from permgate.gateway.authn import Authenticator
    from permgate.gateway.evaluate import (
        Evaluator,
        explanation,
        map_tenant_headers,
        tenant_claims,
        what_if,
    )
    from permgate.gateway.jwks import JwtVerifier
    from permgate.gateway.modelcache import ModelCache
    from permgate.store import open_store

    value = args.tenant_header
    # The tenant value under every header the map reads a tenant from (one each).
    headers = [(name, value) for name in sorted(map_tenant_headers(endpoint_map))] if value else []
    request = what_if(
        args.method,  # case-sensitive, as the gateway matches it
        args.path,
        headers,
        credential=args.token,
        principal=args.principal,
        claims=tenant_claims(endpoint_map, value) if args.principal is not None else None,
    )
    store = await open_store(settings.store)
    verifier: JwtVerifier | None = None
    try:
        if settings.auth.jwt is not None:  # the gateway's JWT checks, JWKS included
            verifier = JwtVerifier(settings.auth.jwt)
            await verifier.start()
        model = ModelCache(store, max_entries=settings.cache.max_entries)
        authenticator = Authenticator(model, token_prefix=settings.auth.token_prefix, jwt=verifier)
        evaluation = await Evaluator(endpoint_map, model, authenticator).evaluate(request)
    finally:
        if verifier is not None:
            await verifier.close()
        await store.close()
    return explanation(evaluation, request.method)
