"""Endpoint map hot reload through the running gateway.

The map file of an in-process gateway (polled every 0.1 s) is edited, broken, or
swapped the way a Kubernetes ConfigMap update does it, and the test watches what a
client, a dashboard (``/metrics``) and a SIEM (the audit stream) see.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from harness import TEST_MAP, Gateway, eventually, start_gateway

WAIT_SECONDS = 5.0  # "within a few seconds"
LIST_ENTRY = """  - {id: quotes.list, method: GET, path: "/policy/{tenantLocator}/quotes",
     permissions: [quotes.read]}
"""
WITH_LIST = TEST_MAP + LIST_ENTRY


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_map(path: Path, text: str) -> None:
    """Replace the map file as an editor would (write a temp file, rename it over)."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


async def status_of(http: aiohttp.ClientSession, gw: Gateway, method: str, path: str) -> int:
    headers = {"Authorization": f"Bearer {gw.tokens['bob']}"}
    async with http.request(method, gw.url + path, headers=headers) as response:
        await response.read()
        return response.status


async def routed(http: aiohttp.ClientSession, gw: Gateway, path: str) -> bool:
    """True once a GET of ``path`` is no longer refused as unmapped."""
    return await reason_of(http, gw, "GET", path) != "unmapped_route"


async def reason_of(http: aiohttp.ClientSession, gw: Gateway, method: str, path: str) -> str:
    headers = {"Authorization": f"Bearer {gw.tokens['bob']}"}
    async with http.request(method, gw.url + path, headers=headers) as response:
        if response.status < 400:
            await response.read()
            return "ok"
        return str((await response.json())["reason"])


async def metric(http: aiohttp.ClientSession, gw: Gateway, name: str) -> dict[Any, float]:
    """One sample name's series from ``/metrics``, keyed by sorted label pairs."""
    async with http.get(gw.admin_url + "/metrics") as response:
        text = await response.text()
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def reload_events(gw: Gateway) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in gw.audit_lines()]
    return [e for e in lines if e["event"] == "map.reload"]


async def test_added_endpoint_routes_within_seconds(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A request to a path the map lacks is unmapped until the map gains it, then is
    decided by the new entry, without a restart."""
    assert await reason_of(http, gw, "GET", "/policy/acme-prod/quotes") == "unmapped_route"
    write_map(tmp_path / "endpoint_map.yaml", WITH_LIST)
    await eventually(
        lambda: routed(http, gw, "/policy/acme-prod/quotes"),
        "the new endpoint to route",
    )
    assert await status_of(http, gw, "GET", "/policy/acme-prod/quotes") == 200
    assert gw.upstream.seen[-1]["raw_path"] == "/policy/acme-prod/quotes"


async def test_reload_updates_the_info_metric_and_counts_ok(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """After a reload the info metric shows exactly the new file's sha256, and two ok
    reloads are counted (the initial load and this one)."""
    info = await metric(http, gw, "permgate_endpoint_map_info")
    assert info == {(("sha256", sha256(TEST_MAP)), ("version", "1")): 1.0}
    write_map(tmp_path / "endpoint_map.yaml", WITH_LIST)

    async def new_info() -> bool:
        return await metric(http, gw, "permgate_endpoint_map_info") == {
            (("sha256", sha256(WITH_LIST)), ("version", "1")): 1.0
        }

    await eventually(new_info, "the info metric to show the new sha256")
    reloads = await metric(http, gw, "permgate_endpoint_map_reloads_total")
    assert reloads == {(("result", "error"),): 0.0, (("result", "ok"),): 2.0}


async def test_reload_event_summarises_added_removed_changed(gw: Gateway, tmp_path: Path) -> None:
    """The map.reload audit event lists the ids added, removed and changed, and the
    old and new sha256."""
    edited = (
        TEST_MAP.replace(
            '  - {id: ping, method: GET, path: "/policy/{tenantLocator}/ping", permissions: []}\n',
            "",
        ).replace("permissions: [search.read]", "permissions: [search.read, search.write]")
        + LIST_ENTRY
    )
    assert edited.count("id: ping") == 0 and "search.write" in edited
    write_map(tmp_path / "endpoint_map.yaml", edited)
    events = await eventually(
        lambda: [e for e in reload_events(gw) if e["reason"] == "file_changed"],
        "the map.reload event",
    )
    (event,) = events
    assert event["result"] == "ok"
    assert (event["added"], event["removed"], event["changed"]) == (
        ["quotes.list"],
        ["ping"],
        ["search"],
    )
    assert (event["old_sha256"], event["new_sha256"]) == (sha256(TEST_MAP), sha256(edited))
    assert event["ts"].endswith("Z")


async def test_bad_map_keeps_the_old_routing_and_counts_an_error(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A map with an invalid permission is not applied: old routes keep working, the
    new one stays unmapped, result="error" is counted and audited with its line."""
    broken = WITH_LIST.replace("permissions: [quotes.read]}\n", "permissions: [quotes.*]}\n")
    assert "quotes.*" in broken
    write_map(tmp_path / "endpoint_map.yaml", broken)

    async def errors() -> float:
        reloads = await metric(http, gw, "permgate_endpoint_map_reloads_total")
        return reloads[(("result", "error"),)]

    assert await eventually(errors, "an error reload") == 1.0
    assert await status_of(http, gw, "GET", "/policy/acme-prod/quotes/q1") == 200
    assert await reason_of(http, gw, "GET", "/policy/acme-prod/quotes") == "unmapped_route"
    info = await metric(http, gw, "permgate_endpoint_map_info")
    assert info == {(("sha256", sha256(TEST_MAP)), ("version", "1")): 1.0}
    (event,) = await eventually(
        lambda: [e for e in reload_events(gw) if e["result"] == "error"], "the error event"
    )
    assert event["map_sha256"] == sha256(TEST_MAP)
    assert event["errors"]
    assert all(re.match(r".*endpoint_map\.yaml:\d+: ", line) for line in event["errors"])
    assert any("quotes.*" in line for line in event["errors"])


async def test_configmap_symlink_swap_is_picked_up(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A ConfigMap-style update (dir/..data -> ..v1 swapped atomically to ..v2, the
    map a symlink through ..data) reroutes within seconds."""
    config = tmp_path / "config"
    (config / "..v1").mkdir(parents=True)
    (config / "..v1" / "endpoint_map.yaml").write_text(TEST_MAP, encoding="utf-8")
    os.symlink("..v1", config / "..data")
    os.symlink("..data/endpoint_map.yaml", config / "endpoint_map.yaml")
    async with start_gateway(tmp_path, endpoint_map=str(config / "endpoint_map.yaml")) as gw:
        assert await reason_of(http, gw, "GET", "/policy/acme-prod/quotes") == "unmapped_route"
        (config / "..v2").mkdir()
        (config / "..v2" / "endpoint_map.yaml").write_text(WITH_LIST, encoding="utf-8")
        os.symlink("..v2", config / "..data_tmp")
        os.replace(config / "..data_tmp", config / "..data")  # the atomic swap
        await eventually(
            lambda: routed(http, gw, "/policy/acme-prod/quotes"),
            "the swapped map to route",
        )
        assert await status_of(http, gw, "GET", "/policy/acme-prod/quotes") == 200
        info = await metric(http, gw, "permgate_endpoint_map_info")
    assert info == {(("sha256", sha256(WITH_LIST)), ("version", "1")): 1.0}


async def test_cached_decision_is_not_reused_after_permissions_change(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A decision cached for an endpoint is made again once a reload changes the
    endpoint's permissions: the same request is now denied for what it lacks."""
    path = "/policy/acme-prod/quotes/q1"
    assert [await status_of(http, gw, "GET", path) for _ in range(2)] == [200, 200]
    hits = await metric(http, gw, "permgate_decision_cache_total")
    assert hits[(("result", "hit"),)] == 1.0  # the second one came from the cache
    stricter = TEST_MAP.replace(
        'path: "/policy/{tenantLocator}/quotes/{locator}",\n     permissions: [quotes.read]}',
        'path: "/policy/{tenantLocator}/quotes/{locator}",\n'
        "     permissions: [quotes.read, policies.read]}",
    )
    assert stricter != TEST_MAP
    write_map(tmp_path / "endpoint_map.yaml", stricter)
    await eventually(
        lambda: [e for e in reload_events(gw) if e.get("changed") == ["quotes.get"]],
        "the reload",
    )
    headers = {"Authorization": f"Bearer {gw.tokens['bob']}", "X-Request-Id": "after-reload"}
    async with http.get(gw.url + path, headers=headers) as response:
        assert response.status == 403
        body = await response.json()
    assert (body["reason"], body["missing_permissions"]) == (
        "missing_permission",
        ["policies.read"],
    )

    def event() -> list[dict[str, Any]]:
        lines = [orjson.loads(line) for line in gw.audit_lines()]
        return [e for e in lines if e.get("request_id") == "after-reload"]

    (decision,) = await eventually(event, "the decision event")
    assert decision["cache_hit"] is False
    assert decision["map_sha256"] == sha256(stricter)
