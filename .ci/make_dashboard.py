"""Write helm/permgate/dashboards/permgate.json, the canonical Grafana dashboard.

The chart ships it as a ConfigMap for the Grafana sidecar (values: dashboard.enabled).
Edit the panels here and rerun: `python3 .ci/make_dashboard.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "helm/permgate/dashboards/permgate.json"
SEL = 'namespace=~"$namespace", pod=~"$pod"'
RATE = "$__rate_interval"


def target(expr: str, legend: str, ref: str = "A", instant: bool = False) -> dict:
    t = {"datasource": {"type": "prometheus", "uid": "${datasource}"}, "expr": expr}
    t |= {"legendFormat": legend, "refId": ref}
    if instant:
        t |= {"instant": True, "range": False, "format": "table"}
    return t


def panel(pid, title, kind, x, y, w, h, targets, unit="short", description="", **extra) -> dict:
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": targets,
    }
    p.update(extra)
    return p


def quantiles(metric: str, by: str = "") -> list[dict]:
    group = f"le{', ' + by if by else ''}"
    return [
        target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""),
            ref,
        )
        for q, ref in ((0.5, "A"), (0.99, "B"))
    ]


panels = [
    panel(
        1,
        "Decisions by decision and reason",
        "timeseries",
        0,
        0,
        12,
        8,
        [
            target(
                f"sum by (decision, reason) (rate(permgate_decisions_total{{{SEL}}}[{RATE}]))",
                "{{decision}} {{reason}}",
            ),
        ],
        unit="reqps",
        description="Every gateway decision per second (allow, deny, shadow_deny).",
    ),
    panel(
        2,
        "Deny rate by endpoint (top 10)",
        "timeseries",
        12,
        0,
        12,
        8,
        [
            target(
                "topk(10, sum by (endpoint) (rate(permgate_decisions_total"
                f'{{{SEL}, decision="deny"}}[{RATE}])))',
                "{{endpoint}}",
            ),
        ],
        unit="reqps",
        description="Enforced denies per endpoint id of the map.",
    ),
    panel(
        3,
        "Shadow denies by endpoint and reason",
        "timeseries",
        0,
        8,
        12,
        8,
        [
            target(
                "sum by (endpoint, reason) (rate(permgate_decisions_total"
                f'{{{SEL}, decision="shadow_deny"}}[{RATE}]))',
                "{{endpoint}} {{reason}}",
            ),
        ],
        unit="reqps",
        description="What enforce mode would refuse on tenants still in shadow mode.",
    ),
    panel(
        4,
        "Decision cache hit ratio",
        "stat",
        12,
        8,
        6,
        8,
        [
            target(
                f'sum(rate(permgate_decision_cache_total{{{SEL}, result="hit"}}[{RATE}]))'
                f" / sum(rate(permgate_decision_cache_total{{{SEL}}}[{RATE}]))",
                "hit ratio",
            ),
        ],
        unit="percentunit",
    ),
    panel(
        5,
        "Audit events dropped (must stay 0)",
        "stat",
        18,
        8,
        6,
        8,
        [
            target(f"sum(permgate_audit_events_dropped_total{{{SEL}}})", "dropped"),
        ],
        unit="short",
    ),
    panel(
        6,
        "Decision latency p50 / p99",
        "timeseries",
        0,
        16,
        12,
        8,
        quantiles("permgate_decision_seconds"),
        unit="s",
        description="The decision alone (route, authenticate, decide).",
    ),
    panel(
        7,
        "Request latency p50 / p99 by endpoint",
        "timeseries",
        12,
        16,
        12,
        8,
        quantiles("permgate_request_seconds", "endpoint"),
        unit="s",
        description="The whole request through the gateway, upstream included.",
    ),
    panel(
        8,
        "Auth failures by reason",
        "timeseries",
        0,
        24,
        12,
        8,
        [
            target(
                f"sum by (reason) (rate(permgate_auth_failures_total{{{SEL}}}[{RATE}]))",
                "{{reason}}",
            ),
        ],
        unit="reqps",
    ),
    panel(
        9,
        "Upstream errors by kind, upstream p99",
        "timeseries",
        12,
        24,
        12,
        8,
        [
            target(
                f"sum by (kind) (rate(permgate_upstream_errors_total{{{SEL}}}[{RATE}]))", "{{kind}}"
            ),
            target(
                "histogram_quantile(0.99, sum by (le) (rate(permgate_upstream_seconds_bucket"
                f"{{{SEL}}}[{RATE}])))",
                "upstream p99 (s)",
                "B",
            ),
        ],
        unit="short",
    ),
    panel(
        10,
        "Endpoint map reloads by result",
        "timeseries",
        0,
        32,
        12,
        8,
        [
            target(
                f"sum by (result) (increase(permgate_endpoint_map_reloads_total{{{SEL}}}[{RATE}]))",
                "{{result}}",
            ),
        ],
        unit="short",
        description="result=error: a map edit that was refused (old map kept).",
    ),
    panel(
        11,
        "Endpoint map loaded, per pod",
        "table",
        12,
        32,
        12,
        8,
        [
            target(
                f"max by (pod, version, sha256) (permgate_endpoint_map_info{{{SEL}}})",
                "",
                instant=True,
            ),
        ],
        description="Pods that disagree on sha256 have not all reloaded the same map.",
    ),
    panel(
        12,
        "Audit events by event",
        "timeseries",
        0,
        40,
        24,
        6,
        [
            target(
                f"sum by (event) (rate(permgate_audit_events_total{{{SEL}}}[{RATE}]))", "{{event}}"
            ),
        ],
        unit="ops",
    ),
]


def variable(name: str, query: str) -> dict:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


dashboard = {
    "uid": "permgate",
    "title": "permgate",
    "description": "permgate decisions, latency, cache, auth failures, upstream and endpoint map.",
    "tags": ["permgate", "authorization"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "annotations": {"list": []},
    "links": [],
    "templating": {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
            },
            variable("namespace", "label_values(permgate_decisions_total, namespace)"),
            variable("pod", 'label_values(permgate_decisions_total{namespace=~"$namespace"}, pod)'),
        ]
    },
    "panels": panels,
}

OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {OUT} ({len(panels)} panels)")
