"""The console's recent decisions shared between workers through their files."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from permgate.console.decisions import RecentDecisions


def decision(n: int, account: str = "acme") -> bytes:
    event = {
        "event": "decision",
        "ts": f"2026-11-30T00:00:{n:02d}.000000Z",
        "principal": {"id": f"p{n}", "account": account},
    }
    return orjson.dumps(event) + b"\n"


def test_a_workers_file_stays_bounded_and_keeps_the_newest(tmp_path: Path) -> None:
    """The file is compacted to the last lines kept: never more than twice as many,
    and the newest line is always there."""
    recent = RecentDecisions(keep=3, share_dir=str(tmp_path))
    for n in range(40):
        recent.keep([decision(n)])
        lines = (tmp_path / f"worker-{os.getpid()}.jsonl").read_bytes().splitlines()
        assert len(lines) <= 6
        assert lines[-1] == decision(n).rstrip(b"\n")
    recent.close()


def test_other_workers_decisions_are_read_newest_first(tmp_path: Path) -> None:
    """A worker's view merges the other workers' files with its own lines, newest first,
    and still shows only the asking account's decisions."""
    (tmp_path / "worker-1.jsonl").write_bytes(decision(1) + decision(4) + decision(5, "other"))
    recent = RecentDecisions(keep=10, share_dir=str(tmp_path))
    recent.keep([decision(2), decision(3)])
    assert [e["principal"]["id"] for e in recent.events("acme")] == ["p4", "p3", "p2", "p1"]
    recent.close()


def test_without_a_shared_folder_only_this_process_is_read(tmp_path: Path) -> None:
    """One process (no serving parent) keeps its lines in memory and writes no file."""
    recent = RecentDecisions(keep=10)
    recent.keep([decision(1)])
    assert [e["principal"]["id"] for e in recent.events("acme")] == ["p1"]
    assert list(tmp_path.iterdir()) == []
