"""Reading an endpoint map file: every problem with its line, the map built whole.

The map is composed and walked by :class:`permgate.core.yamlnodes.NodeReader`, so an
unknown key, a repeated key or a value of the wrong type reads as in every other file
permgate reads (``FILE:LINE: endpoints[3].public: expected true or false, got ...``);
what a valid entry is (ids, methods, templates, tenant sources, overlaps) is the
core's grammar (:mod:`permgate.core.endpoints`). Every problem is reported at once in
one :class:`MapError`: a map with problems is never half-applied.
"""

from __future__ import annotations

import hashlib
import os
from typing import Literal

import yaml

from permgate.core.endpoints import (
    ENTRY_KEYS,
    NO_TENANT,
    TENANT_KINDS,
    TOP_KEYS,
    Endpoint,
    EndpointMap,
    TenantSource,
    endpoint_id_problem,
    has_param,
    method_problem,
    overlap,
    path_problems,
    shape,
    tenant_name_problem,
)
from permgate.core.errors import InvalidPermission, MapError, Problem
from permgate.core.permissions import DEFAULT_READ_ACTIONS, check_identifier, parse_permission
from permgate.core.yamlnodes import BAD, Keys, NodeReader, compose, describe, item, key, line_of
from permgate.core.yamlnodes import read_text as read_file_text

__all__ = ["load_map", "parse_map"]


class _Parser(NodeReader):
    """Walks the composed tree of a map, collecting every problem with its line."""

    def __init__(self, source: str) -> None:
        super().__init__(source, "the endpoint map")
        self._ids: list[tuple[str, int]] = []  # (id, entry line), for duplicates

    # -- the document

    def document(self, root: yaml.Node, sha256: str) -> EndpointMap | None:
        top = self.mapping(root, "", TOP_KEYS)
        if top is None:
            return None
        if "version" not in top:
            self.note(root, "missing required key 'version' (must be 1)")
        else:
            node = top["version"][1]
            value = self.scalar(node, "version", "the integer 1")
            if value is not BAD and (value != 1 or isinstance(value, bool)):
                self.note(node, f"version must be 1 (the only map format), got {describe(node)}")
        read_actions = DEFAULT_READ_ACTIONS
        if "read_actions" in top:
            read_actions = self.read_actions(top["read_actions"][1])
        default_tenant = NO_TENANT
        if "defaults" in top:
            default_tenant = self.defaults(top["defaults"][1])
        unmapped: Literal["deny", "passthrough"] = "deny"
        if "unmapped" in top and self.choice(
            top["unmapped"][1], "unmapped", ("deny", "passthrough")
        ) == ("passthrough"):
            unmapped = "passthrough"
        endpoints: list[Endpoint] = []
        if "endpoints" not in top:
            self.note(root, "missing required key 'endpoints' (a list of entries)")
        else:
            items = self.sequence(top["endpoints"][1], "endpoints")
            for index, node in enumerate(items or ()):
                endpoint = self.entry(node, item("endpoints", index), default_tenant)
                if endpoint is not None:
                    endpoints.append(endpoint)
        self.check_unique(endpoints)
        if self.problems:
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
        for index, child in enumerate(items or ()):
            action = self.string(child, item("read_actions", index))
            if action is None:
                continue
            if not check_identifier(action):
                self.note(
                    child,
                    f"read action {action!r} is not an action name ([A-Za-z][A-Za-z0-9_-]*)",
                )
            actions.add(action)
        return frozenset(actions)

    def defaults(self, node: yaml.Node) -> TenantSource:
        keys = self.mapping(node, "defaults", ("tenant",))
        if keys is None or "tenant" not in keys:
            return NO_TENANT
        return self.tenant(keys["tenant"][1], "defaults.tenant", "defaults.tenant") or NO_TENANT

    def tenant(self, node: yaml.Node, where: str, label: str) -> TenantSource | None:
        """A tenant source: ``none`` or one of {path_param,header,claim: NAME}."""
        if isinstance(node, yaml.ScalarNode):
            value = self.scalar(node, where, "'none' or a mapping")
            if value is BAD:
                return None
            if value is None or value == "none":
                return NO_TENANT
            self.wrong_type(
                node, where, "'none' or one of {path_param: NAME}, {header: NAME}, {claim: NAME}"
            )
            return None
        keys = self.mapping(node, where, TENANT_KINDS)
        if keys is None:
            return None
        if len(keys) != 1:
            assert isinstance(node, yaml.MappingNode)
            if len(node.value) == len(keys):  # nothing reported yet for this mapping
                self.note(
                    node,
                    f"{label} must have exactly one of path_param, header, claim; got {len(keys)}",
                )
            return None
        ((kind, (_, value_node)),) = keys.items()
        name = self.string(value_node, key(where, kind))
        if name is None:
            return None
        problem = tenant_name_problem(kind, name)
        if problem is not None:
            self.note(value_node, f"{label}.{kind}: {problem}")
            return None
        return TenantSource(kind, name)  # type: ignore[arg-type]

    # -- one entry

    def entry(self, node: yaml.Node, where: str, default_tenant: TenantSource) -> Endpoint | None:
        keys = self.mapping(node, where, ENTRY_KEYS)
        if keys is None:
            return None
        endpoint_id = None
        if "id" not in keys:
            self.note(node, "endpoint entry without 'id' (a unique name, used in metrics)")
        else:
            id_node = keys["id"][1]
            endpoint_id = self.string(id_node, key(where, "id"))
            problem = None if endpoint_id is None else endpoint_id_problem(endpoint_id)
            if problem is not None:
                self.note(id_node, problem)
        if endpoint_id is not None:
            self._ids.append((endpoint_id, line_of(node)))
        label = f"endpoint {endpoint_id!r}" if endpoint_id else "endpoint entry"
        methods = self.methods(keys, node, where, label)
        path = self.path(keys, node, where, label)
        permissions = self.permission_list(keys, "permissions", where, label)
        any_of = self.permission_list(keys, "any_of", where, label)
        public = False
        public_unreadable = False  # already reported: no second problem about requirements
        if "public" in keys:
            value = self.boolean(keys["public"][1], key(where, "public"))
            public = value is True
            public_unreadable = value is None
        if not (public or public_unreadable or "permissions" in keys or "any_of" in keys):
            self.note(
                node,
                f"{label} does not say what it requires: add 'permissions' (a list; [] means "
                "any authenticated caller in tenant scope), 'any_of', or 'public: true' "
                "(forgetting the key must not open an endpoint)",
            )
        tenant = default_tenant
        tenant_where = key(where, "tenant")
        if public:
            for name in ("permissions", "any_of"):
                if name in keys:
                    self.note(
                        keys[name][0],
                        f"{label} is public: it must not list {name} "
                        "(public entries are forwarded without authentication)",
                    )
            tenant = NO_TENANT
            if "tenant" in keys:
                explicit = self.tenant(keys["tenant"][1], tenant_where, f"{label}: tenant")
                if explicit is not None and explicit != NO_TENANT:
                    self.note(keys["tenant"][0], f"{label} is public: it has no tenant")
        elif "tenant" in keys:
            explicit = self.tenant(keys["tenant"][1], tenant_where, f"{label}: tenant")
            tenant = explicit if explicit is not None else NO_TENANT
            if explicit is not None and path is not None:
                self.check_tenant_param(explicit, path, keys["tenant"][1], label, "its tenant")
        elif path is not None:
            self.check_tenant_param(tenant, path, keys["path"][1], label, "the default tenant")
        # An entry with other problems is still returned when id, method and path are
        # usable, so that overlaps are reported too; the map is never built while
        # any problem stands.
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
            line=line_of(node),
        )

    def methods(self, keys: Keys, node: yaml.Node, where: str, label: str) -> frozenset[str] | None:
        if "method" not in keys:
            self.note(node, f"{label}: missing 'method' (a method, a list of methods, or '*')")
            return None
        method_node = keys["method"][1]
        method_where = key(where, "method")
        items = [(method_where, method_node)]
        if isinstance(method_node, yaml.SequenceNode):
            items = [(item(method_where, i), n) for i, n in enumerate(method_node.value)]
            if not items:
                self.note(method_node, f"{label}: method list is empty")
                return None
        methods: set[str] = set()
        ok = True
        for item_where, item_node in items:
            name = self.string(item_node, item_where)
            problem = None if name is None else method_problem(name)
            if name is None:
                ok = False
            elif problem is not None:
                self.note(item_node, f"{label}: {problem}")
                ok = False
            else:
                methods.add(name)
        if ok and "*" in methods and len(items) > 1:
            self.note(method_node, f"{label}: '*' means every method; list it alone")
            ok = False
        return frozenset(methods) if ok else None

    def path(self, keys: Keys, node: yaml.Node, where: str, label: str) -> str | None:
        if "path" not in keys:
            self.note(node, f"{label}: missing 'path' (a template like /policy/{{tenantLocator}})")
            return None
        path_node = keys["path"][1]
        path = self.string(path_node, key(where, "path"))
        if path is None:
            return None
        problems = path_problems(path)
        for problem in problems:
            self.note(path_node, f"{label}: path {path!r} {problem}")
        return None if problems else path

    def permission_list(self, keys: Keys, name: str, where: str, label: str) -> tuple[str, ...]:
        if name not in keys:
            return ()
        list_node = keys[name][1]
        list_where = key(where, name)
        items = self.sequence(list_node, list_where)
        if items is None:
            return ()
        if name == "any_of" and not items:
            self.note(list_node, f"{label}: any_of is empty, so it could never be satisfied")
        result: list[str] = []
        for index, child in enumerate(items):
            text = self.string(child, item(list_where, index))
            if text is None:
                continue
            try:
                parse_permission(text)
            except InvalidPermission as exc:
                self.note(child, f"{label}: {name}: {exc}")
                continue
            if text in result:
                self.note(child, f"{label}: {name}: {text!r} is listed twice")
                continue
            result.append(text)
        return tuple(result)

    def check_tenant_param(
        self, tenant: TenantSource, path: str, node: yaml.Node, label: str, which: str
    ) -> None:
        if tenant.kind == "path_param" and not has_param(path, tenant.name):
            self.note(
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
                self.note(line, f"duplicate id {endpoint_id!r} (first used on line {first})")
        by_shape: dict[tuple[str | None, ...], list[Endpoint]] = {}
        for endpoint in endpoints:
            same_shape = by_shape.setdefault(shape(endpoint.path), [])
            for other in same_shape:
                common = overlap(endpoint, other)
                if common:
                    self.note(
                        endpoint.line,
                        f"endpoint {endpoint.id!r} ({', '.join(sorted(common))} "
                        f"{endpoint.path}) overlaps {other.id!r} on line {other.line} "
                        f"({other.path}): same method and same template shape, so a request "
                        "could match either",
                    )
                    break
            same_shape.append(endpoint)


def parse_map(text: str, source: str = "<map>") -> EndpointMap:
    """Validate and compile an endpoint map; raise :class:`MapError` with every problem.

    ``source`` is the file name used in ``FILE:LINE: ...`` and kept on the map.
    """
    root = compose(text, source, MapError)
    if root is None:
        raise MapError(
            [Problem("the endpoint map is empty (expected version, endpoints)", source, 1)]
        )
    parser = _Parser(source)
    result = parser.document(root, hashlib.sha256(text.encode("utf-8")).hexdigest())
    parser.check(MapError)
    assert result is not None  # no problem recorded: the map was built
    return result


def load_map(path: str | os.PathLike[str]) -> EndpointMap:
    """Read, validate and compile the map file at ``path`` (see :func:`parse_map`)."""
    source = os.fspath(path)
    return parse_map(read_file_text(source, "the endpoint map", MapError), source)
