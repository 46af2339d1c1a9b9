"""`permgate demo` as a real process, and its printed curl lines tried for real.

Shared by the demo tests (from the source tree) and the packaging tests (from an
installed wheel).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

# What the printed lines must give, in the order the demo prints them:
# allow, no credential, tenant deny, permission deny, the sales agent's allow, public.
EXPECTED_OUTCOMES = [
    (200, None),
    (401, "missing_credentials"),
    (403, "tenant_out_of_scope"),
    (403, "missing_permission"),
    (201, None),
    (200, None),
]


@dataclass
class Demo:
    """A running demo and what it printed up to its ready line."""

    process: asyncio.subprocess.Process
    text: str

    @property
    def map_path(self) -> str:
        """The endpoint map the demo says it serves."""
        found = re.search(r"^  endpoint map (.+)$", self.text, re.MULTILINE)
        assert found, self.text
        return found.group(1)


async def _read_until(stream: asyncio.StreamReader, marker: str, timeout: float = 60) -> str:
    text = ""
    deadline = time.monotonic() + timeout
    while marker not in text:
        line = await asyncio.wait_for(stream.readline(), timeout=deadline - time.monotonic())
        if not line:
            raise AssertionError(f"process ended before {marker!r}; output so far:\n{text}")
        text += line.decode()
    return text


@contextlib.asynccontextmanager
async def running_demo(
    command: Sequence[str], cwd: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Demo]:
    """`command` (a `permgate demo ... --port 0 --admin-port 0`) run in `cwd` until it
    prints its instructions; on exit it is stopped with Ctrl-C and must exit 0."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        text = await _read_until(process.stdout, "Press Ctrl-C")
        yield Demo(process, text)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0


async def try_printed_lines(text: str) -> list[tuple[int, str | None]]:
    """Each printed `curl -i` line sent as written (method, URL, bearer secret of the
    printed variable): its status and, for a refusal, the reason in the JSON body."""
    secrets = dict(re.findall(r"^([A-Z]+)=(pgt_\S+)$", text, re.MULTILINE))
    curls = re.findall(r"^curl -i (.*)$", text, re.MULTILINE)
    results: list[tuple[int, str | None]] = []
    async with aiohttp.ClientSession() as http:
        for line in curls:
            method = "POST" if "-X POST" in line else "GET"
            url = line.split()[-1]
            headers = {}
            if auth := re.search(r"Bearer \$([A-Z]+)", line):
                headers["Authorization"] = f"Bearer {secrets[auth.group(1)]}"
            async with http.request(method, url, headers=headers) as response:
                body = await response.read()
                reason = orjson.loads(body).get("reason") if response.status >= 400 else None
                results.append((response.status, reason))
    return results
