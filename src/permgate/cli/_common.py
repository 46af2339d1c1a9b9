"""Options every command takes (DESIGN §7) and how they become :class:`Settings`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

from permgate.config import Settings, load_settings

DEFAULT_CONFIG: Final = "permgate.yaml"


def add_common_arguments(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    """``--config``, ``--store`` and (unless the command has no JSON form) ``--json``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"permgate.yaml to read (default: ./{DEFAULT_CONFIG} if present)",
    )
    parser.add_argument("--store", metavar="DSN", help="store DSN; overrides the config's store")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Config file (explicit, or ./permgate.yaml when present), env, then ``--store``."""
    path = args.config
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    overrides = {"store": args.store} if getattr(args, "store", None) else {}
    return load_settings(path, overrides=overrides)
