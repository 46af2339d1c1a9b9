"""GET /v1/openapi.json describes exactly what the mounted sub-app serves, with the
permissions of the admin endpoint map, and the body schemas the API enforces."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from admin_world import World
from permgate.admin import ADMIN_MAP
from permgate.admin.schemas import SCHEMAS

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _served(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route under the mounted /v1 sub-app."""
    served: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            for route in resource:  # the mounted admin API's routes, prefix applied
                assert route.resource is not None
                served.add((route.method, route.resource.canonical))
    return served


def _documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in METHODS
    }


@pytest.fixture
async def document(world: World) -> dict[str, Any]:
    answer = await world.call("GET", "/v1/openapi.json", who=None)
    assert answer.status == 200
    return dict(answer.body)


async def test_document_is_public_openapi_3_1(document: dict[str, Any]) -> None:
    """The document is served without credentials and is OpenAPI 3.1 with bearer security."""
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["security"] == [{"bearer": []}]
    assert document["paths"]["/v1/openapi.json"]["get"]["security"] == []


async def test_document_lists_exactly_the_served_routes(
    world: World, document: dict[str, Any]
) -> None:
    """The set of (method, path) in the document equals the router's: no more, no less."""
    served = _served(world.client.app)  # type: ignore[arg-type]
    assert len(served) == len(ADMIN_MAP.endpoints)
    assert _documented(document) == served


async def test_admin_map_lists_exactly_the_served_routes(world: World) -> None:
    """Every served route is protected by an admin map entry, and every entry is served."""
    mapped = {(m, e.path) for e in ADMIN_MAP.endpoints for m in e.methods}
    assert mapped == _served(world.client.app)  # type: ignore[arg-type]


async def test_x_permissions_are_the_admin_maps(document: dict[str, Any]) -> None:
    """Each operation's x-permissions equals its admin map entry's permissions."""
    for endpoint in ADMIN_MAP.endpoints:
        for method in endpoint.methods:
            operation = document["paths"][endpoint.path][method.lower()]
            assert operation["operationId"] == endpoint.id
            assert operation["x-permissions"] == list(endpoint.permissions)


async def test_request_bodies_are_the_enforced_schemas(document: dict[str, Any]) -> None:
    """Published body schemas are the validator's schemas, and objects refuse extra fields."""
    components = document["components"]["schemas"]
    for name, schema in SCHEMAS.items():
        assert components[name] == schema
        target = schema if schema["type"] == "object" else schema.get("items", {})
        if target.get("type") == "object":
            assert target["additionalProperties"] is False


async def test_every_body_operation_names_its_schema_and_errors(
    document: dict[str, Any],
) -> None:
    """Operations with a body reference a published schema and document 422; all but the
    public one document 401 and 403."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if "requestBody" in operation:
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[1] in SCHEMAS, (method, path)
                assert "422" in responses
            if path != "/v1/openapi.json":
                assert {"401", "403"} <= set(responses), (method, path)
