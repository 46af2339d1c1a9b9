"""Admin API input at the edges: every query parameter checked against its schema
(422 naming the parameter), and any unexpected failure answered in the JSON error
shape (500, ``error`` "internal") with the traceback in the server log only."""

from __future__ import annotations

import logging

import pytest

from admin_world import BACKENDS, World

INT64_MAX = 2**63 - 1

BAD_QUERIES = [
    pytest.param(
        "/v1/audit?before=99999999999999999999999", "'before': must be from 1 to", id="huge"
    ),
    pytest.param(f"/v1/audit?before={INT64_MAX + 1}", "'before': must be from 1 to", id="int64+1"),
    pytest.param(f"/v1/audit?before={'9' * 5000}", "'before': must be from 1 to", id="5000-digits"),
    pytest.param("/v1/audit?before=0", "'before': must be from 1 to", id="before-zero"),
    pytest.param("/v1/audit?before=-1", "'before': must be from 1 to", id="before-negative"),
    pytest.param("/v1/audit?before=x", "'before': expected an integer", id="before-text"),
    pytest.param("/v1/audit?before=1.5", "'before': expected an integer", id="before-float"),
    pytest.param("/v1/audit?before=1e3", "'before': expected an integer", id="before-exponent"),
    pytest.param("/v1/audit?before=1_000", "'before': expected an integer", id="underscore"),
    pytest.param("/v1/audit?before=+5", "'before': expected an integer", id="plus-sign"),
    pytest.param("/v1/audit?before=%205", "'before': expected an integer", id="space"),
    pytest.param("/v1/audit?before=%D9%A1%D9%A2", "'before': expected an integer", id="arabic"),
    pytest.param("/v1/audit?before=", "'before': expected an integer", id="before-empty"),
    pytest.param("/v1/audit?before", "'before': expected an integer", id="before-bare"),
    pytest.param("/v1/audit?limit=0", "'limit': must be from 1 to 500", id="limit-zero"),
    pytest.param("/v1/audit?limit=501", "'limit': must be from 1 to 500", id="limit-501"),
    pytest.param("/v1/audit?limit=-5", "'limit': must be from 1 to 500", id="limit-negative"),
    pytest.param("/v1/audit?limit=ten", "'limit': expected an integer", id="limit-text"),
    pytest.param("/v1/audit?limit=1&limit=2", "'limit' is given 2 times", id="limit-twice"),
    pytest.param("/v1/audit?page=2", "unknown query parameter 'page'", id="unknown"),
    pytest.param("/v1/audit?=2", "unknown query parameter ''", id="unnamed"),
    pytest.param("/v1/tenants?id=acme-prod", "accepts: none", id="none-accepted"),
    pytest.param("/v1/tokens?owner=", "'owner': must not be empty", id="owner-empty"),
    pytest.param(f"/v1/tokens?owner={'a' * 300}", "'owner': longer than 255", id="owner-long"),
    pytest.param("/v1/tokens?owner=bob&owner=alice", "'owner' is given 2 times", id="owner-twice"),
]


@pytest.mark.parametrize(("path", "detail"), BAD_QUERIES)
async def test_bad_query_parameter_is_422_naming_it(world: World, path: str, detail: str) -> None:
    """Each malformed, out-of-range, repeated or unknown parameter is a JSON 422 whose
    detail names the parameter."""
    answer = await world.call("GET", path)
    assert answer.status == 422, answer.body
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.body["error"] == "invalid"
    assert detail in answer.body["detail"]


async def test_every_bad_parameter_is_reported_at_once(world: World) -> None:
    """Two bad parameters: one 422 naming both."""
    answer = await world.call("GET", "/v1/audit?limit=0&before=x")
    assert answer.status == 422
    assert "'limit'" in answer.body["detail"]
    assert "'before'" in answer.body["detail"]


async def test_a_huge_value_is_not_echoed_whole(world: World) -> None:
    """The detail quotes at most the start of an enormous value."""
    answer = await world.call("GET", f"/v1/audit?before={'9' * 5000}")
    assert len(answer.body["detail"]) < 300


async def test_unauthenticated_bad_query_is_401_not_422(world: World) -> None:
    """Parameters are checked only for a caller the guard admitted."""
    answer = await world.call("GET", "/v1/audit?before=x", who=None)
    assert answer.status == 401


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "query",
    ["limit=500", f"before={INT64_MAX}", "limit=1&before=1"],
    ids=["max-limit", "max-before", "min"],
)
async def test_boundary_values_are_accepted(world: World, query: str) -> None:
    """The largest and smallest valid values reach the store and answer 200."""
    answer = await world.call("GET", f"/v1/audit?{query}")
    assert answer.status == 200, answer.body
    assert isinstance(answer.body["items"], list)


async def test_before_beyond_every_id_pages_from_the_newest(world: World) -> None:
    """before = the largest id is the whole log, newest first (the same page as no before)."""
    first = await world.call("GET", "/v1/audit?limit=3")
    beyond = await world.call("GET", f"/v1/audit?limit=3&before={INT64_MAX}")
    assert beyond.body == first.body


async def test_openapi_describes_the_parameters_and_their_ranges(world: World) -> None:
    """The document lists each query parameter with the schema it is checked against."""
    document = (await world.call("GET", "/v1/openapi.json", who=None)).body
    parameters = {
        p["name"]: p["schema"]
        for p in document["paths"]["/v1/audit"]["get"]["parameters"]
        if p["in"] == "query"
    }
    assert parameters["limit"] == {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}
    assert parameters["before"] == {"type": "integer", "minimum": 1, "maximum": INT64_MAX}
    responses = document["paths"]["/v1/audit"]["get"]["responses"]
    assert {"422", "500"} <= set(responses)


# -- unexpected failures ---------------------------------------------------------------


async def _corrupt_role(world: World) -> None:
    """Make a stored role unreadable, as a hand edit or a broken restore would."""
    async with world.store.write() as tx:  # type: ignore[attr-defined]
        await tx._conn.execute(
            "UPDATE roles SET permissions = $1 WHERE account = $2 AND name = $3",
            "{not json",
            "acme",
            "agent",
        )


@pytest.mark.parametrize("backend", BACKENDS)
async def test_unexpected_error_is_a_json_500(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored row the code cannot read makes a handler fail: the answer is the JSON
    error shape with error "internal" and the request id; the traceback is logged."""
    await world.call("GET", "/v1/tenants")  # acme's roles are now cached for the guard
    await _corrupt_role(world)
    with caplog.at_level(logging.ERROR, logger="permgate.admin"):
        answer = await world.call("GET", "/v1/roles", headers={"X-Request-Id": "req-500"})
    assert answer.status == 500
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["X-Request-Id"] == "req-500"
    assert set(answer.body) == {"error", "detail", "request_id"}
    assert answer.body["error"] == "internal"
    assert answer.body["request_id"] == "req-500"
    assert "Traceback" not in answer.body["detail"]
    assert "json" not in answer.body["detail"].lower()  # nothing of the cause leaks
    logged = [r for r in caplog.records if "req-500" in r.getMessage()]
    assert logged and logged[0].exc_info is not None


async def test_unexpected_error_in_the_guard_is_a_json_500(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The same when the failure is met while authorising (the caller's roles)."""
    await _corrupt_role(world)
    with caplog.at_level(logging.ERROR, logger="permgate.admin"):
        answer = await world.call("GET", "/v1/tenants")
    assert answer.status == 500
    assert answer.body["error"] == "internal"
    assert answer.body["request_id"] == answer.headers["X-Request-Id"]


async def test_a_closed_store_is_a_json_503(world: World) -> None:
    """The store closed under the running API: 503 in the JSON shape, never a text page."""
    await world.call("GET", "/v1/tenants")
    await world.store.close()
    answer = await world.call("GET", "/v1/principals")
    assert answer.status == 503
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.body["reason"] == "store_unavailable"


# -- control characters ----------------------------------------------------------------

CONTROL_INPUTS = [
    pytest.param("GET", "/v1/principals/a%00b", None, "path parameter 'id'", id="path-nul"),
    pytest.param("GET", "/v1/tenants/a%0Ab", None, "path parameter 'id'", id="path-newline"),
    pytest.param("DELETE", "/v1/tokens/a%00b", None, "path parameter 'id'", id="delete-nul"),
    pytest.param("GET", "/v1/tokens?owner=a%00b", None, "'owner': contains a control", id="query"),
    pytest.param(
        "POST",
        "/v1/tokens",
        {"name": "x\u0000y", "permissions": ["tenants.read"]},
        "body.name: contains a control character",
        id="token-name-nul",
    ),
    pytest.param(
        "POST",
        "/v1/roles",
        {"name": "r", "display_name": "Line\nBreak", "permissions": ["a.b"]},
        "body.display_name: contains a control character",
        id="display-name-newline",
    ),
    pytest.param(
        "POST",
        "/v1/explain",
        {"principal": "a\u0000", "method": "GET", "path": "/x"},
        "body.principal: contains a control character",
        id="explain-principal",
    ),
    pytest.param(
        "POST",
        "/v1/explain",
        {"principal": "alice", "method": "GET", "path": "/x", "headers": {"X\u0000": "v"}},
        "a field name contains a control character",
        id="explain-header-name",
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("method", "path", "body", "detail"), CONTROL_INPUTS)
async def test_control_characters_are_422_on_every_backend(
    world: World, method: str, path: str, body: object, detail: str
) -> None:
    """A NUL or a line break in a path parameter, a query value or a body string is a
    422 naming where: never a 503 from a store that cannot hold it, never stored."""
    answer = await world.call(method, path, json=body)
    assert answer.status == 422, answer.body
    assert detail in answer.body["detail"]
