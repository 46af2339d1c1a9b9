"""permgate.yaml and PERMGATE_* overrides: valid, overridden, refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from permgate.config import Settings, load_settings
from permgate.errors import ConfigError


def test_defaults_without_file_or_environment() -> None:
    """With nothing set, the design's defaults apply."""
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.auth.token_prefix == "pgt_"
    assert settings.default_enforcement == "enforce"


def test_file_values_are_read(tmp_path: Path) -> None:
    """Every section of the design's example file is understood."""
    path = tmp_path / "permgate.yaml"
    path.write_text(
        """
listen: 0.0.0.0:8080
admin_listen: 127.0.0.1:9090
upstream: unix:/run/app.sock
upstream_timeout_seconds: 5
endpoint_map: endpoint_map.yaml
store: postgresql://postgres@127.0.0.1/test
default_enforcement: shadow
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
        encoding="utf-8",
    )
    settings = load_settings(path, env={})
    assert settings.upstream == "unix:/run/app.sock"
    assert settings.upstream_timeout_seconds == 5.0
    assert settings.default_enforcement == "shadow"
    assert settings.auth.jwt is not None
    assert settings.auth.jwt.algorithms == ("RS256", "ES256")
    assert settings.audit.sink == "file:/tmp/audit.log"


def test_environment_overrides_file_and_reaches_nested_keys(tmp_path: Path) -> None:
    """PERMGATE_KEY and PERMGATE_SECTION__KEY override what the file says."""
    path = tmp_path / "permgate.yaml"
    path.write_text("upstream: http://127.0.0.1:1\ncache: {max_entries: 10}\n", encoding="utf-8")
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
    assert settings.auth.jwt.algorithms == ("ES256", "RS256")


def test_explicit_overrides_win_over_environment() -> None:
    """--store on the command line beats PERMGATE_STORE."""
    settings = load_settings(
        env={"PERMGATE_STORE": "sqlite:///a.db"}, overrides={"store": "sqlite:///b.db"}
    )
    assert settings.store == "sqlite:///b.db"


BAD = [
    ({"PERMGATE_LISTEN": "nowhere"}, "listen: 'nowhere'"),
    ({"PERMGATE_ADMIN_LISTEN": "127.0.0.1:99999"}, "admin_listen: '127.0.0.1:99999'"),
    ({"PERMGATE_UPSTREAM": "ftp://x"}, "upstream: 'ftp://x'"),
    ({"PERMGATE_STORE": "mysql://x"}, "store: 'mysql://x'"),
    ({"PERMGATE_DEFAULT_ENFORCEMENT": "maybe"}, "default_enforcement: 'maybe'"),
    ({"PERMGATE_UPSTREAM_TIMEOUT_SECONDS": "soon"}, "upstream_timeout_seconds: 'soon'"),
    ({"PERMGATE_CACHE__MAX_ENTRIES": "0"}, "cache.max_entries: 0"),
    ({"PERMGATE_AUDIT__SINK": "syslog"}, "audit.sink: 'syslog'"),
    ({"PERMGATE_AUDIT__OVERFLOW": "drop"}, "audit.overflow: 'drop'"),
    ({"PERMGATE_FOO": "1"}, "foo: unknown key"),
    ({"PERMGATE_AUTH__JWT__KEYS": "[k]", "PERMGATE_AUTH__JWT__ALGORITHMS": "[HS256]"}, "'HS256'"),
    ({"PERMGATE_AUTH__JWT__KEYS": "[k]", "PERMGATE_AUTH__JWT__ALGORITHMS": "[none]"}, "'none'"),
    ({"PERMGATE_AUTH__JWT__ISSUER": "x"}, "set jwks_url or keys"),
    ({"PERMGATE_AUTH__JWT__KEYS": "[k]"}, "auth.jwt.issuer: required"),
    ({"PERMGATE_AUTH__JWT__KEYS": "[k]"}, "auth.jwt.audience: required"),
    ({"PERMGATE_UPSTREAM_TIMEOUT_SECONDS": "0"}, "upstream_timeout_seconds: must be greater"),
    ({"PERMGATE_AUTH__FORWARD_CREDENTIAL": "perhaps"}, "auth.forward_credential: 'perhaps'"),
    ({"PERMGATE_LOG_FORMAT": "xml"}, "log_format: 'xml'"),
]


@pytest.mark.parametrize(("env", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_value_is_refused_naming_key_and_value(env: dict[str, str], message: str) -> None:
    """Each bad key gets a message with the key, the value and the expectation."""
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_a_bad_value_is_reported_once() -> None:
    """A negative timeout is one problem, not two messages about the same key."""
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"PERMGATE_UPSTREAM_TIMEOUT_SECONDS": "-1"})
    assert len(caught.value.problems) == 1


def test_every_problem_is_reported_at_once() -> None:
    """Three bad keys give three messages, not one at a time."""
    with pytest.raises(ConfigError) as caught:
        load_settings(
            env={"PERMGATE_LISTEN": "x", "PERMGATE_STORE": "y", "PERMGATE_AUDIT__SINK": "z"}
        )
    assert len(caught.value.problems) == 3


def test_unreadable_and_malformed_files_are_refused(tmp_path: Path) -> None:
    """A missing file or broken YAML names the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", env={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_settings(broken, env={})


def test_serve_refuses_a_bad_config_with_every_problem_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`permgate serve` with a bad file exits 2, one line per problem, nothing started."""
    from permgate.cli import main

    for name in [n for n in os.environ if n.startswith("PERMGATE_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "permgate.yaml"
    config.write_text("listen: nowhere\nstore: mysql://x\naudit: {sink: syslog}\n", "utf-8")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "listen: 'nowhere'" in err
    assert "store: 'mysql://x'" in err
    assert "audit.sink: 'syslog'" in err
    assert "Traceback" not in err


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
