"""SQLite's errors in the storage's own words (storage/errors.py), at the stores' edge.

Every public method of a class decorated with `@translated` raises StorageError and
its kinds instead of sqlite3's, the driver's error chained as the cause; so does what
such a method returns to run later (an iterator, a context manager). The kind is
told by SQLite's result code first (Python 3.11 gives it on the exception), then by
the driver's class, which is what poison handling used to go by: an OperationalError
or a damaged file is the storage failing; an IntegrityError or a misuse is refused.
"""

from __future__ import annotations

import functools
import inspect
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, ContextDecorator
from typing import Any, TypeVar, cast

from storage.errors import (
    StorageBusy,
    StorageCorrupt,
    StorageError,
    StorageFull,
    StorageRefused,
    StorageUnavailable,
)

_C = TypeVar("_C", bound=type)
_F = TypeVar("_F", bound=Callable[..., Any])

_BY_CODE: dict[int, type[StorageError]] = {
    sqlite3.SQLITE_BUSY: StorageBusy,
    sqlite3.SQLITE_LOCKED: StorageBusy,
    sqlite3.SQLITE_FULL: StorageFull,
    sqlite3.SQLITE_CORRUPT: StorageCorrupt,
    sqlite3.SQLITE_NOTADB: StorageCorrupt,
    sqlite3.SQLITE_CONSTRAINT: StorageRefused,
    sqlite3.SQLITE_TOOBIG: StorageRefused,
    sqlite3.SQLITE_MISMATCH: StorageRefused,
    sqlite3.SQLITE_RANGE: StorageRefused,
    sqlite3.SQLITE_MISUSE: StorageRefused,
}


def kind_of(exc: sqlite3.Error) -> type[StorageError]:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _BY_CODE:
        return _BY_CODE[code & 0xFF]
    if isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError):
        return StorageUnavailable
    if type(exc) is sqlite3.DatabaseError:  # "database disk image is malformed", no code
        return StorageCorrupt
    return StorageRefused  # IntegrityError, ProgrammingError, InterfaceError, DataError


def translate(exc: sqlite3.Error) -> StorageError:
    """`exc` as the storage's own error, with the same text."""
    error = kind_of(exc)(str(exc))
    error.__cause__ = exc
    return error


def _function(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            result = method(*args, **kwargs)
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        return _lazy(result)

    return call


_PLAIN = frozenset({list, dict, tuple, set, int, float, str, bytes, bool, type(None)})


def _lazy(result: Any) -> Any:
    """What a method hands back to run later (rows read as they are iterated, a
    transaction opened on entry) translates what it raises then, too."""
    if type(result) in _PLAIN:  # most calls: no look through the ABCs
        return result
    if isinstance(result, Iterator):
        return _iterate(result)
    # Made by @contextmanager (a Path is a context manager too, until Python 3.13).
    if isinstance(result, ContextDecorator) and isinstance(result, AbstractContextManager):
        return _Context(result)
    return result


def _iterate(rows: Iterator[Any]) -> Iterator[Any]:
    try:
        return (yield from rows)
    except sqlite3.Error as exc:
        raise translate(exc) from exc


class _Context(AbstractContextManager[Any]):
    def __init__(self, inner: AbstractContextManager[Any]) -> None:
        self._inner = inner

    def __enter__(self) -> Any:
        try:
            return self._inner.__enter__()
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    def __exit__(self, *raised: Any) -> bool | None:
        try:
            return self._inner.__exit__(*raised)
        except sqlite3.Error as exc:
            raise translate(exc) from exc


def _generator(method: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            return (yield from method(*args, **kwargs))
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    return call


def _coroutine(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    return call


def _async_generator(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        try:
            async for item in method(*args, **kwargs):
                yield item
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    return call


def _wrapped(method: Any) -> Any:
    if inspect.isasyncgenfunction(method):
        return _async_generator(method)
    if inspect.iscoroutinefunction(method):
        return _coroutine(method)
    if inspect.isgeneratorfunction(method):
        return _generator(method)
    return _function(method)


def translated(cls: _C) -> _C:
    """Wrap the public methods `cls` defines (plain, class and static methods, and
    context-manager entry and exit) so that they raise the storage's errors. Inherited
    methods are their own class's business: decorate that class too."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_") and name not in ("__enter__", "__exit__"):
            continue
        if isinstance(member, classmethod | staticmethod):
            setattr(cls, name, type(member)(_wrapped(member.__func__)))
        elif inspect.isfunction(member):
            setattr(cls, name, _wrapped(member))
    return cls


def translating(function: _F) -> _F:
    """`translated` for a module-level function."""
    return cast(_F, _wrapped(function))
