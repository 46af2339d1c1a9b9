"""How ``permgate diff`` shows an :class:`Impact`: text lines, one JSON document, or a
markdown table for a pull-request comment.

Text and JSON list every change, one per (principal, tenant, endpoint); markdown folds
the tenants of one (principal, endpoint) into one row and stops after ``max_rows``
rows, since a pull-request comment has a size limit (the full list is one command away).
A tenant of ``None`` (an entry without a tenant on both sides) is ``-`` in text and
markdown and ``null`` in JSON.
"""

from __future__ import annotations

import json

from permgate.review.diff import AccessChange, Impact

__all__ = ["impact_json", "impact_markdown", "impact_text", "summary"]

NO_TENANT_LABEL = "-"


def summary(impact: Impact) -> str:
    """One line: how many changes, for how many principals and endpoints."""
    if not impact:
        return "no access changes"
    changes = (*impact.gained, *impact.lost)
    principals = len({c.principal for c in changes})
    endpoints = len({c.endpoint for c in changes})
    return (
        f"{len(impact.gained)} gained, {len(impact.lost)} lost "
        f"({principals} principal{'s' * (principals != 1)}, "
        f"{endpoints} endpoint{'s' * (endpoints != 1)})"
    )


def _signed(impact: Impact) -> list[tuple[str, AccessChange]]:
    """Gains and losses in one list, per principal, then per endpoint, then tenant."""
    rows = [("+", c) for c in impact.gained] + [("-", c) for c in impact.lost]
    rows.sort(key=lambda row: (row[1].principal, row[1].endpoint, row[1].tenant or "", row[0]))
    return rows


def impact_text(impact: Impact) -> str:
    """``+ alice acme-prod quotes.issue (POST /policy/...)`` lines, then the summary."""
    lines = [
        f"{sign} {c.principal} {c.tenant or NO_TENANT_LABEL} {c.endpoint} ({c.method} {c.path})"
        for sign, c in _signed(impact)
    ]
    lines.append(summary(impact))
    return "\n".join(lines)


def _as_dict(change: AccessChange) -> dict[str, str | None]:
    return {
        "principal": change.principal,
        "tenant": change.tenant,
        "endpoint": change.endpoint,
        "method": change.method,
        "path": change.path,
    }


def impact_json(impact: Impact) -> str:
    """``{"gained": [...], "lost": [...]}``, each item principal, tenant, endpoint,
    method, path."""
    return json.dumps(
        {
            "gained": [_as_dict(c) for c in impact.gained],
            "lost": [_as_dict(c) for c in impact.lost],
        }
    )


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")


def impact_markdown(impact: Impact, *, max_rows: int = 500) -> str:
    """A heading with the summary and one table row per (change, principal, endpoint)."""
    heading = f"### permgate diff: {summary(impact)}"
    if not impact:
        return f"{heading}\n\nNo principal gains or loses access to any endpoint on any tenant.\n"
    rows: dict[tuple[str, str, str], tuple[AccessChange, list[str]]] = {}
    for sign, change in _signed(impact):
        key = (change.principal, change.endpoint, sign)
        rows.setdefault(key, (change, []))[1].append(change.tenant or NO_TENANT_LABEL)
    grouped = sorted(rows.items())
    lines = [
        heading,
        "",
        "| | principal | tenants | endpoint | request |",
        "|---|---|---|---|---|",
    ]
    for (principal, endpoint, sign), (change, tenants) in grouped[:max_rows]:
        lines.append(
            f"| {'**+**' if sign == '+' else '**−**'} | {_cell(principal)} "
            f"| {_cell(', '.join(tenants))} | `{_cell(endpoint)}` "
            f"| `{_cell(change.method)} {_cell(change.path)}` |"
        )
    if len(grouped) > max_rows:
        lines += [
            "",
            f"… and {len(grouped) - max_rows} more rows: run `permgate diff` for the full list.",
        ]
    return "\n".join(lines) + "\n"
