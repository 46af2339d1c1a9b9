"""Every Prometheus metric permgate exports, defined in this one place.

Metrics live on a :class:`~prometheus_client.CollectorRegistry` owned by the app
(never the process-global default), so tests and several apps in one process do
not collide. The pipeline reports each request once, as a
:class:`~permgate.observability.outcome.RequestOutcome`, and :meth:`Metrics.observe` derives every
per-request metric from it.

Counting rule for ``permgate_decisions_total``: **every** outcome counts exactly
once, with its ``decision`` and ``reason``. A request refused before any decision
could be computed (400 hygiene, 401, 503) is a deny with that reason; a public or
passthrough request is an allow with reason ``public`` / ``unmapped_passthrough``; an
allowed request whose upstream then failed stays an allow (the failure is counted in
``permgate_upstream_errors_total``). So ``sum(permgate_decisions_total)`` equals the
number of requests answered. ``permgate_decision_seconds`` and
``permgate_decision_cache_total`` are observed only when a decision was actually
made (``outcome.decision_s is not None``).

Labels are bounded: ``endpoint`` is a map entry id or one of the constants
``unmapped`` / ``unrouted``; reasons and kinds come from closed sets in the code.
As a last line of defence a label value that does not look like an identifier
(a raw path, a message) is replaced by ``other``, so a bug can never explode the
series count or leak a path into a label.

Multiprocess (``serve --workers N``): when ``PROMETHEUS_MULTIPROC_DIR`` is set
*before* ``prometheus_client`` is first imported, every worker writes its values to
mmap files there and :meth:`Metrics.metrics_response` aggregates all of them with a
``MultiProcessCollector``. The serving parent calls :func:`prepare_multiprocess_dir`
before starting workers and :func:`mark_process_dead` when one exits.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric

from permgate.observability.outcome import RequestOutcome

if TYPE_CHECKING:
    from permgate.core.endpoints import EndpointMap

__all__ = [
    "DECISION_BUCKETS",
    "MULTIPROC_ENV",
    "REQUEST_BUCKETS",
    "Metrics",
    "mark_process_dead",
    "multiprocess_dir",
    "prepare_multiprocess_dir",
    "render_latest",
]

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# 1-2.5-5 steps: the decision alone is microseconds (cached) to a second (pathological).
DECISION_BUCKETS: Final = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
    1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
# A whole request, upstream included: tens of microseconds (a cached 403) to a minute.
REQUEST_BUCKETS: Final = (
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

INFO_METRIC: Final = "permgate_endpoint_map_info"
OTHER_LABEL: Final = "other"

# Same grammar as endpoint ids in endpoints.py: never a path (no "/"), never free text.
_ENDPOINT_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")
_REASON_LABEL = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _endpoint_label(value: str) -> str:
    return value if _ENDPOINT_LABEL.fullmatch(value) else OTHER_LABEL


def _reason_label(value: str) -> str:
    return value if _REASON_LABEL.fullmatch(value) else OTHER_LABEL


def multiprocess_dir() -> str | None:
    """The multiprocess directory if multiprocess mode is on, else None.

    Raises RuntimeError if the variable is set but ``prometheus_client`` was imported
    before it was: values would then silently stay per-process.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if values.ValueClass is values.MutexValue:
        raise RuntimeError(
            f"{MULTIPROC_ENV} is set but prometheus_client was imported before it was; "
            "set it before importing permgate's app so workers share their metrics"
        )
    return path


def prepare_multiprocess_dir(path: str | os.PathLike[str]) -> None:
    """Create the directory and remove stale ``*.db`` files of a previous run.

    Call it in the serving parent before any worker starts: files left over from
    an earlier run would otherwise be added into this run's counters.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


def mark_process_dead(pid: int) -> None:
    """Forget a worker's live gauges (the map info); call when a worker exits."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def render_latest(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text exposition of ``registry`` and its Content-Type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _AggregatedView:
    """All workers' mmap files, minus map-info series whose value is 0.

    An mmap file cannot forget a label set, so a replaced map's info series is set
    to 0 on reload (see :meth:`Metrics.map_loaded`) and dropped here at scrape time.
    """

    def __init__(self, path: str) -> None:
        self._inner = multiprocess.MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for metric in self._inner.collect():  # type: ignore[no-untyped-call]
            if metric.name == INFO_METRIC:
                metric.samples = [s for s in metric.samples if s.value != 0]
            yield metric


class Metrics:
    """permgate's metrics on one registry, with the calls the gateway makes.

    Labelled children are memoized per label tuple: ``.labels()`` costs several
    microseconds, a dict lookup does not.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.multiprocess_path = multiprocess_dir()
        r = self.registry
        self.decisions = Counter(
            "permgate_decisions_total",
            "Gateway decisions, one per request: allow, deny or shadow_deny, by reason.",
            ("decision", "reason", "endpoint"),
            registry=r,
        )
        self.decision_seconds = Histogram(
            "permgate_decision_seconds",
            "Time spent making the decision alone (route excluded, upstream excluded).",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "permgate_request_seconds",
            "Whole request time as the client sees it, upstream included.",
            ("endpoint",),
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "permgate_upstream_seconds",
            "Time from forwarding a request to the end of the upstream response.",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "permgate_upstream_errors_total",
            "Forwarded requests that failed at the upstream, by kind.",
            ("kind",),
            registry=r,
        )
        self.decision_cache = Counter(
            "permgate_decision_cache_total",
            "Decision cache lookups by result.",
            ("result",),
            registry=r,
        )
        self.auth_failures = Counter(
            "permgate_auth_failures_total",
            "Authentication failures (401) by reason.",
            ("reason",),
            registry=r,
        )
        self.map_reloads = Counter(
            "permgate_endpoint_map_reloads_total",
            "Endpoint map loads (the initial one included) by result.",
            ("result",),
            registry=r,
        )
        self.map_info = Gauge(
            INFO_METRIC,
            "The endpoint map being served: 1 for its version and sha256.",
            ("version", "sha256"),
            registry=r,
            # Live workers only, highest value wins: a replaced map is set to 0.
            multiprocess_mode="livemax",
        )
        self.audit_events = Counter(
            "permgate_audit_events_total",
            "Audit events written to the sink, by event type.",
            ("event",),
            registry=r,
        )
        self.audit_dropped_total = Counter(
            "permgate_audit_events_dropped_total",
            "Audit events lost. Stays 0: the queue applies backpressure or rejects "
            "requests instead of dropping.",
            registry=r,
        )
        # Create the fixed-label series up front so dashboards see zeros, not gaps.
        self._cache_hit = self.decision_cache.labels("hit")
        self._cache_miss = self.decision_cache.labels("miss")
        self._reload_ok = self.map_reloads.labels("ok")
        self._reload_error = self.map_reloads.labels("error")
        self._decision_children: dict[tuple[str, str, str], Counter] = {}
        self._request_children: dict[str, Histogram] = {}
        self._upstream_error_children: dict[str, Counter] = {}
        self._auth_children: dict[str, Counter] = {}
        self._audit_children: dict[str, Counter] = {}
        self._info_labels: tuple[str, str] | None = None

    # ------------------------------------------------------------------ per request

    def observe(self, outcome: RequestOutcome) -> None:
        """Record one finished request (see the module docstring for the rules)."""
        key = (outcome.decision, outcome.reason, outcome.endpoint)
        counter = self._decision_children.get(key)
        if counter is None:
            counter = self._decision_child(key)
        counter.inc()
        histogram = self._request_children.get(outcome.endpoint)
        if histogram is None:
            histogram = self._request_child(outcome.endpoint)
        histogram.observe(outcome.duration_s)
        if outcome.decision_s is not None:
            self.decision_seconds.observe(outcome.decision_s)
            (self._cache_hit if outcome.cache_hit else self._cache_miss).inc()
        if outcome.upstream_s is not None:
            self.upstream_seconds.observe(outcome.upstream_s)
        if outcome.upstream_error is not None:
            self._child(self._upstream_error_children, self.upstream_errors, outcome.upstream_error)
        if outcome.auth_failure is not None:
            self._child(self._auth_children, self.auth_failures, outcome.auth_failure)

    def _decision_child(self, key: tuple[str, str, str]) -> Counter:
        decision, reason, endpoint = key
        label = (_reason_label(decision), _reason_label(reason), _endpoint_label(endpoint))
        child = self._decision_children.get(label)
        if child is None:
            child = self._decision_children[label] = self.decisions.labels(*label)
        if label == key:  # memoize only well-formed keys: bad ones must not grow the dict
            self._decision_children[key] = child
        return child

    def _request_child(self, endpoint: str) -> Histogram:
        label = _endpoint_label(endpoint)
        child = self._request_children.get(label)
        if child is None:
            child = self._request_children[label] = self.request_seconds.labels(label)
        return child

    def _child(self, cache: dict[str, Counter], metric: Counter, value: str) -> None:
        child = cache.get(value)
        if child is None:
            label = _reason_label(value)
            child = cache.get(label)
            if child is None:
                child = cache[label] = metric.labels(label)
        child.inc()

    # ------------------------------------------------------------------ map and audit

    def map_loaded(self, endpoint_map: EndpointMap) -> None:
        """A map was loaded and is now served: count ``ok`` and point the info at it."""
        self._reload_ok.inc()
        labels = (str(endpoint_map.version), endpoint_map.sha256)
        previous = self._info_labels
        if previous is not None and previous != labels:
            # In multiprocess mode the mmap file keeps the series: 0 hides it at scrape.
            self.map_info.labels(*previous).set(0)
            self.map_info.remove(*previous)
        self.map_info.labels(*labels).set(1)
        self._info_labels = labels

    def map_failed(self) -> None:
        """A map load failed; the previous map (if any) keeps being served."""
        self._reload_error.inc()

    def audit_written(self, event: str, count: int = 1) -> None:
        """``count`` audit events of type ``event`` reached the sink."""
        child = self._audit_children.get(event)
        if child is None:
            child = self._audit_children[event] = self.audit_events.labels(event)
        child.inc(count)

    def audit_dropped(self, count: int) -> None:
        """Audit events were lost (only a sink failing past the shutdown deadline)."""
        self.audit_dropped_total.inc(count)

    # ------------------------------------------------------------------ exposition

    def metrics_response(self) -> tuple[bytes, str]:
        """The body and Content-Type for ``/metrics``: all workers in multiprocess mode."""
        if self.multiprocess_path is None:
            return render_latest(self.registry)
        scrape = CollectorRegistry(auto_describe=True)
        scrape.register(_AggregatedView(self.multiprocess_path))
        return render_latest(scrape)
