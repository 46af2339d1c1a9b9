"""The Grafana dashboard queries only what permgate exports, and Helm ships the same file."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from permgate.core.endpoints import EndpointMap
from permgate.core.model import Principal
from permgate.observability.metrics import Metrics, render_latest
from permgate.observability.outcome import RequestOutcome

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "permgate.json"
CHART_COPY = ROOT / "helm" / "permgate" / "dashboards" / "permgate.json"

# What the dashboard may call; anything else is a typo or a query this test does not understand.
FUNCTIONS = frozenset(
    {"sum", "count", "max", "min", "avg", "topk", "bottomk", "rate", "increase", "irate",
     "histogram_quantile", "clamp_min", "clamp_max", "label_values"}
)  # fmt: skip
BINARY_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})
# Added at scrape time (pod and namespace by the ServiceMonitor in Kubernetes).
SCRAPE_LABELS = frozenset({"job", "instance", "namespace", "pod"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_TOKEN = re.compile(
    r"(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"|(?P<matchers>\{[^}]*\})"
    r"|(?P<other>\S)"
)
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"\"")


@dataclass
class Query:
    """What one PromQL expression reads: metric selectors and the labels it groups by."""

    selectors: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def parse_promql(expr: str) -> Query:
    """Read a PromQL expression well enough to know every metric and label it uses.

    Raises ValueError on an identifier that is neither a known function, a keyword,
    nor a metric, so a query this parser misreads fails loudly instead of passing.
    """
    text = _STRING.sub('""', expr)  # label values ($job, "deny"…) are not names
    text = _RANGE.sub("", text)  # [5m], [$__rate_interval]
    query = Query()
    for group in _GROUPING.finditer(text):
        query.grouping.update(n.strip() for n in group.group(1).split(",") if n.strip())
    text = _GROUPING.sub(" ", text)
    tokens = list(_TOKEN.finditer(text))
    for index, token in enumerate(tokens):
        name = token.group("ident")
        if name is None:
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if following is not None and following.group("other") == "(":
            if name not in FUNCTIONS:
                raise ValueError(f"unknown function {name!r} in {expr!r}")
            continue
        if name in BINARY_KEYWORDS:
            continue
        labels: frozenset[str] = frozenset()
        if following is not None and following.group("matchers"):
            labels = frozenset(_MATCHER.findall(following.group("matchers")))
        query.selectors.append((name, labels))
    return query


def exprs(node: Any) -> Iterator[str]:
    """Every ``expr`` anywhere in the dashboard (panels, rows, nested panels)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


def exported() -> dict[str, frozenset[str]]:
    """Sample names (as Prometheus stores them) and their labels, from a fresh registry
    after one outcome that touches every per-request metric, a map load and an audit write."""
    metrics = Metrics()
    metrics.observe(
        RequestOutcome(
            request_id="r",
            decision_id="d",
            method="GET",
            path="/x",
            client_ip=None,
            started=0.0,
            endpoint="quotes.get",
            decision="deny",
            reason="invalid_token",
            principal=Principal(id="alice", account="acme"),
            decision_s=1e-5,
            upstream_s=0.01,
            upstream_error="timeout",
            auth_failure="invalid_token",
            duration_s=0.02,
        )
    )
    metrics.map_loaded(EndpointMap(sha256="abc"))
    metrics.map_failed()
    metrics.audit_written("decision")
    body, _ = render_latest(metrics.registry)
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in names.items()}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return result


@pytest.fixture(scope="module")
def queries(dashboard: dict[str, Any]) -> list[tuple[str, Query]]:
    return [(expr, parse_promql(expr)) for expr in exprs(dashboard)]


# --------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(
    ("expr", "selectors", "grouping"),
    [
        ('rate(a_total{job=~"$job"}[5m])', [("a_total", {"job"})], set()),
        (
            'topk(10, sum by (endpoint, reason) (rate(a_total{decision="deny"}[1m])))',
            [("a_total", {"decision"})],
            {"endpoint", "reason"},
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(h_bucket[1m]))) / 1e-3",
            [("h_bucket", set())],
            {"le"},
        ),
        ("a == 1 and on (x) b", [("a", set()), ("b", set())], {"x"}),
        ('sum(x{l="by (y)"})', [("x", {"l"})], set()),
    ],
    ids=["selector", "grouping", "histogram", "binary", "label-value-looks-like-syntax"],
)
def test_parser_finds_metrics_and_labels(
    expr: str, selectors: list[tuple[str, set[str]]], grouping: set[str]
) -> None:
    """The PromQL reader used below extracts exactly the metrics and labels of a query."""
    query = parse_promql(expr)
    assert [(n, set(labels)) for n, labels in query.selectors] == selectors
    assert query.grouping == grouping


def test_parser_refuses_what_it_does_not_know() -> None:
    """An unknown function is an error, so a misread query cannot pass silently."""
    with pytest.raises(ValueError, match="quantile_over_time"):
        parse_promql("quantile_over_time(0.5, x[5m])")


# --------------------------------------------------------------------------- the dashboard


def test_dashboard_has_queries(queries: list[tuple[str, Query]]) -> None:
    """The dashboard is not empty: the checks below would otherwise pass vacuously."""
    assert len(queries) >= 15


def test_every_queried_metric_is_exported(queries: list[tuple[str, Query]]) -> None:
    """Each metric name in every expr is a sample name permgate's registry exposes."""
    names = exported()
    unknown = {
        name: expr for expr, query in queries for name, _ in query.selectors if name not in names
    }
    assert unknown == {}


def test_every_matched_label_exists_on_its_metric(queries: list[tuple[str, Query]]) -> None:
    """Label matchers name labels the metric has (a typo there would match nothing)."""
    names = exported()
    wrong = [
        (expr, name, sorted(labels - names.get(name, frozenset()) - SCRAPE_LABELS))
        for expr, query in queries
        for name, labels in query.selectors
        if labels - names.get(name, frozenset()) - SCRAPE_LABELS
    ]
    assert wrong == []


def test_every_grouping_label_exists(queries: list[tuple[str, Query]]) -> None:
    """`by (…)` names labels of the metrics in that query (le for histograms)."""
    names = exported()
    wrong = []
    for expr, query in queries:
        available = set(SCRAPE_LABELS)
        for name, _ in query.selectors:
            available |= names.get(name, frozenset())
        if query.grouping - available:
            wrong.append((expr, sorted(query.grouping - available)))
    assert wrong == []


def test_dashboard_shows_every_design_metric(queries: list[tuple[str, Query]]) -> None:
    """Every metric family permgate exports appears in at least one panel."""
    used = {name for _, query in queries for name, _ in query.selectors}
    families = [
        "permgate_decisions_total",
        "permgate_decision_seconds_bucket",
        "permgate_request_seconds_bucket",
        "permgate_upstream_seconds_bucket",
        "permgate_upstream_errors_total",
        "permgate_decision_cache_total",
        "permgate_auth_failures_total",
        "permgate_endpoint_map_reloads_total",
        "permgate_endpoint_map_info",
        "permgate_audit_events_total",
        "permgate_audit_events_dropped_total",
    ]
    assert [f for f in families if f not in used] == []


def test_datasource_is_a_templated_prometheus_variable(dashboard: dict[str, Any]) -> None:
    """Every panel and query uses ${datasource}, a Prometheus data source variable."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    sources = [p["datasource"] for p in dashboard["panels"] if "datasource" in p]
    sources += [t["datasource"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert sources
    assert all(s == {"type": "prometheus", "uid": "${datasource}"} for s in sources)


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    """A stable uid (so re-imports update in place), a schema Grafana 10/11 reads, unique ids."""
    assert dashboard["uid"] == "permgate-overview"
    assert dashboard["schemaVersion"] >= 39
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_helm_chart_ships_the_same_dashboard() -> None:
    """The chart's dashboards/permgate.json is a byte-for-byte copy of the canonical one."""
    assert CHART_COPY.exists(), (
        f"{CHART_COPY.relative_to(ROOT)} is missing: the chart's dashboard ConfigMap reads it; "
        f"copy {DASHBOARD.relative_to(ROOT)} there"
    )
    assert CHART_COPY.read_bytes() == DASHBOARD.read_bytes(), (
        f"{CHART_COPY.relative_to(ROOT)} differs from {DASHBOARD.relative_to(ROOT)}; "
        "the canonical dashboard is dashboards/permgate.json: copy it over the chart's"
    )
