"""The ``permgate`` command line.

Each command lives in its own module ``permgate.cli.<module>`` exposing
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when
their command runs, so ``permgate check-map`` never pays for aiohttp or asyncpg.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Final

from permgate import __version__
from permgate.cli._common import (
    add_global_arguments,
    merge_global_arguments,
    warn_ignored_variables,
)
from permgate.core.errors import PermgateError

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
    "password": ("password", "set a principal's password (native login to the console)"),
    "explain": ("explain", "the decision the gateway would make, with reasons"),
    "diff": ("diff", "who gains and loses which endpoint on which tenant with a change"),
    "lint": ("lint", "roles that grant to no purpose, checked against the endpoint map"),
    "advise": ("advise", "grants never used, and the narrowest grants that cover real usage"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="permgate",
        description="Sidecar enforcement gateway: tenant scope, then every permission.",
        epilog="--config and --store are also accepted after the command words; "
        "given both before and after, the later one wins.",
        # No abbreviations: the command word is found before parsing, by skipping
        # these exact options and their values.
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"permgate {__version__}")
    add_global_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _command_word(argv)
    for word, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(word, help=help_text, description=help_text)
        if word == chosen:
            module = importlib.import_module(f"permgate.cli.{module_name}")
            module.add_arguments(command)
            command.set_defaults(_module=module)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The first word that is neither an option nor the value of ``--config``/``--store``."""
    words = iter(argv)
    for word in words:
        if word in ("--config", "--store"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    from permgate.cli.serve import WORKER_ENV

    if WORKER_ENV not in os.environ:  # a worker of `serve --workers N` is not a command
        warn_ignored_variables(os.environ)
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
    if not hasattr(args, "_module"):  # the word found before parsing was not the command
        parser.error("put the command words before the command's options")
    merge_global_arguments(args)
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
