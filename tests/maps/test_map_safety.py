"""Map safety: mistakes in a map or a policy that would silently open or close doors.

An entry must say what it requires and name its methods in upper case (load errors
with their line); ``import-openapi`` can be told which path parameter carries the
tenant, and warns when no operation has one; ``apply`` warns about role grants that
no endpoint of the configured map can use. Commands run through the real CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from permgate.cli import main
from permgate.core.endpoints import TenantSource
from permgate.core.errors import MapError
from permgate.maps.loader import load_map, parse_map

REPO = Path(__file__).resolve().parents[2]

HEAD = "version: 1\ndefaults:\n  tenant: {path_param: tenantLocator}\nendpoints:\n"


def errors_of(text: str) -> list[str]:
    """The error lines a map text produces (it must produce some)."""
    with pytest.raises(MapError) as caught:
        parse_map(text, "m.yaml")
    return caught.value.errors


# --------------------------------------------------------------------------- the loader

# (id, entries after HEAD, line of the one error, words the message must contain)
LOADER_ERRORS = [
    (
        "no-requirement-key-block",
        "  - id: a\n    method: GET\n    path: /a\n    tenant: none\n",
        5,
        ["endpoint 'a'", "'permissions'", "'any_of'", "'public: true'", "must not open"],
    ),
    (
        "no-requirement-key-flow",
        "  - {id: ok, method: GET, path: /ok, tenant: none, permissions: []}\n"
        "  - {id: b, method: POST, path: /b, tenant: none}\n",
        6,
        ["endpoint 'b'", "does not say what it requires"],
    ),
    (
        "public-false-is-no-requirement",
        "  - id: a\n    method: GET\n    path: /a\n    tenant: none\n    public: false\n",
        5,
        ["endpoint 'a'", "does not say what it requires"],
    ),
    (
        "only-a-tenant-is-no-requirement",
        "  - id: a\n    method: GET\n    path: /a/{tenantLocator}\n",
        5,
        ["endpoint 'a'", "does not say what it requires"],
    ),
    (
        "lower-case-method",
        "  - id: a\n    method: get\n    path: /a\n    tenant: none\n    permissions: []\n",
        6,
        ["method 'get'", "upper case", "'GET'", "never match"],
    ),
    (
        "mixed-case-method",
        "  - id: a\n    method: Post\n    path: /a\n    tenant: none\n    permissions: []\n",
        6,
        ["method 'Post'", "upper case", "'POST'"],
    ),
    (
        "lower-case-method-in-a-list",
        "  - id: a\n    method:\n      - GET\n      - delete\n    path: /a\n    tenant: none\n"
        "    permissions: []\n",
        8,
        ["method 'delete'", "'DELETE'"],
    ),
]


@pytest.mark.parametrize(
    ("entries", "line", "words"),
    [c[1:] for c in LOADER_ERRORS],
    ids=[c[0] for c in LOADER_ERRORS],
)
def test_unsafe_entry_is_a_load_error_on_its_line(
    entries: str, line: int, words: list[str]
) -> None:
    """An entry that says nothing about what it requires, or names a method in lower
    case, is one FILE:LINE error naming the entry and the fix."""
    errors = errors_of(HEAD + entries)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"m.yaml:{line}: "), errors
    for word in words:
        assert word in errors[0], errors


def test_every_unsafe_entry_is_reported_at_once() -> None:
    """Several unsafe entries give one error each, in line order, and no map."""
    entries = (
        "  - {id: a, method: GET, path: /a, tenant: none}\n"
        "  - {id: b, method: put, path: /b, tenant: none, permissions: []}\n"
        "  - {id: c, method: GET, path: /c, tenant: none}\n"
    )
    errors = errors_of(HEAD + entries)
    assert [error.split(":")[1] for error in errors] == ["5", "6", "7"], errors


# (id, entry, (permissions, any_of, public) of the loaded entry)
REQUIREMENTS = [
    ("empty-permissions", "permissions: []", ((), (), False)),
    ("permissions", "permissions: [quotes.read]", (("quotes.read",), (), False)),
    (
        "any-of",
        "any_of: [quotes.write, quotes.create]",
        ((), ("quotes.write", "quotes.create"), False),
    ),
    ("public", "public: true", ((), (), True)),
]


@pytest.mark.parametrize(
    ("requirement", "loaded"), [c[1:] for c in REQUIREMENTS], ids=[c[0] for c in REQUIREMENTS]
)
def test_each_way_of_saying_what_an_entry_requires_loads(
    requirement: str, loaded: tuple[Any, ...]
) -> None:
    """permissions (even []), any_of or public: true are each enough."""
    entry = f"  - {{id: a, method: GET, path: /a, tenant: none, {requirement}}}\n"
    (endpoint,) = parse_map(HEAD + entry).endpoints
    assert (endpoint.permissions, endpoint.any_of, endpoint.public) == loaded


def test_upper_case_methods_are_kept_and_matched_exactly() -> None:
    """A method is kept as written; a request with another case does not match it."""
    entry = "  - {id: a, method: [GET, PURGE], path: /a, tenant: none, permissions: []}\n"
    endpoint_map = parse_map(HEAD + entry)
    assert endpoint_map.endpoints[0].methods == frozenset({"GET", "PURGE"})
    assert endpoint_map.match("PURGE", "/a") is not None
    assert endpoint_map.match("purge", "/a") is None


SHIPPED_MAPS = [
    ("repository-map", REPO / "endpoint_map.yaml"),
    ("admin-map", REPO / "src" / "permgate" / "admin" / "admin_map.yaml"),
]


@pytest.mark.parametrize("path", [c[1] for c in SHIPPED_MAPS], ids=[c[0] for c in SHIPPED_MAPS])
def test_shipped_maps_say_what_every_entry_requires(path: Path) -> None:
    """The maps permgate ships load under the stricter rules."""
    assert load_map(path).endpoints


def test_check_map_reports_the_missing_requirement(tmp_path: Path) -> None:
    """`permgate check-map` on a map with a forgotten key: exit 1, FILE:LINE, no traceback."""
    path = tmp_path / "map.yaml"
    path.write_text(HEAD + "  - id: a\n    method: get\n    path: /a/{tenantLocator}\n")
    done = run_cli("check-map", str(path))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"{path}:5: endpoint 'a' does not say what it requires"), lines
    assert lines[1].startswith(f"{path}:6: endpoint 'a': method 'get' must be upper case"), lines


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``python -m permgate ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "permgate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --------------------------------------------------------------------------- import-openapi


def secured(op_id: str, *actions: str) -> dict[str, Any]:
    """An operation secured the insurance platform's way."""
    return {
        "operationId": op_id,
        "x-securityGroup": "quotes",
        "x-securityPermission": list(actions),
    }


def write_spec(tmp_path: Path, paths: dict[str, dict[str, Any]]) -> Path:
    """An OpenAPI document with these paths, as a file."""
    spec = {"openapi": "3.0.1", "info": {"title": "Test API", "version": "1"}, "paths": paths}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


TENANT_SPEC = {
    "/quotes/{tenant}/list": {"get": secured("quotes.list", "read")},
    "/quotes/{tenant}/{locator}": {"post": secured("quotes.update", "write")},
    "/health": {
        "get": {
            "operationId": "health",
            "x-securityGroup": "public",
            "x-securityPermission": ["public"],
        }
    },
    "/auth/tokens": {"post": secured("tokens.create", "write")},
}


def test_tenant_param_names_the_spec_tenant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --tenant-param tenant, a spec using {tenant} gets it as the default tenant:
    its entries are tenant-scoped, the others have none, and nothing is warned."""
    spec = write_spec(tmp_path, TENANT_SPEC)
    out_path = tmp_path / "map.yaml"
    assert main(["import-openapi", str(spec), "--tenant-param", "tenant", "-o", str(out_path)]) == 0
    assert capsys.readouterr().err == ""
    endpoint_map = load_map(out_path)
    assert endpoint_map.default_tenant == TenantSource("path_param", "tenant")
    tenants = {e.id: e.tenant.kind for e in endpoint_map.endpoints}
    assert tenants == {
        "quotes.list": "path_param",
        "quotes.update": "path_param",
        "health": "none",
        "tokens.create": "none",
    }
    assert endpoint_map.match("GET", "/quotes/acme/list") is not None


def test_several_tenant_params_first_is_the_default(tmp_path: Path) -> None:
    """Repeated --tenant-param: the first is the default, an operation with only a later
    one names it, and one with both takes the first given."""
    spec = write_spec(
        tmp_path,
        {
            "/a/{tenantLocator}": {"get": secured("a", "read")},
            "/b/{tenant}": {"get": secured("b", "read")},
            "/c/{tenant}/{tenantLocator}": {"get": secured("c", "read")},
        },
    )
    done = run_cli(
        "import-openapi", str(spec), "--tenant-param", "tenantLocator", "--tenant-param", "tenant"
    )
    assert done.returncode == 0, done.stderr
    endpoint_map = parse_map(done.stdout)
    assert {e.id: e.tenant for e in endpoint_map.endpoints} == {
        "a": TenantSource("path_param", "tenantLocator"),
        "b": TenantSource("path_param", "tenant"),
        "c": TenantSource("path_param", "tenantLocator"),
    }
    assert "without a {tenantLocator} or {tenant} path parameter" in done.stdout


def test_spec_without_the_tenant_param_is_warned_about(tmp_path: Path) -> None:
    """The default name on a spec that uses {tenant}: the map is still written (exit 0),
    but stderr says no entry checks a tenant, and names the parameter that looks like one."""
    spec = write_spec(tmp_path, TENANT_SPEC)
    done = run_cli("import-openapi", str(spec))
    assert done.returncode == 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"{spec}: warning: no operation has a {{tenantLocator}}")
    assert "--tenant-param NAME" in done.stderr
    assert "(this spec has {tenant})" in done.stderr
    assert all(e.tenant.kind == "none" for e in parse_map(done.stdout).endpoints)


def test_spec_with_no_tenant_at_all_is_warned_without_a_guess(tmp_path: Path) -> None:
    """No parameter mentions a tenant: the warning still comes, with no suggestion."""
    spec = write_spec(tmp_path, {"/quotes/{locator}": {"get": secured("q", "read")}})
    done = run_cli("import-openapi", str(spec), "--tenant-param", "org")
    assert done.returncode == 0
    assert "no operation has a {org} path parameter" in done.stderr
    assert "this spec has" not in done.stderr


def test_bad_tenant_param_is_one_line(tmp_path: Path) -> None:
    """A --tenant-param that is not a parameter name is one line, exit 1, no map."""
    spec = write_spec(tmp_path, TENANT_SPEC)
    done = run_cli("import-openapi", str(spec), "--tenant-param", "{tenant}")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "--tenant-param '{tenant}': not a path parameter name (letters, digits and '_', "
        "not starting with a digit, without braces)\n"
    )


def test_shipped_map_regenerates_byte_for_byte_with_the_default() -> None:
    """The default stays tenantLocator: the shipped map is the spec's output, unwarned."""
    done = run_cli("import-openapi", "spec/socotra-openapi.json")
    assert done.returncode == 0
    assert done.stderr == ""
    assert done.stdout == (REPO / "endpoint_map.yaml").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- apply

APPLY_MAP = HEAD + textwrap.dedent(
    """\
      - {id: claims.get, method: GET, path: "/claims/{tenantLocator}/{id}",
         permissions: [claims.read]}
      - {id: quotes.price, method: POST, path: "/quotes/{tenantLocator}/{id}/price",
         any_of: [quotes.price, quotes.write]}
    """
)
APPLY_POLICY = textwrap.dedent(
    """\
    accounts:
      - id: acme
        tenants:
          - {id: acme-prod, type: PRODUCTION}
        roles:
          - name: adjuster
            permissions: [claims.read, claim.read, quotes.*, quote.*, "*.*", zzz.qqq]
        principals:
          - id: alice
            roles: [adjuster]
    """
)


@pytest.fixture
def apply_files(tmp_path: Path) -> Path:
    """A policy, a map, and a config naming the map and a SQLite store."""
    (tmp_path / "map.yaml").write_text(APPLY_MAP, encoding="utf-8")
    (tmp_path / "policy.yaml").write_text(APPLY_POLICY, encoding="utf-8")
    (tmp_path / "permgate.yaml").write_text(
        f"endpoint_map: {tmp_path / 'map.yaml'}\nstore: sqlite://{tmp_path / 'p.db'}\n"
        "audit: {sink: stdout}\n",
        encoding="utf-8",
    )
    return tmp_path


def test_apply_warns_about_grants_no_endpoint_uses(apply_files: Path) -> None:
    """`permgate apply` names the role and each unusable grant, suggests the permission
    or group the map does have, still applies (exit 0), and says nothing of the grants
    an endpoint can use (exact, group.* of an existing group, *.*)."""
    policy = apply_files / "policy.yaml"
    done = run_cli("apply", str(policy), "--config", str(apply_files / "permgate.yaml"))
    assert done.returncode == 0, done.stderr
    assert "+ role adjuster" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if ": warning: " in line]
    where = f"{policy}:6: warning: role 'adjuster' of account 'acme' grants"
    requires = f"which no endpoint of {apply_files / 'map.yaml'} requires"
    assert warnings == [
        f"{where} 'claim.read', {requires} (did you mean 'claims.read'?)",
        f"{where} 'quote.*', {requires} (did you mean 'quotes.*'?)",
        f"{where} 'zzz.qqq', {requires}",
    ]


def test_apply_without_a_readable_map_says_the_grants_were_not_checked(
    apply_files: Path,
) -> None:
    """A missing map does not stop apply; one line says the grants went unchecked."""
    (apply_files / "map.yaml").unlink()
    done = run_cli(
        "apply", str(apply_files / "policy.yaml"), "--config", str(apply_files / "permgate.yaml")
    )
    assert done.returncode == 0, done.stderr
    assert "permgate apply: warning: role grants not checked against the endpoint map: " in (
        done.stderr
    )
    assert "cannot read the endpoint map" in done.stderr
    assert "Traceback" not in done.stderr
