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

Per-request metrics (the decision, cache, upstream-error and auth-failure counters and
the three histograms) are plain numbers on the event loop's thread: a ``prometheus_client``
child takes a lock on every ``inc()``/``observe()`` (and, with several workers, writes
an mmap file each time), which was most of their cost. A :class:`_LocalCollector`
exports them at scrape time with the very names, labels, samples and ``_created``
series the ``prometheus_client`` classes would. Rare metrics (map reloads and info,
audit events) stay ``prometheus_client`` objects.

Multiprocess (``serve --workers N``): when ``PROMETHEUS_MULTIPROC_DIR`` is set
*before* ``prometheus_client`` is first imported, every worker writes its values to
mmap files there and :meth:`Metrics.metrics_response` aggregates all of them with a
``MultiProcessCollector``. The plain numbers reach those files (through
``prometheus_client``'s own value class, so the files and the aggregation are the
library's) when :meth:`Metrics.publish` runs: before every scrape, before every audit
batch is written (so a request whose audit event is written is counted in the files),
at most :data:`PUBLISH_SECONDS` after any request, and at exit. The serving parent
calls :func:`prepare_multiprocess_dir` before starting workers and
:func:`mark_process_dead` when one exits.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from permgate.observability.outcome import RequestOutcome

if TYPE_CHECKING:
    from permgate.core.endpoints import EndpointMap

__all__ = [
    "DECISION_BUCKETS",
    "MULTIPROC_ENV",
    "PUBLISH_SECONDS",
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
# With several workers: how long another worker's request may take to reach the files.
PUBLISH_SECONDS: Final = 0.5
_INF: Final = float("inf")
# Most (decision, reason, endpoint) keys whose series are looked up in one step.
_SERIES_CACHE_SIZE: Final = 4096

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


# --------------------------------------------------------------------------- plain numbers


def _use_created() -> bool:
    """Whether ``prometheus_client`` exports ``_created`` series (its own switch)."""
    from prometheus_client import metrics as client_metrics

    return bool(client_metrics._use_created)


class _Count:
    """One counter series: a number the loop's thread adds to, no lock."""

    __slots__ = ("_published", "_shared", "created", "value")

    def __init__(self) -> None:
        self.value: float = 0
        self.created = time.time()
        self._shared: Any = None  # the multiprocess value, made at first publish
        self._published = -1.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _Buckets:
    """One histogram series: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("_published", "_shared", "bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()
        self._shared: Any = None  # (sum value, bucket values), made at first publish
        self._published: list[float] = []

    def observe(self, amount: float) -> None:
        """As ``Histogram.observe``: the first bucket whose bound is >= ``amount``."""
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class _CounterFamily:
    """A counter's series by label values, exported like ``prometheus_client.Counter``."""

    kind: Final = "counter"

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = labelnames
        self.children: dict[tuple[str, ...], _Count] = {}
        if not labelnames:  # as prometheus_client: a counter without labels exists at once
            self.children[()] = _Count()

    def labels(self, *values: str) -> _Count:
        """The series for ``values`` (created at 0 on first use)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = _Count()
        return child

    def metric(self, created: bool) -> Metric:
        metric = Metric(self.name, self.documentation, self.kind)
        for label_values, child in list(self.children.items()):
            labels = dict(zip(self.labelnames, label_values, strict=True))
            metric.add_sample(self.name + "_total", labels, float(child.value))
            if created:
                metric.add_sample(self.name + "_created", labels, child.created)
        return metric

    def publish(self, value_class: Any) -> None:
        for label_values, child in list(self.children.items()):
            value = child.value
            if value == child._published:
                continue
            if child._shared is None:
                child._shared = value_class(
                    "counter", self.name, self.name + "_total", self.labelnames, label_values,
                    self.documentation,
                )  # fmt: skip
            child._shared.set(value)
            child._published = value


class _HistogramFamily:
    """A histogram's series by label values, exported like ``prometheus_client.Histogram``."""

    kind: Final = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = (*buckets, _INF) if buckets[-1] != _INF else buckets
        self._le: tuple[str, ...] = tuple(
            floatToGoString(bound)  # type: ignore[no-untyped-call]
            for bound in self.bounds
        )
        self.children: dict[tuple[str, ...], _Buckets] = {}
        if not labelnames:
            self.children[()] = _Buckets(self.bounds)

    def labels(self, *values: str) -> _Buckets:
        """The series for ``values`` (created empty on first use)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = _Buckets(self.bounds)
        return child

    def metric(self, created: bool) -> Metric:
        metric = Metric(self.name, self.documentation, self.kind)
        name = self.name
        for label_values, child in list(self.children.items()):
            labels = dict(zip(self.labelnames, label_values, strict=True))
            counts, total = list(child.counts), child.sum
            cumulative = 0
            for le, count in zip(self._le, counts, strict=True):
                cumulative += count
                metric.add_sample(name + "_bucket", {**labels, "le": le}, float(cumulative))
            metric.add_sample(name + "_count", labels, float(cumulative))
            metric.add_sample(name + "_sum", labels, total)
            if created:
                metric.add_sample(name + "_created", labels, child.created)
        return metric

    def publish(self, value_class: Any) -> None:
        for label_values, child in list(self.children.items()):
            now = [child.sum, *child.counts]
            if now == child._published:
                continue
            if child._shared is None:
                child._shared = [
                    value_class(
                        "histogram", self.name, self.name + "_sum", self.labelnames, label_values,
                        self.documentation,
                    ),
                    *(
                        value_class(
                            "histogram", self.name, self.name + "_bucket",
                            (*self.labelnames, "le"), (*label_values, le), self.documentation,
                        )
                        for le in self._le
                    ),
                ]  # fmt: skip
            before = child._published or [-1.0] * len(now)
            for shared, value, old in zip(child._shared, now, before, strict=True):
                if value != old:
                    shared.set(value)
            child._published = now


_Family = _CounterFamily | _HistogramFamily


class _LocalCollector:
    """Exports the plain-number families at scrape time (this process's values)."""

    def __init__(self, families: tuple[_Family, ...]) -> None:
        self._families = families

    def describe(self) -> Iterator[Metric]:
        for family in self._families:
            yield Metric(family.name, family.documentation, family.kind)

    def collect(self) -> Iterator[Metric]:
        created = _use_created()
        for family in self._families:
            yield family.metric(created)


# Every Metrics that publishes to the multiprocess files, for the last publish at exit.
_PUBLISHERS: weakref.WeakSet[Metrics] = weakref.WeakSet()


@atexit.register
def _publish_at_exit() -> None:
    for metrics in list(_PUBLISHERS):
        metrics.publish()


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

    Per-request series are plain numbers (see the module docstring), looked up per
    label tuple in a dict. The per-request calls (:meth:`observe`) and the scrape run on
    the event loop's thread, the only one that changes those numbers; the audit writer
    thread calls :meth:`audit_written` (a ``prometheus_client`` counter, locked) and
    :meth:`publish` (which takes its own lock and only reads the numbers).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.multiprocess_path = multiprocess_dir()
        r = self.registry
        self.decisions = _CounterFamily(
            "permgate_decisions_total",
            "Gateway decisions, one per request: allow, deny or shadow_deny, by reason.",
            ("decision", "reason", "endpoint"),
        )
        self.decision_seconds = _HistogramFamily(
            "permgate_decision_seconds",
            "Time spent making the decision alone (route excluded, upstream excluded).",
            (),
            DECISION_BUCKETS,
        )
        self.request_seconds = _HistogramFamily(
            "permgate_request_seconds",
            "Whole request time as the client sees it, upstream included.",
            ("endpoint",),
            REQUEST_BUCKETS,
        )
        self.upstream_seconds = _HistogramFamily(
            "permgate_upstream_seconds",
            "Time from forwarding a request to the end of the upstream response.",
            (),
            REQUEST_BUCKETS,
        )
        self.upstream_errors = _CounterFamily(
            "permgate_upstream_errors_total",
            "Forwarded requests that failed at the upstream, by kind.",
            ("kind",),
        )
        self.decision_cache = _CounterFamily(
            "permgate_decision_cache_total",
            "Decision cache lookups by result.",
            ("result",),
        )
        self.auth_failures = _CounterFamily(
            "permgate_auth_failures_total",
            "Authentication failures (401) by reason.",
            ("reason",),
        )
        self._families: tuple[_Family, ...] = (
            self.decisions,
            self.decision_seconds,
            self.request_seconds,
            self.upstream_seconds,
            self.upstream_errors,
            self.decision_cache,
            self.auth_failures,
        )
        r.register(_LocalCollector(self._families))
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
        self._decision_seconds = self.decision_seconds.labels()
        self._upstream_seconds = self.upstream_seconds.labels()
        self._decision_children: dict[tuple[str, str, str], _Count] = {}
        # (decision, reason, endpoint) -> its decision counter and request histogram
        self._series: dict[tuple[str, str, str], tuple[_Count, _Buckets]] = {}
        self._request_children: dict[str, _Buckets] = {}
        self._upstream_error_children: dict[str, _Count] = {}
        self._auth_children: dict[str, _Count] = {}
        self._audit_children: dict[str, Counter] = {}
        self._info_labels: tuple[str, str] | None = None
        # Multiprocess: the library's value class (mmap files), a publish soon after
        # any request, one at a time.
        self._shared_values: Any = None
        self._publish_scheduled = True  # never, unless multiprocess (below)
        self._publish_lock = threading.Lock()
        if self.multiprocess_path is not None:
            self._shared_values = values.ValueClass
            self._publish_scheduled = False
            _PUBLISHERS.add(self)
            self.publish()  # the fixed series exist at 0 in the files too

    # ------------------------------------------------------------------ per request

    def observe(self, outcome: RequestOutcome) -> None:
        """Record one finished request (see the module docstring for the rules).

        One dict lookup per request finds both the decision counter and the request
        histogram of its (decision, reason, endpoint); the histograms are observed
        inline (as :meth:`_Buckets.observe`), without a method call each."""
        duration = outcome.duration_s
        series = self._series.get((outcome.decision, outcome.reason, outcome.endpoint))
        if series is None:
            series = self._series_for(outcome.decision, outcome.reason, outcome.endpoint)
        series[0].value += 1
        request = series[1]
        request.counts[bisect_left(request.bounds, duration)] += 1
        request.sum += duration
        decision_s = outcome.decision_s
        if decision_s is not None:
            histogram = self._decision_seconds
            histogram.counts[bisect_left(histogram.bounds, decision_s)] += 1
            histogram.sum += decision_s
            (self._cache_hit if outcome.cache_hit else self._cache_miss).value += 1
        upstream_s = outcome.upstream_s
        if upstream_s is not None:
            histogram = self._upstream_seconds
            histogram.counts[bisect_left(histogram.bounds, upstream_s)] += 1
            histogram.sum += upstream_s
        if outcome.upstream_error is not None:
            self._child(self._upstream_error_children, self.upstream_errors, outcome.upstream_error)
        if outcome.auth_failure is not None:
            self._child(self._auth_children, self.auth_failures, outcome.auth_failure)
        if not self._publish_scheduled:
            self._publish_soon()

    def _series_for(self, decision: str, reason: str, endpoint: str) -> tuple[_Count, _Buckets]:
        """The decision counter and request histogram of one (decision, reason, endpoint)."""
        key = (decision, reason, endpoint)
        series = (self._decision_child(key), self._request_child(endpoint))
        if len(self._series) < _SERIES_CACHE_SIZE:  # bad labels must not grow it forever
            self._series[key] = series
        return series

    def _decision_child(self, key: tuple[str, str, str]) -> _Count:
        decision, reason, endpoint = key
        label = (_reason_label(decision), _reason_label(reason), _endpoint_label(endpoint))
        child = self._decision_children.get(label)
        if child is None:
            child = self._decision_children[label] = self.decisions.labels(*label)
        if label == key:  # memoize only well-formed keys: bad ones must not grow the dict
            self._decision_children[key] = child
        return child

    def _request_child(self, endpoint: str) -> _Buckets:
        label = _endpoint_label(endpoint)
        child = self._request_children.get(label)
        if child is None:
            child = self._request_children[label] = self.request_seconds.labels(label)
        return child

    def _child(self, cache: dict[str, _Count], family: _CounterFamily, value: str) -> None:
        child = cache.get(value)
        if child is None:
            label = _reason_label(value)
            child = cache.get(label)
            if child is None:
                child = cache[label] = family.labels(label)
        child.value += 1

    # ------------------------------------------------------------------ multiprocess

    def publish(self) -> None:
        """Copy the per-request numbers that changed into this worker's multiprocess
        files (nothing to do in a single process). Cheap when little changed."""
        value_class = self._shared_values
        if value_class is None:
            return
        with self._publish_lock:
            for family in self._families:
                family.publish(value_class)

    def _publish_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script, a test): the scrape or the exit publishes
            return
        self._publish_scheduled = True
        loop.call_later(PUBLISH_SECONDS, self._published_soon)

    def _published_soon(self) -> None:
        self._publish_scheduled = False
        self.publish()

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
        """``count`` audit events of type ``event`` reached the sink (the audit writer
        thread calls it, the only caller)."""
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
        self.publish()  # this worker's own requests, to the last one
        scrape = CollectorRegistry(auto_describe=True)
        scrape.register(_AggregatedView(self.multiprocess_path))
        return render_latest(scrape)
