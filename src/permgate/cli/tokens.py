"""``permgate tokens create|list|revoke``: auth tokens from the command line.

``create`` goes through the same rule as the admin API: a token never exceeds its
owner (every exceeding permission and tenant is named). The secret is printed once;
only its hash is stored. ``revoke`` also takes a whole secret (what a user who
finds a leaked token has in hand): it revokes by the id inside it and never prints
the secret back, not even in an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime
from typing import Any, Final

from permgate.cli._common import add_common_arguments, settings_from_args
from permgate.core.errors import InvalidInput
from permgate.core.token_secrets import TOKEN_ID_LENGTH, token_id_of

_TOKEN_ID: Final = re.compile(rf"[a-z0-9]{{{TOKEN_ID_LENGTH}}}")
# A longer argument that is not a secret of ours may still be someone's credential.
_LONGEST_SHOWN: Final = 2 * TOKEN_ID_LENGTH


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
        description="Revoke a token; revoking a revoked token again is not an error. "
        "Given a whole secret, revokes the token it belongs to (by the id inside it) "
        "without printing the secret.",
    )
    revoke.add_argument(
        "token_id",
        metavar="ID",
        help="the token id, or the whole secret (never printed); '-' reads it from stdin, "
        "which keeps a secret out of the shell history",
    )
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
    given = sys.stdin.readline().strip() if args.token_id == "-" else args.token_id
    token_id = _revocable_id(given, settings.auth.token_prefix)
    out = asyncio.run(_revoke(settings, token_id))
    if args.json:
        print(json.dumps(out))
    else:
        print(f"revoked {out['id']}")
    return 0


def _revocable_id(given: str, prefix: str) -> str:
    """The token id ``given`` is or carries; a secret is never repeated back.

    An argument that could be a credential without being a well-formed secret (a
    truncated one, another prefix, a pasted header or JWT) is refused without being
    shown; anything else is taken as an id, which "not found" may name.
    """
    if _TOKEN_ID.fullmatch(given):
        return given
    token_id = token_id_of(prefix, given)
    if token_id is None:
        if not _may_be_credential(given, prefix):
            return given
        raise InvalidInput(
            f"the argument ({len(given)} characters, not shown in case it is a credential) "
            f"is neither a token id ({TOKEN_ID_LENGTH} lower-case letters and digits) nor a "
            f"token secret starting with {prefix!r}"
        )
    print(f"that is a token secret: revoking token {token_id}, the id inside it", file=sys.stderr)
    return token_id


def _may_be_credential(given: str, prefix: str) -> bool:
    """Whether an argument might carry a secret: never an id, so never worth echoing."""
    return (
        prefix in given
        or "." in given
        or len(given) > _LONGEST_SHOWN
        or any(c.isspace() for c in given)
    )


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
    from permgate.manage.service import Actor, operator_service

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
    from permgate.core.errors import NotFound
    from permgate.manage.service import operator_service

    async with operator_service(settings) as service:
        if await service.store.get_principal(owner) is None:
            raise NotFound(f"principal {owner!r} not found")
        tokens = await service.store.list_tokens(owner=owner)
    return [_token_json(token) for token in tokens]


async def _revoke(settings: Any, token_id: str) -> dict[str, Any]:
    from permgate.manage.service import Actor, operator_service

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
