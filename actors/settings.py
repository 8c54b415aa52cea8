"""What every component's settings are made of, and the errors an operator reads.

Settings files (daemon.toml, a scoring model) are edited by hand at 2 a.m.; a message
like "Expected `int`, got `str`" without a location costs the night. Every error says
which file, which line (when it can be found), which dotted key, and what was
expected. Components declare their settings with these types; daemon/config.py
assembles them into the whole file.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

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


class ConfigError(Exception):
    """A settings problem phrased for the operator: file, line, key, what was expected."""


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


_UNKNOWN = "Object contains unknown field"
_PATH_IN_MESSAGE = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def describe(
    exc: msgspec.ValidationError,
    prefix: tuple[str, ...],
    filename: str,
    text: str,
    reference: str = "the commented daemon.toml",
    kind: Any = None,
    tagged: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """`reference` is where the operator can look up every key of this kind of file;
    `kind`, the type converted to, lets a key with a fixed set of values list them;
    `tagged`, a section of named tables whose `type` picks their kind (sources,
    destinations), the types it takes."""
    message = str(exc)
    match = _PATH_IN_MESSAGE.search(message)
    key = prefix
    if match is None and not message.startswith(_UNKNOWN):
        return f"{where(filename, text, key)}{dotted(key) or '(top level)'}: {message}"
    if match is not None:  # else the table itself (a source or destination) has it
        key += tuple(part for part in re.split(r"\.|\[|\]", match.group("path")) if part)
    problem = message if match is None else message[: match.start()]
    if problem.startswith(_UNKNOWN):
        field = problem.split("`")[1]
        key = (*key, field)
        problem = f"unknown key (check the spelling; see {reference} for every key)"
    elif tagged and key[:1] and key[0] in tagged and len(key) == 3 and key[-1] == "type":
        what = key[0].removesuffix("s")
        problem = f"{problem}; a {what}'s type must be one of: {', '.join(tagged[key[0]])}"
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
