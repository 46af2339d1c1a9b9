"""The endpoint map: its types, its grammar, and the matcher compiled once.

The data types (``TenantSource``, ``Endpoint``, ``Match``) are the contract the rest
of permgate uses. The grammar (which keys an entry has, what an id, a method, a path
template and a tenant source may be, when two entries overlap) lives here as pure
functions; reading a map file and reporting its problems with their lines is
:mod:`permgate.maps.loader`'s. ``EndpointMap`` compiles its entries once into one
segment trie per method (plus one for ``"*"``), so routing costs the path's depth,
not the number of entries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from permgate.core.permissions import DEFAULT_READ_ACTIONS

__all__ = [
    "ENTRY_KEYS",
    "NO_TENANT",
    "TENANT_KINDS",
    "TOP_KEYS",
    "Endpoint",
    "EndpointMap",
    "Match",
    "TenantSource",
    "TenantSourceKind",
    "endpoint_id_problem",
    "has_param",
    "method_problem",
    "overlap",
    "path_problems",
    "shape",
    "tenant_name_problem",
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

    Build it with ``permgate.maps.loader`` (``load_map``, ``parse_map``), which
    validate everything;
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
        # The raw segments: ``/`` is none, ``/a/`` is ``['a', '']``.
        if path[:1] != "/":
            return None
        segments = path[1:].split("/") if path != "/" else []
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
        params = {}  # a loop, not a comprehension: no frame of its own
        for index, name in leaf.param_positions:
            params[name] = segments[index]
        return Match(leaf.endpoint, params)

    def get(self, endpoint_id: str) -> Endpoint | None:
        """The entry with this id, or None."""
        return self._by_id.get(endpoint_id)

    def permissions(self) -> frozenset[str]:
        """Every distinct permission any entry requires (``permissions`` and ``any_of``)."""
        return self._permissions


# --------------------------------------------------------------------------- the grammar

TOP_KEYS: Final = ("version", "read_actions", "defaults", "unmapped", "endpoints")
ENTRY_KEYS: Final = ("id", "method", "path", "permissions", "any_of", "tenant", "public")
TENANT_KINDS: Final = ("path_param", "header", "claim")
_METHOD: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_ID: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")
_PARAM_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_LITERAL_FORBIDDEN: Final = frozenset("{}?#")


def endpoint_id_problem(endpoint_id: str) -> str | None:
    """Why ``endpoint_id`` is not an entry id (it is a metric label), or None."""
    if _ID.fullmatch(endpoint_id):
        return None
    return f"id {endpoint_id!r} must be 1-128 letters, digits or '_.:-' (it is a metric label)"


def method_problem(name: str) -> str | None:
    """Why ``name`` is not a method an entry can list (``*`` is), or None."""
    if name == "*" or (_METHOD.fullmatch(name) and name == name.upper()):
        return None
    if _METHOD.fullmatch(name):
        return (
            f"method {name!r} must be upper case ({name.upper()!r}): methods are "
            "case-sensitive, so it would never match a request"
        )
    return f"method {name!r} is not an HTTP method name like GET"


def path_problems(path: str) -> list[str]:
    """What is wrong with a path template (empty when nothing): each as the end of
    ``path '...' <problem>``; a template that does not start with '/' is one problem."""
    if not path.startswith("/"):
        return ["must start with '/'"]
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
    return problems


def tenant_name_problem(kind: str, name: str) -> str | None:
    """Why ``name`` cannot be the parameter, header or claim a tenant is read from."""
    pattern = {"path_param": _PARAM_NAME, "header": _HEADER_NAME}.get(kind)
    if name and (pattern is None or pattern.fullmatch(name)):
        return None
    what = {"path_param": "parameter", "header": "header", "claim": "claim"}[kind]
    return f"{name!r} is not a valid {what} name"


def has_param(path: str, name: str | None) -> bool:
    """Whether the template ``path`` has the parameter ``{name}`` as a whole segment."""
    return f"{{{name}}}" in _template_segments(path)


def shape(path: str) -> tuple[str | None, ...]:
    """A template's shape: its literals, None for each parameter."""
    return tuple(None if _is_param(s) else s for s in _template_segments(path))


def overlap(a: Endpoint, b: Endpoint) -> frozenset[str]:
    """The methods two entries of the same template shape would both answer (empty
    when none): such entries are ambiguous, so a map may not hold them."""
    if "*" in a.methods or "*" in b.methods:
        return a.methods | b.methods
    return a.methods & b.methods
