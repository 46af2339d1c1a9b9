"""``permgate lint [POLICY] [--map MAP] [--json]``: roles that grant to no purpose.

Judges the roles POLICY defines (without POLICY: the roles of the live store that are
not built in) against MAP (default: the configured map). Rules: ``needs_partner``
(a grant that unlocks no endpoint on its own), ``unused_permission`` (a grant no
endpoint requires), ``identical_roles`` (a role granting the same as another role of
its account), ``wildcard`` (``*.*`` outside admin and full-access). Text output is one
``WHERE: RULE: message`` line per finding; ``--json`` prints
``{"findings": [{"rule", "role", "grant", "roles", "account", "where", "message"}]}``
(``grant`` is null for identical_roles, ``roles`` empty for the other rules). Exit 1
on findings, 0 without, 2 on bad input.
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
    from permgate.review.world import World


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """POLICY, --map and the common options."""
    parser.add_argument(
        "policy", metavar="POLICY", nargs="?", help="policy.yaml to check (default: the store)"
    )
    parser.add_argument("--map", metavar="MAP", help="endpoint map (default: the config's)")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Print every finding; 1 when there is any, 0 otherwise, 2 on bad input."""
    from permgate.core.errors import ConfigError, MapError, StoreUnavailable
    from permgate.manage.policy_file import PolicyError, load_policy
    from permgate.maps.loader import load_map
    from permgate.review.lint import lint_roles, roles_from_policy, roles_from_world

    try:
        if args.map is not None and args.policy is not None:
            endpoint_map = load_map(args.map)
            roles = roles_from_policy(load_policy(args.policy))
        else:  # the configured map, or the live store's roles, or both
            settings = settings_from_args(args)
            endpoint_map = load_map(args.map or settings.endpoint_map)
            if args.policy is not None:
                roles = roles_from_policy(load_policy(args.policy))
            else:
                roles = roles_from_world(asyncio.run(_store_world(settings.store)))
    except (MapError, PolicyError) as exc:
        return _fail(exc.errors)
    except ConfigError as exc:
        return _fail(exc.problems)
    except (StoreUnavailable, _NoStore) as exc:
        return _fail([str(exc)])
    findings = lint_roles(roles, endpoint_map)
    if args.json:
        print(json.dumps({"findings": [f.as_dict() for f in findings]}))
    else:
        for finding in findings:
            print(f"{finding.where}: {finding.rule}: {finding.message}")
        count = len(findings)
        print(f"{count} finding{'s' * (count != 1)} in {len(roles)} role(s)")
    return 1 if findings else 0


class _NoStore(Exception):
    """The configured SQLite store does not exist (lint never creates one)."""


def _fail(lines: list[str]) -> int:
    for line in lines:
        print(f"permgate lint: {line}", file=sys.stderr)
    return 2


async def _store_world(dsn: str) -> World:
    from permgate.review.world import world_from_store
    from permgate.store import open_store, sqlite_path

    path = sqlite_path(dsn)
    if path is not None and not Path(path).is_file():
        raise _NoStore(f"store {dsn!r}: no such file; give --store, --config or a POLICY file")
    store = await open_store(dsn)
    try:
        return await world_from_store(store)
    finally:
        await store.close()
