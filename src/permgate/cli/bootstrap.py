"""``permgate bootstrap --account ID [--principal ID]``: the break-glass way in.

For whoever can reach the store directly: creates the account if it is
missing (with its special and base roles), creates the principal (default
``admin``) if it is missing, makes sure it holds ``admin`` account-wide, and prints
a new auth token carrying the admin's full power (``*.*``, tenants ``any``). The
secret is printed once. Every change is audited with actor ``cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from permgate.cli._common import add_common_arguments, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--account, --principal, --expires-in and the common options."""
    parser.add_argument("--account", required=True, metavar="ID", help="the business account")
    parser.add_argument(
        "--principal", default="admin", metavar="ID", help="the admin principal (default: admin)"
    )
    parser.add_argument(
        "--expires-in",
        type=int,
        metavar="SECONDS",
        help="token lifetime in seconds (default: no expiry)",
    )
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Create what is missing, print the token; --json prints principal, token_id, secret."""
    settings = settings_from_args(args)
    result = asyncio.run(_bootstrap(settings, args.account, args.principal, args.expires_in))
    notes = result.pop("notes")
    if args.json:
        print(json.dumps(result))
    else:
        for note in notes:
            print(note, file=sys.stderr)
        print(f"principal: {result['principal']} (account {args.account})")
        print(f"token id:  {result['token_id']}")
        print(f"secret:    {result['secret']}")
        print("The secret is shown once; store it now.", file=sys.stderr)
    return 0


async def _bootstrap(
    settings: Any, account: str, principal_id: str, expires_in: int | None
) -> dict[str, Any]:
    from permgate.core.errors import Conflict
    from permgate.core.model import SCOPE_ANY
    from permgate.core.roles import ADMIN
    from permgate.manage.service import Actor, operator_service

    actor = Actor.cli()
    notes: list[str] = []
    async with operator_service(settings) as service, service.transaction():
        if await service.ensure_account(actor, account):
            notes.append(f"created account {account}")
        principal = await service.store.get_principal(principal_id)
        if principal is not None and principal.account != account:
            raise Conflict(f"principal id {principal_id!r} already belongs to another account")
        if principal is None:
            await service.create_principal(
                actor, account, principal_id, tenants=[SCOPE_ANY], roles=[(ADMIN, None)]
            )
            notes.append(f"created principal {principal_id} with the admin role")
        else:
            held = [(a.role, a.tenant) for a in principal.roles]
            if (ADMIN, None) not in held:
                await service.set_principal_roles(actor, principal_id, [*held, (ADMIN, None)])
                notes.append(f"gave {principal_id} the admin role")
            if principal.disabled:
                await service.update_principal(actor, principal_id, disabled=False)
                notes.append(f"re-enabled {principal_id}")
        token, secret = await service.create_token(
            actor, principal_id, "bootstrap", ["*.*"], [SCOPE_ANY], expires_in
        )
    return {"principal": principal_id, "token_id": token.id, "secret": secret, "notes": notes}
