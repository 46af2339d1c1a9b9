"""permgate.yaml and PERMGATE_* overrides: valid, overridden, refused, paths resolved."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from permgate.config import Settings, ignored_variables, load_settings
from permgate.core.errors import ConfigError


def write_config(folder: Path, content: dict[str, Any] | str, name: str = "permgate.yaml") -> Path:
    """A config file in ``folder`` (a mapping is written as YAML)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    text = content if isinstance(content, str) else yaml.safe_dump(content)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path | None = None, **kwargs: Any) -> list[str]:
    """The problems load_settings reports (it must refuse)."""
    with pytest.raises(ConfigError) as caught:
        load_settings(path, **kwargs)
    return caught.value.problems


# ------------------------------------------------------------------ reading


def test_defaults_without_file_or_environment() -> None:
    """With nothing set, the documented defaults apply."""
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.auth.token_prefix == "pgt_"
    assert settings.default_enforcement == "enforce"


def test_file_values_are_read(tmp_path: Path) -> None:
    """Every section of the documented example file is understood."""
    path = write_config(
        tmp_path,
        """
listen: 0.0.0.0:8080
admin_listen: 127.0.0.1:9090
upstream: unix:/run/app.sock
upstream_timeout_seconds: 5
endpoint_map: endpoint_map.yaml
store: postgresql://postgres@127.0.0.1/test
default_enforcement: shadow
log_format: json
auth:
  token_prefix: pgt_
  jwt:
    issuer: https://idp.example.com/
    audience: insurance-api
    jwks_url: https://idp.example.com/.well-known/jwks.json
    algorithms: [RS256, ES256]
    principal_claim: sub
    leeway_seconds: 30
cache: {decision_ttl_seconds: 30, max_entries: 100000}
audit: {sink: "file:/tmp/audit.log"}
""",
    )
    settings = load_settings(path, env={})
    assert settings.upstream == "unix:/run/app.sock"
    assert settings.upstream_timeout_seconds == 5.0
    assert settings.default_enforcement == "shadow"
    assert settings.log_format == "json"
    assert settings.auth.jwt is not None
    assert settings.auth.jwt.algorithms == ("RS256", "ES256")
    assert settings.cache.max_entries == 100_000
    assert settings.audit.sink == "file:/tmp/audit.log"


def test_environment_overrides_file_and_reaches_nested_keys(tmp_path: Path) -> None:
    """PERMGATE_KEY and PERMGATE_SECTION__KEY override what the file says."""
    path = write_config(tmp_path, "upstream: http://127.0.0.1:1\ncache: {max_entries: 10}\n")
    settings = load_settings(
        path,
        env={
            "PERMGATE_UPSTREAM": "http://127.0.0.1:2",
            "PERMGATE_CACHE__MAX_ENTRIES": "20",
            "PERMGATE_AUTH__JWT__KEYS": "[PEM]",
            "PERMGATE_AUTH__JWT__ISSUER": "https://idp.example.com/",
            "PERMGATE_AUTH__JWT__AUDIENCE": "insurance-api",
            "PERMGATE_AUTH__JWT__ALGORITHMS": "ES256,RS256",
        },
    )
    assert settings.upstream == "http://127.0.0.1:2"
    assert settings.cache.max_entries == 20
    assert settings.auth.jwt is not None
    assert settings.auth.jwt.keys == ("PEM",)
    assert settings.auth.jwt.algorithms == ("ES256", "RS256")


ENV_TEXT = [
    ("PERMGATE_UPSTREAM_TIMEOUT_SECONDS", "2.5", lambda s: s.upstream_timeout_seconds, 2.5),
    ("PERMGATE_CACHE__MAX_ENTRIES", "7", lambda s: s.cache.max_entries, 7),
    ("PERMGATE_AUTH__FORWARD_CREDENTIAL", "true", lambda s: s.auth.forward_credential, True),
    ("PERMGATE_AUTH__FORWARD_CREDENTIAL", "false", lambda s: s.auth.forward_credential, False),
    ("PERMGATE_AUTH__TOKEN_PREFIX", "123", lambda s: s.auth.token_prefix, "123"),
    ("PERMGATE_LOG_FORMAT", "json", lambda s: s.log_format, "json"),
    ("PERMGATE_AUDIT__OVERFLOW", "reject", lambda s: s.audit.overflow, "reject"),
]


@pytest.mark.parametrize(
    ("name", "text", "read", "expected"),
    ENV_TEXT,
    ids=[f"{name}={text}" for name, text, _, _ in ENV_TEXT],
)
def test_a_variable_text_becomes_a_value_of_the_key_type(
    name: str, text: str, read: Any, expected: Any
) -> None:
    """A variable's text is converted to the key's type; a string key keeps digits as text."""
    assert read(load_settings(env={name: text})) == expected


def test_explicit_overrides_win_over_environment() -> None:
    """--store on the command line beats PERMGATE_STORE."""
    settings = load_settings(
        env={"PERMGATE_STORE": "sqlite:///a.db"}, overrides={"store": "sqlite:///b.db"}
    )
    assert settings.store == "sqlite:///b.db"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"PERMGATE_LOG_FORMAT": "text"}, "text"),
        ({"PERMGATE_LOG_FORMAT": "json"}, "json"),
    ],
    ids=["unset-means-by-terminal", "text", "json"],
)
def test_log_format_is_text_json_or_unset(env: dict[str, str], expected: str | None) -> None:
    """log_format is text or json; unset (None) lets serve choose by whether stderr is a tty."""
    assert load_settings(env=env).log_format == expected


# ------------------------------------------------------------------ refusing bad values

BAD = [
    ({"PERMGATE_LISTEN": "nowhere"}, "PERMGATE_LISTEN: 'nowhere': expected HOST:PORT"),
    ({"PERMGATE_ADMIN_LISTEN": "127.0.0.1:99999"}, "PERMGATE_ADMIN_LISTEN: '127.0.0.1:99999'"),
    ({"PERMGATE_UPSTREAM": "ftp://x"}, "PERMGATE_UPSTREAM: 'ftp://x': expected http://"),
    ({"PERMGATE_STORE": "mysql://x"}, "PERMGATE_STORE: 'mysql://x': expected sqlite://"),
    ({"PERMGATE_DEFAULT_ENFORCEMENT": "maybe"}, "'maybe': expected 'shadow' or 'enforce'"),
    ({"PERMGATE_CACHE__MAX_ENTRIES": "0"}, "PERMGATE_CACHE__MAX_ENTRIES: '0': expected at least 1"),
    ({"PERMGATE_AUDIT__SINK": "syslog"}, "PERMGATE_AUDIT__SINK: 'syslog': expected stdout"),
    ({"PERMGATE_AUDIT__OVERFLOW": "drop"}, "'drop': expected 'block' or 'reject'"),
    ({"PERMGATE_LOG_LEVEL": "LOUD"}, "PERMGATE_LOG_LEVEL: 'LOUD': expected DEBUG"),
    ({"PERMGATE_LOG_FORMAT": "xml"}, "PERMGATE_LOG_FORMAT: 'xml': expected 'text' or 'json'"),
    ({"PERMGATE_AUTH__TOKEN_PREFIX": ""}, "PERMGATE_AUTH__TOKEN_PREFIX: '': must not be empty"),
    (
        {"PERMGATE_UPSTREAM_TIMEOUT_SECONDS": "0"},
        "PERMGATE_UPSTREAM_TIMEOUT_SECONDS: '0': expected more than 0",
    ),
    (
        {"PERMGATE_AUTH__JWT__KEYS": "[k]", "PERMGATE_AUTH__JWT__ALGORITHMS": "[RS256, HS256]"},
        "item 'HS256': refused: only asymmetric algorithms",
    ),
    (
        {"PERMGATE_AUTH__JWT__KEYS": "[k]", "PERMGATE_AUTH__JWT__ALGORITHMS": "none"},
        "item 'none': refused",
    ),
    (
        {"PERMGATE_AUTH__JWT__KEYS": "[k]", "PERMGATE_AUTH__JWT__ALGORITHMS": "RS257"},
        "item 'RS257': unknown algorithm",
    ),
    (
        {"PERMGATE_AUTH__JWT__KEYS": "[k]", "PERMGATE_AUTH__JWT__ALGORITHMS": ","},
        "PERMGATE_AUTH__JWT__ALGORITHMS: ',': must not be empty",
    ),
    (
        {"PERMGATE_AUTH__JWT__KEYS": "[k]", "PERMGATE_AUTH__JWT__JWKS_URL": "ftp://idp"},
        "PERMGATE_AUTH__JWT__JWKS_URL: 'ftp://idp': expected an http(s) URL",
    ),
    ({"PERMGATE_AUTH__JWT__ISSUER": "x"}, "auth.jwt: set jwks_url or keys"),
    ({"PERMGATE_AUTH__JWT__KEYS": "[k]"}, "auth.jwt.issuer: required"),
    ({"PERMGATE_AUTH__JWT__KEYS": "[k]"}, "auth.jwt.audience: required"),
]


@pytest.mark.parametrize(("env", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_value_is_refused_naming_variable_value_and_expectation(
    env: dict[str, str], message: str
) -> None:
    """Each bad value gets a message with the variable, its text and the expectation."""
    problems = problems_of(env=env)
    assert any(message in problem for problem in problems), problems


# A value of the wrong type for each key, in the file: (key path, value, expected).
# (key, value, "KEY: VALUE: WHY"): the problem must read
# "FILE:LINE: KEY: WHY..., got <kind> (VALUE)", as a wrong type in any file permgate reads.
WRONG_TYPES_IN_FILE: list[tuple[str, Any, str]] = [
    ("listen", 8080, "listen: 8080: expected HOST:PORT"),
    ("admin_listen", ["127.0.0.1", 9090], "admin_listen: ['127.0.0.1', 9090]: expected HOST"),
    ("upstream", 8000, "upstream: 8000: expected http://HOST:PORT"),
    ("upstream_timeout_seconds", "soon", "upstream_timeout_seconds: 'soon': expected a number"),
    ("upstream_timeout_seconds", True, "upstream_timeout_seconds: True: expected a number"),
    ("endpoint_map", 5, "endpoint_map: 5: expected a string"),
    ("map_poll_seconds", [1], "map_poll_seconds: [1]: expected a number"),
    ("store", 5, "store: 5: expected sqlite://PATH"),
    ("default_enforcement", True, "default_enforcement: True: expected 'shadow' or 'enforce'"),
    ("log_level", 10, "log_level: 10: expected DEBUG"),
    ("log_format", True, "log_format: True: expected 'text' or 'json'"),
    ("auth", "pgt_", "auth: 'pgt_': expected a section"),
    ("auth.token_prefix", 7, "auth.token_prefix: 7: expected a string"),
    ("auth.forward_credential", "perhaps", "auth.forward_credential: 'perhaps': expected true"),
    ("auth.jwt", "https://idp", "auth.jwt: 'https://idp': expected a section"),
    ("auth.jwt.issuer", 123, "auth.jwt.issuer: 123: expected a string"),
    ("auth.jwt.keys", "PEM", "auth.jwt.keys: 'PEM': expected a list"),
    ("auth.jwt.algorithms", "RS256", "auth.jwt.algorithms: 'RS256': expected a list"),
    ("auth.jwt.algorithms", ["RS256", 7], "auth.jwt.algorithms: 7: expected an algorithm name"),
    ("auth.jwt.leeway_seconds", "30s", "auth.jwt.leeway_seconds: '30s': expected a number"),
    ("cache", [], "cache: []: expected a section"),
    ("cache.max_entries", 1.5, "cache.max_entries: 1.5: expected a whole number"),
    ("cache.max_entries", True, "cache.max_entries: True: expected a number, not true/false"),
    ("cache.decision_ttl_seconds", -1, "cache.decision_ttl_seconds: -1: expected at least 0"),
    ("audit.sink", 1, "audit.sink: 1: expected stdout or file:PATH"),
    ("audit.queue_size", "many", "audit.queue_size: 'many': expected a whole number"),
    ("audit.overflow", 0, "audit.overflow: 0: expected 'block' or 'reject'"),
]


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` from ``"a.b"``."""
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    WRONG_TYPES_IN_FILE,
    ids=[f"{key}={value!r}" for key, value, _ in WRONG_TYPES_IN_FILE],
)
def test_wrong_type_in_the_file_names_file_key_value_and_expectation(
    tmp_path: Path, key: str, value: Any, message: str
) -> None:
    """A value of the wrong type in the file is a problem naming the file, the line, the
    key, what was expected and the value; never an exception from inside the loader."""
    path = write_config(tmp_path, nested(key, value))
    problems = problems_of(path, env={})
    shown, _, why = message.partition(": ")[2].partition(": ")
    said = re.compile(
        rf"{re.escape(str(path))}:\d+: {re.escape(key)}: {re.escape(why)}.*, got .*"
        + re.escape(f"({shown})")
    )
    assert any(said.match(problem) for problem in problems), problems


# The same for the environment: (variable, text, expected after the variable name).
WRONG_TYPES_IN_ENV: list[tuple[str, str, str]] = [
    ("PERMGATE_LISTEN", "8080", "'8080': expected HOST:PORT"),
    ("PERMGATE_UPSTREAM_TIMEOUT_SECONDS", "soon", "'soon': expected a number"),
    ("PERMGATE_MAP_POLL_SECONDS", "-1", "'-1': expected at least 0"),
    ("PERMGATE_CACHE__MAX_ENTRIES", "lots", "'lots': expected a whole number"),
    ("PERMGATE_CACHE__DECISION_TTL_SECONDS", "1m", "'1m': expected a number"),
    ("PERMGATE_CACHE__OUTAGE_GRACE_SECONDS", "inf", "'inf': expected a finite number"),
    ("PERMGATE_AUDIT__QUEUE_SIZE", "1.5", "'1.5': expected a whole number"),
    ("PERMGATE_AUDIT__FILE_BACKUPS", "", "'': expected a whole number"),
    ("PERMGATE_AUTH__FORWARD_CREDENTIAL", "perhaps", "'perhaps': expected true or false"),
    ("PERMGATE_AUTH__JWT__LEEWAY_SECONDS", "soon", "'soon': expected a number"),
    ("PERMGATE_AUTH__JWT__KEYS", "[unclosed", "'[unclosed': expected a list"),
    ("PERMGATE_AUTH__JWT__ALGORITHMS", "[RS256, 7]", "'[RS256, 7]': item 7: expected"),
]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    WRONG_TYPES_IN_ENV,
    ids=[f"{name}={text}" for name, text, _ in WRONG_TYPES_IN_ENV],
)
def test_wrong_type_in_the_environment_names_the_variable(
    name: str, text: str, message: str
) -> None:
    """A variable whose text is not of its key's type is a problem naming the variable,
    its text and what was expected."""
    problems = problems_of(env={name: text})
    expected = f"invalid configuration: environment variable {name}: {message}"
    assert expected in "\n".join(problems), problems


UNKNOWN_FILE_KEYS = [
    ({"port": 8080}, "1: port: unknown key (allowed: admin_listen, admin_tls, audit, auth,"),
    ({"cache": {"size": 5}}, "2: cache.size: unknown key (allowed: decision_ttl_seconds,"),
    ({"auth": {"jwt": {"issuer": "i", "iss": "i"}}}, "3: auth.jwt.iss: unknown key (allowed:"),
]


@pytest.mark.parametrize(
    ("content", "message"), UNKNOWN_FILE_KEYS, ids=["top-level", "in-a-section", "in-auth-jwt"]
)
def test_unknown_key_in_the_file_is_refused(
    tmp_path: Path, content: dict[str, Any], message: str
) -> None:
    """A key the file may not have is an error naming the file, the key and the keys
    allowed there (a typo must not silently fall back to a default)."""
    path = write_config(tmp_path, content)
    problems = problems_of(path, env={})
    assert any(problem.startswith(f"{path}:{message}") for problem in problems), problems


def test_a_password_in_a_refused_dsn_is_not_shown() -> None:
    """A refused store DSN is shown without its password."""
    problems = problems_of(env={"PERMGATE_STORE": "mysql://app:s3cret@db/permgate"})
    assert "s3cret" not in "\n".join(problems)
    assert "mysql://app:***@db/permgate" in "\n".join(problems)


def test_a_bad_value_is_reported_once() -> None:
    """A negative timeout is one problem, not two messages about the same key."""
    assert len(problems_of(env={"PERMGATE_UPSTREAM_TIMEOUT_SECONDS": "-1"})) == 1


def test_a_list_with_refused_items_is_not_also_called_empty() -> None:
    """When every item of a list is refused, only the items are reported."""
    problems = problems_of(
        env={"PERMGATE_AUTH__JWT__KEYS": "[k]", "PERMGATE_AUTH__JWT__ALGORITHMS": "HS256"},
    )
    assert [p for p in problems if "ALGORITHMS" in p] == [
        "invalid configuration: environment variable PERMGATE_AUTH__JWT__ALGORITHMS: 'HS256': "
        "item 'HS256': refused: only asymmetric algorithms are allowed (no 'none', no HMAC: "
        "key confusion)"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Bad values from the file and the environment, an unknown key and a missing JWT
    issuer are all reported together, not one at a time."""
    path = write_config(tmp_path, {"listen": 8080, "nope": 1, "auth": {"jwt": {"keys": ["k"]}}})
    problems = problems_of(
        path,
        env={
            "PERMGATE_STORE": "y",
            "PERMGATE_AUDIT__SINK": "z",
            "PERMGATE_AUTH__JWT__AUDIENCE": "a",
        },
    )
    assert len(problems) == 5, problems
    joined = "\n".join(problems)
    for part in ("listen: expected", "nope: unknown key", "PERMGATE_STORE", "PERMGATE_AUDIT__SINK"):
        assert part in joined
    assert f"{path}:2: auth.jwt.issuer: required" in joined


def test_a_section_with_every_key_commented_out_means_its_defaults(tmp_path: Path) -> None:
    """`cache:` with nothing under it (YAML null) is the cache defaults, not an error."""
    path = write_config(tmp_path, "cache:\n  # max_entries: 10\naudit:\n")
    settings = load_settings(path, env={})
    assert settings.cache == Settings().cache
    assert settings.audit == Settings().audit


def test_unreadable_and_malformed_files_are_refused(tmp_path: Path) -> None:
    """A missing file or broken YAML names the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", env={})
    broken = write_config(tmp_path, "listen: [unclosed\n", name="broken.yaml")
    with pytest.raises(ConfigError, match=r"broken\.yaml:2: YAML syntax error") as caught:
        load_settings(broken, env={})
    assert len(caught.value.problems) == 1 and "\n" not in caught.value.problems[0]


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    """A file holding a list is refused as a whole, naming the file."""
    path = write_config(tmp_path, "- listen: 0.0.0.0:8080\n")
    assert problems_of(path, env={}) == [
        f"{path}:1: the configuration file: expected a mapping of keys, got a list"
    ]


# ------------------------------------------------------------------ variables that are not keys

SERVICE_LINKS = {
    "PERMGATE_PORT": "tcp://10.0.0.1:8080",
    "PERMGATE_PORT_8080_TCP": "tcp://10.0.0.1:8080",
    "PERMGATE_PORT_8080_TCP_ADDR": "10.0.0.1",
    "PERMGATE_PORT_8080_TCP_PORT": "8080",
    "PERMGATE_PORT_8080_TCP_PROTO": "tcp",
    "PERMGATE_SERVICE_HOST": "10.0.0.1",
    "PERMGATE_SERVICE_PORT": "8080",
    "PERMGATE_SERVICE_PORT_HTTP": "8080",
    "PERMGATE_ADMIN_SERVICE_HOST": "10.0.0.2",
    "PERMGATE_ADMIN_PORT": "tcp://10.0.0.2:9090",
}


def test_kubernetes_service_link_variables_are_not_configuration() -> None:
    """The variables Kubernetes injects for Services named permgate and permgate-admin
    change nothing and stop nothing."""
    assert load_settings(env=SERVICE_LINKS) == Settings()


VARIABLES = [
    ("PERMGATE_PORT", True),
    ("PERMGATE_SERVICE_HOST", True),
    ("PERMGATE_ADMIN_SERVICE_HOST", True),
    ("PERMGATE_AUTH", True),  # a section, not a key
    ("PERMGATE_AUTH__JWT", True),
    ("PERMGATE_AUTH__JWT__ISUER", True),  # a typo names no key either
    ("PERMGATE_LISTEN", False),
    ("PERMGATE_AUTH__JWT__ISSUER", False),
    ("PERMGATE_CACHE__MAX_ENTRIES", False),
    ("PERMGATE_CONFIG", False),  # names the config file
    ("PERMGATE_TEST_PG_DSN", False),  # the test suite's database
    ("HOME", False),
    ("permgate_listen", False),
]


@pytest.mark.parametrize(
    ("name", "ignored"), VARIABLES, ids=[f"{n}-{'ignored' if i else 'used'}" for n, i in VARIABLES]
)
def test_only_permgate_variables_naming_no_key_are_listed_as_ignored(
    name: str, ignored: bool
) -> None:
    """ignored_variables lists PERMGATE_* names that are neither a key nor one of the
    known non-key variables; nothing else."""
    assert ignored_variables({name: "x"}) == ([name] if ignored else [])


def test_ignored_variables_are_sorted_and_listed_once() -> None:
    """The list the warning prints is every ignored name, sorted."""
    assert ignored_variables({**SERVICE_LINKS, "PERMGATE_LISTEN": "x"}) == sorted(SERVICE_LINKS)


# ------------------------------------------------------------------ relative paths

RELATIVE = [
    ({"endpoint_map": "maps/m.yaml"}, lambda s: s.endpoint_map, "{folder}/maps/m.yaml"),
    ({"store": "sqlite://p.db"}, lambda s: s.store, "sqlite://{folder}/p.db"),
    ({"store": "sqlite://data/p.db"}, lambda s: s.store, "sqlite://{folder}/data/p.db"),
    ({"audit": {"sink": "file:audit.log"}}, lambda s: s.audit.sink, "file:{folder}/audit.log"),
    ({"endpoint_map": "/abs/m.yaml"}, lambda s: s.endpoint_map, "/abs/m.yaml"),
    ({"store": "sqlite:///abs/p.db"}, lambda s: s.store, "sqlite:///abs/p.db"),
    ({"audit": {"sink": "file:/abs/a.log"}}, lambda s: s.audit.sink, "file:/abs/a.log"),
    ({"audit": {"sink": "stdout"}}, lambda s: s.audit.sink, "stdout"),
    (
        {"store": "postgresql://u@h/db"},
        lambda s: s.store,
        "postgresql://u@h/db",
    ),
]


@pytest.mark.parametrize(
    ("content", "read", "expected"),
    RELATIVE,
    ids=[
        "map",
        "sqlite",
        "sqlite-in-subfolder",
        "audit-file",
        "absolute-map",
        "absolute-sqlite",
        "absolute-audit-file",
        "stdout-untouched",
        "postgres-untouched",
    ],
)
def test_relative_paths_in_the_file_are_relative_to_its_folder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    content: dict[str, Any],
    read: Any,
    expected: str,
) -> None:
    """A relative path the file names is taken from the file's folder, wherever the
    command runs; absolute paths and non-file values are left as written."""
    folder = tmp_path / "etc"
    path = write_config(folder, content)
    monkeypatch.chdir(tmp_path)
    assert read(load_settings(path, env={})) == expected.format(folder=folder)


def test_a_relative_config_path_still_anchors_paths_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config etc/permgate.yaml given relative: its paths become absolute paths in etc/."""
    write_config(tmp_path / "etc", {"endpoint_map": "m.yaml", "store": "sqlite://p.db"})
    monkeypatch.chdir(tmp_path)
    settings = load_settings("etc/permgate.yaml", env={})
    assert settings.endpoint_map == str(tmp_path / "etc" / "m.yaml")
    assert settings.store == f"sqlite://{tmp_path}/etc/p.db"


def test_paths_keep_a_symlinked_folder(tmp_path: Path) -> None:
    """The config's folder is taken as reached, not with symlinks resolved: a Kubernetes
    ConfigMap's files are symlinks into a dated folder replaced on every update."""
    real = tmp_path / "..2026_11_30"
    write_config(real, {"endpoint_map": "m.yaml"})
    (tmp_path / "config").symlink_to(real)
    settings = load_settings(tmp_path / "config" / "permgate.yaml", env={})
    assert settings.endpoint_map == str(tmp_path / "config" / "m.yaml")


def test_paths_from_the_environment_and_overrides_stay_as_written(tmp_path: Path) -> None:
    """A relative path from a variable or the command line is relative to the working
    directory, so it is left as written even when a config file is read."""
    path = write_config(tmp_path, {"endpoint_map": "m.yaml", "store": "sqlite://p.db"})
    settings = load_settings(
        path, env={"PERMGATE_ENDPOINT_MAP": "other.yaml"}, overrides={"store": "sqlite://q.db"}
    )
    assert settings.endpoint_map == "other.yaml"
    assert settings.store == "sqlite://q.db"


# ------------------------------------------------------------------ through the command line


def test_serve_refuses_a_bad_config_with_every_problem_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`permgate serve` with a bad file exits 2, one line per problem, nothing started."""
    from permgate.cli import main

    for name in [n for n in os.environ if n.startswith("PERMGATE_")]:
        monkeypatch.delenv(name)
    config = write_config(tmp_path, "listen: nowhere\nstore: mysql://x\naudit: {sink: syslog}\n")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}:1: listen: expected HOST:PORT" in err
    assert f"{config}:2: store: expected sqlite://PATH" in err
    assert f"{config}:3: audit.sink: expected stdout or file:PATH" in err
    assert len(err.splitlines()) == 3
    assert "Traceback" not in err
