"""Routing: literal beats parameter, exact method beats "*", HEAD is GET."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from permgate.core.endpoints import Endpoint, EndpointMap
from permgate.maps.loader import load_map, parse_map

SHIPPED_MAP = Path(__file__).resolve().parents[2] / "endpoint_map.yaml"


@pytest.fixture(scope="module")
def shipped() -> EndpointMap:
    """The real map shipped at the repository root."""
    return load_map(SHIPPED_MAP)


# (method, raw path, expected endpoint id or None, expected params)
SHIPPED_CASES = [
    ("whoami-literal-wins", "GET", "/auth/users/whoami", "fetchMyUserDetails", {}),
    ("user-by-locator", "GET", "/auth/users/u-1", "fetchUserByLocator", {"locator": "u-1"}),
    ("patch-user", "PATCH", "/auth/users/whoami", "updateUser", {"locator": "whoami"}),
    (
        "payments-list-literal-wins",
        "GET",
        "/billing/t1/payments/list",
        "fetchMultiplePayments",
        {"tenantLocator": "t1"},
    ),
    (
        "payment-by-locator",
        "GET",
        "/billing/t1/payments/p9",
        "fetchPayment",
        {"tenantLocator": "t1", "locator": "p9"},
    ),
    (
        "mid-path-params",
        "GET",
        "/billing/t1/payments/p9/subpayments/list",
        "fetchSubpayments",
        {"tenantLocator": "t1", "locator": "p9"},
    ),
    (
        "param-names-differ-by-entry",
        "GET",
        "/auth/users/u1/tenant/t1/permissions",
        "fetchUserTenantPermissions",
        {"userLocator": "u1", "tenantLocator": "t1"},
    ),
    (
        "three-params",
        "GET",
        "/auth/users/u1/accessmask/t1/kind",
        "fetchUserMask",
        {"locator": "u1", "tenantLocator": "t1", "type": "kind"},
    ),
    (
        "backtrack-from-literal",
        "GET",
        "/auth/users/tokens/tokens",
        "fetchAuthTokensForUser",
        {"locator": "tokens"},
    ),
    (
        "literal-branch-when-it-leads-somewhere",
        "DELETE",
        "/auth/users/tokens/tokens",
        "deleteAuthToken",
        {"tokenOrName": "tokens"},
    ),
    (
        "params-stay-percent-encoded",
        "GET",
        "/auth/users/a%20b",
        "fetchUserByLocator",
        {"locator": "a%20b"},
    ),
    (
        "head-routes-as-get",
        "HEAD",
        "/billing/t1/payments/list",
        "fetchMultiplePayments",
        {"tenantLocator": "t1"},
    ),
    ("public-event-catalog", "GET", "/policy/events", "fetchPolicyEventDefinitions", {}),
    ("method-mismatch", "PUT", "/auth/users/whoami", None, {}),
    ("unmapped-path", "GET", "/no/such/route", None, {}),
    ("root-unmapped", "GET", "/", None, {}),
    ("trailing-slash-differs", "GET", "/auth/users/whoami/", None, {}),
    ("trailing-slash-no-param-match", "GET", "/auth/users/", None, {}),
    ("case-sensitive-literal", "GET", "/Auth/users/whoami", None, {}),
    ("case-sensitive-method", "get", "/auth/users/whoami", None, {}),
    ("extra-segment", "GET", "/billing/t1/payments/list/x", None, {}),
    ("empty-segment", "GET", "/billing//payments/list", None, {}),
    ("not-absolute", "GET", "auth/users/whoami", None, {}),
    ("options-not-listed", "OPTIONS", "/auth/users/whoami", None, {}),
]


@pytest.mark.parametrize(
    ("method", "path", "expected", "params"),
    [c[1:] for c in SHIPPED_CASES],
    ids=[c[0] for c in SHIPPED_CASES],
)
def test_shipped_map_routes(
    shipped: EndpointMap, method: str, path: str, expected: str | None, params: dict[str, str]
) -> None:
    """Requests against the real map reach the entry the rules say, with raw params."""
    found = shipped.match(method, path)
    if expected is None:
        assert found is None, found
    else:
        assert found is not None
        assert found.endpoint.id == expected
        assert dict(found.params) == params


SYNTHETIC = """\
version: 1
endpoints:
  - {id: abc, method: GET, path: /a/b/c, permissions: []}
  - {id: axd, method: GET, path: '/a/{x}/d', permissions: []}
  - {id: any-x, method: '*', path: '/s/{x}', permissions: []}
  - {id: get-lit, method: GET, path: /s/lit, permissions: []}
  - {id: star-lit, method: '*', path: /t/lit, permissions: []}
  - {id: get-x, method: GET, path: '/t/{x}', permissions: []}
  - {id: head-only, method: HEAD, path: /h, permissions: []}
  - {id: get-h, method: GET, path: '/{x}', permissions: []}
  - {id: root, method: [GET, POST], path: /, permissions: []}
  - {id: star-any, method: '*', path: '/z/{x}/{y}', permissions: []}
"""

SYNTHETIC_CASES = [
    ("literal-path", "GET", "/a/b/c", "abc", {}),
    ("backtrack-to-param", "GET", "/a/b/d", "axd", {"x": "b"}),
    ("param-path", "GET", "/a/q/d", "axd", {"x": "q"}),
    ("dead-end-everywhere", "GET", "/a/b/e", None, {}),
    ("star-matches-any-method", "BREW", "/s/anything", "any-x", {"x": "anything"}),
    ("exact-method-beats-star", "GET", "/s/lit", "get-lit", {}),
    ("star-when-exact-misses", "POST", "/s/lit", "any-x", {"x": "lit"}),
    ("exact-method-beats-star-literal", "GET", "/t/lit", "get-x", {"x": "lit"}),
    ("star-literal-for-other-methods", "POST", "/t/lit", "star-lit", {}),
    ("head-entry-wins-over-get", "HEAD", "/h", "head-only", {}),
    ("get-is-not-head", "GET", "/h", "get-h", {"x": "h"}),
    ("head-falls-back-to-get", "HEAD", "/other", "get-h", {"x": "other"}),
    ("head-falls-back-to-star", "HEAD", "/z/1/2", "star-any", {"x": "1", "y": "2"}),
    ("root", "POST", "/", "root", {}),
    ("root-method-mismatch", "PUT", "/", None, {}),
    ("empty-param-segment", "GET", "/a//d", None, {}),
]


@pytest.mark.parametrize(
    ("method", "path", "expected", "params"),
    [c[1:] for c in SYNTHETIC_CASES],
    ids=[c[0] for c in SYNTHETIC_CASES],
)
def test_synthetic_map_routes(
    method: str, path: str, expected: str | None, params: dict[str, str]
) -> None:
    """Backtracking, "*" entries and HEAD fallback behave as documented."""
    found = parse_map(SYNTHETIC).match(method, path)
    if expected is None:
        assert found is None, found
    else:
        assert found is not None
        assert (found.endpoint.id, dict(found.params)) == (expected, params)


def test_shipped_map_routes_every_template_to_itself(shipped: EndpointMap) -> None:
    """Each entry's own template, with its params filled in, routes back to that entry."""
    for endpoint in shipped.endpoints:
        path = "/".join(
            f"v{i}" if s.startswith("{") else s for i, s in enumerate(endpoint.path.split("/"))
        )
        for method in endpoint.methods:
            found = shipped.match(method, path)
            # a literal elsewhere can legitimately win over this entry's parameter
            assert found is not None, (method, path)
            if "{" not in endpoint.path:
                assert found.endpoint.id == endpoint.id


# ------------------------------------------------------------------ property


LITERALS = ("a", "b", "c")
shape_segment = st.sampled_from((*LITERALS, None))  # None is a parameter position
shapes = st.lists(st.lists(shape_segment, max_size=4).map(tuple), max_size=12, unique=True)
path_segment = st.sampled_from((*LITERALS, "d", ""))


def template_of(shape: tuple[str | None, ...], tag: str) -> str:
    """A template for ``shape``; parameter names vary by entry on purpose."""
    segments = [s if s is not None else f"{{{tag}{i}}}" for i, s in enumerate(shape)]
    return "/" + "/".join(segments)


def brute_force(
    entries: list[tuple[Endpoint, tuple[str | None, ...]]], method: str, path: str
) -> tuple[str, dict[str, str]] | None:
    """Score every entry that matches; exact method first, then "*"; literals win leftmost."""
    segments = [] if path == "/" else path[1:].split("/")
    for wanted in (method, "*"):
        best: tuple[tuple[int, ...], Endpoint] | None = None
        for endpoint, shape in entries:
            if wanted not in endpoint.methods or len(shape) != len(segments):
                continue
            if all(
                s == p if s is not None else p != "" for s, p in zip(shape, segments, strict=True)
            ):
                score = tuple(0 if s is not None else 1 for s in shape)
                if best is None or score < best[0]:
                    best = (score, endpoint)
        if best is not None:
            endpoint = best[1]
            names = endpoint.path.split("/")[1:] if endpoint.path != "/" else []
            params = {n[1:-1]: p for n, p in zip(names, segments, strict=True) if n.startswith("{")}
            return endpoint.id, params
    return None


@settings(max_examples=300, deadline=None)
@given(
    shapes=shapes,
    star_flags=st.lists(st.booleans(), min_size=12, max_size=12),
    paths=st.lists(st.lists(path_segment, max_size=5), min_size=1, max_size=10),
)
def test_matcher_agrees_with_brute_force(
    shapes: list[tuple[str | None, ...]], star_flags: list[bool], paths: list[list[str]]
) -> None:
    """On random templates of distinct shapes, the trie picks what exhaustive scoring picks."""
    entries = []
    for i, (shape, star) in enumerate(zip(shapes, star_flags, strict=False)):
        endpoint = Endpoint(
            id=f"e{i}",
            methods=frozenset({"*"} if star else {"GET"}),
            path=template_of(shape, f"p{i}_"),
        )
        entries.append((endpoint, shape))
    endpoint_map = EndpointMap(endpoints=tuple(e for e, _ in entries))
    # also probe each template's own literal spelling, so that hits are common
    probes = ["/" + "/".join(p) for p in paths]
    probes += ["/" + "/".join(s if s is not None else "b" for s in shape) for shape in shapes]
    for path in probes:
        for method in ("GET", "POST"):
            found = endpoint_map.match(method, path)
            got = None if found is None else (found.endpoint.id, dict(found.params))
            assert got == brute_force(entries, method, path), (method, path)
