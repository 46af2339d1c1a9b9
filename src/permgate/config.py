"""``permgate.yaml`` plus ``PERMGATE_*`` environment overrides.

Everything is validated at start and every problem is reported at once, each
naming the key, the value and what was expected. Nested keys are reached from the
environment with ``__``: ``PERMGATE_AUTH__JWT__ISSUER``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from permgate.errors import ConfigError

__all__ = [
    "AuditSettings",
    "AuthSettings",
    "CacheSettings",
    "JwtSettings",
    "Settings",
    "load_settings",
    "parse_hostport",
]

ENV_PREFIX: Final = "PERMGATE_"
_FORBIDDEN_ALGORITHMS: Final = frozenset({"none", "HS256", "HS384", "HS512"})
_ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """Bearer JWTs from an identity provider: keys from ``jwks_url`` or static PEMs."""

    issuer: str | None = None
    audience: str | None = None
    jwks_url: str | None = None
    keys: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    principal_claim: str = "sub"
    leeway_seconds: float = 30.0
    jwks_min_refresh_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class AuthSettings:
    token_prefix: str = "pgt_"
    forward_credential: bool = False
    jwt: JwtSettings | None = None


@dataclass(frozen=True, slots=True)
class CacheSettings:
    decision_ttl_seconds: float = 30.0
    max_entries: int = 100_000
    # How long principals and tokens already in memory keep being served after the
    # store was last reached; unknown credentials get 503 at once (fail closed). It is
    # also how long a cut-off sidecar may honour a revoked token: raising it trades
    # revocation delay for availability. 5 s covers connection resets and a pooler
    # restart; real failovers take longer than any window worth trusting.
    outage_grace_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class AuditSettings:
    sink: str = "stdout"  # stdout | file:PATH
    queue_size: int = 10_000
    overflow: Literal["block", "reject"] = "block"
    file_max_bytes: int = 100 * 1024 * 1024
    file_backups: int = 5


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "0.0.0.0:8080"
    admin_listen: str = "127.0.0.1:9090"
    upstream: str = "http://127.0.0.1:8000"
    upstream_timeout_seconds: float = 30.0
    endpoint_map: str = "endpoint_map.yaml"
    map_poll_seconds: float = 1.0
    store: str = "sqlite:///var/lib/permgate/permgate.db"
    default_enforcement: Literal["shadow", "enforce"] = "enforce"
    log_level: str = "INFO"
    # None: text lines when stderr is a terminal, JSON lines otherwise (log collectors).
    log_format: Literal["text", "json"] | None = None
    auth: AuthSettings = field(default_factory=AuthSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)


def parse_hostport(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) into its parts; raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT with a port from 0 to 65535")
    return host.strip("[]"), int(port)


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the file (if any), apply env then explicit overrides, validate everything."""
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_file(Path(path), problems)
    environment = os.environ if env is None else env
    for name, text in environment.items():
        if name.startswith(ENV_PREFIX) and not name.startswith("PERMGATE_TEST_"):
            keys = name[len(ENV_PREFIX) :].lower().split("__")
            _set_nested(raw, keys, _env_value(text), f"environment {name}", problems)
    for dotted, value in (overrides or {}).items():
        _set_nested(raw, dotted.split("."), value, f"override {dotted}", problems)
    settings: Settings = _build(Settings, raw, "", problems)
    _check_semantics(settings, problems)
    if problems:
        raise ConfigError([f"invalid configuration: {p}" for p in problems])
    return settings


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return {}
    except yaml.YAMLError as exc:
        problems.append(f"{path}: not valid YAML: {exc}")
        return {}
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        problems.append(f"{path}: expected a mapping of keys at the top level")
        return {}
    return loaded


def _env_value(text: str) -> Any:
    """Environment values are YAML scalars or flow lists: ``30``, ``true``, ``[RS256]``."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def _set_nested(
    raw: dict[str, Any], keys: list[str], value: Any, where: str, problems: list[str]
) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            problems.append(f"{where}: {key!r} is not a section")
            return
        node = child
    node[keys[-1]] = value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """Build a settings dataclass from a mapping, recording every problem."""
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'top level'}: expected a mapping, got {raw!r}")
        return cls()
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            problems.append(f"{prefix}{key}: unknown key (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for name, spec in known.items():
        if name not in raw:
            continue
        key = f"{prefix}{name}"
        values[name] = _convert(spec.type, raw[name], key, problems)
    return cls(**values)


_SECTIONS: Final[dict[str, type]] = {
    "AuthSettings": AuthSettings,
    "CacheSettings": CacheSettings,
    "AuditSettings": AuditSettings,
    "JwtSettings": JwtSettings,
    "JwtSettings | None": JwtSettings,
}


def _convert(type_name: Any, value: Any, key: str, problems: list[str]) -> Any:
    text = str(type_name)
    if text in _SECTIONS:
        if value is None and text.endswith("None"):
            return None
        return _build(_SECTIONS[text], value, f"{key}.", problems)
    converter = _SCALARS.get(text)
    if converter is None:  # Literal[...] and plain str
        return _convert_str(value, key, problems)
    return converter(value, key, problems)


def _convert_str(value: Any, key: str, problems: list[str]) -> Any:
    if isinstance(value, str):
        return value
    problems.append(f"{key}: {value!r} is not a string")
    return value


def _convert_optional_str(value: Any, key: str, problems: list[str]) -> Any:
    return None if value is None else _convert_str(value, key, problems)


def _convert_float(value: Any, key: str, problems: list[str]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        problems.append(f"{key}: {value!r} is not a non-negative number")
        return 0.0
    return float(value)


def _convert_int(value: Any, key: str, problems: list[str]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"{key}: {value!r} is not a positive whole number")
        return 1
    return value


def _convert_bool(value: Any, key: str, problems: list[str]) -> Any:
    if not isinstance(value, bool):
        problems.append(f"{key}: {value!r} is not true or false")
        return False
    return value


def _convert_str_tuple(value: Any, key: str, problems: list[str]) -> Any:
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{key}: {value!r} is not a list of strings")
        return ()
    return tuple(value)


_SCALARS: Final[dict[str, Callable[[Any, str, list[str]], Any]]] = {
    "float": _convert_float,
    "int": _convert_int,
    "bool": _convert_bool,
    "str | None": _convert_optional_str,
    "tuple[str, ...]": _convert_str_tuple,
}


def _check_semantics(settings: Settings, problems: list[str]) -> None:
    for key in ("listen", "admin_listen"):
        value = getattr(settings, key)
        try:
            parse_hostport(value)
        except ValueError as exc:
            problems.append(f"{key}: {value!r}: {exc}")
    upstream = settings.upstream
    if not (upstream.startswith(("http://", "https://")) or upstream.startswith("unix:/")):
        problems.append(
            f"upstream: {upstream!r}: expected http://HOST:PORT, https://HOST:PORT or unix:/PATH"
        )
    if not settings.store.startswith(("sqlite://", "postgresql://", "postgres://")):
        problems.append(
            f"store: {settings.store!r}: expected sqlite://PATH (sqlite:///abs/path.db, "
            "sqlite://relative.db) or postgresql://USER@HOST/DB"
        )
    if settings.default_enforcement not in ("shadow", "enforce"):
        problems.append(
            f"default_enforcement: {settings.default_enforcement!r}: expected shadow or enforce"
        )
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        problems.append(
            f"log_level: {settings.log_level!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    if settings.log_format not in (None, "text", "json"):
        problems.append(f"log_format: {settings.log_format!r}: expected text or json")
    if settings.upstream_timeout_seconds <= 0 and not _reported(
        problems, "upstream_timeout_seconds"
    ):
        problems.append("upstream_timeout_seconds: must be greater than 0")
    sink = settings.audit.sink
    if sink != "stdout" and not (sink.startswith("file:") and len(sink) > len("file:")):
        problems.append(f"audit.sink: {sink!r}: expected stdout or file:PATH")
    if settings.audit.overflow not in ("block", "reject"):
        problems.append(f"audit.overflow: {settings.audit.overflow!r}: expected block or reject")
    if not settings.auth.token_prefix:
        problems.append("auth.token_prefix: must not be empty")
    jwt = settings.auth.jwt
    if jwt is not None:
        _check_jwt(jwt, problems)


def _reported(problems: list[str], key: str) -> bool:
    """Whether ``key`` already has a problem (one message per bad key)."""
    return any(problem.startswith(f"{key}:") for problem in problems)


def _check_jwt(jwt: JwtSettings, problems: list[str]) -> None:
    # iss and aud are always verified, so both must be configured.
    if not jwt.issuer:
        problems.append("auth.jwt.issuer: required: the JWT issuer (iss) to accept")
    if not jwt.audience:
        problems.append("auth.jwt.audience: required: the JWT audience (aud) to accept")
    if not jwt.jwks_url and not jwt.keys:
        problems.append("auth.jwt: set jwks_url or keys (PEM public keys) to verify JWTs")
    if jwt.jwks_url and not jwt.jwks_url.startswith(("http://", "https://")):
        problems.append(f"auth.jwt.jwks_url: {jwt.jwks_url!r}: expected an http(s) URL")
    if not jwt.algorithms:
        problems.append("auth.jwt.algorithms: must list at least one algorithm")
    for algorithm in jwt.algorithms:
        if algorithm in _FORBIDDEN_ALGORITHMS or algorithm.lower() == "none":
            problems.append(
                f"auth.jwt.algorithms: {algorithm!r} is refused: only asymmetric algorithms "
                "are allowed (no 'none', no HMAC: key confusion)"
            )
        elif algorithm not in _ASYMMETRIC_ALGORITHMS:
            problems.append(
                f"auth.jwt.algorithms: {algorithm!r} is unknown "
                f"(known: {', '.join(sorted(_ASYMMETRIC_ALGORITHMS))})"
            )
    if not jwt.principal_claim:
        problems.append("auth.jwt.principal_claim: must not be empty")
