"""daemon.toml: msgspec Structs, loaded with errors that name the file, the key and the problem.

Operators edit this file by hand at 2 a.m.; a message like "Expected `int`, got `str`"
without a location costs them the night. Every error therefore says which file, which
line (when it can be found), which dotted key, and what was expected.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, NoReturn, TypeVar, Union, get_args, get_origin

import msgspec

_T = TypeVar("_T")

DEFAULT_CONFIG_NAME = "daemon.toml"
"""Looked up in the working directory when no --config is given."""
EMBEDDED_DEFAULT = "<embedded default>"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class Duration(float):
    """Seconds, written in daemon.toml as a number or as "500ms", "30s", "5m", "4h", "1d"."""


class ListenAddress(str):
    """A "host:port" string; parsed once so every listener agrees on what it means."""

    @property
    def host(self) -> str:
        return self.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.rpartition(":")[2])

    @property
    def loopback(self) -> bool:
        """Reachable from this machine only (localhost, 127.0.0.0/8, ::1)."""
        try:
            return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to any interface
            return False


def dec_hook(kind: type, value: Any) -> Any:
    if kind is Duration:
        if isinstance(value, bool):
            raise ValueError('expected a duration such as 30, "30s", "5m" or "4h"')
        if isinstance(value, int | float):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"expected a finite duration of 0 or more, got {value!r}")
            return Duration(value)
        if isinstance(value, str) and (m := _DURATION.match(value)):
            return Duration(float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
        raise ValueError(f'expected a duration such as 30, "30s", "5m" or "4h", got {value!r}')
    if kind is ListenAddress:
        if not isinstance(value, str):
            raise ValueError(f'expected "host:port", got {value!r}')
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f'expected "host:port" with a port from 0 to 65535, got {value!r}')
        if ":" in host and not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f'an IPv6 address goes in brackets, as "[::1]:8321"; got {value!r}')
        return ListenAddress(value)
    raise NotImplementedError(kind)


Positive = Annotated[int, msgspec.Meta(ge=1)]


class RestartPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """OTP-style: back off between restarts, and give up (exit non-zero) past the intensity."""

    max_restarts: Positive = 5
    window: Duration = Duration(60)
    backoff_initial: Duration = Duration(0.5)
    backoff_max: Duration = Duration(30)


class DaemonSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    data_dir: str = "./var"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    shutdown_grace: Duration = Duration(30)
    restart: RestartPolicy = RestartPolicy()


class StorageSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    busy_timeout: Duration = Duration(5)
    checkpoint_interval: Duration = Duration(30)
    journal_size_limit: Positive = 64 * 1024 * 1024
    dedup_window: Duration = Duration(600)
    """How long after its commit a messageId is recognised when a client sends it again
    (storage/sqlite_log.py: DEDUP_WINDOW); memory grows with it, ~9 bytes an event."""
    retain_events: Duration | None = None
    """Events received longer ago than this, and applied by every consumer, are trimmed
    from the log (storage/sqlite_lifecycle.py); unset, the log keeps everything."""

    def __post_init__(self) -> None:
        if not self.dedup_window > 0:
            raise ValueError("dedup_window must be more than 0")
        if self.retain_events is not None and self.retain_events < self.dedup_window:
            raise ValueError("retain_events must be at least dedup_window")


class _Connections(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How long a listener keeps a connection that is idle, or slow to send headers."""

    keepalive_timeout: Duration = Duration(75)
    header_timeout: Duration = Duration(10)


class HttpSection(_Connections, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The Segment-compatible ingestion listener shared by every `type = "http"` source."""

    listen: ListenAddress = ListenAddress("127.0.0.1:8321")
    max_pending_events: Positive = 20_000
    max_backlog: Positive = 1_000_000


class AdminSection(_Connections, forbid_unknown_fields=True, frozen=True, kw_only=True):
    listen: ListenAddress = ListenAddress("127.0.0.1:8320")
    hosts: list[str] = []
    """Host header values accepted besides the listen address ("name" or "name:port")."""
    token: str | None = None
    """Bearer token for every endpoint but /healthz and /readyz; required beyond loopback."""


class HttpSource(
    msgspec.Struct, tag="http", tag_field="type", forbid_unknown_fields=True, frozen=True
):
    """One write key on the Segment-compatible API.

    A missing write_key means "generate one on first start and keep it in data_dir",
    which is what the embedded default config uses so `leadsync run` works with no file.
    """

    kind: Literal["web", "ios", "android", "server"] = "server"
    write_key: str | None = None


Source = HttpSource

BUILTIN_ID_KINDS = ("user_id", "email", "anonymous_id")
DEFAULT_ID_LIMITS = {"user_id": 1, "email": 5, "anonymous_id": 100}
"""Per profile. One user id is the rule that keeps two people sharing a device apart;
the others stop one junk value (a shared kiosk, a QA script) from fusing thousands."""

IdKind = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
IdPath = Annotated[str, msgspec.Meta(pattern=r"^(traits|context|properties)(\.[A-Za-z0-9_$-]+)+$")]


class ExternalId(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An identifier some source carries besides Segment's own (a CRM id, a device id)."""

    kind: IdKind
    path: IdPath
    """Dotted path in the event, starting at traits, context or properties."""
    sources: list[str] = []
    """Only events from these sources; empty means every source."""
    limit: Positive | None = None
    """At most this many per profile; none means no cap."""


class IdentitySection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How identifiers merge into profiles. Changing a rule applies to new events;
    `leadsync identity rebuild` applies it to the whole log."""

    limits: dict[str, Positive] = {}
    """Per-kind caps, over DEFAULT_ID_LIMITS (user_id 1, email 5, anonymous_id 100)."""
    blocked_values: list[str] = msgspec.field(
        default_factory=lambda: ["", "null", "undefined", "0", "anonymous", "none", "nan"]
    )
    """Junk ids clients send when they have none; compared case-insensitively."""
    blocked_emails: list[str] = msgspec.field(
        default_factory=lambda: ["test@test.com", "test@example.com", "email@example.com"]
    )
    external_ids: list[ExternalId] = []
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 10_000
    """Events applied per transaction, at most: larger is faster (a page changed by
    several events is written once), smaller holds the main file's write lock less."""

    def limit(self, kind: str) -> int | None:
        if kind in self.limits:
            return self.limits[kind]
        for external in self.external_ids:
            if external.kind == kind:
                return external.limit
        return DEFAULT_ID_LIMITS.get(kind)


class ScoringSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    model: str | None = None
    """A model file, deployed at start and on SIGHUP when its version is new. None:
    the model deployed last (`leadsync model deploy`), else the shipped example."""
    batch_interval: Duration = Duration(4 * 3600)
    """How often Likelihood to Buy is recomputed for every profile."""


class RateLimit(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """At most `requests` calls in any window of `per` seconds (the way HubSpot and
    Salesforce count), and at most `daily` in a UTC day (kept across restarts)."""

    requests: Positive = 10
    per: Duration = Duration(1)
    daily: Positive | None = None


class RetryPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Failed sends wait first_delay, then twice as long each time (at most
    max_delay, each ±25% at random); after `attempts` in all, the dead-letter table.
    The defaults spread nine retries over about two hours."""

    attempts: Positive = 10
    first_delay: Duration = Duration(15)
    max_delay: Duration = Duration(3600)


Mode = Literal["realtime", "batch", "both"]


class _Destination(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What every destination has; see the commented daemon.toml for each key."""

    mode: Mode = "batch"
    filter: str | None = None
    """A Python-like expression over the profile's traits, identifiers and mk_* scores;
    only profiles for which it is true are sent."""
    fields: dict[str, str] = {}
    """mk_* trait -> the destination's name for it. Empty: every mk_* trait as is."""
    rate: RateLimit = RateLimit()
    retry: RetryPolicy = RetryPolicy()
    timeout: Duration = Duration(30)
    batch_size: Positive | None = None
    """Profiles per call; None means the API's maximum."""
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    """Calls in flight at once (the rate limit still holds)."""

    @property
    def kind(self) -> str:
        """The `type` key: segment, webhook or file."""
        return str(self.__struct_config__.tag)


class SegmentDestination(_Destination, tag="segment", tag_field="type", kw_only=True, frozen=True):
    """identify calls with the mk_* traits, to Segment or any Segment-compatible API."""

    write_key: str
    host: str = "https://api.segment.io"
    rate: RateLimit = RateLimit(requests=50, per=Duration(1))
    """Segment asks for under 50 calls a second."""


class WebhookDestination(_Destination, tag="webhook", tag_field="type", kw_only=True, frozen=True):
    """Signed JSON POSTs; docs/destinations.md says how a receiver verifies them."""

    url: str
    secret: str
    """The HMAC-SHA256 key. Use env:NAME so daemon.toml holds no secret."""


class FileDestination(_Destination, tag="file", tag_field="type", kw_only=True, frozen=True):
    """CSV or JSONL files; a file appears under its final name only when complete."""

    path: str
    """A directory; created if missing."""
    format: Literal["jsonl", "csv"] = "jsonl"
    rotate_bytes: Positive = 64 * 1024 * 1024
    rotate_interval: Duration = Duration(3600)
    rate: RateLimit = RateLimit(requests=100, per=Duration(1))


Destination = SegmentDestination | WebhookDestination | FileDestination
DESTINATION_TYPES = ("segment", "webhook", "file")


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    daemon: DaemonSection = DaemonSection()
    storage: StorageSection = StorageSection()
    http: HttpSection = HttpSection()
    admin: AdminSection = AdminSection()
    identity: IdentitySection = IdentitySection()
    scoring: ScoringSection = ScoringSection()
    sources: dict[str, Source] = {}
    destinations: dict[str, Destination] = {}


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    path: str
    """Where it came from: a file path, or "<embedded default>"."""


class ConfigError(Exception):
    """A config problem phrased for the operator: file, line, key, what was expected."""


class _SecretsNotNeeded(dict[str, str]):
    """The environment for commands that only read where the daemon is (status,
    profile): an unset `env:NAME` secret becomes a placeholder, so an operator need
    not load the service's secrets file to ask it a question."""

    def __contains__(self, name: object) -> bool:
        return True

    def __missing__(self, name: str) -> str:
        return f"<{name} not set>"


def load(path: str | os.PathLike[str] | None = None, *, need_secrets: bool = True) -> LoadedConfig:
    """Load --config PATH, else ./daemon.toml, else the embedded default."""
    environ = None if need_secrets else _SecretsNotNeeded(os.environ)
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = DEFAULT_CONFIG_NAME
    if path is None:
        text = resources.files("daemon").joinpath("default.toml").read_text("utf-8")
        return LoadedConfig(parse(text, EMBEDDED_DEFAULT, environ), EMBEDDED_DEFAULT)
    text = read_text(path, "config file")
    return LoadedConfig(parse(text, str(path), environ), str(path))


def read_text(
    path: str | os.PathLike[str], what: str, error: type[ConfigError] = ConfigError
) -> str:
    """A file an operator wrote, or `error` saying why it cannot be read."""
    try:
        return Path(path).read_text("utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def parse(text: str, filename: str, environ: dict[str, str] | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{filename}: not valid TOML: {exc}") from None
    raw = _resolve_env(raw, (), filename, text, os.environ if environ is None else environ)
    raw_sources = raw.pop("sources", {})
    raw_destinations = raw.pop("destinations", {})
    config = _convert(raw, Config, (), filename, text)
    config = msgspec.structs.replace(
        config,
        sources=_named(raw_sources, "sources", Source, ("http",), filename, text),
        destinations=_named(
            raw_destinations, "destinations", Destination, DESTINATION_TYPES, filename, text
        ),
    )
    _check(config, filename, text)
    return config


def _named(
    raw: Any, section: str, kind: Any, types: tuple[str, ...], filename: str, text: str
) -> dict[str, Any]:
    """[section.NAME] tables, each with a `type` that picks its Struct."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where(filename, text, (section,))}{section}: expected a table of named {section}"
        )
    found: dict[str, Any] = {}
    for name, table in raw.items():
        key = (section, name)
        if not isinstance(table, dict) or "type" not in table:
            raise ConfigError(
                f"{where(filename, text, key)}{section}.{name}: every {section[:-1]} needs "
                f"a type (one of: {', '.join(f'{t!r}' for t in types)})"
            )
        found[name] = _convert(table, kind, key, filename, text)
    return found


def _convert(raw: Any, kind: type[_T], key: tuple[str, ...], filename: str, text: str) -> _T:
    try:
        return msgspec.convert(raw, kind, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(describe(exc, key, filename, text, kind=kind)) from None


def _resolve_env(value: Any, key: tuple[str, ...], filename: str, text: str, environ: Any) -> Any:
    """Replace "env:NAME" strings with the variable's value, so daemon.toml holds no secret."""
    if isinstance(value, dict):
        return {k: _resolve_env(v, (*key, k), filename, text, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [
            _resolve_env(v, (*key, str(i)), filename, text, environ) for i, v in enumerate(value)
        ]
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in environ:
            raise ConfigError(
                f"{where(filename, text, key)}{'.'.join(key)}: environment variable {name} "
                "is not set (the value says env:" + name + ")"
            )
        return environ[name]
    return value


def _check(config: Config, filename: str, text: str) -> None:
    """Rules that span keys, which msgspec's per-field validation cannot express."""
    keys: dict[str, str] = {}
    for name, source in config.sources.items():
        if source.write_key is None:
            continue
        if source.write_key in keys:
            key: tuple[str, ...] = ("sources", name, "write_key")
            raise ConfigError(
                f"{where(filename, text, key)}sources.{name}.write_key: the same write key is "
                f"already used by sources.{keys[source.write_key]}; each source needs its own"
            )
        keys[source.write_key] = name
    if config.storage.checkpoint_interval <= 0:
        key = ("storage", "checkpoint_interval")
        raise ConfigError(
            f"{where(filename, text, key)}storage.checkpoint_interval: must be more than 0 "
            "(it is how often the WAL is checkpointed)"
        )
    _check_identity(config.identity, config.sources, filename, text)
    _check_destinations(config.destinations, filename, text)
    if config.scoring.batch_interval <= 0:
        key = ("scoring", "batch_interval")
        raise ConfigError(
            f"{where(filename, text, key)}scoring.batch_interval: must be more than 0"
        )
    _check_listeners(config, filename, text)
    if config.http.listen == config.admin.listen and config.http.listen.port != 0:
        key = ("admin", "listen")
        raise ConfigError(
            f"{where(filename, text, key)}admin.listen: same address as http.listen "
            f"({config.http.listen}); the admin API needs its own port"
        )


def _check_identity(
    identity: IdentitySection, sources: dict[str, Source], filename: str, text: str
) -> None:
    kinds = list(BUILTIN_ID_KINDS)
    for index, external in enumerate(identity.external_ids):
        key: tuple[str, ...] = ("identity", "external_ids", str(index), "kind")
        if external.kind in kinds:
            problem = "is built in" if external.kind in BUILTIN_ID_KINDS else "is configured twice"
            raise ConfigError(
                f"{where(filename, text, key)}identity.external_ids[{index}].kind: "
                f"{external.kind!r} {problem}; choose another name"
            )
        kinds.append(external.kind)
        for name in external.sources:
            if name not in sources:
                key = ("identity", "external_ids", str(index), "sources")
                raise ConfigError(
                    f"{where(filename, text, key)}identity.external_ids[{index}].sources: "
                    f"no source named {name!r} (sources: {', '.join(sources) or 'none'})"
                )
    for kind in identity.limits:
        if kind not in kinds:
            key = ("identity", "limits", kind)
            raise ConfigError(
                f"{where(filename, text, key)}identity.limits.{kind}: not an identifier kind "
                f"(known: {', '.join(kinds)})"
            )


def _check_destinations(destinations: dict[str, Destination], filename: str, text: str) -> None:
    from actors.delivery.filter import Filter, FilterError  # actors import this module

    def fail(name: str, field: str, problem: str) -> NoReturn:
        key = ("destinations", name, field)
        raise ConfigError(f"{where(filename, text, key)}destinations.{name}.{field}: {problem}")

    for name, destination in destinations.items():
        if destination.filter is not None:
            try:
                Filter(destination.filter)
            except FilterError as exc:
                fail(name, "filter", f"{exc} (in {destination.filter!r})")
        for trait in destination.fields:
            if not trait.startswith("mk_"):
                fail(name, "fields", f"{trait!r}: only mk_* score traits are mapped")
        for field in ("url", "host"):
            address = getattr(destination, field, None)
            if address is not None and not re.match(r"^https?://[^/\s]+", address):
                fail(name, field, f"expected an http:// or https:// URL, got {address!r}")
        if destination.rate.per <= 0:
            fail(name, "rate", "per must be more than 0")
        if destination.retry.first_delay <= 0:
            fail(name, "retry", "first_delay must be more than 0")


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:\d{1,5})?$")


def _check_listeners(config: Config, filename: str, text: str) -> None:
    """Timeouts above 0 (aiohttp reads 0 as never); a token wherever others can connect."""
    for section in ("http", "admin"):
        for field in ("keepalive_timeout", "header_timeout"):
            if getattr(getattr(config, section), field) <= 0:
                key = (section, field)
                raise ConfigError(
                    f"{where(filename, text, key)}{section}.{field}: must be more than 0"
                )
    admin = config.admin
    for index, host in enumerate(admin.hosts):
        if not _HOST.match(host):
            key = ("admin", "hosts")
            raise ConfigError(
                f"{where(filename, text, key)}admin.hosts[{index}]: expected a host name or "
                f'address, optionally with ":port" (an IPv6 address in brackets), got {host!r}'
            )
    if admin.token is None and not admin.listen.loopback:
        key = ("admin", "listen")
        raise ConfigError(
            f"{where(filename, text, key)}admin.listen: {admin.listen} is reachable from other "
            'machines, so admin.token is required: add token = "env:NAME" to [admin] and set '
            "NAME to a long random value (openssl rand -hex 32)"
        )
    if admin.token is not None and not admin.token.strip():
        key = ("admin", "token")
        raise ConfigError(f"{where(filename, text, key)}admin.token: is empty")


_PATH_IN_MESSAGE = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def describe(
    exc: msgspec.ValidationError,
    prefix: tuple[str, ...],
    filename: str,
    text: str,
    reference: str = "the commented daemon.toml",
    kind: Any = None,
) -> str:
    """`reference` is where the operator can look up every key of this kind of file;
    `kind`, the type converted to, lets a key with a fixed set of values list them."""
    message = str(exc)
    match = _PATH_IN_MESSAGE.search(message)
    key = prefix
    if match is None:
        return f"{where(filename, text, key)}{dotted(key) or '(top level)'}: {message}"
    key += tuple(part for part in re.split(r"\.|\[|\]", match.group("path")) if part)
    problem = message[: match.start()]
    if problem.startswith("Object contains unknown field"):
        field = problem.split("`")[1]
        key = (*key, field)
        problem = f"unknown key (check the spelling; see {reference} for every key)"
    elif key[:1] == ("sources",) and key[-1] == "type":
        problem = f"{problem}; a source's type must be one of: http"
    elif key[:1] == ("destinations",) and len(key) == 3 and key[-1] == "type":
        problem = f"{problem}; a destination's type must be one of: {', '.join(DESTINATION_TYPES)}"
    elif kind is not None and (choices := _choices(kind, key[len(prefix) :])):
        problem = f"{problem}; expected one of {', '.join(json.dumps(c) for c in choices)}"
    return f"{where(filename, text, key)}{dotted(key)}: {problem}"


def _choices(kind: Any, path: tuple[str, ...]) -> list[Any]:
    """The values allowed at `path` in `kind` when it is a Literal (in every member of
    a union that has that key, as `mode` in each destination type), in the order
    declared, else []."""
    found: list[Any] = []

    def walk(hint: Any, rest: tuple[str, ...]) -> None:
        origin, args = get_origin(hint), get_args(hint)
        if origin in (Union, UnionType):
            for member in args:
                walk(member, rest)
        elif origin is Annotated:
            walk(args[0], rest)
        elif not rest:
            if origin is Literal:
                found.extend(value for value in args if value not in found)
        elif isinstance(hint, type) and issubclass(hint, msgspec.Struct):
            for field in msgspec.structs.fields(hint):
                if field.encode_name == rest[0]:
                    walk(field.type, rest[1:])
        elif origin is dict:
            walk(args[1], rest[1:])
        elif origin is list and rest[0].isdigit():
            walk(args[0], rest[1:])

    walk(kind, path)
    return found


def dotted(key: tuple[str, ...]) -> str:
    """A key as people write it: identity.external_ids[0].kind."""
    return "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in key).lstrip(".")


def where(filename: str, text: str, key: tuple[str, ...]) -> str:
    line = _line_of(text, key)
    return f"{filename}:{line}: " if line else f"{filename}: "


def _line_of(text: str, key: tuple[str, ...]) -> int | None:
    """Best-effort line of a dotted key: its `name =` line inside the right [table].

    tomllib keeps no positions, so this walks the text. It understands the common
    shapes ([a.b] tables, [[a.b]] arrays of tables, whose entries are keyed by their
    index, `name = ` lines, dotted keys); for anything else it returns the table
    header's line, or None, and the message still names the key.
    """
    if not key:
        return None
    table: tuple[str, ...] = ()
    header_line: int | None = None
    header_depth = 0
    entries: dict[tuple[str, ...], int] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if line.startswith("["):
            array = line.startswith("[[")
            table = tuple(p.strip().strip('"') for p in line.strip("[]").split("."))
            if array:
                entries[table] = entries.get(table, -1) + 1
                table = (*table, str(entries[table]))
            if key[: len(table)] == table and len(table) > header_depth:
                header_line, header_depth = number, len(table)
            continue
        name, eq, _ = line.partition("=")
        if not eq or line.startswith("#"):
            continue
        full = (*table, *(p.strip().strip('"') for p in name.split(".")))
        if full == key:
            return number
    return header_line
