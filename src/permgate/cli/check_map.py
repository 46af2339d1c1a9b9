"""``permgate check-map FILE``: validate an endpoint map before it ships.

Every error is printed as ``FILE:LINE: message`` on stderr (exit 1), so an editor
or a CI log can jump to each one; a valid map prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import sys

from permgate.cli._common import add_common_arguments
from permgate.core.errors import MapError
from permgate.maps.loader import load_map


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """FILE plus the options every command accepts (--config/--store are unused here)."""
    parser.add_argument("file", metavar="FILE", help="the endpoint map to validate")
    add_common_arguments(parser, unused="check-map reads only FILE")


def run(args: argparse.Namespace) -> int:
    """Exit 0 with a summary line when the map is valid, 1 with every error otherwise."""
    try:
        endpoint_map = load_map(args.file)
    except MapError as exc:
        if args.json:
            print(json.dumps({"file": args.file, "valid": False, "errors": exc.errors}))
            return 1
        for error in exc.errors:
            print(error, file=sys.stderr)
        count = len(exc.errors)
        print(f"{args.file}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    endpoints, permissions = len(endpoint_map.endpoints), len(endpoint_map.permissions())
    if args.json:
        document = {
            "file": args.file,
            "valid": True,
            "endpoints": endpoints,
            "permissions": permissions,
            "sha256": endpoint_map.sha256,
        }
        print(json.dumps(document))
    else:
        print(f"{args.file}: {endpoints} endpoints, {permissions} permissions")
    return 0
