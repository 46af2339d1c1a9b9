"""The endpoint map: load, validate, compile once, match fast.

The data types (``TenantSource``, ``Endpoint``, ``Match``) are the contract the rest
of permgate uses. ``parse_map``/``load_map`` walk the composed YAML node tree, so
that every error keeps its line, and report all of them at once: a map with errors
is never half-applied. ``EndpointMap`` compiles its entries once into one segment
trie per method (plus one for ``"*"``), so routing costs the path's depth, not the
number of entries.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

import yaml

from permgate.core.errors import InvalidPermission, MapError
from permgate.core.permissions import DEFAULT_READ_ACTIONS, check_identifier, parse_permission

__all__ = [
    "NO_TENANT",
    "Endpoint",
    "EndpointMap",
    "Match",
    "TenantSource",
    "TenantSourceKind",
    "load_map",
    "parse_map",
]

TenantSourceKind = Literal["path_param", "header", "claim", "none"]


@dataclass(frozen=True, slots=True)
class TenantSource:
    """Where an endpoint's tenant comes from: ``kind`` plus the param/header/claim name."""

    kind: TenantSourceKind
    name: str | None = None


NO_TENANT: Final = TenantSource("none")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One entry of the map. ``permissions`` are all required; ``any_of`` needs one."""

    id: str
    methods: frozenset[str]  # upper-case; {"*"} for any method
    path: str  # the template, e.g. /policy/{tenantLocator}/quotes/{locator}
    permissions: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    tenant: TenantSource = NO_TENANT
    public: bool = False
    line: int = 0


@dataclass(frozen=True, slots=True)
class Match:
    """A routed request: the endpoint and the raw (still percent-encoded) path params."""

    endpoint: Endpoint
    params: Mapping[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- the map


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A compiled template end: the endpoint and where its parameters sit in the path."""

    endpoint: Endpoint
    param_positions: tuple[tuple[int, str], ...]
    static: Match | None  # prebuilt Match for templates without parameters


class _Node:
    """One segment position of a method's trie: literal children, one parameter child."""

    __slots__ = ("leaf", "literals", "param")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.leaf: _Leaf | None = None


def _split_path(path: str) -> list[str] | None:
    """The raw segments of a request path; ``/`` is no segment, ``/a/`` is ``['a', '']``."""
    if not path.startswith("/"):
        return None
    if path == "/":
        return []
    return path[1:].split("/")


def _walk(root: _Node, segments: list[str]) -> _Leaf | None:
    """Literal before parameter at each segment, backtracking when a branch dead-ends.

    Pending parameter alternatives sit on a stack, so the deepest one is retried
    first: that is exactly "literal beats parameter, segment by segment from the
    left". Each trie node sits at one depth and is entered at most once per walk,
    so the cost is bounded by the path's depth and never by the number of entries.
    """
    pending: list[tuple[_Node, int]] = []
    node, index, end = root, 0, len(segments)
    while True:
        if index == end:
            if node.leaf is not None:
                return node.leaf
        else:
            segment = segments[index]
            index += 1
            child = node.literals.get(segment)
            param = node.param if segment else None
            if child is not None:
                if param is not None:
                    pending.append((param, index))
                node = child
                continue
            if param is not None:
                node = param
                continue
        if not pending:
            return None
        node, index = pending.pop()


def _template_segments(path: str) -> list[str]:
    return [] if path == "/" else path[1:].split("/")


def _is_param(segment: str) -> bool:
    return len(segment) > 2 and segment[0] == "{" and segment[-1] == "}"


def _compile(endpoints: tuple[Endpoint, ...]) -> dict[str, _Node]:
    """Build one trie per method (``"*"`` included); same-shape overlaps are a ValueError."""
    tries: dict[str, _Node] = {}
    for endpoint in endpoints:
        segments = _template_segments(endpoint.path)
        positions = tuple(
            (index, segment[1:-1]) for index, segment in enumerate(segments) if _is_param(segment)
        )
        static = Match(endpoint, MappingProxyType({})) if not positions else None
        leaf = _Leaf(endpoint, positions, static)
        for method in endpoint.methods:
            node = tries.setdefault(method, _Node())
            for segment in segments:
                if _is_param(segment):
                    if node.param is None:
                        node.param = _Node()
                    node = node.param
                else:
                    node = node.literals.setdefault(segment, _Node())
            if node.leaf is not None:
                raise ValueError(
                    f"endpoints {node.leaf.endpoint.id!r} and {endpoint.id!r} have the same "
                    f"method {method} and the same template shape"
                )
            node.leaf = leaf
    return tries


@dataclass(frozen=True, slots=True)
class EndpointMap:
    """A validated endpoint map, compiled once into per-method segment tries.

    Build it with :func:`load_map` or :func:`parse_map`, which validate everything;
    constructing it directly (tests, tools) compiles the tries but trusts the entries.
    """

    version: int = 1
    read_actions: frozenset[str] = DEFAULT_READ_ACTIONS
    default_tenant: TenantSource = NO_TENANT
    unmapped: Literal["deny", "passthrough"] = "deny"
    endpoints: tuple[Endpoint, ...] = ()
    source: str = "<map>"
    sha256: str = ""
    _tries: dict[str, _Node] = field(init=False, repr=False, compare=False)
    _by_id: dict[str, Endpoint] = field(init=False, repr=False, compare=False)
    _permissions: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tries", _compile(self.endpoints))
        object.__setattr__(self, "_by_id", {e.id: e for e in self.endpoints})
        object.__setattr__(
            self,
            "_permissions",
            frozenset(p for e in self.endpoints for p in (*e.permissions, *e.any_of)),
        )

    def match(self, method: str, path: str) -> Match | None:
        """Route a request: ``path`` is raw (percent-encoded, no query); None if unmapped.

        An entry that lists the method wins over a ``"*"`` entry; HEAD with no HEAD
        entry is routed as GET. ``params`` are returned still encoded.
        """
        segments = _split_path(path)
        if segments is None:
            return None
        tries = self._tries
        leaf = None
        trie = tries.get(method)
        if trie is not None:
            leaf = _walk(trie, segments)
        if leaf is None and method == "HEAD" and (trie := tries.get("GET")) is not None:
            leaf = _walk(trie, segments)
        if leaf is None and (trie := tries.get("*")) is not None:
            leaf = _walk(trie, segments)
        if leaf is None:
            return None
        if leaf.static is not None:
            return leaf.static
        return Match(leaf.endpoint, {name: segments[i] for i, name in leaf.param_positions})

    def get(self, endpoint_id: str) -> Endpoint | None:
        """The entry with this id, or None."""
        return self._by_id.get(endpoint_id)

    def permissions(self) -> frozenset[str]:
        """Every distinct permission any entry requires (``permissions`` and ``any_of``)."""
        return self._permissions


# --------------------------------------------------------------------------- the loader

_TOP_KEYS: Final = ("version", "read_actions", "defaults", "unmapped", "endpoints")
_ENTRY_KEYS: Final = ("id", "method", "path", "permissions", "any_of", "tenant", "public")
_TENANT_KINDS: Final = ("path_param", "header", "claim")
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_LITERAL_FORBIDDEN = frozenset("{}?#")
_YAML_TYPES: Final = {
    "tag:yaml.org,2002:str": "a string",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a timestamp",
}


# libyaml's parser when present: ten times faster on the 722-entry map, same marks
_COMPOSER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_BAD: Final = object()  # "already reported": a scalar that could not be read

_Keys = dict[str, tuple[yaml.Node, yaml.Node]]  # key name -> (key node, value node)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _describe(node: yaml.Node) -> str:
    """A node's type and (for scalars) value, for 'expected X, got Y' messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = _YAML_TYPES.get(node.tag, node.tag)
    return f"{kind} ({node.value!r})"


class _Parser:
    """Walks the composed YAML tree, collecting every error with its line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._found: list[tuple[int, str]] = []
        self._ids: list[tuple[str, int]] = []  # (id, entry line), for duplicates
        self._constructor = yaml.SafeLoader("")

    def error(self, node: yaml.Node | int, message: str) -> None:
        line = node if isinstance(node, int) else _line(node)
        self._found.append((line, message))

    @property
    def errors(self) -> list[str]:
        """Every error found so far as ``FILE:LINE: message``, in line order."""
        ordered = sorted(self._found, key=lambda found: found[0])
        return [f"{self.source}:{line}: {message}" for line, message in ordered]

    # -- typed accessors; each records its own error and returns None (or _BAD)

    def scalar(self, node: yaml.Node, where: str, expected: str) -> object:
        """The scalar's value, or ``_BAD`` once the error is recorded."""
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, f"{where} must be {expected}, got {_describe(node)}")
            return _BAD
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.error(node, f"{where}: cannot read the value: {exc}")
            return _BAD

    def string(self, node: yaml.Node, where: str) -> str | None:
        value = self.scalar(node, where, "a string")
        if value is _BAD:
            return None
        if not isinstance(value, str):
            self.error(node, f"{where} must be a string, got {_describe(node)}")
            return None
        return value

    def mapping(self, node: yaml.Node, where: str, allowed: tuple[str, ...]) -> _Keys:
        """Key name -> (key node, value node); unknown and repeated keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{where} must be a mapping, got {_describe(node)}")
            return {}
        result: _Keys = {}
        for key_node, value_node in node.value:
            key = self.string(key_node, f"a key of {where}")
            if key is None:
                continue
            if key in result:
                first = _line(result[key][0])
                self.error(key_node, f"{where}: key {key!r} repeated (first on line {first})")
            elif key not in allowed:
                self.error(
                    key_node,
                    f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})",
                )
            else:
                result[key] = (key_node, value_node)
        return result

    def sequence(self, node: yaml.Node, where: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{where} must be a list, got {_describe(node)}")
            return None
        return list(node.value)

    # -- the document

    def document(self, root: yaml.Node, sha256: str) -> EndpointMap | None:
        top = self.mapping(root, "the endpoint map", _TOP_KEYS)
        if not isinstance(root, yaml.MappingNode):
            return None
        if "version" not in top:
            self.error(root, "missing required key 'version' (must be 1)")
        else:
            node = top["version"][1]
            value = self.scalar(node, "version", "the integer 1")
            if value is not _BAD and (value != 1 or isinstance(value, bool)):
                self.error(node, f"version must be 1 (the only map format), got {_describe(node)}")
        read_actions = DEFAULT_READ_ACTIONS
        if "read_actions" in top:
            read_actions = self.read_actions(top["read_actions"][1])
        default_tenant = NO_TENANT
        if "defaults" in top:
            default_tenant = self.defaults(top["defaults"][1])
        unmapped: Literal["deny", "passthrough"] = "deny"
        if "unmapped" in top:
            node = top["unmapped"][1]
            value = self.scalar(node, "unmapped", "'deny' or 'passthrough'")
            if value == "passthrough":
                unmapped = "passthrough"
            elif value is not _BAD and value != "deny":
                self.error(node, f"unmapped must be 'deny' or 'passthrough', got {_describe(node)}")
        endpoints: list[Endpoint] = []
        if "endpoints" not in top:
            self.error(root, "missing required key 'endpoints' (a list of entries)")
        else:
            items = self.sequence(top["endpoints"][1], "endpoints")
            for item in items or ():
                endpoint = self.entry(item, default_tenant)
                if endpoint is not None:
                    endpoints.append(endpoint)
        self.check_unique(endpoints)
        if self._found:
            return None
        return EndpointMap(
            version=1,
            read_actions=read_actions,
            default_tenant=default_tenant,
            unmapped=unmapped,
            endpoints=tuple(endpoints),
            source=self.source,
            sha256=sha256,
        )

    def read_actions(self, node: yaml.Node) -> frozenset[str]:
        items = self.sequence(node, "read_actions")
        actions: set[str] = set()
        for item in items or ():
            action = self.string(item, "an item of read_actions")
            if action is None:
                continue
            if not check_identifier(action):
                self.error(
                    item,
                    f"read action {action!r} is not an action name ([A-Za-z][A-Za-z0-9_-]*)",
                )
            actions.add(action)
        return frozenset(actions)

    def defaults(self, node: yaml.Node) -> TenantSource:
        keys = self.mapping(node, "defaults", ("tenant",))
        if "tenant" not in keys:
            return NO_TENANT
        return self.tenant(keys["tenant"][1], "defaults.tenant") or NO_TENANT

    def tenant(self, node: yaml.Node, where: str) -> TenantSource | None:
        if isinstance(node, yaml.ScalarNode):
            value = self.scalar(node, where, "'none' or a mapping")
            if value is _BAD:
                return None
            if value is None or value == "none":
                return NO_TENANT
            self.error(
                node,
                f"{where} must be 'none' or one of {{path_param: NAME}}, {{header: NAME}}, "
                f"{{claim: NAME}}, got {_describe(node)}",
            )
            return None
        keys = self.mapping(node, where, _TENANT_KINDS)
        if not isinstance(node, yaml.MappingNode):
            return None
        if len(keys) != 1:
            if len(node.value) == len(keys):  # nothing reported yet for this mapping
                self.error(
                    node,
                    f"{where} must have exactly one of path_param, header, claim; got {len(keys)}",
                )
            return None
        ((kind, (_, value_node)),) = keys.items()
        name = self.string(value_node, f"{where}.{kind}")
        if name is None:
            return None
        pattern = {"path_param": _PARAM_NAME, "header": _HEADER_NAME}.get(kind)
        if not name or (pattern is not None and not pattern.fullmatch(name)):
            what = {"path_param": "parameter", "header": "header", "claim": "claim"}[kind]
            self.error(value_node, f"{where}.{kind}: {name!r} is not a valid {what} name")
            return None
        return TenantSource(kind, name)  # type: ignore[arg-type]

    # -- one entry

    def entry(self, node: yaml.Node, default_tenant: TenantSource) -> Endpoint | None:
        keys = self.mapping(node, "an endpoint entry", _ENTRY_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return None
        endpoint_id = None
        if "id" not in keys:
            self.error(node, "endpoint entry without 'id' (a unique name, used in metrics)")
        else:
            id_node = keys["id"][1]
            endpoint_id = self.string(id_node, "id")
            if endpoint_id is not None and not _ID.fullmatch(endpoint_id):
                self.error(
                    id_node,
                    f"id {endpoint_id!r} must be 1-128 letters, digits or '_.:-' "
                    "(it is a metric label)",
                )
        if endpoint_id is not None:
            self._ids.append((endpoint_id, _line(node)))
        label = f"endpoint {endpoint_id!r}" if endpoint_id else "endpoint entry"
        methods = self.methods(keys, node, label)
        path = self.path(keys, node, label)
        permissions = self.permission_list(keys, "permissions", label)
        any_of = self.permission_list(keys, "any_of", label)
        public = False
        public_unreadable = False  # already reported: no second error about requirements
        if "public" in keys:
            value_node = keys["public"][1]
            value = self.scalar(value_node, f"{label}: public", "true or false")
            if isinstance(value, bool):
                public = value
            else:
                public_unreadable = True
                if value is not _BAD:
                    self.error(
                        value_node,
                        f"{label}: public must be true or false, got {_describe(value_node)}",
                    )
        if not (public or public_unreadable or "permissions" in keys or "any_of" in keys):
            self.error(
                node,
                f"{label} does not say what it requires: add 'permissions' (a list; [] means "
                "any authenticated caller in tenant scope), 'any_of', or 'public: true' "
                "(forgetting the key must not open an endpoint)",
            )
        tenant = default_tenant
        if public:
            for key in ("permissions", "any_of"):
                if key in keys:
                    self.error(
                        keys[key][0],
                        f"{label} is public: it must not list {key} "
                        "(public entries are forwarded without authentication)",
                    )
            tenant = NO_TENANT
            if "tenant" in keys:
                explicit = self.tenant(keys["tenant"][1], f"{label}: tenant")
                if explicit is not None and explicit != NO_TENANT:
                    self.error(keys["tenant"][0], f"{label} is public: it has no tenant")
        elif "tenant" in keys:
            explicit = self.tenant(keys["tenant"][1], f"{label}: tenant")
            tenant = explicit if explicit is not None else NO_TENANT
            if explicit is not None and path is not None:
                self.check_tenant_param(explicit, path, keys["tenant"][1], label, "its tenant")
        elif path is not None:
            where = keys["path"][1]
            self.check_tenant_param(tenant, path, where, label, "the default tenant")
        # An entry with other errors is still returned when id, method and path are
        # usable, so that overlaps are reported too; the map is never built while
        # any error stands.
        if endpoint_id is None or methods is None or path is None:
            return None
        return Endpoint(
            id=endpoint_id,
            methods=methods,
            path=path,
            permissions=permissions,
            any_of=any_of,
            tenant=tenant,
            public=public,
            line=_line(node),
        )

    def methods(self, keys: _Keys, node: yaml.Node, label: str) -> frozenset[str] | None:
        if "method" not in keys:
            self.error(node, f"{label}: missing 'method' (a method, a list of methods, or '*')")
            return None
        method_node = keys["method"][1]
        items = [method_node]
        if isinstance(method_node, yaml.SequenceNode):
            items = list(method_node.value)
            if not items:
                self.error(method_node, f"{label}: method list is empty")
                return None
        methods: set[str] = set()
        ok = True
        for item in items:
            name = self.string(item, f"{label}: method")
            if name is None:
                ok = False
            elif name == "*":
                methods.add("*")
            elif _METHOD.fullmatch(name) and name != name.upper():
                self.error(
                    item,
                    f"{label}: method {name!r} must be upper case ({name.upper()!r}): methods "
                    "are case-sensitive, so it would never match a request",
                )
                ok = False
            elif _METHOD.fullmatch(name):
                methods.add(name)
            else:
                self.error(item, f"{label}: method {name!r} is not an HTTP method name like GET")
                ok = False
        if ok and "*" in methods and len(items) > 1:
            self.error(method_node, f"{label}: '*' means every method; list it alone")
            ok = False
        return frozenset(methods) if ok else None

    def path(self, keys: _Keys, node: yaml.Node, label: str) -> str | None:
        if "path" not in keys:
            self.error(node, f"{label}: missing 'path' (a template like /policy/{{tenantLocator}})")
            return None
        path_node = keys["path"][1]
        path = self.string(path_node, f"{label}: path")
        if path is None:
            return None
        if not path.startswith("/"):
            self.error(path_node, f"{label}: path {path!r} must start with '/'")
            return None
        problems: list[str] = []
        seen: set[str] = set()
        for segment in _template_segments(path):
            if not segment:
                problems.append("has an empty segment ('//' or a trailing '/')")
            elif segment[0] == "{" and segment[-1] == "}":
                name = segment[1:-1]
                if not _PARAM_NAME.fullmatch(name):
                    problems.append(f"parameter {segment!r} needs a name like {{locator}}")
                elif name in seen:
                    problems.append(f"parameter {{{name}}} appears twice")
                seen.add(name)
            elif _LITERAL_FORBIDDEN & set(segment):
                problems.append(
                    f"segment {segment!r} mixes text and braces: a parameter must be a whole "
                    "segment, and '?' or '#' never appear in a path"
                )
        for problem in problems:
            self.error(path_node, f"{label}: path {path!r} {problem}")
        return None if problems else path

    def permission_list(self, keys: _Keys, key: str, label: str) -> tuple[str, ...]:
        if key not in keys:
            return ()
        list_node = keys[key][1]
        items = self.sequence(list_node, f"{label}: {key}")
        if items is None:
            return ()
        if key == "any_of" and not items:
            self.error(list_node, f"{label}: any_of is empty, so it could never be satisfied")
        result: list[str] = []
        for item in items:
            text = self.string(item, f"{label}: an item of {key}")
            if text is None:
                continue
            try:
                parse_permission(text)
            except InvalidPermission as exc:
                self.error(item, f"{label}: {key}: {exc}")
                continue
            if text in result:
                self.error(item, f"{label}: {key}: {text!r} is listed twice")
                continue
            result.append(text)
        return tuple(result)

    def check_tenant_param(
        self, tenant: TenantSource, path: str, node: yaml.Node, label: str, which: str
    ) -> None:
        if tenant.kind != "path_param":
            return
        if f"{{{tenant.name}}}" not in _template_segments(path):
            self.error(
                node,
                f"{label}: {which} is path parameter {{{tenant.name}}}, which path {path!r} "
                "does not have (set 'tenant: none' or another tenant source)",
            )

    # -- across entries

    def check_unique(self, endpoints: list[Endpoint]) -> None:
        first_line: dict[str, int] = {}
        for endpoint_id, line in self._ids:
            first = first_line.setdefault(endpoint_id, line)
            if first != line:
                self.error(line, f"duplicate id {endpoint_id!r} (first used on line {first})")
        by_shape: dict[tuple[str | None, ...], list[Endpoint]] = {}
        for endpoint in endpoints:
            shape = tuple(None if _is_param(s) else s for s in _template_segments(endpoint.path))
            same_shape = by_shape.setdefault(shape, [])
            for other in same_shape:
                common = endpoint.methods & other.methods
                if "*" in endpoint.methods or "*" in other.methods:
                    common = endpoint.methods | other.methods
                if common:
                    self.error(
                        endpoint.line,
                        f"endpoint {endpoint.id!r} ({', '.join(sorted(common))} "
                        f"{endpoint.path}) overlaps {other.id!r} on line {other.line} "
                        f"({other.path}): same method and same template shape, so a request "
                        "could match either",
                    )
                    break
            same_shape.append(endpoint)


def parse_map(text: str, source: str = "<map>") -> EndpointMap:
    """Validate and compile an endpoint map; raise :class:`MapError` with every error.

    ``source`` is the file name used in ``FILE:LINE: message`` and kept on the map.
    """
    parser = _Parser(source)
    try:
        root = yaml.compose(text, Loader=_COMPOSER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        detail = ": ".join(p for p in (exc.context, exc.problem) if p)
        raise MapError([f"{source}:{line}: YAML syntax error: {detail}"]) from exc
    except yaml.YAMLError as exc:
        raise MapError([f"{source}:1: YAML error: {exc}"]) from exc
    if root is None:
        raise MapError([f"{source}:1: the endpoint map is empty (expected version, endpoints)"])
    result = parser.document(root, hashlib.sha256(text.encode("utf-8")).hexdigest())
    if result is None:
        raise MapError(parser.errors)
    return result


def load_map(path: str | os.PathLike[str]) -> EndpointMap:
    """Read, validate and compile the map file at ``path`` (see :func:`parse_map`)."""
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise MapError([f"{source}: cannot read the endpoint map: {exc.strerror}"]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MapError([f"{source}:{line}: the endpoint map is not UTF-8 text"]) from exc
    return parse_map(text, source)
