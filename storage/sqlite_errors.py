"""SQLite's errors in the storage's own words (storage/errors.py), at the stores' edge.

Every public method of a class decorated with `@translated` raises StorageError and
its kinds instead of sqlite3's, the driver's error chained as the cause. The kind is
told by SQLite's result code first (Python 3.11 gives it on the exception), then by
the driver's class, which is what poison handling used to go by: an OperationalError
or a damaged file is the storage failing; an IntegrityError or a misuse is refused.
"""

from __future__ import annotations

import functools
import inspect
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
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
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    return call


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
