"""Options every command shares: --config and --store before or after the command
words, PERMGATE_CONFIG, --version, and the one warning about PERMGATE_* variables
that name no configuration key (real `permgate serve` processes included)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway_procs import clean_env, echo_upstream, write_gateway_config
from harness import TEST_MAP
from permgate import __version__
from permgate.cli import COMMANDS, main

WARNING = "permgate: warning: ignoring"
SERVICE_LINKS = {
    "PERMGATE_PORT": "tcp://10.0.0.1:8080",
    "PERMGATE_PORT_8080_TCP": "tcp://10.0.0.1:8080",
    "PERMGATE_PORT_8080_TCP_ADDR": "10.0.0.1",
    "PERMGATE_PORT_8080_TCP_PORT": "8080",
    "PERMGATE_PORT_8080_TCP_PROTO": "tcp",
    "PERMGATE_SERVICE_HOST": "10.0.0.1",
    "PERMGATE_SERVICE_PORT": "8080",
    "PERMGATE_ADMIN_SERVICE_HOST": "10.0.0.2",
    "PERMGATE_ADMIN_SERVICE_PORT": "9090",
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory and no PERMGATE_* variable in the environment."""
    for name in [n for n in os.environ if n.startswith("PERMGATE_")]:
        monkeypatch.delenv(name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd


def config_in(folder: Path, store_file: str) -> Path:
    """A permgate.yaml in ``folder`` whose SQLite store is ``store_file`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "permgate.yaml"
    path.write_text(
        yaml.safe_dump({"store": f"sqlite://{store_file}", "audit": {"sink": "file:audit.log"}}),
        encoding="utf-8",
    )
    return path


def bootstrap(*options: str) -> int:
    """`permgate bootstrap --account acme --json` with ``options`` spliced in where
    "CMD" stands for the command words."""
    words = ["bootstrap", "--account", "acme", "--json"]
    at = options.index("CMD")
    return main([*options[:at], *words, *options[at + 1 :]])


# ------------------------------------------------------------------ before and after the words

PLACEMENTS = [
    (("--config", "{a}", "CMD"), "a.db"),
    (("CMD", "--config", "{a}"), "a.db"),
    (("--config={a}", "CMD"), "a.db"),
    (("--config", "{a}", "CMD", "--config", "{b}"), "b.db"),
    (("--config", "{a}", "--store", "sqlite://{folder}/s.db", "CMD"), "s.db"),
    (("CMD", "--config", "{a}", "--store", "sqlite://{folder}/s.db"), "s.db"),
    (("--store", "sqlite://{folder}/s.db", "CMD", "--config", "{a}"), "s.db"),
    (("--store", "sqlite://{folder}/s.db", "CMD", "--store", "sqlite://{folder}/t.db"), "t.db"),
]


@pytest.mark.parametrize(
    ("options", "used"),
    PLACEMENTS,
    ids=[
        "config-before",
        "config-after",
        "config-equals-before",
        "both-the-later-wins",
        "store-before-with-config-before",
        "store-after",
        "store-before-config-after",
        "store-both-the-later-wins",
    ],
)
def test_config_and_store_work_before_and_after_the_command_words(
    workdir: Path, capsys: pytest.CaptureFixture[str], options: tuple[str, ...], used: str
) -> None:
    """--config and --store are read wherever they stand; given twice, the later wins."""
    folder = workdir.parent / "etc"
    a, b = config_in(folder / "a", "a.db"), config_in(folder / "b", "b.db")
    values = {"a": a, "b": b, "folder": folder}
    assert bootstrap(*(option.format(**values) for option in options)) == 0
    assert json.loads(capsys.readouterr().out)["principal"] == "admin"
    created = sorted(p.name for p in folder.rglob("*.db"))
    assert created == [used]


def test_options_before_words_reach_a_subcommand(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`permgate --config F tokens list --owner X` reads F like `tokens list ... --config F`."""
    config = config_in(workdir.parent / "etc", "p.db")
    assert bootstrap("--config", str(config), "CMD") == 0
    capsys.readouterr()
    assert main(["--config", str(config), "tokens", "list", "--owner", "admin", "--json"]) == 0
    [token] = json.loads(capsys.readouterr().out)
    assert token["name"] == "bootstrap"


def test_version_is_printed_with_options_before_it(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`permgate --version` prints the version on stdout and exits 0, options or not."""
    for argv in (["--version"], ["--config", "nowhere.yaml", "--version"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        assert capsys.readouterr().out == f"permgate {__version__}\n"


def test_an_unknown_option_before_the_words_is_a_usage_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only --config and --store (no abbreviation) stand before the command words."""
    with pytest.raises(SystemExit) as exited:
        main(["--conf", "f.yaml", "tokens", "list", "--owner", "x"])
    assert exited.value.code == 2
    assert "usage: permgate" in capsys.readouterr().err


# ------------------------------------------------------------------ PERMGATE_CONFIG


def test_permgate_config_names_the_file_when_no_option_does(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PERMGATE_CONFIG is read when --config is not given (and is not warned about)."""
    monkeypatch.setenv("PERMGATE_CONFIG", str(config_in(workdir.parent / "etc", "p.db")))
    assert bootstrap("CMD") == 0
    assert (workdir.parent / "etc" / "p.db").is_file()
    assert WARNING not in capsys.readouterr().err


def test_config_option_wins_over_permgate_config(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config beats PERMGATE_CONFIG."""
    monkeypatch.setenv("PERMGATE_CONFIG", str(config_in(workdir.parent / "env", "env.db")))
    option = config_in(workdir.parent / "option", "option.db")
    assert bootstrap("CMD", "--config", str(option)) == 0
    assert sorted(p.name for p in workdir.parent.rglob("*.db")) == ["option.db"]


def test_permgate_config_wins_over_the_working_directory_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """./permgate.yaml is only the fallback when neither --config nor PERMGATE_CONFIG is set."""
    config_in(workdir, "cwd.db")
    monkeypatch.setenv("PERMGATE_CONFIG", str(config_in(workdir.parent / "env", "env.db")))
    assert bootstrap("CMD") == 0
    assert sorted(p.name for p in workdir.parent.rglob("*.db")) == ["env.db"]


def test_a_missing_permgate_config_file_is_one_line_naming_the_variable(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PERMGATE_CONFIG naming no file: exit 2 and one line naming the variable."""
    monkeypatch.setenv("PERMGATE_CONFIG", str(workdir / "missing.yaml"))
    assert bootstrap("CMD") == 2
    err = capsys.readouterr().err
    assert err == (
        f"permgate bootstrap: PERMGATE_CONFIG: '{workdir / 'missing.yaml'}': no such file\n"
    )


# ------------------------------------------------------------------ the warning


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_warns_once_about_variables_naming_no_key(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    """Whatever the command, one stderr line names every ignored variable."""
    for name, value in SERVICE_LINKS.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if WARNING in line]
    assert all(name in line for name in SERVICE_LINKS)


def test_a_command_runs_normally_with_ignored_variables_set(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The variables never stop a command: check-map succeeds after the one warning."""
    monkeypatch.setenv("PERMGATE_PORT", "tcp://10.0.0.1:8080")
    (workdir / "map.yaml").write_text(TEST_MAP, encoding="utf-8")
    assert main(["check-map", "map.yaml"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count(WARNING) == 1
    assert "PERMGATE_PORT" in captured.err
    assert WARNING not in captured.out


def test_no_warning_when_every_variable_is_a_key_or_known(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Keys, PERMGATE_CONFIG and the test suite's PERMGATE_TEST_PG_DSN are not warned about."""
    config = config_in(workdir.parent / "etc", "p.db")
    monkeypatch.setenv("PERMGATE_CONFIG", str(config))
    monkeypatch.setenv("PERMGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1/test")
    monkeypatch.setenv("PERMGATE_CACHE__MAX_ENTRIES", "10")
    assert bootstrap("CMD") == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ real processes


def run_permgate(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m permgate ARGS` to completion (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "permgate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


WRONG_TYPES = [
    ({"listen": 8080}, {}, "permgate.yaml:1: listen: expected HOST:PORT"),
    (
        {"cache": {"max_entries": "lots"}},
        {},
        "permgate.yaml:2: cache.max_entries: expected a whole number, got a string ('lots')",
    ),
    ({}, {"PERMGATE_LISTEN": "8080"}, "environment variable PERMGATE_LISTEN: '8080': expected"),
    (
        {},
        {"PERMGATE_UPSTREAM_TIMEOUT_SECONDS": "30s"},
        "environment variable PERMGATE_UPSTREAM_TIMEOUT_SECONDS: '30s': expected a number",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "env", "message"),
    WRONG_TYPES,
    ids=["file-listen-int", "file-count-text", "env-listen-port", "env-seconds-text"],
)
def test_serve_with_a_wrong_type_is_one_line_and_exit_2(
    tmp_path: Path, content: dict[str, object], env: dict[str, str], message: str
) -> None:
    """A real `permgate serve` refuses a wrong type in the file or the environment with
    exit 2 and one line naming the key or the variable; no traceback."""
    (tmp_path / "permgate.yaml").write_text(yaml.safe_dump(content), encoding="utf-8")
    result = run_permgate(
        "serve", "--config", "permgate.yaml", cwd=tmp_path, env={**clean_env(), **env}
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert message in line


@contextlib.asynccontextmanager
async def serve_process(
    tmp_path: Path, env: dict[str, str], *extra: str
) -> AsyncIterator[tuple[str, str, Path]]:
    """A real `permgate serve` with ``env`` added; its gateway URL, admin URL and log.
    Stopped with SIGTERM on the way out."""
    async with echo_upstream() as upstream:
        gateway = write_gateway_config(
            tmp_path, "k8s", store=f"sqlite://{tmp_path}/permgate.db", upstream=upstream
        )
        with gateway.log.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "permgate", "serve", "--config", str(gateway.config), *extra),
                cwd=tmp_path,
                env={**clean_env(), **env},
                stdout=log,
                stderr=log,
            )
        try:
            await wait_ready(process, gateway.admin_url, gateway.log)
            yield gateway.url, gateway.admin_url, gateway.log
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), timeout=30)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def wait_ready(process: asyncio.subprocess.Process, admin_url: str, log: Path) -> None:
    """Until /readyz answers 200 (bounded); fails with the log if the process exits."""
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise AssertionError(f"permgate serve exited:\n{log.read_text()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{admin_url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"permgate serve not ready in time:\n{log.read_text()}")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
async def test_serve_starts_with_kubernetes_service_links_and_warns_once(
    tmp_path: Path, workers: int
) -> None:
    """With the variables Kubernetes injects for Services named permgate and
    permgate-admin, a real `permgate serve` starts, answers requests, and warned once
    (not once per worker) naming every one of them."""
    async with (
        serve_process(tmp_path, SERVICE_LINKS, "--workers", str(workers)) as (url, _, log),
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{url}/health") as response:
            assert response.status == 200  # public: forwarded to the upstream
        async with http.get(f"{url}/policy/t1/quotes/q1") as response:
            assert response.status == 401  # mapped, no credential: refused by the gateway
    lines = [line for line in log.read_text().splitlines() if WARNING in line]
    assert len(lines) == 1, log.read_text()
    assert all(name in lines[0] for name in SERVICE_LINKS)
    assert "Traceback" not in log.read_text()
