"""`leadsync held list|retry|drop` on a database file, as an operator runs them with
the daemon stopped: what they show, what they change, and what they refuse. Each
subcommand once in a process of its own; its further variants in this one."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from storage.held import HeldItem
from storage.sqlite import SqliteStorage
from storage.sqlite_held import SqliteHeldStore
from storage.transaction import transaction
from tests.support.cli import leadsync, leadsync_here

ITEMS = [
    HeldItem(
        "identity", "event", "41", "KeyError: 'x' (in run, identity/graph.py:3)", 3, b'{"a":1}'
    ),
    HeldItem("scorer", "profile", "prf_a", "ZeroDivisionError: division by zero", 3),
    HeldItem("scorer", "account", "acme", "ValueError: " + "v" * 300, 3),
]


async def held_database(tmp_path: Path) -> Path:
    """A data dir whose database holds ITEMS, and a config that points at it."""
    data = tmp_path / "var"
    data.mkdir()
    storage = await SqliteStorage.open(data / "leadsync.db")
    await storage.close()
    with closing(sqlite3.connect(data / "leadsync.db", isolation_level=None)) as db:
        db.execute(
            "INSERT INTO profiles (uid, anchor_ts, anchor_kind, anchor_value, account_id, "
            "kinds, activity) VALUES ('prf_m', '2026', 'user_id', 'm', 'acme', x'7b7d', x'7b7d')"
        )
        store = SqliteHeldStore(db)
        with transaction(store):
            store.hold(ITEMS, 1_700_000_000.0)
    config = tmp_path / "daemon.toml"
    config.write_text(f'[daemon]\ndata_dir = "{data}"\n')
    return config


def rows(config: Path) -> list[tuple[str, str, str, int]]:
    data = config.parent / "var" / "leadsync.db"
    with closing(sqlite3.connect(data)) as db:
        return db.execute("SELECT component, kind, key, retry FROM held ORDER BY id").fetchall()


async def test_list_shows_each_item_newest_first_and_json_has_the_whole_error(
    tmp_path: Path,
) -> None:
    config = await held_database(tmp_path)
    table = leadsync("held", "list", "--config", str(config))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "component", "kind", "key", "tries", "held", "since", "error"]
    assert [line.split()[3] for line in lines[1:]] == ["acme", "prf_a", "41"]
    assert "v" * 300 not in table.stdout  # cut in the table
    listed = leadsync_here(
        "held", "list", "--json", "--component", "identity", "--config", str(config)
    )
    (item,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert item["body"] == {"a": 1}
    assert item["error"].startswith("KeyError")
    whole = leadsync_here(
        "held", "list", "--json", "--component", "scorer", "--config", str(config)
    )
    assert any("v" * 300 in line for line in whole.stdout.splitlines())
    assert (
        "(3 held; the newest 1 shown"
        in leadsync_here("held", "list", "--limit", "1", "--config", str(config)).stdout
    )


async def test_retry_requeues_profiles_and_accounts_and_flags_events(tmp_path: Path) -> None:
    config = await held_database(tmp_path)
    done = leadsync("held", "retry", "--all", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "2 profiles or accounts back on the scorer's to-do list" in done.stdout
    assert "1 event to be applied again" in done.stdout
    assert rows(config) == [("identity", "event", "41", 1)]
    with closing(sqlite3.connect(config.parent / "var" / "leadsync.db")) as db:
        queued = db.execute("SELECT uid FROM profile_changes ORDER BY id").fetchall()
    assert queued == [("prf_a",), ("prf_m",)]  # the account's member stands for it
    assert "(retry asked)" in leadsync_here("held", "list", "--config", str(config)).stdout


async def test_drop_forgets_only_what_is_named_and_refuses_to_guess(tmp_path: Path) -> None:
    config = await held_database(tmp_path)
    neither = leadsync_here("held", "drop", "--config", str(config))
    assert (neither.returncode, neither.stderr.strip()) == (
        64,
        "leadsync: held drop: name items by id, or say --all",
    )
    both = leadsync_here("held", "drop", "1", "--all", "--config", str(config))
    assert both.returncode == 64
    none = leadsync_here("held", "drop", "99", "--config", str(config))
    assert (none.returncode, none.stdout) == (1, "nothing held matches\n")
    assert (
        leadsync_here(
            "held", "drop", "1", "--component", "scorer", "--config", str(config)
        ).returncode
        == 1
    )
    dropped = leadsync("held", "drop", "--all", "--component", "scorer", "--config", str(config))
    assert dropped.stdout == "2 held items dropped\n"
    assert rows(config) == [("identity", "event", "41", 0)]


def test_a_missing_database_is_said_not_created(tmp_path: Path) -> None:
    config = tmp_path / "daemon.toml"
    config.write_text(f'[daemon]\ndata_dir = "{tmp_path / "nowhere"}"\n')
    result = leadsync("held", "list", "--config", str(config))
    assert result.returncode == 73
    assert "no database at" in result.stderr
    assert not (tmp_path / "nowhere").exists()
