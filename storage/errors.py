"""The errors every storage backend raises, whatever its driver's own are.

Consumers tell two things apart, and nothing more: the storage failed (busy, full,
gone, damaged: not the data's fault, try the whole round again later), or the
storage refused this write (a constraint, a misuse: our bug, or the item's data,
which poison handling sets aside). Each backend translates its driver's errors into
these at its stores' edge (SQLite's: storage/sqlite_errors.py).

    StorageError
    ├── StorageUnavailable      the storage failed; try again later
    │   ├── StorageBusy         locked by another writer for longer than the busy timeout
    │   ├── StorageFull         the disk (or the database's own limit) is full
    │   └── StorageCorrupt      the files are damaged or are not a database
    ├── StorageRefused          this statement was refused: a bug, or the item's data
    ├── SchemaTooNew            written by a newer leadsync (storage/migrations.py)
    └── LogBehind               the log ends before what consumers applied

    RebuildRunning              not a failure: another rebuild or forget holds the
                                database (409, exit 75), so no StorageError
"""

from __future__ import annotations


class StorageError(Exception):
    """Anything the storage raises."""


class StorageUnavailable(StorageError):
    """The storage could not do it right now; nothing was committed."""


class StorageBusy(StorageUnavailable):
    """Another writer held the lock for longer than the busy timeout."""


class StorageFull(StorageUnavailable):
    """No room to write: the disk, or a size limit of the database."""


class StorageCorrupt(StorageUnavailable):
    """The files are damaged, or are not a leadsync database."""


class StorageRefused(StorageError):
    """The storage refused this statement (a constraint, a value it cannot hold): our
    bug, or the data of the item being written."""


class SchemaTooNew(StorageError):
    """The file was written by a newer leadsync; running older code on it could corrupt it."""


class LogBehind(StorageError):
    """The event log ends before what consumers have applied: the two files come from
    different moments (a restore of one, a deleted log). Consumers would skip new events
    that reuse the old sequence numbers, so nothing starts."""


class RebuildRunning(Exception):
    """Another rebuild (or forget) of this database is under way; one at a time. Not a
    StorageError: a handler of those would report it as the storage failing."""
