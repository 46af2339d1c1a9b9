"""Metrics: names, labels, counting rules, multiprocess aggregation."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from permgate.core.endpoints import Endpoint, EndpointMap
from permgate.observability.metrics import (
    DECISION_BUCKETS,
    MULTIPROC_ENV,
    REQUEST_BUCKETS,
    Metrics,
    multiprocess_dir,
    prepare_multiprocess_dir,
    render_latest,
)
from permgate.observability.outcome import UNMAPPED_ENDPOINT, UNROUTED_ENDPOINT, RequestOutcome


def outcome(**fields: Any) -> RequestOutcome:
    base: dict[str, Any] = {
        "request_id": "req-1",
        "decision_id": "dec-1",
        "method": "GET",
        "path": "/policy/acme-prod/quotes/q1",
        "client_ip": "10.0.0.1",
        "started": 1_800_000_000.0,
    }
    return RequestOutcome(**(base | fields))


ALLOW = {"endpoint": "quotes.get", "decision": "allow", "reason": "allowed", "decision_s": 2e-6}
DENY = {
    "endpoint": "quotes.create",
    "decision": "deny",
    "reason": "missing_permission",
    "decision_s": 3e-6,
    "status": 403,
}
SHADOW = {
    "endpoint": "quotes.create",
    "decision": "shadow_deny",
    "reason": "missing_permission",
    "decision_s": 3e-6,
}
BAD_TOKEN = {
    "endpoint": "quotes.get",
    "decision": "deny",
    "reason": "invalid_token",
    "auth_failure": "invalid_token",
    "status": 401,
}
HYGIENE = {"endpoint": UNROUTED_ENDPOINT, "decision": "deny", "reason": "ambiguous_path"}
UNMAPPED = {"endpoint": UNMAPPED_ENDPOINT, "decision": "deny", "reason": "unmapped_route"}


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def endpoint_map(sha: str, *ids: str) -> EndpointMap:
    endpoints = tuple(
        Endpoint(id=i, methods=frozenset({"GET"}), path=f"/{i}", permissions=("quotes.read",))
        for i in ids
    )
    return EndpointMap(endpoints=endpoints, sha256=sha)


def test_known_sequence_gives_exact_counter_values() -> None:
    """Allowed, denied, shadow-denied, 401, 400 and unmapped requests each count exactly once."""
    metrics = Metrics()
    for fields in [ALLOW, ALLOW, ALLOW, DENY, DENY, SHADOW, BAD_TOKEN, HYGIENE, UNMAPPED]:
        metrics.observe(outcome(**fields))
    decisions = "permgate_decisions_total"
    assert value(metrics, decisions, decision="allow", reason="allowed", endpoint="quotes.get") == 3
    assert (
        value(
            metrics,
            decisions,
            decision="deny",
            reason="missing_permission",
            endpoint="quotes.create",
        )
        == 2
    )
    assert (
        value(
            metrics,
            decisions,
            decision="shadow_deny",
            reason="missing_permission",
            endpoint="quotes.create",
        )
        == 1
    )
    assert (
        value(metrics, decisions, decision="deny", reason="invalid_token", endpoint="quotes.get")
        == 1
    )
    assert (
        value(metrics, decisions, decision="deny", reason="ambiguous_path", endpoint="unrouted")
        == 1
    )
    assert (
        value(metrics, decisions, decision="deny", reason="unmapped_route", endpoint="unmapped")
        == 1
    )
    assert value(metrics, "permgate_auth_failures_total", reason="invalid_token") == 1
    assert value(metrics, "permgate_request_seconds_count", endpoint="quotes.get") == 4
    assert value(metrics, "permgate_request_seconds_count", endpoint="quotes.create") == 3


def test_sum_of_decisions_equals_requests_answered() -> None:
    """Every outcome is one decision sample, so the sum over all labels is the request count."""
    metrics = Metrics()
    sequence = [ALLOW, DENY, SHADOW, BAD_TOKEN, HYGIENE, UNMAPPED]
    for fields in sequence:
        metrics.observe(outcome(**fields))
    families = {
        f.name: f
        for f in text_string_to_metric_families(render_latest(metrics.registry)[0].decode())
    }
    total = sum(
        s.value for s in families["permgate_decisions"].samples if s.name.endswith("_total")
    )
    assert total == len(sequence)


def test_decision_latency_and_cache_only_when_a_decision_was_made() -> None:
    """A 401 or a 400 has no decision time: neither the histogram nor the cache counts it."""
    metrics = Metrics()
    metrics.observe(outcome(**ALLOW, cache_hit=True))
    metrics.observe(outcome(**DENY))
    metrics.observe(outcome(**BAD_TOKEN))
    metrics.observe(outcome(**HYGIENE))
    assert value(metrics, "permgate_decision_seconds_count") == 2
    assert value(metrics, "permgate_decision_cache_total", result="hit") == 1
    assert value(metrics, "permgate_decision_cache_total", result="miss") == 1


def test_upstream_time_and_errors_by_kind() -> None:
    """Upstream time is observed when there was one; an upstream error counts under its kind."""
    metrics = Metrics()
    metrics.observe(outcome(**ALLOW, upstream_s=0.02, status=200))
    metrics.observe(outcome(**ALLOW, upstream_s=30.0, upstream_error="timeout", status=504))
    metrics.observe(outcome(**ALLOW, upstream_error="connect", status=502))
    assert value(metrics, "permgate_upstream_seconds_count") == 2
    assert value(metrics, "permgate_upstream_errors_total", kind="timeout") == 1
    assert value(metrics, "permgate_upstream_errors_total", kind="connect") == 1
    # An allowed request whose upstream failed is still an allow.
    assert (
        value(
            metrics,
            "permgate_decisions_total",
            decision="allow",
            reason="allowed",
            endpoint="quotes.get",
        )
        == 3
    )


@pytest.mark.parametrize(
    ("field", "raw", "metric", "label"),
    [
        ("endpoint", "/policy/acme-prod/quotes", "permgate_request_seconds_count", "endpoint"),
        ("endpoint", "quotes get?x=1", "permgate_request_seconds_count", "endpoint"),
        ("reason", "Tenant acme-prod unknown", "permgate_decisions_total", "reason"),
        ("auth_failure", "bad token pgt_abc", "permgate_auth_failures_total", "reason"),
        ("upstream_error", "Connection refused", "permgate_upstream_errors_total", "kind"),
    ],
    ids=["raw-path", "endpoint-free-text", "reason-message", "auth-message", "upstream-message"],
)
def test_label_values_that_are_not_identifiers_become_other(
    field: str, raw: str, metric: str, label: str
) -> None:
    """A bug that passes a path or a message as a label cannot create an unbounded series."""
    metrics = Metrics()
    metrics.observe(outcome(**(ALLOW | {field: raw})))
    exposition = render_latest(metrics.registry)[0].decode()
    assert raw not in exposition
    assert f'{label}="other"' in exposition
    assert metric.removesuffix("_count").removesuffix("_total") in exposition


def test_memoized_children_keep_counting_the_same_series() -> None:
    """Repeated outcomes reuse one child per label tuple and still add up."""
    metrics = Metrics()
    for _ in range(1000):
        metrics.observe(outcome(**DENY))
    assert (
        value(
            metrics,
            "permgate_decisions_total",
            decision="deny",
            reason="missing_permission",
            endpoint="quotes.create",
        )
        == 1000
    )


@pytest.mark.parametrize(
    ("buckets", "smallest", "largest"),
    [(DECISION_BUCKETS, 1e-6, 1.0), (REQUEST_BUCKETS, 5e-5, 60.0)],
    ids=["decision", "request"],
)
def test_histogram_buckets_span_microseconds_to_seconds(
    buckets: tuple[float, ...], smallest: float, largest: float
) -> None:
    """Buckets are increasing, start near the fastest case and end at the slowest."""
    assert buckets[0] == smallest
    assert buckets[-1] == largest
    assert all(a < b <= 3.0 * a for a, b in itertools.pairwise(buckets))


def test_every_histogram_is_exposed_with_buckets_sum_and_count() -> None:
    """The three histograms appear with _bucket, _sum and _count once observed."""
    metrics = Metrics()
    metrics.observe(outcome(**ALLOW, upstream_s=0.01))
    text = render_latest(metrics.registry)[0].decode()
    for name in ("permgate_decision_seconds", "permgate_upstream_seconds"):
        for suffix in ("_bucket{", "_sum ", "_count "):
            assert name + suffix in text
    assert 'permgate_request_seconds_bucket{endpoint="quotes.get",le="+Inf"} 1.0' in text


def test_map_loaded_points_info_at_the_new_map_and_forgets_the_old() -> None:
    """The info gauge is 1 for the current map only; each load counts ok."""
    metrics = Metrics()
    metrics.map_loaded(endpoint_map("aaa", "a"))
    metrics.map_loaded(endpoint_map("bbb", "a", "b"))
    assert value(metrics, "permgate_endpoint_map_info", version="1", sha256="bbb") == 1
    assert (
        metrics.registry.get_sample_value(
            "permgate_endpoint_map_info", {"version": "1", "sha256": "aaa"}
        )
        is None
    )
    assert value(metrics, "permgate_endpoint_map_reloads_total", result="ok") == 2


def test_map_failed_counts_error_and_keeps_the_info() -> None:
    """A failed reload counts error; the served map's info stays."""
    metrics = Metrics()
    metrics.map_loaded(endpoint_map("aaa", "a"))
    metrics.map_failed()
    assert value(metrics, "permgate_endpoint_map_reloads_total", result="error") == 1
    assert value(metrics, "permgate_endpoint_map_info", version="1", sha256="aaa") == 1


def test_fixed_series_exist_at_zero_before_any_traffic() -> None:
    """Dashboards see 0, not "no data", for cache results, reload results and drops."""
    metrics = Metrics()
    assert (
        metrics.registry.get_sample_value("permgate_decision_cache_total", {"result": "hit"}) == 0
    )
    assert (
        metrics.registry.get_sample_value(
            "permgate_endpoint_map_reloads_total", {"result": "error"}
        )
        == 0
    )
    assert metrics.registry.get_sample_value("permgate_audit_events_dropped_total") == 0


def test_two_apps_in_one_process_do_not_share_metrics() -> None:
    """Each Metrics has its own registry, so a second one neither collides nor mixes counts."""
    first, second = Metrics(), Metrics()
    first.observe(outcome(**ALLOW))
    assert value(second, "permgate_decisions_total", decision="allow", reason="allowed",
                 endpoint="quotes.get") == 0  # fmt: skip


def test_render_latest_is_prometheus_text() -> None:
    """The /metrics body parses as the Prometheus text format and names its content type."""
    metrics = Metrics()
    metrics.observe(outcome(**ALLOW))
    body, content_type = render_latest(metrics.registry)
    assert content_type.startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "permgate_decisions" in names


def test_multiprocess_env_set_after_import_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Setting the variable too late would silently keep per-process values: refuse."""
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="imported before"):
        multiprocess_dir()


def test_prepare_multiprocess_dir_removes_stale_files(tmp_path: Path) -> None:
    """Files from a previous run would be added into this run's counters: they go."""
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("x")
    prepare_multiprocess_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


WORKER = textwrap.dedent(
    """
    import json, os, sys
    from permgate.core.endpoints import EndpointMap
    from permgate.observability.metrics import Metrics, mark_process_dead
    from permgate.observability.outcome import RequestOutcome

    spec = json.loads(sys.argv[1])
    metrics = Metrics()
    for sha in spec["maps"]:
        metrics.map_loaded(EndpointMap(sha256=sha))
    for fields in spec["outcomes"]:
        metrics.observe(RequestOutcome("r", "d", "GET", "/", None, 0.0, **fields))
    if spec.get("scrape"):
        sys.stdout.write(metrics.metrics_response()[0].decode())
    if spec.get("dead"):
        mark_process_dead(os.getpid())
    """
)


def run_worker(directory: Path, spec: dict[str, Any]) -> str:
    env = os.environ | {MULTIPROC_ENV: str(directory)}
    result = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


@pytest.mark.slow
def test_two_workers_scrape_equals_the_sum(tmp_path: Path) -> None:
    """With --workers 2 one scrape shows the sum of both workers' counters and histograms."""
    prepare_multiprocess_dir(tmp_path)
    run_worker(tmp_path, {"maps": ["aaa"], "outcomes": [ALLOW, ALLOW, DENY], "dead": False})
    run_worker(tmp_path, {"maps": ["aaa"], "outcomes": [ALLOW, SHADOW], "dead": False})
    text = run_worker(tmp_path, {"maps": [], "outcomes": [], "scrape": True})
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    allowed = (("decision", "allow"), ("endpoint", "quotes.get"), ("reason", "allowed"))
    assert samples[("permgate_decisions_total", allowed)] == 3
    assert samples[("permgate_decision_seconds_count", ())] == 5
    assert samples[("permgate_endpoint_map_reloads_total", (("result", "ok"),))] == 2


@pytest.mark.slow
def test_multiprocess_info_shows_only_the_current_map(tmp_path: Path) -> None:
    """A worker that reloaded from aaa to bbb leaves only bbb in the aggregated info."""
    prepare_multiprocess_dir(tmp_path)
    text = run_worker(tmp_path, {"maps": ["aaa", "bbb"], "outcomes": [], "scrape": True})
    info = [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "permgate_endpoint_map_info"
    ]
    assert [(s.labels["sha256"], s.value) for s in info] == [("bbb", 1.0)]


@pytest.mark.slow
def test_dead_worker_info_disappears_but_its_counts_stay(tmp_path: Path) -> None:
    """mark_process_dead drops a gone worker's live info gauge; counters keep its requests."""
    prepare_multiprocess_dir(tmp_path)
    run_worker(tmp_path, {"maps": ["old"], "outcomes": [ALLOW], "dead": True})
    text = run_worker(tmp_path, {"maps": ["new"], "outcomes": [], "scrape": True})
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    info = [s.labels["sha256"] for s in samples if s.name == "permgate_endpoint_map_info"]
    assert info == ["new"]
    assert any(s.name == "permgate_decisions_total" and s.value == 1 for s in samples)


def test_counters_survive_scrapes_exactly() -> None:
    """Scraping reads the plain numbers without resetting or rounding them: counts and
    sums keep adding up exactly across scrapes."""
    metrics = Metrics()
    for _ in range(1000):
        metrics.observe(outcome(**ALLOW, duration_s=0.25))
    first = render_latest(metrics.registry)[0]
    assert render_latest(metrics.registry)[0] == first  # a scrape changes nothing
    for _ in range(234):
        metrics.observe(outcome(**ALLOW, duration_s=0.25))
    allowed = {"decision": "allow", "reason": "allowed", "endpoint": "quotes.get"}
    assert value(metrics, "permgate_decisions_total", **allowed) == 1234
    assert value(metrics, "permgate_decision_cache_total", result="miss") == 1234
    assert value(metrics, "permgate_request_seconds_count", endpoint="quotes.get") == 1234
    assert value(metrics, "permgate_request_seconds_sum", endpoint="quotes.get") == 308.5
    assert value(metrics, "permgate_request_seconds_bucket", endpoint="quotes.get", le="0.1") == 0
    assert (
        value(metrics, "permgate_request_seconds_bucket", endpoint="quotes.get", le="0.25") == 1234
    )


@pytest.mark.parametrize(
    ("amount", "le"),
    [(1e-6, "1e-06"), (1.5e-6, "2.5e-06"), (1.0, "1.0"), (7.0, "+Inf")],
    ids=["on-a-bound", "between-bounds", "last-bound", "beyond-every-bound"],
)
def test_histogram_bucket_is_the_first_bound_at_or_above_the_value(amount: float, le: str) -> None:
    """As prometheus_client's Histogram: a value lands in the first bucket whose bound
    is >= the value, and the exposition is cumulative from there."""
    metrics = Metrics()
    metrics.observe(outcome(**(ALLOW | {"decision_s": amount})))
    bounds = [*(str(b) for b in DECISION_BUCKETS), "+Inf"]
    les = ["1e-06", "2.5e-06", "5e-06", "1e-05", "2.5e-05", "5e-05", "0.0001", "0.00025",
           "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
           "1.0", "+Inf"]  # fmt: skip
    assert len(les) == len(bounds)
    cumulative = [value(metrics, "permgate_decision_seconds_bucket", le=b) for b in les]
    first = les.index(le)
    assert cumulative == [0.0] * first + [1.0] * (len(les) - first)


PUBLISHER = textwrap.dedent(
    """
    import asyncio, sys
    from permgate.observability.metrics import PUBLISH_SECONDS, Metrics
    from permgate.observability.outcome import RequestOutcome

    async def main() -> None:
        metrics = Metrics()
        for _ in range(5):
            metrics.observe(RequestOutcome("r", "d", "GET", "/", None, 0.0, decision="allow",
                                           reason="allowed", endpoint="quotes.get"))
        await asyncio.sleep(PUBLISH_SECONDS + 0.3)
        print("published", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_a_running_worker_publishes_its_requests_without_being_scraped(tmp_path: Path) -> None:
    """With several workers, a worker's requests reach the shared files within
    PUBLISH_SECONDS while it keeps running: a scrape through another worker counts them."""
    prepare_multiprocess_dir(tmp_path)
    env = os.environ | {MULTIPROC_ENV: str(tmp_path)}
    with subprocess.Popen(
        [sys.executable, "-c", PUBLISHER],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as worker:
        assert worker.stdin is not None and worker.stdout is not None
        try:
            assert worker.stdout.readline().strip() == "published"
            text = run_worker(tmp_path, {"maps": [], "outcomes": [], "scrape": True})
        finally:
            worker.stdin.close()
            worker.wait(timeout=30)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    allowed = (("decision", "allow"), ("endpoint", "quotes.get"), ("reason", "allowed"))
    assert samples[("permgate_decisions_total", allowed)] == 5
    assert samples[("permgate_request_seconds_count", (("endpoint", "quotes.get"),))] == 5


def _without_created_values(text: str) -> list[str]:
    """Exposition lines with the values of ``_created`` samples (creation times) blanked."""
    lines = []
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if not line.startswith("#") and name.endswith("_created"):
            line = line.rsplit(" ", 1)[0] + " T"
        lines.append(line)
    return lines


def test_exposition_is_what_prometheus_client_classes_would_write() -> None:
    """The plain-number counters and histograms are written exactly as
    prometheus_client's Counter and Histogram write the same observations: names,
    HELP, TYPE, labels, cumulative buckets, _count, _sum and _created series."""
    metrics = Metrics()
    reference = CollectorRegistry()
    decisions = Counter(
        "permgate_decisions_total",
        metrics.decisions.documentation,
        ("decision", "reason", "endpoint"),
        registry=reference,
    )
    request_seconds = Histogram(
        "permgate_request_seconds",
        metrics.request_seconds.documentation,
        ("endpoint",),
        buckets=REQUEST_BUCKETS,
        registry=reference,
    )
    for duration in (3e-5, 0.0042, 0.25, 61.0):
        metrics.observe(outcome(**(DENY | {"duration_s": duration})))
        decisions.labels("deny", "missing_permission", "quotes.create").inc()
        request_seconds.labels("quotes.create").observe(duration)
    ours = _without_created_values(render_latest(metrics.registry)[0].decode())
    theirs = _without_created_values(render_latest(reference)[0].decode())
    for family in ("permgate_decisions", "permgate_request_seconds"):
        mine = [line for line in ours if family + "_" in line or line.endswith(family)]
        expected = [line for line in theirs if family + "_" in line or line.endswith(family)]
        assert len(mine) >= 5
        assert mine == expected
