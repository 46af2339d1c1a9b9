"""Options every command takes and how they become :class:`Settings`.

``--config`` and ``--store`` are accepted before the command words (by the
top-level parser, see :func:`add_global_arguments`) and after them (by each
command's parser); when both are given, the later one, after the words, wins.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final, TextIO

from permgate.config import ENV_PREFIX, Settings, ignored_variables, load_settings
from permgate.core.errors import ConfigError

DEFAULT_CONFIG: Final = "permgate.yaml"
CONFIG_VARIABLE: Final = f"{ENV_PREFIX}CONFIG"
# Where the top-level parser keeps the options given before the command words, so
# that a command's own defaults (None) do not overwrite them.
_BEFORE: Final = {"config": "config_before_command", "store": "store_before_command"}
_CONFIG_HELP: Final = (
    f"permgate.yaml to read (default: ${CONFIG_VARIABLE}, else ./{DEFAULT_CONFIG} if present)"
)
_STORE_HELP: Final = "store DSN; overrides the config's store"


def add_global_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--store`` before the command words."""
    parser.add_argument("--config", metavar="FILE", dest=_BEFORE["config"], help=_CONFIG_HELP)
    parser.add_argument("--store", metavar="DSN", dest=_BEFORE["store"], help=_STORE_HELP)


def add_common_arguments(
    parser: argparse.ArgumentParser, *, json_output: bool = True, unused: str | None = None
) -> None:
    """``--config``, ``--store`` and (unless the command has no JSON form) ``--json``.

    Every command accepts ``--config`` and ``--store``; a command that reads
    neither passes ``unused`` (why), so that its ``--help`` does not promise otherwise.
    """
    config_help, store_help = _CONFIG_HELP, _STORE_HELP
    if unused is not None:
        config_help = store_help = f"accepted, but not used: {unused}"
    parser.add_argument("--config", metavar="FILE", help=config_help)
    parser.add_argument("--store", metavar="DSN", help=store_help)
    if json_output:
        parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def merge_global_arguments(args: argparse.Namespace) -> None:
    """Fill ``args.config``/``args.store`` from the options given before the command
    words, unless the command's own (later) option set them."""
    for name, before in _BEFORE.items():
        value = getattr(args, before, None)
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def config_path(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """``--config``, else ``$PERMGATE_CONFIG``, else ``./permgate.yaml`` when present."""
    if args.config is not None:
        return str(args.config)
    named = env.get(CONFIG_VARIABLE)
    if named:
        if not Path(named).is_file():
            raise ConfigError([f"{CONFIG_VARIABLE}: {named!r}: no such file"])
        return named
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Config file (see :func:`config_path`), env, then ``--store``."""
    overrides = {"store": args.store} if getattr(args, "store", None) else {}
    return load_settings(config_path(args, os.environ), overrides=overrides)


def warn_ignored_variables(env: Mapping[str, str], stream: TextIO | None = None) -> None:
    """One line on stderr naming every ``PERMGATE_*`` variable that names no key.

    They are not configuration: Kubernetes sets ``PERMGATE_PORT=tcp://...``,
    ``PERMGATE_SERVICE_HOST`` and the like in every pod of a namespace that has a
    Service named ``permgate``, and that must never stop the gateway.
    """
    ignored = ignored_variables(env)
    if ignored:
        print(
            f"permgate: warning: ignoring {len(ignored)} environment variable(s) that name no "
            f"configuration key: {', '.join(ignored)} (Kubernetes service links set such "
            "variables; enableServiceLinks: false turns them off)",
            file=sys.stderr if stream is None else stream,
        )
