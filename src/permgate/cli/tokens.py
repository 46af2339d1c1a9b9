"""``permgate tokens create|list|revoke``: auth tokens from the command line.

``create`` goes through the same rule as the admin API: a token never exceeds its
owner (every exceeding permission and tenant is named). The secret is printed once;
only its hash is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from permgate.cli._common import add_common_arguments, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The create, list and revoke subcommands, each with the common options."""
    sub = parser.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    create = sub.add_parser(
        "create",
        help="create a token and print its secret once",
        description="Create an auth token and print its secret once. The token never "
        "exceeds its owner: a permission or tenant the owner does not hold is refused.",
    )
    create.add_argument("--owner", required=True, metavar="ID", help="the owning principal")
    create.add_argument("--name", required=True, help="what the token is for")
    create.add_argument(
        "--permission",
        action="append",
        required=True,
        metavar="P",
        help="a grant (group.action, group.*, *.*); repeatable",
    )
    create.add_argument(
        "--tenant",
        action="append",
        default=[],
        metavar="T",
        help="a tenant id, any or type:test; repeatable (without it the token reaches only "
        "endpoints that have no tenant)",
    )
    create.add_argument(
        "--expires-in", type=int, metavar="SECONDS", help="lifetime in seconds (default: no expiry)"
    )
    add_common_arguments(create)
    listing = sub.add_parser(
        "list",
        help="list a principal's tokens",
        description="List a principal's tokens, revoked and expired ones included "
        "(never their secrets).",
    )
    listing.add_argument("--owner", required=True, metavar="ID", help="the owning principal")
    add_common_arguments(listing)
    revoke = sub.add_parser(
        "revoke",
        help="revoke a token",
        description="Revoke a token; revoking a revoked token again is not an error.",
    )
    revoke.add_argument("token_id", metavar="ID", help="the token id (not its secret)")
    add_common_arguments(revoke)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the subcommand."""
    settings = settings_from_args(args)
    command = args.tokens_command
    if command == "create":
        out = asyncio.run(_create(settings, args))
        if args.json:
            print(json.dumps(out))
        else:
            print(f"token id:    {out['id']}")
            print(f"secret:      {out['secret']}  (shown once)")
            print(f"permissions: {' '.join(out['permissions'])}")
            print(f"tenants:     {' '.join(out['tenants']) or '-'}")
            print(f"expires at:  {out['expires_at'] or 'never'}")
        return 0
    if command == "list":
        rows = asyncio.run(_list(settings, args.owner))
        if args.json:
            print(json.dumps(rows))
        elif not rows:
            print(f"{args.owner} has no tokens")
        else:
            for row in rows:
                state = _state(row)
                print(
                    f"{row['id']}  {state:7}  {row['name']}  "
                    f"permissions={','.join(row['permissions'])}  "
                    f"tenants={','.join(row['tenants']) or '-'}  "
                    f"expires={row['expires_at'] or 'never'}  "
                    f"last_used={row['last_used_at'] or 'never'}"
                )
        return 0
    out = asyncio.run(_revoke(settings, args.token_id))
    if args.json:
        print(json.dumps(out))
    else:
        print(f"revoked {out['id']}")
    return 0


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _token_json(token: Any) -> dict[str, Any]:
    return {
        "id": token.id,
        "owner": token.owner,
        "name": token.name,
        "permissions": list(token.permissions),
        "tenants": list(token.tenants),
        "created_at": _iso(token.created_at),
        "expires_at": _iso(token.expires_at),
        "last_used_at": _iso(token.last_used_at),
        "revoked_at": _iso(token.revoked_at),
    }


async def _create(settings: Any, args: argparse.Namespace) -> dict[str, Any]:
    from permgate.service import Actor, operator_service

    async with operator_service(settings) as service:
        token, secret = await service.create_token(
            Actor.cli(), args.owner, args.name, args.permission, args.tenant, args.expires_in
        )
    return {
        "id": token.id,
        "secret": secret,
        "permissions": list(token.permissions),
        "tenants": list(token.tenants),
        "expires_at": _iso(token.expires_at),
    }


async def _list(settings: Any, owner: str) -> list[dict[str, Any]]:
    from permgate.errors import NotFound
    from permgate.service import operator_service

    async with operator_service(settings) as service:
        if await service.store.get_principal(owner) is None:
            raise NotFound(f"principal {owner!r} not found")
        tokens = await service.store.list_tokens(owner=owner)
    return [_token_json(token) for token in tokens]


async def _revoke(settings: Any, token_id: str) -> dict[str, Any]:
    from permgate.service import Actor, operator_service

    async with operator_service(settings) as service:
        token = await service.revoke_token(Actor.cli(), token_id)
    return _token_json(token)


def _state(row: dict[str, Any]) -> str:
    """revoked, expired or active, as the gateway would treat the token now."""
    if row["revoked_at"]:
        return "revoked"
    expires_at = row["expires_at"]
    if expires_at and datetime.fromisoformat(expires_at) <= datetime.now(UTC):
        return "expired"
    return "active"
