"""The ``permgate`` command line.

Each command lives in its own module ``permgate.cli.<module>`` exposing
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when
their command runs, so ``permgate check-map`` never pays for aiohttp or asyncpg.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Final

from permgate import __version__
from permgate.errors import PermgateError

# command words -> (module, one-line help)
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "serve": ("serve", "run the gateway and the admin listener"),
    "demo": ("demo", "a sample insurance upstream + the gateway on seeded embedded data"),
    "check-map": ("check_map", "validate an endpoint map"),
    "import-openapi": ("import_openapi", "generate or check an endpoint map from OpenAPI"),
    "test": ("test_suite", "run a suite of expected decisions against a map and a policy"),
    "apply": ("apply", "apply a declarative policy.yaml to the store"),
    "bootstrap": ("bootstrap", "create an account's first admin and print its token"),
    "tokens": ("tokens", "create, list and revoke auth tokens"),
    "explain": ("explain", "the decision the gateway would make, with reasons"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="permgate",
        description="Sidecar enforcement gateway: tenant scope, then every permission.",
    )
    parser.add_argument("--version", action="version", version=f"permgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv else None
    for word, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(word, help=help_text, description=help_text)
        if word == chosen:
            module = importlib.import_module(f"permgate.cli.{module_name}")
            module.add_arguments(command)
            command.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(arguments).parse_args(arguments)
    try:
        code: int = args._module.run(args)
    except PermgateError as exc:
        print(f"permgate {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
