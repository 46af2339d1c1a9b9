"""OpenAPI import: operations become map entries; --check finds drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from permgate.core.endpoints import NO_TENANT, TenantSource
from permgate.maps.loader import load_map, parse_map
from permgate.maps.openapi_import import (
    Operation,
    SpecError,
    diff_map,
    generate,
    operations,
    read_spec,
    render_map,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED_MAP = REPO / "endpoint_map.yaml"
SOCOTRA_SPEC = REPO / "spec" / "socotra-openapi.json"


def spec_of(*operations_: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """A minimal OpenAPI document from (method, path, operation) triples."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, operation in operations_:
        paths.setdefault(path, {})[method] = operation
    return {"openapi": "3.0.1", "info": {"title": "Test API", "version": "1"}, "paths": paths}


def secured(op_id: str, group: str, *actions: str) -> dict[str, Any]:
    return {"operationId": op_id, "x-securityGroup": group, "x-securityPermission": list(actions)}


ACTION_CASES = [
    ("one-action", ("read",), ("quotes.read",), (), False),
    ("several-actions-any-of", ("write", "create"), (), ("quotes.write", "quotes.create"), False),
]


@pytest.mark.parametrize(
    ("actions", "permissions", "any_of", "public"),
    [c[1:] for c in ACTION_CASES],
    ids=[c[0] for c in ACTION_CASES],
)
def test_security_actions_become_permissions_or_any_of(
    actions: tuple[str, ...], permissions: tuple[str, ...], any_of: tuple[str, ...], public: bool
) -> None:
    """One action is required outright; several mean any one of them (any_of)."""
    spec = spec_of(("post", "/policy/{tenantLocator}/quotes", secured("q", "quotes", *actions)))
    (operation,) = operations(spec)
    assert (operation.permissions, operation.any_of, operation.public) == (
        permissions,
        any_of,
        public,
    )


def test_public_public_becomes_public() -> None:
    """``public.public`` operations are forwarded without authentication."""
    spec = spec_of(("get", "/policy/events", secured("events", "public", "public")))
    text = render_map(spec, "s.json", operations(spec))
    entry = parse_map(text).endpoints[0]
    assert (entry.public, entry.permissions, entry.any_of, entry.tenant) == (
        True,
        (),
        (),
        NO_TENANT,
    )


def test_x_permissions_are_all_required() -> None:
    """A plain ``x-permissions`` list becomes ``permissions`` (every one required)."""
    op = {"operationId": "pay", "x-permissions": ["payments.write", "invoices.read"]}
    (operation,) = operations(spec_of(("post", "/pay", op)))
    assert operation.permissions == ("payments.write", "invoices.read")
    assert operation.any_of == ()


def test_empty_x_permissions_means_authentication_only() -> None:
    """An empty ``x-permissions`` list is kept as ``permissions: []`` in the map."""
    spec = spec_of(("get", "/me", {"operationId": "me", "x-permissions": []}))
    text = render_map(spec, "s.json", operations(spec))
    assert "    permissions: []\n" in text
    assert parse_map(text).endpoints[0].permissions == ()


TENANT_CASES = [
    (
        "tenant-path-param",
        "/policy/{tenantLocator}/quotes",
        TenantSource("path_param", "tenantLocator"),
    ),
    ("no-tenant-param", "/auth/users/{locator}", NO_TENANT),
]


@pytest.mark.parametrize(
    ("path", "tenant"), [c[1:] for c in TENANT_CASES], ids=[c[0] for c in TENANT_CASES]
)
def test_tenant_comes_from_tenant_locator_or_is_none(path: str, tenant: TenantSource) -> None:
    """Paths with {tenantLocator} use the default tenant; others get ``tenant: none``."""
    spec = spec_of(("get", path, secured("op", "quotes", "read")))
    entry = parse_map(render_map(spec, "s.json", operations(spec))).endpoints[0]
    assert entry.tenant == tenant


SPEC_ERROR_CASES = [
    ("missing-operation-id", {"x-permissions": ["a.read"]}, "operationId is missing"),
    ("no-security-at-all", {"operationId": "op"}, "no x-securityGroup"),
    ("invalid-permission", {"operationId": "op", "x-permissions": ["a.*"]}, "'a.*'"),
    (
        "group-without-actions",
        {"operationId": "op", "x-securityGroup": "quotes"},
        "x-securityPermission",
    ),
]


@pytest.mark.parametrize(
    ("operation", "words"),
    [c[1:] for c in SPEC_ERROR_CASES],
    ids=[c[0] for c in SPEC_ERROR_CASES],
)
def test_spec_errors_name_the_operation(operation: dict[str, Any], words: str) -> None:
    """An operation the map cannot express is an error naming its method and path."""
    with pytest.raises(SpecError) as caught:
        operations(spec_of(("get", "/things/{id}", operation)), "s.json")
    (error,) = caught.value.errors
    assert error.startswith("s.json: ")
    assert "GET /things/{id}" in error
    assert words in error


def test_duplicate_operation_id_is_an_error() -> None:
    """Two operations with one operationId cannot both become map entries."""
    spec = spec_of(
        ("get", "/a", {"operationId": "same", "x-permissions": []}),
        ("get", "/b", {"operationId": "same", "x-permissions": []}),
    )
    with pytest.raises(SpecError) as caught:
        operations(spec, "s.json")
    assert caught.value.errors == ["s.json: operationId 'same' is used twice (GET /a and GET /b)"]


def test_every_spec_error_is_reported() -> None:
    """Errors on several operations are all reported together."""
    spec = spec_of(("get", "/a", {}), ("post", "/b", {"operationId": "b"}))
    with pytest.raises(SpecError) as caught:
        operations(spec, "s.json")
    assert len(caught.value.errors) == 2


def test_operations_keep_document_order() -> None:
    """Entries follow the document (paths, then methods within a path), for stable diffs."""
    spec = spec_of(
        ("post", "/z", {"operationId": "z-post", "x-permissions": []}),
        ("get", "/z", {"operationId": "z-get", "x-permissions": []}),
        ("get", "/a", {"operationId": "a-get", "x-permissions": []}),
    )
    spec["paths"]["/z"]["parameters"] = []  # path-level keys that are not operations
    assert [op.id for op in operations(spec)] == ["z-post", "z-get", "a-get"]


def test_rendered_map_header_and_layout() -> None:
    """The output says it is generated and from what, and lists permissions inline."""
    spec = spec_of(("get", "/policy/{tenantLocator}/q", secured("q.get", "quotes", "read", "list")))
    text = render_map(spec, "s.json", operations(spec))
    assert text.startswith("# Generated by `permgate import-openapi` from s.json (Test API 1).")
    assert "Do not edit by hand" in text
    assert (
        "  - id: q.get\n"
        "    method: GET\n"
        "    path: /policy/{tenantLocator}/q\n"
        "    any_of: [quotes.read, quotes.list]\n"
    ) in text


def test_awkward_strings_are_quoted() -> None:
    """An id or path that YAML would misread is quoted, so the map reads back the same."""
    spec = spec_of(("get", "/yes: no", {"operationId": "true", "x-permissions": []}))
    text = render_map(spec, "s.json", operations(spec))
    assert '    path: "/yes: no"\n' in text
    entry = parse_map(text).endpoints[0]
    assert (entry.id, entry.path) == ("true", "/yes: no")


def test_read_spec_accepts_yaml(tmp_path: Path) -> None:
    """A YAML OpenAPI document is read as well as a JSON one."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_of(("get", "/a", secured("a", "g", "read")))))
    assert [op.id for op in operations(read_spec(path))] == ["a"]


def test_read_spec_rejects_non_openapi(tmp_path: Path) -> None:
    """A document without ``paths`` is refused with the file's name."""
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(SpecError, match=r"x\.json: not an OpenAPI document"):
        read_spec(path)


# ------------------------------------------------------------------ --check


BASE = [
    ("get", "/policy/{tenantLocator}/q/{locator}", secured("fetchQuote", "quotes", "read")),
    ("post", "/policy/{tenantLocator}/q", secured("createQuote", "quotes", "write", "create")),
    ("get", "/policy/events", secured("events", "public", "public")),
]


def map_for(spec: dict[str, Any]) -> Any:
    return parse_map(render_map(spec, "s.json", operations(spec)), "map.yaml")


def test_check_in_sync() -> None:
    """A map generated from the spec has no differences from it."""
    spec = spec_of(*BASE)
    assert diff_map(operations(spec), map_for(spec)) == []


DRIFT_CASES = [
    (
        "operation-missing-from-map",
        [
            *BASE,
            (
                "delete",
                "/policy/{tenantLocator}/q/{locator}",
                secured("dropQuote", "quotes", "write"),
            ),
        ],
        BASE,
        ["missing from the map: dropQuote (DELETE /policy/{tenantLocator}/q/{locator})"],
    ),
    (
        "entry-no-longer-in-spec",
        BASE[:2],
        BASE,
        ["not in the spec: events (GET /policy/events, map.yaml:"],
    ),
    (
        "permissions-differ",
        [
            BASE[0],
            ("post", "/policy/{tenantLocator}/q", secured("createQuote", "quotes", "write")),
            BASE[2],
        ],
        BASE,
        [
            "differs: createQuote: permissions is [] in the map, [quotes.write] in the spec",
            "differs: createQuote: any_of is [quotes.create, quotes.write] in the map, "
            "[] in the spec",
        ],
    ),
    (
        "public-differs",
        [BASE[0], BASE[1], ("get", "/policy/events", secured("events", "quotes", "read"))],
        BASE,
        [
            "differs: events: public is true in the map, false in the spec",
            "differs: events: permissions is [] in the map, [quotes.read] in the spec",
        ],
    ),
    (
        "method-and-path-differ",
        [
            (
                "put",
                "/policy/{tenantLocator}/quote/{locator}",
                secured("fetchQuote", "quotes", "read"),
            ),
            *BASE[1:],
        ],
        BASE,
        [
            "differs: fetchQuote: method is GET in the map, PUT in the spec",
            "differs: fetchQuote: path is /policy/{tenantLocator}/q/{locator} in the map, "
            "/policy/{tenantLocator}/quote/{locator} in the spec",
        ],
    ),
]


@pytest.mark.parametrize(
    ("spec_ops", "map_ops", "expected"),
    [c[1:] for c in DRIFT_CASES],
    ids=[c[0] for c in DRIFT_CASES],
)
def test_check_reports_drift(spec_ops: list[Any], map_ops: list[Any], expected: list[str]) -> None:
    """Each kind of drift between spec and map is one line naming the operation."""
    differences = diff_map(operations(spec_of(*spec_ops)), map_for(spec_of(*map_ops)))
    assert len(differences) == len(expected), differences
    for line, wanted in zip(differences, expected, strict=True):
        assert line.startswith(wanted), differences


def test_check_ignores_permission_order() -> None:
    """Listing the same permissions in another order is not drift."""
    spec = spec_of(BASE[1])
    reordered = Operation(
        "createQuote", "POST", "/policy/{tenantLocator}/q", any_of=("quotes.create", "quotes.write")
    )
    assert diff_map([reordered], map_for(spec)) == []


# ------------------------------------------------------------------ the shipped map


def test_shipped_map_is_regenerated_byte_for_byte() -> None:
    """endpoint_map.yaml is exactly what import-openapi makes of the reference spec."""
    text, count = generate(SOCOTRA_SPEC)
    assert count == 722
    assert text == SHIPPED_MAP.read_text(encoding="utf-8"), (
        "endpoint_map.yaml is stale: run permgate import-openapi "
        "spec/socotra-openapi.json -o endpoint_map.yaml"
    )


def test_shipped_map_shape() -> None:
    """The shipped map has every operation, its public catalogs and any_of entries."""
    endpoint_map = load_map(SHIPPED_MAP)
    assert len(endpoint_map.endpoints) == 722
    assert sum(e.public for e in endpoint_map.endpoints) == 9
    whoami = endpoint_map.get("fetchMyUserDetails")
    assert whoami is not None and whoami.permissions == ("users.custom",)
    assert whoami.tenant == NO_TENANT
    # 258 distinct permissions in the spec, minus public.public, which is not required
    assert len(endpoint_map.permissions()) == 257
