"""``permgate password set PRINCIPAL`` as real processes on both stores: the password
from standard input (or asked twice on a terminal), the policy's refusals as one line
with exit 2, and the first admin of ``permgate bootstrap`` able to sign in."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from permgate.manage.service import LoginRefused, ModelService
from permgate.store import open_store

GOOD = "correct horse battery staple"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def store_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store on each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'permgate.db'}"
    return str(request.getfixturevalue("pg_dsn"))


@dataclass
class Ran:
    """A finished command: exit code, stdout, stderr."""

    code: int
    out: str
    err: str


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose audit events go to a file the test reads."""
    path = tmp_path / "permgate.yaml"
    path.write_text(f"audit: {{sink: 'file:{tmp_path / 'audit.jsonl'}'}}\n")
    return path


async def _permgate(config: Path, dsn: str, *argv: str, stdin: bytes = b"") -> Ran:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "permgate",
        *argv,
        "--config",
        str(config),
        "--store",
        dsn,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def _bootstrap(config: Path, dsn: str) -> None:
    ran = await _permgate(config, dsn, "bootstrap", "--account", "acme", "--json")
    assert ran.code == 0, ran.err


async def _login(dsn: str, principal: str, password: str) -> str:
    store = await open_store(dsn)
    try:
        await ModelService(store).verify_login(principal, password, client_ip=None)
    except LoginRefused as refused:
        return refused.reason
    finally:
        await store.close()
    return "ok"


async def test_bootstrap_admin_gets_a_password(config: Path, store_dsn: str) -> None:
    """The first admin made by bootstrap gets a password from stdin and can sign in."""
    await _bootstrap(config, store_dsn)
    ran = await _permgate(config, store_dsn, "password", "set", "admin", stdin=f"{GOOD}\n".encode())
    assert ran.code == 0, ran.err
    assert ran.out == (
        "password set for admin (account acme); its console sessions and older JWTs were ended\n"
    )
    assert await _login(store_dsn, "admin", GOOD) == "ok"


async def test_json_output(config: Path, store_dsn: str) -> None:
    """--json prints the principal, its account and when its sessions were ended."""
    await _bootstrap(config, store_dsn)
    ran = await _permgate(
        config, store_dsn, "password", "set", "admin", "--json", stdin=GOOD.encode()
    )
    assert ran.code == 0, ran.err
    answer = json.loads(ran.out)
    assert answer["principal"] == "admin" and answer["account"] == "acme"
    assert answer["sessions_valid_after"] is not None


REFUSALS = [
    pytest.param("admin", b"password1\n", "it is in the list of common and breached", id="common"),
    pytest.param("admin", b"short\n", "it is shorter than 8 characters", id="short"),
    pytest.param("admin", b"ADMIN\r\n", "it is the principal's id", id="equals-id"),
    pytest.param("admin", b"", "no password given", id="empty-stdin"),
    pytest.param("ghost", GOOD.encode(), "principal 'ghost' not found", id="unknown-principal"),
]


@pytest.mark.parametrize(("who", "stdin", "words"), REFUSALS)
async def test_refusals_one_line_exit_2(
    config: Path, tmp_path: Path, who: str, stdin: bytes, words: str
) -> None:
    """A refusal is one line on stderr naming why, exit 2, nothing on stdout."""
    dsn = f"sqlite://{tmp_path / 'permgate.db'}"
    await _bootstrap(config, dsn)
    ran = await _permgate(config, dsn, "password", "set", who, stdin=stdin)
    assert ran.code == 2
    assert ran.out == ""
    assert len(ran.err.splitlines()) == 1 and ran.err.startswith("permgate password: ")
    assert words in ran.err
    assert "Traceback" not in ran.err


async def test_audited_without_the_password(config: Path, tmp_path: Path) -> None:
    """Setting a password is audited with actor cli; neither password nor hash appears."""
    dsn = f"sqlite://{tmp_path / 'permgate.db'}"
    await _bootstrap(config, dsn)
    ran = await _permgate(config, dsn, "password", "set", "admin", stdin=GOOD.encode())
    assert ran.code == 0, ran.err
    text = (tmp_path / "audit.jsonl").read_text()
    events = [json.loads(line) for line in text.splitlines()]
    assert [e["action"] for e in events if e["action"] == "principal.password"] == [
        "principal.password"
    ]
    assert events[-1]["actor"] == "cli"
    assert GOOD not in text and "argon2" not in text


async def test_terminal_asks_twice(config: Path, tmp_path: Path) -> None:
    """On a terminal the password is asked twice without echo; differing answers are
    refused and change nothing, matching ones set it."""
    dsn = f"sqlite://{tmp_path / 'permgate.db'}"
    await _bootstrap(config, dsn)

    def on_terminal(first: str, second: str) -> tuple[int, str]:
        argv = [sys.executable, "-m", "permgate", "password", "set", "admin"]
        argv += ["--config", str(config), "--store", dsn]
        pid, fd = pty.fork()
        if pid == 0:  # the child: its controlling terminal is the pty
            os.execv(sys.executable, argv)
        seen = b""
        for answer in (first, second):
            while b": " not in seen.rsplit(b"\n", 1)[-1]:
                seen += os.read(fd, 1024)
            os.write(fd, answer.encode() + b"\n")
            seen += b"\n"
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")

    code, text = await asyncio.to_thread(on_terminal, GOOD, "something else entirely")
    assert code == 2 and "the two passwords typed differ" in text
    assert GOOD not in text  # no echo
    assert await _login(dsn, "admin", GOOD) == "bad_credentials"
    code, text = await asyncio.to_thread(on_terminal, GOOD, GOOD)
    assert code == 0, text
    assert await _login(dsn, "admin", GOOD) == "ok"
