"""Fixtures shared by every test folder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import aiohttp
import pytest
import uvloop

from harness import Gateway, start_gateway
from pgtools import fresh_database


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for talking to gateways under test."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A running gateway on a seeded SQLite store (see harness.start_gateway)."""
    async with start_gateway(tmp_path) as gateway:
        yield gateway


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    async with fresh_database() as dsn:
        yield dsn


# `permgate serve` runs on uvloop, whose transports differ from asyncio's; the modules
# that talk to sockets directly run on both loops.
BOTH_LOOPS = frozenset(
    {"test_proxy.py", "test_tls.py", "test_mtls.py", "test_upstream_tls.py"}  # TLS: uvloop's own
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
