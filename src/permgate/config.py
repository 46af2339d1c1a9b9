"""``permgate.yaml`` plus ``PERMGATE_*`` environment overrides.

The settings are frozen dataclasses; each field's annotation says what the key
accepts (``HostPort``, ``Seconds``, ``Count``...), and pydantic checks a whole
configuration against them at once, so every problem is reported together, one
line each, naming where the value came from (the file and key, or the environment
variable), the value and what was expected.

Sources, later ones winning: the file, then the environment, then explicit
overrides (the command line's ``--store``).

* Only a variable that names a key is configuration: ``PERMGATE_LISTEN``,
  ``PERMGATE_CACHE__MAX_ENTRIES``, ``PERMGATE_AUTH__JWT__ISSUER`` (``__`` steps into
  a section). Any other ``PERMGATE_*`` variable (Kubernetes injects
  ``PERMGATE_PORT=tcp://...``, ``PERMGATE_SERVICE_HOST``... into every pod of a
  namespace with a Service named ``permgate``) is ignored: :func:`ignored_variables`
  lists them so that the command line can warn once. ``PERMGATE_CONFIG`` (the
  config file) and ``PERMGATE_TEST_PG_DSN`` (the test suite's database) are known
  variables that are not configuration keys.
* A variable's text is the value; a list key takes ``a,b`` or ``[a, b]``.
* A relative path written in the file (``endpoint_map``, a ``sqlite://`` store,
  an ``audit.sink`` of ``file:PATH``) is relative to the folder of that file; one
  from the environment or the command line is relative to the working directory.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from permgate.core.errors import ConfigError, Problem
from permgate.core.yamlnodes import NodeReader, compose, read_text

__all__ = [
    "ENV_PREFIX",
    "NON_KEY_VARIABLES",
    "AuditSettings",
    "AuthSettings",
    "CacheSettings",
    "JwtSettings",
    "ListenerTls",
    "MtlsSettings",
    "Settings",
    "TracingSettings",
    "UpstreamTls",
    "ignored_variables",
    "load_settings",
    "parse_hostport",
]

ENV_PREFIX: Final = "PERMGATE_"
# PERMGATE_* variables permgate reads that are not configuration keys: the config
# file's name, and the PostgreSQL database of permgate's own test suite.
NON_KEY_VARIABLES: Final = frozenset({"PERMGATE_CONFIG", "PERMGATE_TEST_PG_DSN"})

_FORBIDDEN_ALGORITHMS: Final = frozenset({"none", "HS256", "HS384", "HS512"})
_ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Every section refuses keys it does not know.
_SECTION: Final = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- what a key accepts


def _refuse(why: str) -> PydanticCustomError:
    return PydanticCustomError("permgate", why)


def _string(value: Any, expected: str) -> str:
    if not isinstance(value, str):
        raise _refuse(expected)
    return value


def _no_bool(value: Any) -> Any:
    """YAML's ``true`` is not the number 1."""
    if isinstance(value, bool):
        raise _refuse("expected a number, not true/false")
    return value


def parse_hostport(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) into its parts; raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT with a port from 0 to 65535")
    return host.strip("[]"), int(port)


def _hostport(value: Any) -> str:
    expected = "expected HOST:PORT with a port from 0 to 65535, e.g. 0.0.0.0:8080"
    text = _string(value, expected)
    try:
        parse_hostport(text)
    except ValueError:
        raise _refuse(expected) from None
    return text


def _cidr(value: Any) -> str:
    expected = "expected a CIDR such as 10.0.0.0/8 or fd00::/8 (an address alone is one host)"
    text = _string(value, expected)
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise _refuse(expected) from None


def _upstream(value: Any) -> str:
    expected = "expected http://HOST:PORT, https://HOST:PORT or unix:/PATH"
    text = _string(value, expected)
    if not text.startswith(("http://", "https://", "unix:/")):
        raise _refuse(expected)
    return text


def _store(value: Any) -> str:
    expected = (
        "expected sqlite://PATH (sqlite:///abs/path.db, sqlite://relative.db) "
        "or postgresql://USER@HOST/DB"
    )
    text = _string(value, expected)
    if not text.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise _refuse(expected)
    return text


def _sink(value: Any) -> str:
    expected = "expected stdout or file:PATH"
    text = _string(value, expected)
    if text != "stdout" and not (text.startswith("file:") and len(text) > len("file:")):
        raise _refuse(expected)
    return text


def _log_level(value: Any) -> str:
    expected = f"expected {', '.join(_LOG_LEVELS[:-1])} or {_LOG_LEVELS[-1]}"
    text = _string(value, expected)
    if text.upper() not in _LOG_LEVELS:
        raise _refuse(expected)
    return text


def _algorithm(value: Any) -> str:
    text = _string(value, "expected an algorithm name such as RS256")
    if text in _FORBIDDEN_ALGORITHMS or text.lower() == "none":
        raise _refuse(
            "refused: only asymmetric algorithms are allowed (no 'none', no HMAC: key confusion)"
        )
    if text not in _ASYMMETRIC_ALGORITHMS:
        raise _refuse(f"unknown algorithm (known: {', '.join(sorted(_ASYMMETRIC_ALGORITHMS))})")
    return text


def _jwks_url(value: Any) -> str | None:
    if value is None:
        return None
    text = _string(value, "expected an http(s) URL")
    if text and not text.startswith(("http://", "https://")):
        raise _refuse("expected an http(s) URL")
    return text


def _tls_version(value: Any) -> Any:
    """YAML reads ``min_version: 1.2`` as a number: take it as the version it names."""
    if isinstance(value, float) and value in (1.2, 1.3):
        return str(value)
    return value


def _otlp_endpoint(value: Any) -> str:
    expected = "expected the collector's http(s) base URL, e.g. http://otel-collector:4318"
    text = _string(value, expected)
    if not text.startswith(("http://", "https://")) or len(text.split("://", 1)[1]) == 0:
        raise _refuse(expected)
    return text


HostPort = Annotated[str, PlainValidator(_hostport)]
Upstream = Annotated[str, PlainValidator(_upstream)]
Cidr = Annotated[str, PlainValidator(_cidr)]
StoreDsn = Annotated[str, PlainValidator(_store)]
AuditSink = Annotated[str, PlainValidator(_sink)]
LogLevel = Annotated[str, PlainValidator(_log_level)]
JwksUrl = Annotated[str | None, PlainValidator(_jwks_url)]
Algorithm = Annotated[str, PlainValidator(_algorithm)]
NonEmpty = Annotated[str, Field(min_length=1)]
Seconds = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, BeforeValidator(_no_bool), Field(ge=1)]
TlsVersion = Annotated[Literal["1.2", "1.3"], BeforeValidator(_tls_version)]
OtlpEndpoint = Annotated[str, PlainValidator(_otlp_endpoint)]
Ratio = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, le=1, allow_inf_nan=False)]


# ---------------------------------------------------------------- the settings


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """Bearer JWTs from an identity provider: keys from ``jwks_url`` or static PEMs."""

    __pydantic_config__ = _SECTION

    issuer: str | None = None
    audience: str | None = None
    jwks_url: JwksUrl = None
    keys: tuple[str, ...] = ()
    algorithms: Annotated[tuple[Algorithm, ...], Field(min_length=1)] = ("RS256", "ES256")
    principal_claim: NonEmpty = "sub"
    leeway_seconds: Seconds = 30.0
    jwks_min_refresh_seconds: Seconds = 30.0


@dataclass(frozen=True, slots=True)
class MtlsSettings:
    """Verified client certificates as identities: which field of the certificate is
    the principal id (the whole value of the first URI SAN, e.g. a SPIFFE id, of the
    first DNS SAN, or the subject's common name)."""

    __pydantic_config__ = _SECTION

    principal_from: Literal["san_uri", "san_dns", "subject_cn"] = "san_uri"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    __pydantic_config__ = _SECTION

    token_prefix: NonEmpty = "pgt_"
    forward_credential: bool = False
    jwt: JwtSettings | None = None
    mtls: MtlsSettings | None = None


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """TLS on one listener: the certificate chain and key (re-read when they change on
    disk), the oldest protocol version accepted, and the CA that client certificates
    are verified against (clients without one still connect)."""

    __pydantic_config__ = _SECTION

    cert_file: NonEmpty
    key_file: NonEmpty
    client_ca_file: str | None = None
    min_version: TlsVersion = "1.2"


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """TLS to an ``https://`` upstream: the CA it is verified against (verification is
    always on), an optional client certificate, and the name to verify when it is not
    the upstream's host."""

    __pydantic_config__ = _SECTION

    ca_file: NonEmpty
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """OpenTelemetry spans over OTLP/HTTP to ``otlp_endpoint``/v1/traces."""

    __pydantic_config__ = _SECTION

    otlp_endpoint: OtlpEndpoint
    sample_ratio: Ratio = 1.0
    service_name: NonEmpty = "permgate"


@dataclass(frozen=True, slots=True)
class CacheSettings:
    __pydantic_config__ = _SECTION

    decision_ttl_seconds: Seconds = 30.0
    # Each of the model cache (tokens, principals, tenants, roles) and the decision
    # cache: ~0.5 KB and ~0.3 KB an entry, so ~40 MB at most; an entry in use stays.
    max_entries: Count = 50_000
    # How long principals and tokens already in memory keep being served after the
    # store was last reached; unknown credentials get 503 at once (fail closed). It is
    # also how long a cut-off sidecar may honour a revoked token: raising it trades
    # revocation delay for availability. 5 s covers connection resets and a pooler
    # restart; real failovers take longer than any window worth trusting.
    outage_grace_seconds: Seconds = 5.0


@dataclass(frozen=True, slots=True)
class AuditSettings:
    __pydantic_config__ = _SECTION

    sink: AuditSink = "stdout"  # stdout | file:PATH
    queue_size: Count = 10_000
    overflow: Literal["block", "reject"] = "block"
    file_max_bytes: Count = 100 * 1024 * 1024
    file_backups: Count = 5


@dataclass(frozen=True, slots=True)
class Settings:
    __pydantic_config__ = _SECTION

    # None: no gateway listener (decision-only mode, see authz_listen).
    listen: HostPort | None = "0.0.0.0:8080"
    admin_listen: HostPort = "127.0.0.1:9090"
    upstream: Upstream = "http://127.0.0.1:8000"
    # The decision service (permgate behind Envoy, Istio, nginx, Traefik; AuthZEN).
    # Off unless set; with it set, listen and upstream may be omitted (decision only).
    authz_listen: HostPort | None = None
    # Peers whose X-Forwarded-Method/-Uri (X-Original-*) headers are honoured.
    authz_trusted_proxies: tuple[Cidr, ...] = ("127.0.0.0/8", "::1/128")
    upstream_timeout_seconds: PositiveSeconds = 30.0
    endpoint_map: str = "endpoint_map.yaml"
    map_poll_seconds: Seconds = 1.0
    store: StoreDsn = "sqlite:///var/lib/permgate/permgate.db"
    default_enforcement: Literal["shadow", "enforce"] = "enforce"
    log_level: LogLevel = "INFO"
    # None: text lines when stderr is a terminal, JSON lines otherwise (log collectors).
    log_format: Literal["text", "json"] | None = None
    auth: AuthSettings = field(default_factory=AuthSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    listen_tls: ListenerTls | None = None
    admin_tls: ListenerTls | None = None
    # The decision service's own TLS: its client certificates are the calling proxy's,
    # never the identity of the request being decided.
    authz_tls: ListenerTls | None = None
    upstream_tls: UpstreamTls | None = None
    # Off unless configured here: OTEL_* environment variables never turn it on.
    tracing: TracingSettings | None = None


# ---------------------------------------------------------------- the keys


@dataclass(frozen=True, slots=True)
class _Key:
    """One key of the schema: a section (``section`` set) or a value."""

    section: type | None
    is_list: bool


@functools.cache
def _keys(cls: type) -> dict[str, _Key]:
    """The keys of a settings class, from its resolved annotations."""
    hints = typing.get_type_hints(cls)
    keys = {}
    for spec in fields(cls):
        hint = hints[spec.name]
        members = (hint, *typing.get_args(hint))  # JwtSettings | None is a section
        section = next((m for m in members if isinstance(m, type) and is_dataclass(m)), None)
        is_list = typing.get_origin(hint) is tuple
        keys[spec.name] = _Key(section, is_list)
    return keys


def _leaf(path: list[str]) -> _Key | None:
    """The value key ``path`` names, or None when it names no key (or a section)."""
    cls: type | None = Settings
    key = None
    for part in path:
        if cls is None:
            return None
        key = _keys(cls).get(part)
        if key is None:
            return None
        cls = key.section
    return key if key is not None and key.section is None else None


def _env_path(name: str) -> list[str]:
    return name[len(ENV_PREFIX) :].lower().split("__")


def ignored_variables(env: Mapping[str, str]) -> list[str]:
    """``PERMGATE_*`` variables that name no configuration key (and are not one of
    :data:`NON_KEY_VARIABLES`): ignored by :func:`load_settings`, sorted."""
    return sorted(
        name
        for name in env
        if name.startswith(ENV_PREFIX)
        and name not in NON_KEY_VARIABLES
        and _leaf(_env_path(name)) is None
    )


# ---------------------------------------------------------------- where values came from


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a value came from, to name it in a message and resolve its paths."""

    kind: Literal["file", "env", "override"]
    name: str  # the file, the variable or the override's key
    text: str | None = None  # a variable's text as set

    def describe(self, key: str, value: Any) -> str:
        if self.kind == "file":
            return f"{self.name}: {key}: {_show(value)}"
        if self.kind == "env":
            return f"environment variable {self.name}: {_show(self.text)}"
        return f"{key}: {_show(value)}"


_PASSWORD: Final = re.compile(r"(://[^/@:\s]*:)[^@/\s]+@")


def _show(value: Any) -> str:
    """A value as a message shows it: repr, no password, not a screenful."""
    text = _PASSWORD.sub(r"\1***@", repr(value))
    return text if len(text) <= 80 else f"{text[:77]}..."


class _Sources:
    """The merged raw configuration and, for each key set, where it came from."""

    def __init__(self) -> None:
        self.raw: dict[str, Any] = {}
        self.origins: dict[tuple[str, ...], _Origin] = {}
        # The line of each key (and list item) the file set, by its path.
        self.lines: dict[tuple[str | int, ...], int] = {}

    def set(self, path: list[str], value: Any, origin: _Origin) -> None:
        node = self.raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                return  # the section itself is wrong; that is the problem reported
            node = child
        node[path[-1]] = value
        prefix = tuple(path)
        for known in [k for k in self.origins if k[: len(prefix)] == prefix]:
            del self.origins[known]
        self.origins[prefix] = origin

    def origin(self, path: tuple[str, ...]) -> _Origin | None:
        """The origin of ``path`` or of the nearest section above it that was set."""
        for end in range(len(path), 0, -1):
            origin = self.origins.get(path[:end])
            if origin is not None:
                return origin
        return None

    def at(self, path: tuple[str | int, ...]) -> tuple[str, int | None] | None:
        """The file and line that set ``path`` (or the nearest key above it), or None
        when the value did not come from the file."""
        origin = self.origin(tuple(str(p) for p in path if not isinstance(p, int)))
        if origin is None or origin.kind != "file":
            return None
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return origin.name, line
        return origin.name, None

    def get(self, path: Iterable[str]) -> Any:
        node: Any = self.raw
        for part in path:
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node


# ---------------------------------------------------------------- loading


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the file (if any), apply env then explicit overrides, validate everything.

    ``overrides`` maps dotted keys (``"store"``, ``"audit.sink"``) to values. Raises
    :class:`ConfigError` with one line per problem.
    """
    problems: list[Problem | str] = []
    sources = _Sources()
    if path is not None:
        _read_file(Path(path), sources, problems)
    environment = os.environ if env is None else env
    for name, text in sorted(environment.items()):
        if name.startswith(ENV_PREFIX) and name not in NON_KEY_VARIABLES:
            key = _leaf(_env_path(name))
            if key is not None:
                value = _env_list(text) if key.is_list else text
                sources.set(_env_path(name), value, _Origin("env", name, text))
    for dotted, value in (overrides or {}).items():
        sources.set(dotted.split("."), value, _Origin("override", dotted))
    settings: Settings | None = None
    try:
        settings = _adapter().validate_python(sources.raw)
    except ValidationError as exc:
        problems.extend(_problems(exc.errors(), sources))
    problems.extend(_missing_jwt_keys(sources))
    if settings is not None:
        problems.extend(_tls_problems(settings, sources))
        settings = _decision_only(settings, sources, problems)
    if problems or settings is None:
        # A problem of the file is FILE:LINE: KEY: WHAT, as in every file permgate
        # reads; any other names its variable or key after this prefix.
        in_file = sorted((p for p in problems if isinstance(p, Problem)), key=_line_order)
        others = [f"invalid configuration: {p}" for p in problems if isinstance(p, str)]
        raise ConfigError([*in_file, *others])
    return settings


def _line_order(problem: Problem) -> tuple[str, int]:
    return problem.source, problem.line or 0


@functools.cache
def _adapter() -> TypeAdapter[Settings]:
    return TypeAdapter(Settings)


def _read_file(path: Path, sources: _Sources, problems: list[Problem | str]) -> None:
    """The file through the one YAML reader: a repeated key is a problem (never the
    last one silently winning), and every key keeps its line for the messages."""
    source = str(path)
    try:
        root = compose(read_text(path, "the configuration file", ConfigError), source, ConfigError)
    except ConfigError as exc:
        problems.extend(exc.items)
        return
    if root is None:
        return
    reader = NodeReader(source, "the configuration file")
    loaded = reader.plain(root, (), sources.lines)
    problems.extend(reader.problems)
    if not isinstance(loaded, dict):
        if not reader.problems:
            reader.wrong_type(root, "", "a mapping of keys")
            problems.extend(reader.problems)
        return
    # absolute() and not resolve(): a Kubernetes ConfigMap mounts files as symlinks
    # into a dated folder that is replaced on every update.
    _resolve_paths(loaded, path.absolute().parent)
    origin = _Origin("file", source)
    for key, value in loaded.items():
        schema = _keys(Settings).get(str(key))
        if value is None and schema is not None and schema.section is not None:
            value = {}  # `auth:` with every key under it commented out: the defaults
        sources.set([str(key)], value, origin)


def _env_list(text: str) -> Any:
    """A list key's variable: ``[a, b]`` (YAML flow list) or ``a,b``."""
    if text.strip().startswith("["):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text  # refused as "expected a list", naming the variable
    return [item.strip() for item in text.split(",") if item.strip()]


# ---------------------------------------------------------------- paths in the file


def _path(folder: Path, text: str) -> str:
    return str(folder / text) if text and not Path(text).is_absolute() else text


def _sqlite(folder: Path, text: str) -> str:
    if not text.startswith("sqlite://"):
        return text
    file = text.removeprefix("sqlite://")
    return "sqlite://" + (file if file == ":memory:" else _path(folder, file))


def _file_sink(folder: Path, text: str) -> str:
    if not text.startswith("file:"):
        return text
    return "file:" + _path(folder, text.removeprefix("file:"))


# Keys holding a path (or a DSN or sink with one inside), by dotted key. A key that
# names a file (TLS certificates, keys) belongs here.
_PATH_KEYS: Final[dict[tuple[str, ...], Callable[[Path, str], str]]] = {
    ("endpoint_map",): _path,
    ("store",): _sqlite,
    ("audit", "sink"): _file_sink,
    **{
        (section, key): _path
        for section in ("listen_tls", "admin_tls", "authz_tls")
        for key in ("cert_file", "key_file", "client_ca_file")
    },
    **{("upstream_tls", key): _path for key in ("ca_file", "cert_file", "key_file")},
}


def _resolve_paths(loaded: dict[str, Any], folder: Path) -> None:
    """Make the file's relative paths relative to ``folder`` (values of the wrong
    type are left for validation to refuse)."""
    for path, resolve in _PATH_KEYS.items():
        node: Any = loaded
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(path[-1]), str):
            node[path[-1]] = resolve(folder, node[path[-1]])


# ---------------------------------------------------------------- problems, one line each

_WHY: Final[dict[str, str]] = {
    "string_type": "expected a string",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "dataclass_type": "expected a section (a mapping of keys)",
    "dict_type": "expected a section (a mapping of keys)",
    "finite_number": "expected a finite number",
    "missing": "required",
}


def _why(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "permgate":
        return error["msg"]
    if kind == "literal_error":
        return f"expected {ctx['expected']}"
    if kind == "greater_than":
        return f"expected more than {ctx['gt']}"
    if kind == "less_than_equal":
        return f"expected at most {ctx['le']}"
    if kind == "greater_than_equal":
        return f"expected at least {ctx['ge']}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind in _WHY:
        return _WHY[kind]
    message = error["msg"]
    return message[:1].lower() + message[1:]


def _problems(errors: list[ErrorDetails], sources: _Sources) -> list[Problem | str]:
    """One line per problem; a list whose items were refused is not also "empty"."""
    with_bad_items = {_error_key(error) for error in errors if _item(error) is not None}
    return [
        _describe(error, sources)
        for error in errors
        if not (_item(error) is None and _error_key(error) in with_bad_items)
    ]


def _error_key(error: ErrorDetails) -> tuple[str, ...]:
    return tuple(str(part) for part in error["loc"] if not isinstance(part, int))


def _item(error: ErrorDetails) -> int | None:
    """The position of the refused item when the error is about one item of a list."""
    return next((part for part in error["loc"] if isinstance(part, int)), None)


def _describe(error: ErrorDetails, sources: _Sources) -> Problem | str:
    """One pydantic error: ``FILE:LINE: KEY: WHAT`` for a value of the file, else
    ``WHERE: VALUE: WHY`` naming the variable or key."""
    path = _error_key(error)
    key = ".".join(path)
    at = sources.at(tuple(part if isinstance(part, int) else str(part) for part in error["loc"]))
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        section = _section_class(path[:-1])
        known = ", ".join(sorted(_keys(section))) if section else ""
        if at is not None:
            return Problem(f"unknown key (allowed: {known})", at[0], at[1], key)
        return f"{key}: unknown key (allowed: {known})"
    if error["type"] == "missing":
        return Problem("required", at[0], at[1], key) if at is not None else f"{key}: required"
    value = error["input"]
    if at is not None:
        return Problem(f"{_why(error)}, got {_got(value)}", at[0], at[1], key)
    origin = sources.origin(path)
    if origin is None:
        where = f"{key}: {_show(value)}"
    elif origin.kind == "env" and _item(error) is not None:
        # The variable's text, then which item of it: 'HS256' in "[RS256, HS256]".
        where = f"{origin.describe(key, value)}: item {_show(value)}"
    else:
        where = origin.describe(key, value)
    return f"{where}: {_why(error)}"


def _got(value: Any) -> str:
    """A value of the file as "expected X, got Y" shows it (as the YAML reader does)."""
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
        (tuple, "a list"),
        (dict, "a mapping"),
    )
    if value is None:
        return "null"
    kind = next((name for cls, name in kinds if isinstance(value, cls)), type(value).__name__)
    return f"{kind} ({_show(value)})"


def _section_class(path: tuple[str, ...]) -> type | None:
    cls: type | None = Settings
    for part in path:
        key = _keys(cls).get(part) if cls is not None else None
        cls = key.section if key is not None else None
    return cls


def _at(sources: _Sources, path: tuple[str, ...], what: str) -> Problem | str:
    """A problem about ``path``: at its line when the file set it."""
    at = sources.at(path)
    key = ".".join(path)
    return Problem(what, at[0], at[1], key) if at is not None else f"{key}: {what}"


def _missing_jwt_keys(sources: _Sources) -> list[Problem | str]:
    """A configured ``auth.jwt`` must say whom to trust: iss and aud are always
    verified, so both are required, and keys come from jwks_url or keys."""
    jwt = sources.get(("auth", "jwt"))
    if not isinstance(jwt, dict):
        return []
    problems: list[Problem | str] = []
    for key, what in (("issuer", "issuer (iss)"), ("audience", "audience (aud)")):
        if jwt.get(key) in (None, ""):
            variable = f"{ENV_PREFIX}AUTH__JWT__{key.upper()}"
            problems.append(
                _at(
                    sources,
                    ("auth", "jwt", key),
                    f"required: the JWT {what} to accept ({variable})",
                )
            )
    if not jwt.get("jwks_url") and not jwt.get("keys"):
        problems.append(
            _at(sources, ("auth", "jwt"), "set jwks_url or keys (PEM public keys) to verify JWTs")
        )
    return problems


def _tls_problems(settings: Settings, sources: _Sources) -> list[Problem | str]:
    """TLS keys that only make sense together: a client certificate needs its key,
    ``upstream_tls`` an ``https://`` upstream, and certificate identities a client CA."""
    problems: list[Problem | str] = []
    upstream_tls = settings.upstream_tls
    if upstream_tls is not None:
        if (upstream_tls.cert_file is None) != (upstream_tls.key_file is None):
            problems.append(
                _at(
                    sources,
                    ("upstream_tls",),
                    "cert_file and key_file go together (a client certificate needs its key)",
                )
            )
        if not settings.upstream.startswith("https://"):
            problems.append(
                _at(
                    sources,
                    ("upstream_tls",),
                    f"set, but upstream {settings.upstream!r} is not https://",
                )
            )
    if settings.authz_tls is not None and settings.authz_listen is None:
        problems.append(
            _at(
                sources,
                ("authz_tls",),
                "set, but authz_listen is not (TLS for a decision service that is not served)",
            )
        )
    if settings.auth.mtls is not None and (
        settings.listen_tls is None or settings.listen_tls.client_ca_file is None
    ):
        problems.append(
            _at(
                sources,
                ("auth", "mtls"),
                "client certificates identify principals only with "
                "listen_tls.client_ca_file (the CA they are verified against)",
            )
        )
    return problems


def _decision_only(
    settings: Settings, sources: _Sources, problems: list[Problem | str]
) -> Settings:
    """With ``authz_listen`` set and ``listen`` never given, there is no gateway
    listener (decision-only mode); with neither listener, nothing would be served."""
    if settings.authz_listen is not None and sources.get(["listen"]) is None:
        return replace(settings, listen=None)
    if settings.listen is None and settings.authz_listen is None:
        problems.append(
            "listen: null: nothing to serve; set listen (the gateway), "
            "authz_listen (the decision service) or both"
        )
    return settings
