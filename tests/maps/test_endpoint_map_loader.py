"""Endpoint map loading: every error with its line, defaults applied."""

from __future__ import annotations

import hashlib
from pathlib import Path
from textwrap import dedent

import pytest

from permgate.core.endpoints import NO_TENANT, EndpointMap, TenantSource
from permgate.core.errors import MapError
from permgate.core.permissions import DEFAULT_READ_ACTIONS
from permgate.maps.loader import load_map, parse_map

HEAD = """\
version: 1
defaults:
  tenant: {path_param: tenantLocator}
endpoints:
"""


def errors_of(text: str) -> list[str]:
    """The error lines a map text produces (it must produce some)."""
    with pytest.raises(MapError) as caught:
        parse_map(dedent(text), "m.yaml")
    return caught.value.errors


# Each case: a map with one problem, the line it must be reported on, and words the
# message must contain (naming the key or value and the problem).
ERROR_CASES = [
    ("version-not-1", "version: 2\nendpoints: []\n", 1, ["version", "must be 1"]),
    ("version-missing", "endpoints: []\n", 1, ["'version'", "missing"]),
    ("endpoints-missing", "version: 1\n", 1, ["'endpoints'", "missing"]),
    ("endpoints-not-list", "version: 1\nendpoints: {a: 1}\n", 2, ["endpoints", "a list"]),
    (
        "unknown-top-key",
        "version: 1\nendpoint: []\nendpoints: []\n",
        2,
        ["endpoint: unknown key (allowed: version,"],
    ),
    (
        "repeated-key",
        "version: 1\nversion: 1\nendpoints: []\n",
        2,
        ["version: repeated key (first on line 1)"],
    ),
    (
        "read-action-invalid",
        "version: 1\nread_actions: [read, 'bad act']\nendpoints: []\n",
        2,
        ["'bad act'", "read action"],
    ),
    (
        "read-actions-not-list",
        "version: 1\nread_actions: read\nendpoints: []\n",
        2,
        ["read_actions", "a list"],
    ),
    (
        "unmapped-invalid",
        "version: 1\nunmapped: allow\nendpoints: []\n",
        2,
        ["unmapped", "'allow'"],
    ),
    (
        "defaults-unknown-key",
        "version: 1\ndefaults:\n  tenants: none\nendpoints: []\n",
        3,
        ["defaults.tenants: unknown key (allowed: tenant)"],
    ),
    (
        "default-tenant-two-sources",
        "version: 1\ndefaults:\n  tenant: {header: X-T, claim: t}\nendpoints: []\n",
        3,
        ["defaults.tenant", "exactly one"],
    ),
    (
        "default-tenant-bad-kind",
        "version: 1\ndefaults:\n  tenant: {query: t}\nendpoints: []\n",
        3,
        ["defaults.tenant.query: unknown key"],
    ),
    (
        "tenant-bad-string",
        HEAD + "  - {id: a, method: GET, path: /a, tenant: nobody, permissions: []}\n",
        5,
        ["tenant", "'nobody'"],
    ),
    (
        "tenant-header-invalid-name",
        HEAD + "  - {id: a, method: GET, path: /a, tenant: {header: 'X T'}, permissions: []}\n",
        5,
        ["'X T'", "header"],
    ),
    (
        "entry-not-mapping",
        HEAD + "  - just-a-string\n",
        5,
        ["endpoints[0]: expected a mapping, got a string"],
    ),
    (
        "entry-unknown-key",
        HEAD + "  - id: a\n    method: GET\n    path: /a\n    tenant: none\n    perms: [a.b]\n"
        "    permissions: []\n",
        9,
        ["endpoints[0].perms: unknown key (allowed: id,"],
    ),
    (
        "id-missing",
        HEAD + "  - method: GET\n    path: /a\n    tenant: none\n    permissions: []\n",
        5,
        ["'id'"],
    ),
    (
        "id-not-string",
        HEAD + "  - id: [a]\n    method: GET\n    path: /a\n    tenant: none\n"
        "    permissions: []\n",
        5,
        ["id", "a string"],
    ),
    (
        "id-with-space",
        HEAD + "  - id: a b\n    method: GET\n    path: /a\n    tenant: none\n"
        "    permissions: []\n",
        5,
        ["'a b'", "metric label"],
    ),
    (
        "method-missing",
        HEAD + "  - id: a\n    path: /a\n    tenant: none\n    permissions: []\n",
        5,
        ["'a'", "'method'"],
    ),
    (
        "method-not-token",
        HEAD + "  - id: a\n    method: GET /x\n    path: /a\n    tenant: none\n"
        "    permissions: []\n",
        6,
        ["'GET /x'", "HTTP method"],
    ),
    (
        "method-star-in-list",
        HEAD + "  - id: a\n    method: [GET, '*']\n    path: /a\n    tenant: none\n"
        "    permissions: []\n",
        6,
        ["'*'", "alone"],
    ),
    (
        "method-empty-list",
        HEAD + "  - id: a\n    method: []\n    path: /a\n    tenant: none\n    permissions: []\n",
        6,
        ["method list is empty"],
    ),
    (
        "method-number",
        HEAD + "  - id: a\n    method: 5\n    path: /a\n    tenant: none\n    permissions: []\n",
        6,
        ["method", "an integer"],
    ),
    (
        "path-missing",
        HEAD + "  - id: a\n    method: GET\n    tenant: none\n    permissions: []\n",
        5,
        ["'path'"],
    ),
    (
        "path-no-slash",
        HEAD + "  - id: a\n    method: GET\n    path: a/b\n    tenant: none\n    permissions: []\n",
        7,
        ["'a/b'", "start with '/'"],
    ),
    (
        "path-empty-segment",
        HEAD + "  - id: a\n    method: GET\n    path: /a//b\n    tenant: none\n"
        "    permissions: []\n",
        7,
        ["'/a//b'", "empty segment"],
    ),
    (
        "path-trailing-slash",
        HEAD + "  - id: a\n    method: GET\n    path: /a/\n    tenant: none\n    permissions: []\n",
        7,
        ["'/a/'", "empty segment"],
    ),
    (
        "path-partial-param",
        HEAD + "  - id: a\n    method: GET\n    path: /a/x{id}\n    tenant: none\n"
        "    permissions: []\n",
        7,
        ["'x{id}'", "whole segment"],
    ),
    (
        "path-param-bad-name",
        HEAD + "  - id: a\n    method: GET\n    path: /a/{1x}\n    tenant: none\n"
        "    permissions: []\n",
        7,
        ["'{1x}'", "name"],
    ),
    (
        "path-duplicate-param",
        HEAD + "  - id: a\n    method: GET\n    path: /a/{x}/b/{x}\n    tenant: none\n"
        "    permissions: []\n",
        7,
        ["{x}", "twice"],
    ),
    (
        "permission-invalid",
        HEAD + "  - id: a\n    method: GET\n    path: /a\n    tenant: none\n"
        "    permissions: [quotes.read, quotesread]\n",
        9,
        ["'quotesread'", "'.'"],
    ),
    (
        "permission-wildcard",
        HEAD + "  - id: a\n    method: GET\n    path: /a\n    tenant: none\n"
        "    permissions:\n      - quotes.read\n      - quotes.*\n",
        11,
        ["'quotes.*'", "never contains '*'"],
    ),
    (
        "permission-repeated",
        HEAD + "  - id: a\n    method: GET\n    path: /a\n    tenant: none\n"
        "    permissions: [quotes.read, quotes.read]\n",
        9,
        ["'quotes.read'", "twice"],
    ),
    (
        "any-of-wildcard",
        HEAD + "  - id: a\n    method: GET\n    path: /a\n    tenant: none\n    any_of: ['*.*']\n",
        9,
        ["any_of", "'*.*'"],
    ),
    (
        "any-of-empty",
        HEAD + "  - id: a\n    method: GET\n    path: /a\n    tenant: none\n    any_of: []\n",
        9,
        ["any_of is empty"],
    ),
    (
        "permissions-not-list",
        HEAD + "  - id: a\n    method: GET\n    path: /a\n    tenant: none\n"
        "    permissions: quotes.read\n",
        9,
        ["permissions", "a list"],
    ),
    (
        "public-not-bool",
        HEAD + "  - id: a\n    method: GET\n    path: /a\n    tenant: none\n    public: 'maybe'\n",
        9,
        ["public", "true or false"],
    ),
    (
        "public-with-permissions",
        HEAD + "  - id: a\n    method: GET\n    path: /a\n    public: true\n"
        "    permissions: [quotes.read]\n",
        9,
        ["public", "must not list permissions"],
    ),
    (
        "public-with-any-of",
        HEAD + "  - id: a\n    method: GET\n    path: /a\n    public: true\n"
        "    any_of: [quotes.read]\n",
        9,
        ["public", "must not list any_of"],
    ),
    (
        "public-with-tenant",
        HEAD + "  - id: a\n    method: GET\n    path: /a/{tenantLocator}\n    public: true\n"
        "    tenant: {header: X-Tenant}\n",
        9,
        ["public", "no tenant"],
    ),
    (
        "explicit-tenant-param-not-in-path",
        HEAD + "  - id: a\n    method: GET\n    path: /a/{locator}\n"
        "    tenant: {path_param: tenant}\n    permissions: []\n",
        8,
        ["{tenant}", "'/a/{locator}'"],
    ),
    (
        "default-tenant-param-not-in-path",
        HEAD + "  - id: a\n    method: GET\n    path: /a/{locator}\n    permissions: []\n",
        7,
        ["default tenant", "{tenantLocator}", "'/a/{locator}'"],
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "words"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_error_is_reported_on_its_line(text: str, line: int, words: list[str]) -> None:
    """Each kind of mistake is reported as FILE:LINE: with a message naming the problem."""
    errors = errors_of(text)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"m.yaml:{line}: "), errors
    for word in words:
        assert word in errors[0], errors


CROSS_ENTRY_CASES = [
    (
        "duplicate-id",
        "  - {id: a, method: GET, path: /a, tenant: none, permissions: []}\n"
        "  - {id: a, method: GET, path: /b, tenant: none, permissions: []}\n",
        6,
        ["duplicate id 'a'", "line 5"],
    ),
    (
        "same-method-same-shape",
        "  - {id: a, method: GET, path: '/x/{p}', tenant: none, permissions: []}\n"
        "  - {id: b, method: [POST, GET], path: '/x/{q}', tenant: none, permissions: []}\n",
        6,
        ["'b'", "overlaps 'a'", "line 5", "same template shape"],
    ),
    (
        "star-overlaps-any-method",
        "  - {id: a, method: DELETE, path: '/x/{p}/y', tenant: none, permissions: []}\n"
        "  - {id: b, method: '*', path: '/x/{q}/y', tenant: none, permissions: []}\n",
        6,
        ["'b'", "overlaps 'a'"],
    ),
]


@pytest.mark.parametrize(
    ("entries", "line", "words"),
    [c[1:] for c in CROSS_ENTRY_CASES],
    ids=[c[0] for c in CROSS_ENTRY_CASES],
)
def test_cross_entry_error_is_reported_on_the_later_entry(
    entries: str, line: int, words: list[str]
) -> None:
    """Duplicate ids and same-shape overlaps name both entries and the later one's line."""
    errors = errors_of(HEAD + entries)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"m.yaml:{line}: "), errors
    for word in words:
        assert word in errors[0], errors


SHAPE_CASES = [
    ("literal-vs-param", "/x/list", "/x/{p}"),
    ("different-depth", "/x/{p}", "/x/{p}/y"),
    ("different-literal", "/x/{p}/a", "/x/{p}/b"),
    ("param-at-other-position", "/{p}/x", "/x/{p}"),
]


@pytest.mark.parametrize(
    ("first", "second"), [c[1:] for c in SHAPE_CASES], ids=[c[0] for c in SHAPE_CASES]
)
def test_templates_of_different_shapes_may_coexist(first: str, second: str) -> None:
    """Only the SAME shape is an overlap: literal-beats-parameter settles the rest."""
    text = (
        HEAD
        + f"  - {{id: a, method: GET, path: '{first}', tenant: none, permissions: []}}\n"
        + f"  - {{id: b, method: GET, path: '{second}', tenant: none, permissions: []}}\n"
    )
    assert len(parse_map(text).endpoints) == 2


def test_same_shape_with_disjoint_methods_is_fine() -> None:
    """Two entries of the same shape but different methods do not overlap."""
    text = (
        HEAD
        + "  - {id: a, method: GET, path: '/x/{p}', tenant: none, permissions: []}\n"
        + "  - {id: b, method: [POST, PUT], path: '/x/{q}', tenant: none, permissions: []}\n"
    )
    assert [e.id for e in parse_map(text).endpoints] == ["a", "b"]


def test_yaml_syntax_error_names_its_line() -> None:
    """A YAML syntax error is one error on the line where the parser stopped."""
    errors = errors_of(HEAD + "  - id: a\n    method: [GET\n    path: /a\n")
    assert len(errors) == 1
    assert errors[0].startswith("m.yaml:7: YAML syntax error"), errors


@pytest.mark.parametrize(
    "text", ["", "\n", "# only a comment\n"], ids=["empty", "blank", "comment"]
)
def test_empty_map_is_an_error(text: str) -> None:
    """An empty file is refused rather than loaded as a map with no endpoints."""
    assert errors_of(text) == ["m.yaml:1: the endpoint map is empty (expected version, endpoints)"]


def test_top_level_must_be_a_mapping() -> None:
    """A list at the top is reported as the wrong type."""
    assert errors_of("- a\n- b\n") == ["m.yaml:1: the endpoint map: expected a mapping, got a list"]


def test_every_error_is_reported_in_line_order() -> None:
    """A map with several problems reports all of them at once, sorted by line."""
    text = dedent("""\
        version: 3
        unmapped: never
        endpoints:
          - id: a
            method: GET
            path: /a/{x}
            permissions: [bad]
          - id: a
            method: GET
            path: /b
            extra: true
            permissions: []
          - id: c
            method: GET
            path: /c/{tenantLocator}
            tenant: {path_param: nope}
            permissions: []
        """)
    errors = errors_of(text)
    assert [e.split(":")[1] for e in errors] == ["1", "2", "7", "8", "11", "16"], errors
    assert "duplicate id 'a'" in errors[3]


def test_entry_with_other_errors_still_counts_for_duplicates() -> None:
    """A broken entry still takes part in the duplicate-id check, so nothing hides."""
    text = (
        HEAD
        + "  - {id: a, method: GET, path: /a, tenant: none, permissions: [x]}\n"
        + "  - {id: a, method: GET, path: /b, tenant: none, permissions: []}\n"
    )
    errors = errors_of(text)
    assert [e.split(":")[1] for e in errors] == ["5", "6"], errors


VALID = dedent("""\
    version: 1
    read_actions: [read, peek]
    defaults:
      tenant: {path_param: tenantLocator}
    unmapped: passthrough
    endpoints:
      - id: quotes.create
        method: POST
        path: /policy/{tenantLocator}/quotes
        permissions: [quotes.write]
        any_of: [quotes.create, quotes.issue]
      - id: tokens.create
        method: [POST, PUT]
        path: /auth/tokens
        permissions: [authTokens.write]
        tenant: none
      - id: by-header
        method: GET
        path: /h/{x}
        tenant: {header: X-Tenant}
        permissions: []
      - id: by-claim
        method: "*"
        path: /c
        tenant: {claim: tenant}
        permissions: []
      - id: health
        method: GET
        path: /
        public: true
    """)


def test_valid_map_fields() -> None:
    """Top-level settings are read as written, and the source and sha256 are kept."""
    endpoint_map = parse_map(VALID, "valid.yaml")
    assert endpoint_map.version == 1
    assert endpoint_map.read_actions == frozenset({"read", "peek"})
    assert endpoint_map.default_tenant == TenantSource("path_param", "tenantLocator")
    assert endpoint_map.unmapped == "passthrough"
    assert endpoint_map.source == "valid.yaml"
    assert endpoint_map.sha256 == hashlib.sha256(VALID.encode()).hexdigest()


def test_valid_map_entries() -> None:
    """Methods are kept as written, tenants default or override, public entries have none."""
    by_id = {e.id: e for e in parse_map(VALID).endpoints}
    create = by_id["quotes.create"]
    assert create.methods == frozenset({"POST"})
    assert create.permissions == ("quotes.write",)
    assert create.any_of == ("quotes.create", "quotes.issue")
    assert create.tenant == TenantSource("path_param", "tenantLocator")
    assert create.line == 7
    assert by_id["tokens.create"].methods == frozenset({"POST", "PUT"})
    assert by_id["tokens.create"].tenant == NO_TENANT
    assert by_id["by-header"].tenant == TenantSource("header", "X-Tenant")
    assert by_id["by-claim"].tenant == TenantSource("claim", "tenant")
    assert by_id["by-claim"].methods == frozenset({"*"})
    health = by_id["health"]
    assert (health.public, health.tenant, health.permissions, health.any_of) == (
        True,
        NO_TENANT,
        (),
        (),
    )


def test_defaults_when_absent() -> None:
    """Without read_actions, defaults and unmapped: the documented defaults apply."""
    endpoint_map = parse_map(
        "version: 1\nendpoints:\n  - {id: a, method: GET, path: '/a/{x}', permissions: []}\n"
    )
    assert endpoint_map.read_actions == DEFAULT_READ_ACTIONS
    assert endpoint_map.default_tenant == NO_TENANT
    assert endpoint_map.unmapped == "deny"
    assert endpoint_map.endpoints[0].tenant == NO_TENANT


def test_tenant_null_means_none() -> None:
    """``tenant: null`` is the same as ``tenant: none``."""
    entry = "  - {id: a, method: GET, path: /a, tenant: null, permissions: []}\n"
    endpoint_map = parse_map(HEAD + entry)
    assert endpoint_map.endpoints[0].tenant == NO_TENANT


def test_get_and_permissions() -> None:
    """get() finds entries by id; permissions() lists every distinct required permission."""
    endpoint_map = parse_map(VALID)
    assert endpoint_map.get("health") is not None
    assert endpoint_map.get("nope") is None
    assert endpoint_map.permissions() == frozenset(
        {"quotes.write", "quotes.create", "quotes.issue", "authTokens.write"}
    )


def test_map_is_immutable() -> None:
    """A loaded map cannot be changed underneath the decision cache."""
    endpoint_map = parse_map(VALID)
    with pytest.raises(AttributeError):
        endpoint_map.unmapped = "deny"  # type: ignore[misc]


def test_direct_construction_compiles_the_matcher() -> None:
    """An EndpointMap built in code (no YAML) routes like a loaded one."""
    endpoint_map = EndpointMap(endpoints=parse_map(VALID).endpoints)
    found = endpoint_map.match("POST", "/policy/t1/quotes")
    assert found is not None and found.endpoint.id == "quotes.create"


def test_load_map_reads_the_file(tmp_path: Path) -> None:
    """load_map names errors after the path it was given and hashes the file's bytes."""
    path = tmp_path / "map.yaml"
    path.write_text(VALID, encoding="utf-8")
    endpoint_map = load_map(path)
    assert endpoint_map.source == str(path)
    assert endpoint_map.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_map_missing_file(tmp_path: Path) -> None:
    """A missing file is a MapError naming the file, not an OSError."""
    path = tmp_path / "absent.yaml"
    with pytest.raises(MapError) as caught:
        load_map(path)
    assert caught.value.errors == [
        f"{path}: cannot read the endpoint map: No such file or directory"
    ]


def test_load_map_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is reported with the line of the first bad byte."""
    path = tmp_path / "map.yaml"
    path.write_bytes(b"version: 1\n# caf\xe9\nendpoints: []\n")
    with pytest.raises(MapError) as caught:
        load_map(path)
    assert caught.value.errors == [f"{path}:2: the endpoint map is not UTF-8 text"]
