"""``permgate diff``: who gains and loses which endpoint on which tenant, before it ships.

    permgate diff --map OLD_MAP --to-map NEW_MAP
    permgate diff --policy OLD_POLICY --to-policy NEW_POLICY
    permgate diff --to-policy NEW_POLICY            # the live store is the old side

A map not given is the configured one (``endpoint_map`` of permgate.yaml). Without
``--policy`` the old side is the live store and the new side is the store as
``permgate apply NEW_POLICY`` would leave it (with ``--prune``: as ``apply --prune``
would); with ``--policy`` each side is its file alone (every account it names also
holds the built-in roles), and without ``--to-policy`` the policy does not change.
Every policy is first checked as ``apply`` would check it. Exit 0 when no decision
changes, 1 when access changes, 2 on bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from permgate.cli._common import add_common_arguments, settings_from_args

if TYPE_CHECKING:
    from permgate.config import Settings
    from permgate.manage.policy_file import Policy
    from permgate.review.diff import Side
    from permgate.review.world import World


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The two maps, the two policies, the output format and the common options."""
    parser.add_argument("--map", metavar="OLD_MAP", help="old endpoint map (default: the config's)")
    parser.add_argument(
        "--to-map", metavar="NEW_MAP", help="new endpoint map (default: the config's)"
    )
    parser.add_argument(
        "--policy", metavar="OLD_POLICY", help="old policy.yaml (default: the live store)"
    )
    parser.add_argument(
        "--to-policy",
        metavar="NEW_POLICY",
        help="new policy.yaml (default: the old side's policy, unchanged)",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="with the live store as the old side: the new side is the store as "
        "'permgate apply NEW_POLICY --prune' would leave it",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    output.add_argument(
        "--markdown", action="store_true", help="print a markdown table for a pull-request comment"
    )
    parser.add_argument(
        "--max-rows",
        type=int,
        default=500,
        metavar="N",
        help="markdown only: at most N table rows (default 500; text and JSON list everything)",
    )
    add_common_arguments(parser, json_output=False)


class _BadInput(Exception):
    """Input the diff cannot use; ``lines`` are printed as they are."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def run(args: argparse.Namespace) -> int:
    """Print the impact; 0 without changes, 1 with, 2 on bad input."""
    from permgate.core.errors import ConfigError, MapError, StoreUnavailable
    from permgate.manage.policy_file import PolicyError
    from permgate.review.diff import diff_access
    from permgate.review.render import impact_json, impact_markdown, impact_text

    if args.max_rows < 1:
        return _fail([f"--max-rows {args.max_rows}: must be at least 1"])
    if args.prune and (args.to_policy is None or args.policy is not None):
        return _fail(
            ["--prune applies to --to-policy with the live store as the old side (no --policy)"]
        )
    try:
        old, new = asyncio.run(_sides(args))
    except (MapError, PolicyError) as exc:
        return _fail(exc.errors)
    except ConfigError as exc:
        return _fail(exc.problems)
    except StoreUnavailable as exc:
        return _fail([str(exc)])
    except _BadInput as exc:
        return _fail(exc.lines)
    impact = diff_access(old, new)
    if args.json:
        print(impact_json(impact))
    elif args.markdown:
        print(impact_markdown(impact, max_rows=args.max_rows), end="")
    else:
        print(impact_text(impact))
    return 1 if impact else 0


def _fail(lines: list[str]) -> int:
    for line in lines:
        print(f"permgate diff: {line}", file=sys.stderr)
    return 2


async def _sides(args: argparse.Namespace) -> tuple[Side, Side]:
    """Load both maps and both worlds (the store only when it is a side)."""
    from permgate.manage.policy_file import load_policy
    from permgate.maps.loader import load_map
    from permgate.review.diff import Side

    needs_settings = args.map is None or args.to_map is None or args.policy is None
    settings = settings_from_args(args) if needs_settings else None
    old_map = load_map(args.map or _configured(settings).endpoint_map)
    new_map = load_map(args.to_map or _configured(settings).endpoint_map)
    old_policy = load_policy(args.policy) if args.policy else None
    new_policy = load_policy(args.to_policy) if args.to_policy else None
    if old_policy is not None:
        old_world = await _world_of_file(old_policy)
        new_world = old_world if new_policy is None else await _world_of_file(new_policy)
    else:
        old_world, new_world = await _live_worlds(_configured(settings), new_policy, args.prune)
    return Side(old_world, old_map), Side(new_world, new_map)


def _configured(settings: Settings | None) -> Settings:
    assert settings is not None  # loaded whenever a side comes from the configuration
    return settings


async def _world_of_file(policy: Policy) -> World:
    """The policy on its own, checked against an empty temporary store as apply would."""
    from permgate.review.world import EMPTY_WORLD, check_policy, overlay_policy
    from permgate.store import open_store

    with tempfile.TemporaryDirectory(prefix="permgate-diff-") as tmp:
        store = await open_store(f"sqlite://{Path(tmp) / 'empty.db'}")
        try:
            await check_policy(store, policy)
        finally:
            await store.close()
    return overlay_policy(EMPTY_WORLD, policy)


async def _live_worlds(
    settings: Settings, new_policy: Policy | None, prune: bool
) -> tuple[World, World]:
    """The live store, and the store with ``new_policy`` applied (or unchanged)."""
    from permgate.review.world import check_policy, overlay_policy, world_from_store
    from permgate.store import open_store, sqlite_path

    path = sqlite_path(settings.store)
    if path is not None and not Path(path).is_file():
        # Opening would create an empty store: a diff only reads.
        raise _BadInput(
            [
                f"store {settings.store!r}: no such file; give --store, --config, "
                "or --policy OLD_POLICY to compare policy files"
            ]
        )
    store = await open_store(settings.store)
    try:
        old_world = await world_from_store(store)
        if new_policy is None:
            return old_world, old_world
        await check_policy(store, new_policy, prune=prune)
    finally:
        await store.close()
    new_world = overlay_policy(
        old_world, new_policy, default_enforcement=settings.default_enforcement, prune=prune
    )
    return old_world, new_world
