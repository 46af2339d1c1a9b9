"""``permgate password set PRINCIPAL``: set a principal's password as the local operator.

The way the first admin made by ``permgate bootstrap`` gets a password to sign in to
the console with. The password is read from standard input (one line), or asked
twice without echo on a terminal; never from an argument, where ``ps`` and the shell
history would show it. The account's password policy applies as everywhere (a refusal
names every rule the password breaks, one line, exit 2); setting it ends the
principal's console sessions and older JWTs. Audited with actor ``cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from typing import Any, TextIO

from permgate.cli._common import add_common_arguments, settings_from_args
from permgate.core.errors import InvalidInput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``set`` action, its PRINCIPAL and the common options."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    setter = actions.add_parser(
        "set",
        help="set a principal's password (read from stdin; asked twice on a terminal)",
        description="Set a principal's password, read from standard input (one line) or, "
        "on a terminal, asked twice without echo. The account's password policy applies.",
    )
    setter.add_argument("principal", metavar="PRINCIPAL", help="the principal's id")
    add_common_arguments(setter)


def run(args: argparse.Namespace) -> int:
    """Read the password, set it; a refusal is one line on stderr and exit 2."""
    password = read_password(sys.stdin)
    settings = settings_from_args(args)
    result = asyncio.run(_set(settings, args.principal, password))
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"password set for {result['principal']} (account {result['account']}); "
            "its console sessions and older JWTs were ended"
        )
    return 0


def read_password(stream: TextIO) -> str:
    """One line from ``stream`` without its line ending, or asked twice on a terminal."""
    if stream.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Repeat it: ") != first:
            raise InvalidInput("the two passwords typed differ; nothing was changed")
        password = first
    else:
        password = stream.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise InvalidInput(
            "no password given: write it on standard input (one line), e.g. from a "
            "secrets file, or run the command on a terminal to be asked for it"
        )
    return password


async def _set(settings: Any, principal_id: str, password: str) -> dict[str, Any]:
    from permgate.core.errors import NotFound
    from permgate.manage.service import Actor, operator_service

    async with operator_service(settings) as service:
        await service.set_password(Actor.cli(), principal_id, password)
        principal = await service.store.get_principal(principal_id)
    if principal is None:  # deleted meanwhile
        raise NotFound(f"principal {principal_id!r} not found")
    valid_after = principal.sessions_valid_after
    return {
        "principal": principal.id,
        "account": principal.account,
        "sessions_valid_after": None if valid_after is None else valid_after.isoformat(),
    }
