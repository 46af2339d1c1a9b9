"""``permgate advise --principal ID | --token ID [--days 90] [--json]``: least privilege
from real usage.

Reads what the gateways recorded (which permissions the subject exercised on which
tenant) for the last ``--days`` days and prints the grants never used in that window,
the exact permissions that would have allowed everything it did, and the tenants it
did it on; for a token, the ``permgate tokens create`` line of a narrower token to
replace it. ``--json`` prints ``{"subject", "kind", "days", "used": [{"permission",
"tenant", "count", "last_used"}], "unused_grants", "suggested_grants",
"suggested_tenants"}``. Exit 0 whenever it answers (with or without findings), 2 on
bad input or an unknown subject.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from permgate.cli._common import add_common_arguments, settings_from_args

if TYPE_CHECKING:
    from permgate.review.advise import Advice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subject, the window and the common options."""
    subject = parser.add_mutually_exclusive_group(required=True)
    subject.add_argument("--principal", metavar="ID", help="a principal (its tokens' uses count)")
    subject.add_argument("--token", metavar="ID", help="an auth token's id (not its secret)")
    parser.add_argument(
        "--days",
        default="90",
        metavar="N",
        help="the window: uses in the last N days (default 90)",
    )
    add_common_arguments(parser)


class _BadInput(Exception):
    """Input advise cannot use; the message is printed as it is."""


def run(args: argparse.Namespace) -> int:
    """Print the advice; 0 whenever it answers, 2 on bad input or an unknown subject."""
    from permgate.core.errors import ConfigError, StoreUnavailable
    from permgate.review.advise import MAX_DAYS, UnknownSubject, advice_text

    text = str(args.days).strip()
    days = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= days <= MAX_DAYS:
        return _fail([f"--days {args.days}: must be a whole number of days from 1 to {MAX_DAYS}"])
    try:
        settings = settings_from_args(args)
        advice = asyncio.run(_advise(settings.store, args.principal, args.token, days))
    except ConfigError as exc:
        return _fail(exc.problems)
    except (StoreUnavailable, UnknownSubject, _BadInput) as exc:
        return _fail([str(exc)])
    if args.json:
        print(json.dumps(advice.as_dict()))
    else:
        print(advice_text(advice))
    return 0


def _fail(lines: list[str]) -> int:
    for line in lines:
        print(f"permgate advise: {line}", file=sys.stderr)
    return 2


async def _advise(
    dsn: str,
    principal: str | None,
    token: str | None,
    days: int,
) -> Advice:
    from permgate.review.advise import advise
    from permgate.store import open_store, sqlite_path

    path = sqlite_path(dsn)
    if path is not None and not Path(path).is_file():
        # Opening would create an empty store: advise only reads.
        raise _BadInput(f"store {dsn!r}: no such file; give --store or --config")
    store = await open_store(dsn)
    try:
        return await advise(store, principal=principal, token=token, days=days)
    finally:
        await store.close()
