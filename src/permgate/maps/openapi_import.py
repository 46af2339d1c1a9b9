"""Generate an endpoint map from an OpenAPI 3 document, or check a map against one.

Why: the shipped ``endpoint_map.yaml`` must be reproducible from the
platform's published spec, and a platform team must be able to see what drifted
when their API grows. Operations carry either ``x-securityGroup`` plus
``x-securityPermission`` (several actions mean *any one of them*, so ``any_of``;
``public.public`` means no authentication) or a plain ``x-permissions`` list (all
required). The output is written by hand, not by ``yaml.dump``, so that it stays
stable and readable in review diffs.

The tenant comes from a path parameter: ``{tenantLocator}`` unless the caller names
others (``tenant_params``, tried in order). An entry whose path has none of them
gets ``tenant: none``; a spec where no operation has one almost always means the
wrong name was given, so :func:`tenant_warning` says so rather than letting every
entry silently lose its tenant check.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import yaml

from permgate.core.endpoints import EndpointMap
from permgate.core.errors import InvalidPermission, PermgateError
from permgate.core.permissions import parse_permission
from permgate.maps.loader import parse_map

__all__ = [
    "HTTP_METHODS",
    "TENANT_PARAM",
    "GeneratedMap",
    "Operation",
    "SpecError",
    "diff_map",
    "generate",
    "generate_map",
    "operations",
    "read_spec",
    "render_map",
    "tenant_warning",
]

HTTP_METHODS: Final = ("get", "put", "post", "delete", "patch", "head", "options")
TENANT_PARAM: Final = "tenantLocator"
DEFAULT_TENANT_PARAMS: Final = (TENANT_PARAM,)
READ_ACTIONS: Final = ("read", "list", "fetch", "schedule-read")
_PUBLIC: Final = "public.public"
_PLAIN = re.compile(r"[A-Za-z0-9_/{}][A-Za-z0-9_./{}:-]*")


class SpecError(PermgateError):
    """The OpenAPI document cannot be turned into a map; ``errors`` lists every problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True, slots=True)
class Operation:
    """One OpenAPI operation reduced to what the map needs."""

    id: str
    method: str  # upper-case
    path: str
    permissions: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    public: bool = False

    def tenant_param(self, names: tuple[str, ...]) -> str | None:
        """The first of ``names`` that is a parameter of this path, or None."""
        segments = self.path.split("/")
        return next((name for name in names if f"{{{name}}}" in segments), None)


def read_spec(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """Read an OpenAPI document (JSON, or YAML when it does not parse as JSON)."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{source}: cannot read the OpenAPI document: {exc}"]) from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError([f"{source}: neither JSON nor YAML: {exc}"]) from exc
    if not isinstance(document, Mapping) or not isinstance(document.get("paths"), Mapping):
        raise SpecError([f"{source}: not an OpenAPI document (no 'paths' mapping)"])
    return document


def _walk(spec: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(path, method, operation) in document order."""
    for path, item in spec["paths"].items():
        if not isinstance(item, Mapping):
            continue
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield str(path), method, operation


def _permissions(where: str, values: object, errors: list[str]) -> tuple[str, ...] | None:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        errors.append(f"{where}: expected a list of strings, got {values!r}")
        return None
    for value in values:
        try:
            parse_permission(value)
        except InvalidPermission as exc:
            errors.append(f"{where}: {exc}")
            return None
    return tuple(values)


def _operation(
    source: str, path: str, method: str, raw: Any, errors: list[str]
) -> Operation | None:
    where = f"{source}: {method.upper()} {path}"
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: the operation is not a mapping")
        return None
    op_id = raw.get("operationId")
    if not isinstance(op_id, str) or not op_id:
        errors.append(f"{where}: operationId is missing (it becomes the map entry's id)")
        return None
    where = f"{source}: operation {op_id!r} ({method.upper()} {path})"
    base = Operation(id=op_id, method=method.upper(), path=path)
    if "x-securityGroup" in raw or "x-securityPermission" in raw:
        group = raw.get("x-securityGroup")
        actions = raw.get("x-securityPermission")
        if not isinstance(group, str) or not isinstance(actions, list) or not actions:
            errors.append(
                f"{where}: x-securityGroup must be a string and x-securityPermission a "
                f"non-empty list of actions, got {group!r} and {actions!r}"
            )
            return None
        names = _permissions(
            f"{where}: x-securityPermission", [f"{group}.{a}" for a in actions], errors
        )
        if names is None:
            return None
        if _PUBLIC in names:
            if len(names) > 1:
                errors.append(f"{where}: {_PUBLIC} cannot be combined with other actions")
                return None
            return replace(base, public=True)
        if len(names) == 1:
            return replace(base, permissions=names)
        return replace(base, any_of=names)
    if "x-permissions" in raw:
        names = _permissions(f"{where}: x-permissions", raw["x-permissions"], errors)
        return None if names is None else replace(base, permissions=names)
    errors.append(
        f"{where}: no x-securityGroup/x-securityPermission and no x-permissions, so its "
        "required permissions are unknown"
    )
    return None


def operations(spec: Mapping[str, Any], source: str = "<spec>") -> list[Operation]:
    """Every operation of ``spec`` in document order; :class:`SpecError` lists every problem."""
    errors: list[str] = []
    result: list[Operation] = []
    seen: dict[str, Operation] = {}
    for path, method, raw in _walk(spec):
        operation = _operation(source, path, method, raw, errors)
        if operation is None:
            continue
        first = seen.setdefault(operation.id, operation)
        if first is not operation:
            errors.append(
                f"{source}: operationId {operation.id!r} is used twice "
                f"({first.method} {first.path} and {operation.method} {operation.path})"
            )
            continue
        result.append(operation)
    if errors:
        raise SpecError(errors)
    return result


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain when that reads back as the same string."""
    if _PLAIN.fullmatch(text):
        try:
            if yaml.safe_load(text) == text:
                return text
        except yaml.YAMLError:
            pass
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def _flow(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(_scalar(item) for item in items) + "]"


def _title(spec: Mapping[str, Any]) -> str:
    info = spec.get("info")
    if not isinstance(info, Mapping):
        return ""
    title, version = info.get("title"), info.get("version")
    parts = [str(p) for p in (title, version) if isinstance(p, str | int | float) and p != ""]
    return f" ({' '.join(parts)})" if parts else ""


def _either(names: tuple[str, ...]) -> str:
    """``{a}``, ``{a} or {b}``, ``{a}, {b} or {c}``."""
    braced = [f"{{{name}}}" for name in names]
    return " or ".join(filter(None, (", ".join(braced[:-1]), braced[-1])))


def render_map(
    spec: Mapping[str, Any],
    spec_name: str,
    ops: list[Operation],
    tenant_params: tuple[str, ...] = DEFAULT_TENANT_PARAMS,
) -> str:
    """The map as stable YAML text; ``spec_name`` (a file name) goes in the header.

    The first of ``tenant_params`` is the map's default tenant; an entry whose path
    has only a later one names it, and an entry with none of them has no tenant.
    """
    default = tenant_params[0]
    lines = [
        f"# Generated by `permgate import-openapi` from {spec_name}{_title(spec)}.",
        "# Do not edit by hand: change the spec and regenerate, e.g.",
        f"#   permgate import-openapi {spec_name} -o endpoint_map.yaml",
        f"# {len(ops)} operations. Several actions on one operation mean any one of them",
        f"# (any_of); entries without a {_either(tenant_params)} path parameter have no tenant.",
        "version: 1",
        f"read_actions: {_flow(READ_ACTIONS)}",
        "defaults:",
        f"  tenant: {{path_param: {default}}}",
        "unmapped: deny",
        "endpoints:",
    ]
    for op in ops:
        lines.append(f"  - id: {_scalar(op.id)}")
        lines.append(f"    method: {op.method}")
        lines.append(f"    path: {_scalar(op.path)}")
        if op.public:
            lines.append("    public: true")
        else:
            if op.permissions or not op.any_of:
                lines.append(f"    permissions: {_flow(op.permissions)}")
            if op.any_of:
                lines.append(f"    any_of: {_flow(op.any_of)}")
            param = op.tenant_param(tenant_params)
            if param is None:
                lines.append("    tenant: none")
            elif param != default:
                lines.append(f"    tenant: {{path_param: {param}}}")
    return "\n".join(lines) + "\n"


def tenant_warning(
    ops: list[Operation], tenant_params: tuple[str, ...] = DEFAULT_TENANT_PARAMS
) -> str | None:
    """Why the generated map checks no tenant at all, or None when some entry has one.

    Path parameters whose name mentions "tenant" are suggested, since the usual cause
    is a spec that names its tenant parameter differently.
    """
    guarded = [op for op in ops if not op.public]
    if not guarded or any(op.tenant_param(tenant_params) for op in guarded):
        return None
    lookalikes = sorted(
        {
            segment[1:-1]
            for op in guarded
            for segment in op.path.split("/")
            if segment.startswith("{") and segment.endswith("}") and "tenant" in segment.lower()
        }
    )
    hint = f" (this spec has {_either(tuple(lookalikes))})" if lookalikes else ""
    return (
        f"no operation has a {_either(tenant_params)} path parameter, so every entry gets "
        "'tenant: none' and no request is checked against a tenant; name the spec's "
        f"tenant parameter with --tenant-param NAME{hint}"
    )


def diff_map(ops: list[Operation], endpoint_map: EndpointMap) -> list[str]:
    """What differs between the spec's operations and a map, one line per difference."""
    differences: list[str] = []
    in_spec = {op.id for op in ops}
    for op in ops:
        entry = endpoint_map.get(op.id)
        if entry is None:
            differences.append(f"missing from the map: {op.id} ({op.method} {op.path})")
            continue
        fields = (
            ("method", " ".join(sorted(entry.methods)), op.method),
            ("path", entry.path, op.path),
            ("public", str(entry.public).lower(), str(op.public).lower()),
            (
                "permissions",
                _flow(tuple(sorted(entry.permissions))),
                _flow(tuple(sorted(op.permissions))),
            ),
            ("any_of", _flow(tuple(sorted(entry.any_of))), _flow(tuple(sorted(op.any_of)))),
        )
        for name, in_map, wanted in fields:
            if in_map != wanted:
                differences.append(
                    f"differs: {op.id}: {name} is {in_map} in the map, {wanted} in the spec"
                )
    for entry in endpoint_map.endpoints:
        if entry.id not in in_spec:
            methods = " ".join(sorted(entry.methods))
            differences.append(
                f"not in the spec: {entry.id} ({methods} {entry.path}, "
                f"{endpoint_map.source}:{entry.line})"
            )
    return differences


@dataclass(frozen=True, slots=True)
class GeneratedMap:
    """A map generated from a spec: its text, how many entries, and what to warn about."""

    text: str
    count: int
    warnings: tuple[str, ...] = ()


def generate_map(
    spec_path: str | os.PathLike[str], tenant_params: tuple[str, ...] = DEFAULT_TENANT_PARAMS
) -> GeneratedMap:
    """Read a spec and render its map; the text is checked to load before it is returned."""
    spec = read_spec(spec_path)
    ops = operations(spec, os.fspath(spec_path))
    name = Path(spec_path).name
    text = render_map(spec, name, ops, tenant_params)
    parse_map(text, f"<map generated from {name}>")  # raises MapError on, e.g., overlaps
    warning = tenant_warning(ops, tenant_params)
    return GeneratedMap(text, len(ops), (warning,) if warning else ())


def generate(
    spec_path: str | os.PathLike[str], tenant_params: tuple[str, ...] = DEFAULT_TENANT_PARAMS
) -> tuple[str, int]:
    """(map text, operation count) of :func:`generate_map`, for callers without warnings."""
    generated = generate_map(spec_path, tenant_params)
    return generated.text, generated.count
