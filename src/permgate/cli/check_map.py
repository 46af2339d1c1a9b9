"""``permgate check-map FILE``: validate an endpoint map before it ships (DESIGN §7).

Every error is printed as ``FILE:LINE: message`` on stderr (exit 1), so an editor
or a CI log can jump to each one; a valid map prints one summary line.
"""

from __future__ import annotations

import argparse
import sys

from permgate.endpoints import load_map
from permgate.errors import MapError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """FILE plus the options every command accepts (unused here: no store is opened)."""
    parser.add_argument("file", metavar="FILE", help="the endpoint map to validate")
    parser.add_argument("--config", metavar="FILE", help="permgate.yaml (not used by check-map)")
    parser.add_argument("--store", metavar="DSN", help="store DSN (not used by check-map)")


def run(args: argparse.Namespace) -> int:
    """Exit 0 with a summary line when the map is valid, 1 with every error otherwise."""
    try:
        endpoint_map = load_map(args.file)
    except MapError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        count = len(exc.errors)
        print(f"{args.file}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    print(
        f"{args.file}: {len(endpoint_map.endpoints)} endpoints, "
        f"{len(endpoint_map.permissions())} permissions"
    )
    return 0
