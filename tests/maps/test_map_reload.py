"""Endpoint map hot reload: good, bad, ConfigMap symlink swap, SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from permgate.config import AuditSettings
from permgate.core.endpoints import Endpoint, EndpointMap, TenantSource
from permgate.core.errors import MapError
from permgate.maps.loader import parse_map
from permgate.maps.reload import MapReloader, diff_maps
from permgate.observability.audit import AuditLog, CaptureSink
from permgate.observability.metrics import Metrics

POLL = 0.05

HEADER = """\
version: 1
defaults:
  tenant: {path_param: tenantLocator}
endpoints:
"""
QUOTES_GET = """\
  - id: quotes.get
    method: GET
    path: /policy/{tenantLocator}/quotes/{locator}
    permissions: [quotes.read]
"""
QUOTES_CREATE = """\
  - id: quotes.create
    method: POST
    path: /policy/{tenantLocator}/quotes
    permissions: [quotes.write]
"""
HEALTH = """\
  - id: health
    method: GET
    path: /health
    public: true
"""
GOOD = HEADER + QUOTES_GET + QUOTES_CREATE
# Line 12 requires a wildcard, which a required permission may never be.
BAD = HEADER + QUOTES_GET + QUOTES_CREATE.replace("[quotes.write]", "[quotes.*]")


@dataclass
class Harness:
    """A reloader wired to real metrics and a capturing audit log."""

    path: Path
    reloader: MapReloader
    metrics: Metrics
    audit: AuditLog
    sink: CaptureSink
    served: list[EndpointMap] = field(default_factory=list)

    def count(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "permgate_endpoint_map_reloads_total", {"result": result}
        )
        return 0.0 if value is None else value

    async def events(self) -> list[dict[str, Any]]:
        await self.reloader.close()
        await self.audit.close()
        return [e for e in self.sink.events if e["event"] == "map.reload"]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    path = tmp_path / "endpoint_map.yaml"
    path.write_text(GOOD)
    yield await make_harness(path)


async def make_harness(
    path: Path, on_new_map: Callable[[EndpointMap], None] | None = None
) -> Harness:
    metrics, sink = Metrics(), CaptureSink()
    audit = AuditLog(AuditSettings(), metrics=metrics, sink=sink)
    await audit.start()
    served: list[EndpointMap] = []
    reloader = MapReloader(
        path,
        on_new_map=on_new_map or served.append,
        metrics=metrics,
        audit=audit,
        poll_seconds=POLL,
    )
    return Harness(path, reloader, metrics, audit, sink, served)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(POLL / 2)


def replace_file(path: Path, text: str) -> None:
    """Write as editors and deploy tools do: a new file renamed over the old one."""
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    os.replace(temp, path)


# --------------------------------------------------------------------------- initial


async def test_initial_load_counts_as_a_reload(harness: Harness) -> None:
    """Startup's load is result=ok, sets the info metric and is audited as reason initial."""
    endpoint_map = harness.reloader.load_initial()
    assert harness.served == [endpoint_map]
    assert harness.count("ok") == 1
    info = harness.metrics.registry.get_sample_value(
        "permgate_endpoint_map_info", {"version": "1", "sha256": endpoint_map.sha256}
    )
    assert info == 1
    (event,) = await harness.events()
    assert (event["result"], event["reason"], event["new_sha256"]) == (
        "ok",
        "initial",
        endpoint_map.sha256,
    )
    assert event["added"] == ["quotes.create", "quotes.get"]


async def test_initial_bad_map_raises_and_counts_error(harness: Harness) -> None:
    """serve refuses to start with a bad map: MapError with the line, result=error."""
    harness.path.write_text(BAD)
    with pytest.raises(MapError) as raised:
        harness.reloader.load_initial()
    assert any(line.startswith(f"{harness.path}:12:") for line in raised.value.errors)
    assert harness.count("error") == 1
    assert harness.served == []
    await harness.events()


# --------------------------------------------------------------------------- polling


async def test_good_change_is_picked_up_and_summarised(harness: Harness) -> None:
    """An edited map is applied within a few polls, with added/removed/changed in the audit."""
    first = harness.reloader.load_initial()
    await harness.reloader.start()
    edited = HEADER + QUOTES_GET.replace("[quotes.read]", "[quotes.read, policy.read]") + HEALTH
    replace_file(harness.path, edited)
    await wait_until(lambda: len(harness.served) == 2)
    new = harness.served[-1]
    assert new.get("health") is not None
    assert harness.count("ok") == 2
    assert (
        harness.metrics.registry.get_sample_value(
            "permgate_endpoint_map_info", {"version": "1", "sha256": new.sha256}
        )
        == 1
    )
    assert (
        harness.metrics.registry.get_sample_value(
            "permgate_endpoint_map_info", {"version": "1", "sha256": first.sha256}
        )
        is None
    )
    event = (await harness.events())[-1]
    assert {k: event[k] for k in ("result", "reason", "added", "removed", "changed")} == {
        "result": "ok",
        "reason": "file_changed",
        "added": ["health"],
        "removed": ["quotes.create"],
        "changed": ["quotes.get"],
    }
    assert (event["old_sha256"], event["new_sha256"]) == (first.sha256, new.sha256)


async def test_in_place_write_is_picked_up(harness: Harness) -> None:
    """An editor that rewrites the file in place (same inode) is seen too."""
    harness.reloader.load_initial()
    await harness.reloader.start()
    with harness.path.open("a") as handle:
        handle.write(HEALTH)
    await wait_until(lambda: len(harness.served) == 2)
    assert harness.served[-1].get("health") is not None
    await harness.events()


async def test_bad_change_keeps_the_old_map_and_logs_each_line(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A map with errors is not applied; FILE:LINE errors are logged, result=error counted."""
    caplog.set_level(logging.ERROR, logger="permgate.reload")
    first = harness.reloader.load_initial()
    await harness.reloader.start()
    replace_file(harness.path, BAD)
    await wait_until(lambda: harness.count("error") == 1)
    assert harness.served == [first]
    assert harness.reloader.current is first
    messages = [r.getMessage() for r in caplog.records if r.name == "permgate.reload"]
    assert any(m.startswith(f"{harness.path}:12:") and "quotes.*" in m for m in messages)
    event = (await harness.events())[-1]
    assert (event["result"], event["map_sha256"]) == ("error", first.sha256)
    assert event["errors"][0].startswith(f"{harness.path}:12:")


async def test_fixing_a_bad_map_applies_it(harness: Harness) -> None:
    """After an error, the next good version is applied."""
    harness.reloader.load_initial()
    await harness.reloader.start()
    replace_file(harness.path, BAD)
    await wait_until(lambda: harness.count("error") == 1)
    replace_file(harness.path, GOOD + HEALTH)
    await wait_until(lambda: harness.count("ok") == 2)
    assert harness.served[-1].get("health") is not None
    await harness.events()


async def test_deleted_file_keeps_the_map_and_counts_one_error(harness: Harness) -> None:
    """A vanished file is one error, not one per poll; the old map keeps serving."""
    first = harness.reloader.load_initial()
    await harness.reloader.start()
    harness.path.unlink()
    await wait_until(lambda: harness.count("error") == 1)
    await asyncio.sleep(POLL * 6)
    assert harness.count("error") == 1
    assert harness.reloader.current is first
    await harness.events()


async def test_unchanged_touch_does_not_reload(harness: Harness) -> None:
    """A new mtime with the same content is not a reload; nor is a quiet poll."""
    harness.reloader.load_initial()
    await harness.reloader.start()
    later = time.time() + 10
    os.utime(harness.path, (later, later))
    await asyncio.sleep(POLL * 6)
    replace_file(harness.path, GOOD)  # new inode, same bytes
    await asyncio.sleep(POLL * 6)
    assert len(harness.served) == 1
    assert harness.count("ok") == 1
    assert len(await harness.events()) == 1


async def test_configmap_symlink_swap_is_detected(tmp_path: Path) -> None:
    """Kubernetes swaps ..data atomically; same size and mtime, a different real file."""
    mount = tmp_path / "config"
    mount.mkdir()
    old_dir, new_dir = mount / "..2026_11_22_13_00_00.1", mount / "..2026_11_22_13_05_00.2"
    old_dir.mkdir()
    (old_dir / "endpoint_map.yaml").write_text(GOOD)
    (mount / "..data").symlink_to(old_dir.name)
    (mount / "endpoint_map.yaml").symlink_to("..data/endpoint_map.yaml")
    harness = await make_harness(mount / "endpoint_map.yaml")
    first = harness.reloader.load_initial()
    await harness.reloader.start()
    # Same length ("read" -> "list"), same mtime: only the real path and inode differ.
    new_dir.mkdir()
    new_file = new_dir / "endpoint_map.yaml"
    new_file.write_text(GOOD.replace("quotes.read", "quotes.list"))
    stat = (old_dir / "endpoint_map.yaml").stat()
    os.utime(new_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (mount / "..data_tmp").symlink_to(new_dir.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    await wait_until(lambda: len(harness.served) == 2)
    assert harness.served[-1].get("quotes.get").permissions == ("quotes.list",)  # type: ignore[union-attr]
    assert harness.served[-1].sha256 != first.sha256
    event = (await harness.events())[-1]
    assert event["changed"] == ["quotes.get"]


async def test_reload_now_reloads_even_when_unchanged(harness: Harness) -> None:
    """SIGHUP reloads on request, unchanged file included, and says why in the audit."""
    harness.reloader.load_initial()
    assert await harness.reloader.reload_now("sighup") is True
    assert harness.count("ok") == 2
    assert len(harness.served) == 2
    events = await harness.events()
    assert [e["reason"] for e in events] == ["initial", "sighup"]
    assert events[-1]["added"] == events[-1]["removed"] == events[-1]["changed"] == []


async def test_reload_now_with_a_bad_file_keeps_the_map(harness: Harness) -> None:
    """SIGHUP on a broken file answers False and changes nothing."""
    first = harness.reloader.load_initial()
    harness.path.write_text(BAD)
    assert await harness.reloader.reload_now("sighup") is False
    assert harness.reloader.current is first
    assert harness.count("error") == 1
    await harness.events()


async def test_failing_swap_is_an_error_and_the_old_map_stays(tmp_path: Path) -> None:
    """If the app cannot apply the new map, that is counted as error, not as ok."""
    path = tmp_path / "endpoint_map.yaml"
    path.write_text(GOOD)
    calls: list[EndpointMap] = []

    def refuse_after_first(endpoint_map: EndpointMap) -> None:
        calls.append(endpoint_map)
        if len(calls) > 1:
            raise RuntimeError("cache invalidation failed")

    harness = await make_harness(path, refuse_after_first)
    first = harness.reloader.load_initial()
    assert await harness.reloader.reload_now("sighup") is False
    assert (harness.count("ok"), harness.count("error")) == (1, 1)
    assert harness.reloader.current is first
    await harness.events()


async def test_close_stops_polling(harness: Harness) -> None:
    """After close() a change is no longer applied."""
    harness.reloader.load_initial()
    await harness.reloader.start()
    await harness.reloader.close()
    replace_file(harness.path, GOOD + HEALTH)
    await asyncio.sleep(POLL * 6)
    assert len(harness.served) == 1
    await harness.audit.close()


# --------------------------------------------------------------------------- diff

BASE = parse_map(GOOD)
GET = BASE.get("quotes.get")
assert GET is not None


def with_get(**changes: Any) -> EndpointMap:
    assert GET is not None
    changed = replace(GET, **changes)
    return EndpointMap(endpoints=tuple(changed if e is GET else e for e in BASE.endpoints))


@pytest.mark.parametrize(
    ("new", "changed"),
    [
        (with_get(permissions=("quotes.list",)), ["quotes.get"]),
        (with_get(any_of=("quotes.read", "quotes.fetch")), ["quotes.get"]),
        (with_get(public=True), ["quotes.get"]),
        (with_get(tenant=TenantSource("header", "X-Tenant")), ["quotes.get"]),
        (with_get(methods=frozenset({"GET", "HEAD"})), ["quotes.get"]),
        (with_get(path="/policy/{tenantLocator}/quote/{locator}"), ["quotes.get"]),
        (with_get(line=40), []),
    ],
    ids=["permissions", "any_of", "public", "tenant", "method", "path", "moved-line"],
)
def test_diff_reports_what_matters(new: EndpointMap, changed: list[str]) -> None:
    """A change to what an entry requires or matches is reported; a moved line is not."""
    assert diff_maps(BASE, new) == {"added": [], "removed": [], "changed": changed}


def test_diff_from_nothing_adds_everything() -> None:
    """The initial load lists every endpoint as added."""
    extra = Endpoint(id="x", methods=frozenset({"GET"}), path="/x")
    new = EndpointMap(endpoints=(*BASE.endpoints, extra))
    assert diff_maps(None, BASE)["added"] == ["quotes.create", "quotes.get"]
    assert diff_maps(BASE, new)["added"] == ["x"]
    assert diff_maps(new, BASE)["removed"] == ["x"]
