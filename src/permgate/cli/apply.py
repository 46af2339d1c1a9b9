"""``permgate apply FILE [--prune]``: make the store match a policy.yaml.

The file is validated whole (shape, grammar, every reference, every rule) before
anything is written; then every change is made in one transaction, so a refused
change leaves the store as it was. Prints one line per change (``+ tenant
acme-prod``, ``~ role sales-agent permissions``, ``- principal bob``) or
``no changes``; a second apply of the same file always prints ``no changes``.
Role grants that no endpoint of the configured map can use are warned about on
stderr (a typo such as ``claim.read`` for ``claims.read``); they do not stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING

from permgate.cli._common import add_common_arguments, settings_from_args

if TYPE_CHECKING:
    from permgate.manage.policy_file import Policy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """FILE, --prune, --dry-run and the common options."""
    parser.add_argument("file", metavar="FILE", help="the policy.yaml to apply")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="delete roles and principals of the file's accounts that the file does not name",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would change; write nothing"
    )
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Validate, plan, apply; exit 1 with every FILE:LINE error when the file is invalid."""
    from permgate.manage.policy_file import PolicyError, load_policy

    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    settings = settings_from_args(args)
    for warning in _grant_warnings(policy, settings.endpoint_map):
        print(warning, file=sys.stderr)
    try:
        changes = asyncio.run(_apply(policy, settings, prune=args.prune, dry_run=args.dry_run))
    except PolicyError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print("permgate apply: nothing was changed", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"changed": bool(changes) and not args.dry_run, "changes": changes}))
    elif not changes:
        print("no changes")
    else:
        for line in changes:
            print(line)
        if args.dry_run:
            print("(dry run: nothing was changed)")
    return 0


def _grant_warnings(policy: Policy, map_path: str) -> list[str]:
    """Warnings about grants the map at ``map_path`` never requires; one line if unreadable."""
    from permgate.core.errors import MapError
    from permgate.manage.policy_file import unused_grants
    from permgate.maps.loader import load_map

    try:
        endpoint_map = load_map(map_path)
    except MapError as exc:
        first = exc.errors[0] if exc.errors else map_path
        more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
        return [
            f"permgate apply: warning: role grants not checked against the endpoint map: "
            f"{first}{more}"
        ]
    return unused_grants(policy, endpoint_map)


async def _apply(policy: object, settings: object, *, prune: bool, dry_run: bool) -> list[str]:
    from permgate.manage.policy_file import Policy, apply_plan, plan_policy
    from permgate.manage.service import Actor, operator_service

    assert isinstance(policy, Policy)
    async with operator_service(settings) as service:  # type: ignore[arg-type]
        actions = await plan_policy(
            service.store,
            policy,
            prune=prune,
            default_enforcement=service.default_enforcement,
        )
        if dry_run:
            return [action.line for action in actions]
        return await apply_plan(service, Actor.cli(), actions)
