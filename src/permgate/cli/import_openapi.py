"""``permgate import-openapi SPEC [-o MAP] [--check MAP] [--tenant-param NAME ...]``.

Generates an endpoint map from an OpenAPI document, or, with ``--check``, lists
how an existing map has drifted from the spec (exit 1 when it has). Warnings (a
spec where no operation has a tenant parameter) go to stderr and do not change
the exit status.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from permgate.cli._common import add_common_arguments
from permgate.core.errors import MapError
from permgate.maps.loader import load_map
from permgate.maps.openapi_import import (
    TENANT_PARAM,
    SpecError,
    diff_map,
    generate_map,
    operations,
    read_spec,
)

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """SPEC, then either -o MAP or --check MAP, plus the common options (unused)."""
    parser.add_argument("spec", metavar="SPEC", help="OpenAPI 3 document (JSON or YAML)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-o", "--output", metavar="MAP", help="write the map here (default: stdout)")
    mode.add_argument(
        "--check",
        metavar="MAP",
        help="compare MAP with SPEC instead of generating; exit 1 on any difference",
    )
    parser.add_argument(
        "--tenant-param",
        metavar="NAME",
        action="append",
        dest="tenant_params",
        help=(
            "when generating, the path parameter that carries the tenant (default: "
            f"{TENANT_PARAM}); repeat it for a spec that uses several names: the first is "
            "the map's default, and a path with more than one takes the first given"
        ),
    )
    add_common_arguments(parser, json_output=False, unused="import-openapi reads only its files")


def _write_atomically(path: str, text: str) -> None:
    """Replace ``path`` in one step: a gateway watching the map never reads half a file."""
    target = Path(path)
    fd, temp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _check(spec_path: str, map_path: str) -> int:
    ops = operations(read_spec(spec_path), spec_path)
    endpoint_map = load_map(map_path)
    differences = diff_map(ops, endpoint_map)
    if not differences:
        print(f"{map_path}: in sync with {spec_path} ({len(ops)} operations)")
        return 0
    for line in differences:
        print(f"{map_path}: {line}")
    noun = "difference" if len(differences) == 1 else "differences"
    print(f"{map_path}: {len(differences)} {noun} from {spec_path}", file=sys.stderr)
    return 1


def _tenant_params(names: list[str] | None) -> tuple[str, ...] | None:
    """The ``--tenant-param`` names in order without repeats; None (after saying why) if bad."""
    if not names:
        return (TENANT_PARAM,)
    for name in names:
        if not _PARAM_NAME.fullmatch(name):
            print(
                f"--tenant-param {name!r}: not a path parameter name (letters, digits and "
                "'_', not starting with a digit, without braces)",
                file=sys.stderr,
            )
            return None
    return tuple(dict.fromkeys(names))


def run(args: argparse.Namespace) -> int:
    """Generate (exit 0), or check (0 in sync, 1 drifted); problems print and exit 1."""
    tenant_params = _tenant_params(args.tenant_params)
    if tenant_params is None:
        return 1
    try:
        if args.check:
            return _check(args.spec, args.check)
        generated = generate_map(args.spec, tenant_params)
        for warning in generated.warnings:
            print(f"{args.spec}: warning: {warning}", file=sys.stderr)
        text, count = generated.text, generated.count
        if args.output is None:
            sys.stdout.write(text)
        else:
            try:
                _write_atomically(args.output, text)
            except OSError as exc:
                print(
                    f"{args.output}: cannot write the map: {exc.strerror or exc}", file=sys.stderr
                )
                return 1
            print(f"{args.output}: wrote {count} endpoints from {args.spec}")
        return 0
    except (SpecError, MapError) as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
