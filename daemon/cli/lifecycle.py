"""`leadsync forget|unforget|backup|restore`: the data lifecycle from the command line.

forget and unforget ask the running daemon (it holds ingestion and its writers while
it erases) and work on the files themselves only when nobody answers at the admin
address and no process has the database open, holding the data dir's lock meanwhile
(daemon/datadir.py). backup copies both files while the daemon runs; restore needs it
stopped, and holds the lock from its check to its end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from actors.exit_codes import (
    EXIT_DATAERR,
    EXIT_FAILURE,
    EXIT_STORAGE,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from daemon.backend import backend_for
from daemon.cli import endings, offline
from daemon.cli.admin_client import NobodyListens, admin_call
from daemon.cli.options import Commands, with_admin, with_config
from daemon.cli.render import count
from daemon.config import LoadedConfig
from daemon.datadir import DataDirLock
from storage.errors import StorageError

FORGET_TIMEOUT = 600.0
"""Seconds: forget reads the whole log for the person's events."""


def add_commands(commands: Commands) -> None:
    text = (
        "erase a person: their events, profile, identities, scores and queued payloads; "
        "their future events are dropped until `leadsync unforget`"
    )
    forget = with_config(commands.add_parser("forget", help=text, description=text))
    forget.add_argument("identifier", metavar="KIND:VALUE", help="email:ann@example.com, ...")
    with_admin(forget)
    forget.set_defaults(handler=_forget)

    text = "stop dropping the events of a person forgotten before (every identifier of theirs)"
    unforget = with_config(commands.add_parser("unforget", help=text, description=text))
    unforget.add_argument("identifier", metavar="KIND:VALUE")
    with_admin(unforget)
    unforget.set_defaults(handler=_unforget)

    text = "copy both database files into a directory, consistently, while the daemon runs"
    backup = with_config(commands.add_parser("backup", help=text, description=text))
    backup.add_argument("path", metavar="PATH", help="a new or empty directory")
    backup.set_defaults(handler=_backup)

    text = (
        "replace the data dir's database with a backup (the daemon must be stopped); "
        "with --finish or --abandon, end a restore that did not finish"
    )
    restore = with_config(commands.add_parser("restore", help=text, description=text))
    restore.add_argument(
        "path",
        metavar="PATH",
        nargs="?",
        help="a directory `leadsync backup` made (none: finish the restore left unfinished)",
    )
    ending = restore.add_mutually_exclusive_group()
    ending.add_argument(
        "--finish",
        action="store_true",
        help="complete an unfinished restore from the files it copied in (no backup needed)",
    )
    ending.add_argument(
        "--abandon",
        action="store_true",
        help="undo an unfinished restore: the files it replaced go back in place",
    )
    restore.set_defaults(handler=_restore)


def _identifier(args: argparse.Namespace, loaded: LoadedConfig) -> tuple[str, str] | None:
    from actors.lifecycle.identifiers import BadIdentifier, parse_identifier

    try:
        return parse_identifier(args.identifier, loaded.config.identity)
    except BadIdentifier as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return None


def _ask_daemon(
    args: argparse.Namespace, loaded: LoadedConfig, path: str, body: dict[str, str]
) -> tuple[int, Any] | int | None:
    """The daemon's answer; None if nobody listens (work on the files); an exit code if
    a daemon may be there but did not answer."""
    try:
        answer = admin_call(args, loaded, path, "POST", FORGET_TIMEOUT, quiet=True, body=body)
    except NobodyListens:
        return None
    return EXIT_UNAVAILABLE if answer is None else answer


def _database_here(loaded: LoadedConfig, role: str) -> tuple[Path, DataDirLock] | int:
    """The database, migrated, with the data dir's lock held (release it when done), if
    no process has it open; else the exit code, said why."""
    from storage.sqlite_backup import in_use

    here = offline.locked_database(loaded, role)
    if isinstance(here, int):
        return here
    database, lock = here
    try:
        if in_use(database):
            print(
                f"leadsync: {database} is open in another process, but no daemon answers at "
                "the admin address: is it running with another config (--admin URL)?",
                file=sys.stderr,
            )
            lock.release()
            return EXIT_STORAGE
        offline.migrate(loaded)
    except BaseException:
        lock.release()
        raise
    return database, lock


def _forget(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    identifier = _identifier(args, loaded)
    if identifier is None:
        return EXIT_USAGE
    kind, value = identifier
    endings.on_interrupt("the erase goes on in the daemon (its log says when it is done)")
    answer = _ask_daemon(args, loaded, "/v1/forget", {"identifier": f"{kind}:{value}"})
    if isinstance(answer, int):
        return answer
    if answer is not None:
        status, body = answer
        if status != 200:
            print(f"leadsync: {body.get('error', body)}", file=sys.stderr)
            return EXIT_TEMPFAIL if status == 409 else EXIT_STORAGE
        erased, where = body, "the running daemon"
    else:
        from actors.lifecycle.forget import forget_here
        from storage.errors import RebuildRunning
        from storage.lifecycle import PartlyErased

        here = _database_here(loaded, "forget")
        if isinstance(here, int):
            return here
        _, lock = here
        endings.on_interrupt("an erase under way is rolled back; run forget again")
        try:
            erased = msgspec.to_builtins(
                forget_here(backend_for(loaded.config), identifier, loaded.config)
            )
        except RebuildRunning as exc:
            print(f"leadsync: {exc}; forget after it", file=sys.stderr)
            return EXIT_TEMPFAIL
        except PartlyErased as exc:
            print(
                f"leadsync: forget failed, partly erased; run forget again: {exc}", file=sys.stderr
            )
            return EXIT_STORAGE
        except StorageError as exc:
            print(f"leadsync: forget failed, nothing was erased: {exc}", file=sys.stderr)
            return EXIT_STORAGE
        finally:
            lock.release()
        where = "the database (no daemon running)"
    _print_erased(f"{kind}:{value}", erased, where)
    return 0


def _print_erased(identifier: str, erased: dict[str, Any], where: str) -> None:
    if erased["profiles"]:
        print(f"forgot {identifier} in {where}:")
        print(
            f"  {count(erased['profiles'], 'profile')} with "
            f"{count(erased['identifiers'], 'identifier')}, "
            f"{count(erased['events'], 'event')} from the log, "
            f"{count(erased['intents'], 'aggregate')}, "
            f"{count(erased['queued'], 'queued payload')}"
        )
    else:
        print(f"no profile has {identifier} in {where}:")
        print(f"  {count(erased['events'], 'event')} carrying it erased from the log")
    if erased["held"] or erased["quarantined"] or erased["dead_letters"]:
        print(
            f"  also {erased['held']} held, {erased['quarantined']} quarantined, "
            f"{erased['dead_letters']} dead-lettered"
        )
    for name in erased["deletions"]:
        print(f"  a deletion request is queued for destination {name}")
    print(
        f"  {count(erased['suppressed'], 'identifier')} suppressed: their events are dropped "
        f"until `leadsync unforget {identifier}`"
    )
    print("  copies outside leadsync (destinations, backups) are not touched: see docs")


def _unforget(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    identifier = _identifier(args, loaded)
    if identifier is None:
        return EXIT_USAGE
    kind, value = identifier
    answer = _ask_daemon(args, loaded, "/v1/unforget", {"identifier": f"{kind}:{value}"})
    if isinstance(answer, int):
        return answer
    if answer is not None:
        status, body = answer
        if status == 404:
            print(f"nothing is suppressed for {kind}:{value}")
            return EXIT_FAILURE
        if status != 200:
            print(f"leadsync: {body.get('error', body)}", file=sys.stderr)
            return EXIT_STORAGE
        lifted = int(body["identifiers"])
    else:
        from actors.lifecycle.forget import unforget_here

        here = _database_here(loaded, "unforget")
        if isinstance(here, int):
            return here
        _, lock = here
        try:
            lifted = unforget_here(backend_for(loaded.config), identifier, loaded.config)
        except StorageError as exc:
            print(f"leadsync: unforget failed: {exc}", file=sys.stderr)
            return EXIT_STORAGE
        finally:
            lock.release()
        if not lifted:
            print(f"nothing is suppressed for {kind}:{value}")
            return EXIT_FAILURE
    print(f"{count(lifted, 'identifier')} no longer suppressed: new events are taken in again")
    return 0


def _backup(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from storage.sqlite_backup import BackupRaced, backup

    database = offline.existing_database(loaded)
    if database is None:
        return EXIT_STORAGE
    started = time.monotonic()
    try:
        made = backup(database, Path(args.path), loaded.config.storage.busy_timeout)
    except BackupRaced as exc:
        print(f"leadsync: backup failed: {exc}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except (OSError, StorageError) as exc:
        print(f"leadsync: backup failed: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    for path in made:
        print(f"{path} ({path.stat().st_size:,} bytes)")
    print(f"backed up in {time.monotonic() - started:.1f}s; `leadsync restore {args.path}`")
    return 0


def _restore(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from storage.sqlite_backup import (
        NotABackup,
        NoUnfinishedRestore,
        abandon_restore,
        finish_restore,
        in_use,
        restore,
        unfinished_restore,
    )

    database = offline.database(loaded)
    ending = args.finish or args.abandon or args.path is None
    if args.path is not None and (args.finish or args.abandon):
        print("leadsync: restore takes PATH, or --finish, or --abandon", file=sys.stderr)
        return EXIT_USAGE
    if args.path is None and unfinished_restore(database) is None:
        print(
            f"leadsync: no restore of {database} is unfinished; give the backup's PATH",
            file=sys.stderr,
        )
        return EXIT_FAILURE if args.finish or args.abandon else EXIT_USAGE
    # Held to the end: a daemon (re)started during the copy would take in events that
    # the restore then replaces, after acknowledging them.
    lock = offline.hold_data_dir(loaded, "restore", restoring=True)
    if isinstance(lock, int):
        return lock
    try:
        if in_use(database):
            print(
                f"leadsync: {database} is open (is the daemon running?); stop it, then restore",
                file=sys.stderr,
            )
            return EXIT_TEMPFAIL
        if args.abandon:
            abandoned = abandon_restore(database)
            print(
                f"abandoned the restore from {abandoned.source}: {database} and its event log "
                "are back as they were before it"
            )
            return 0
        if ending:
            finished = finish_restore(database)
            source, aside = finished.source, finished.aside
        else:
            source, aside = args.path, restore(Path(args.path), database)
    except NoUnfinishedRestore as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except NotABackup as exc:
        print(f"leadsync: not restored: {exc}", file=sys.stderr)
        return EXIT_DATAERR
    except (OSError, StorageError) as exc:
        print(f"leadsync: restore failed: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    finally:
        lock.release()
    print(f"restored {database} and its event log from {source}")
    if aside is not None and aside.is_dir() and any(aside.iterdir()):
        print(
            f"the files it replaced are in {aside}: `leadsync forget` does not reach them "
            "(nor backups); delete them once the restore is confirmed"
        )
    elif aside is not None and aside.is_dir():
        aside.rmdir()
    return 0
