"""daemon.toml: the whole file, assembled from each component's settings, loaded with
errors that name the file, the line, the key and the problem (actors/settings.py).

Sources and destinations are named tables whose `type` picks the kind: every kind
registered (actors/delivery/kinds.py) is accepted, and nothing here lists them.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar, Union

import msgspec

from actors.delivery.filter import Filter, FilterError
from actors.delivery.kinds import DestinationSettings
from actors.delivery.kinds import kinds as destination_kinds
from actors.http_settings import Connections
from actors.http_settings import HttpSection as HttpSection
from actors.identity.settings import BUILTIN_ID_KINDS, IdentitySection
from actors.scoring.settings import ScoringSection
from actors.settings import ConfigError as ConfigError
from actors.settings import Duration as Duration
from actors.settings import ListenAddress as ListenAddress
from actors.settings import Positive, dec_hook, describe, read_text, where
from actors.source_kinds import SourceSettings
from actors.source_kinds import kinds as source_kinds

_T = TypeVar("_T")

DEFAULT_CONFIG_NAME = "daemon.toml"
"""Looked up in the working directory when no --config is given."""
EMBEDDED_DEFAULT = "<embedded default>"


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
    (storage/log.py: DEDUP_WINDOW); memory grows with it, ~9 bytes an event."""
    retain_events: Duration | None = None
    """Events received longer ago than this, and applied by every consumer, are trimmed
    from the log (storage/sqlite_retention.py); unset, the log keeps everything."""

    def __post_init__(self) -> None:
        if not self.dedup_window > 0:
            raise ValueError("dedup_window must be more than 0")
        if self.retain_events is not None and self.retain_events < self.dedup_window:
            raise ValueError("retain_events must be at least dedup_window")


class AdminSection(Connections, forbid_unknown_fields=True, frozen=True, kw_only=True):
    listen: ListenAddress = ListenAddress("127.0.0.1:8320")
    hosts: list[str] = []
    """Host header values accepted besides the listen address ("name" or "name:port")."""
    token: str | None = None
    """Bearer token for every endpoint but /healthz and /readyz; required beyond loopback."""


Source = SourceSettings
"""A source's settings, of whichever kind (each a subclass)."""
Destination = DestinationSettings
"""A destination's settings, of whichever kind (each a subclass)."""


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


def parse(text: str, filename: str, environ: dict[str, str] | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{filename}: not valid TOML: {exc}") from None
    raw = _resolve_env(raw, (), filename, text, os.environ if environ is None else environ)
    raw_sources = raw.pop("sources", {})
    raw_destinations = raw.pop("destinations", {})
    config = _convert(raw, Config, (), filename, text)
    sources, destinations = source_kinds(), destination_kinds()
    config = msgspec.structs.replace(
        config,
        sources=_named(
            raw_sources,
            "sources",
            Union[tuple(sources.values())],  # noqa: UP007 (built at run time)
            tuple(sources),
            filename,
            text,
        ),
        destinations=_named(
            raw_destinations,
            "destinations",
            Union[tuple(destinations.values())],  # noqa: UP007 (built at run time)
            tuple(destinations),
            filename,
            text,
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
        raise ConfigError(describe(exc, key, filename, text, kind=kind, tagged=_tagged())) from None


def _tagged() -> dict[str, tuple[str, ...]]:
    """The named sections whose `type` picks a kind, and the types each takes."""
    return {"sources": tuple(source_kinds()), "destinations": tuple(destination_kinds())}


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
    for kind in dict.fromkeys(type(source) for source in config.sources.values()):
        named = {n: s for n, s in config.sources.items() if type(s) is kind}
        for problem in kind.check(named):
            key: tuple[str, ...] = ("sources", problem.source, *problem.key)
            raise ConfigError(f"{where(filename, text, key)}{'.'.join(key)}: {problem.message}")
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
        for field in destination.URL_FIELDS:
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
