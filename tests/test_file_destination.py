"""The file sender on real files: what a reader finds (lines, columns, complete files
under final names, in order), and that each record lands exactly once after a send
whose outcome was not recorded, whether the actor then crashed or went back to the
recorded state with `close` and `open`, and whether or not the file rotated meanwhile.

A "crash" here is a sender abandoned with its last state unrecorded, and a new one
opened with the state recorded before.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from actors.delivery.payload import Payload, encode
from actors.delivery.sender import RecordError, Unavailable
from actors.destinations.file import CSV_HEADER, FileDestination, FileSender
from actors.settings import Duration
from storage.outbox import OutboxRow

START = 1_800_000_000.0
"""2027-01-15T08:00:00Z."""
FORMATS = pytest.mark.parametrize("fmt", ["jsonl", "csv"])


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def row(i: int, score: int | None = None, **ids: Any) -> OutboxRow:
    traits = {"fit": i if score is None else score, "segment": "good", "signals": ["a", "b"]}
    payload, digest = encode(Payload(profile=f"p{i}", traits=traits, **ids))
    return OutboxRow(
        id=i, uid=f"p{i}", payload=payload, hash=digest, staged_at=START + i, attempts=0
    )


def rows(first: int, last: int) -> list[OutboxRow]:
    return [row(i, email=f"p{i}@example.com") for i in range(first, last + 1)]


def profiles(first: int, last: int) -> list[str]:
    return [f"p{i}" for i in range(first, last + 1)]


def read(path: Path) -> list[dict[str, Any]]:
    """A file's records, as a reader parses them (which fails on a partial line)."""
    text = path.read_bytes().decode()  # not read_text, which would turn a CR in a cell to LF
    if path.name.endswith((".jsonl", ".jsonl.part")):
        assert text.endswith("\n")
        return [json.loads(line) for line in text.splitlines()]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    assert tuple(reader.fieldnames or ()) == CSV_HEADER
    return list(reader)


def finals(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.endswith(".part"))


def parts(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".part"))


def delivered(directory: Path) -> list[str]:
    """Every published record's profile, file after file in name order."""
    return [record["profile"] for path in finals(directory) for record in read(path)]


MakeSender = Callable[..., Awaitable[FileSender]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_sender(tmp_path: Path, clock: Clock) -> AsyncIterator[MakeSender]:
    opened: list[FileSender] = []

    async def make(state: str | None = None, **options: Any) -> FileSender:
        config = FileDestination(path=str(tmp_path / "out"), **options)
        sender = FileSender("leads", config, clock)
        await sender.open(state)
        opened.append(sender)
        return sender

    yield make
    for sender in opened:
        await sender.close()


async def publish_all(sender: FileSender, clock: Clock, directory: Path) -> None:
    """What a reader will find once the last file's time is up."""
    clock.now += 10 * 86400
    await sender.tick()
    assert not parts(directory)


async def send(sender: FileSender, batch: Sequence[OutboxRow]) -> None:
    assert await sender.send(batch) == [None] * len(batch)


async def test_jsonl_lines_hold_the_payload_and_staged_at(
    tmp_path: Path, make_sender: MakeSender
) -> None:
    sender = await make_sender()
    assert (tmp_path / "out").is_dir()
    assert sender.state() is None
    await send(sender, [row(1, email="ann@example.com", user_id="u1"), row(2, anonymous_id="a2")])

    [part] = parts(tmp_path / "out")
    assert part.name == "leads-20270115T080000Z-000001.jsonl.part"
    assert read(part) == [
        {
            "profile": "p1",
            "user_id": "u1",
            "email": "ann@example.com",
            "anonymous_id": None,
            "staged_at": "2027-01-15T08:00:01.000Z",
            "traits": {"fit": 1, "segment": "good", "signals": ["a", "b"]},
        },
        {
            "profile": "p2",
            "user_id": None,
            "email": None,
            "anonymous_id": "a2",
            "staged_at": "2027-01-15T08:00:02.000Z",
            "traits": {"fit": 2, "segment": "good", "signals": ["a", "b"]},
        },
    ]
    assert sender.state() == f"{part.name}:{part.stat().st_size}"
    assert not finals(tmp_path / "out")


async def test_csv_has_one_header_and_traits_as_json(
    tmp_path: Path, make_sender: MakeSender
) -> None:
    sender = await make_sender(format="csv")
    await send(sender, [row(1, email="ann@example.com", user_id="u1")])
    await send(sender, [row(2, anonymous_id='a, "2"')])

    [part] = parts(tmp_path / "out")
    assert part.name.endswith(".csv.part")
    records = read(part)
    assert [{k: v for k, v in r.items() if k != "traits"} for r in records] == [
        {
            "profile": "p1",
            "user_id": "u1",
            "email": "ann@example.com",
            "anonymous_id": "",
            "staged_at": "2027-01-15T08:00:01.000Z",
        },
        {
            "profile": "p2",
            "user_id": "",
            "email": "",
            "anonymous_id": 'a, "2"',
            "staged_at": "2027-01-15T08:00:02.000Z",
        },
    ]
    assert json.loads(records[1]["traits"]) == {"fit": 2, "segment": "good", "signals": ["a", "b"]}


async def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(
    tmp_path: Path, make_sender: MakeSender
) -> None:
    risky = ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"]
    batch = [row(i, user_id=v, email=v, anonymous_id=v) for i, v in enumerate(risky)]
    batch.append(row(9, user_id="a=1", email="'=x", anonymous_id="1-2"))
    sender = await make_sender(format="csv")
    await send(sender, batch)

    records = read(parts(tmp_path / "out")[0])
    quoted = [[r["user_id"], r["email"], r["anonymous_id"]] for r in records]
    assert quoted == [["'" + value] * 3 for value in risky] + [["a=1", "'=x", "1-2"]]
    assert all(r["traits"].startswith("{") for r in records)


async def test_jsonl_ids_are_written_as_they_are(tmp_path: Path, make_sender: MakeSender) -> None:
    sender = await make_sender()
    await send(sender, [row(1, user_id="=1+1", email="@x", anonymous_id="-1")])
    [record] = read(parts(tmp_path / "out")[0])
    assert [record["user_id"], record["email"], record["anonymous_id"]] == ["=1+1", "@x", "-1"]


@FORMATS
async def test_rotation_by_size_publishes_complete_files_in_order(
    tmp_path: Path, make_sender: MakeSender, clock: Clock, fmt: str
) -> None:
    sender = await make_sender(format=fmt, rotate_bytes=600)
    for first in range(1, 31, 3):
        await send(sender, rows(first, first + 2))
        clock.now += 1
    await publish_all(sender, clock, tmp_path / "out")

    files = finals(tmp_path / "out")
    assert len(files) >= 3
    assert all(re.fullmatch(rf"leads-\d{{8}}T\d{{6}}Z-\d{{6}}\.{fmt}", f.name) for f in files)
    # A file rotates once it has reached the limit (at the next send), not before.
    assert all(f.stat().st_size >= 600 for f in files[:-1])
    assert delivered(tmp_path / "out") == profiles(1, 30)


async def test_rotation_by_time_and_never_an_empty_file(
    tmp_path: Path, make_sender: MakeSender, clock: Clock
) -> None:
    out = tmp_path / "out"
    sender = await make_sender(rotate_interval=Duration(60))
    await sender.tick()
    assert not list(out.iterdir())

    await send(sender, rows(1, 2))
    clock.now += 59
    await sender.tick()
    assert not finals(out)
    clock.now += 1
    await sender.tick()
    assert [f.name for f in finals(out)] == ["leads-20270115T080000Z-000001.jsonl"]
    assert not parts(out)
    clock.now += 3600
    await sender.tick()
    assert len(finals(out)) == 1

    await send(sender, rows(3, 3))
    [part] = parts(out)
    assert part.name == "leads-20270115T090100Z-000002.jsonl.part"
    clock.now += 60
    await send(sender, rows(4, 5))  # the file's time is up: it rotates before this send
    assert [f.name for f in finals(out)] == [
        "leads-20270115T080000Z-000001.jsonl",
        "leads-20270115T090100Z-000002.jsonl",
    ]
    assert [r["profile"] for r in read(parts(out)[0])] == profiles(4, 5)
    await publish_all(sender, clock, tmp_path / "out")
    assert delivered(out) == profiles(1, 5)


@FORMATS
async def test_a_send_whose_outcome_was_not_recorded_is_not_doubled(
    tmp_path: Path, make_sender: MakeSender, clock: Clock, fmt: str
) -> None:
    first = await make_sender(format=fmt)
    await send(first, rows(1, 3))
    recorded = first.state()
    await send(first, rows(4, 6))
    # Crash: the second send's outcome never reached the database; its rows are due.

    second = await make_sender(recorded, format=fmt)
    assert second.state() == recorded
    [part] = parts(tmp_path / "out")
    assert f"{part.name}:{part.stat().st_size}" == recorded  # cut back, ready to publish
    await send(second, rows(4, 7))
    await publish_all(second, clock, tmp_path / "out")
    assert delivered(tmp_path / "out") == profiles(1, 7)


@FORMATS
@pytest.mark.parametrize("rotated_by", ["send", "tick"])
async def test_a_crash_after_rotation_before_its_state_was_recorded(
    tmp_path: Path, make_sender: MakeSender, clock: Clock, fmt: str, rotated_by: str
) -> None:
    out = tmp_path / "out"
    first = await make_sender(format=fmt, rotate_bytes=1)
    await send(first, rows(1, 3))
    recorded = first.state()
    if rotated_by == "tick":
        await first.tick()  # after the settlement that recorded the first send
    await send(first, rows(4, 6))  # starts a second file, rotating the first if need be
    assert [r["profile"] for r in read(parts(out)[0])] == profiles(4, 6)
    # Crash: the database still names the first file, which is now published.

    second = await make_sender(recorded, format=fmt, rotate_bytes=1)
    assert not parts(out)
    await send(second, rows(4, 6))
    await publish_all(second, clock, tmp_path / "out")
    assert delivered(out) == profiles(1, 6)
    assert [len(read(f)) for f in finals(out)] == [3, 3]


@FORMATS
@pytest.mark.parametrize("rotate_bytes", [1, 10_000])
async def test_close_and_open_go_back_to_the_recorded_state(
    tmp_path: Path, make_sender: MakeSender, clock: Clock, fmt: str, rotate_bytes: int
) -> None:
    """What the actor does when it could not record a round: same sender, no crash."""
    out = tmp_path / "out"
    sender = await make_sender(format=fmt, rotate_bytes=rotate_bytes)
    await send(sender, rows(1, 3))
    recorded = sender.state()
    recorded_lines = parts(out)[0].read_bytes()
    await send(sender, rows(4, 6))  # with rotate_bytes=1, publishes the first file first
    # Recording this round failed.

    await sender.close()
    await sender.open(recorded)
    assert sender.state() == recorded
    written = {path.name: path.read_bytes() for path in out.iterdir()}
    assert list(written.values()) == [recorded_lines]  # published or not, cut back
    await send(sender, rows(4, 8))
    await publish_all(sender, clock, out)
    assert delivered(out) == profiles(1, 8)


async def test_close_and_open_with_nothing_recorded_start_afresh(
    tmp_path: Path, make_sender: MakeSender
) -> None:
    sender = await make_sender()
    await send(sender, rows(1, 3))
    await sender.close()
    await sender.open(None)
    assert sender.state() is None
    assert not list((tmp_path / "out").iterdir())


def fail_writes_after(monkeypatch: pytest.MonkeyPatch, written: int) -> None:
    """The disk fills after `written` more bytes: a partial write, then ENOSPC."""
    real = os.pwrite
    left = [written]

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if left[0] == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = real(fd, bytes(data)[: left[0]], offset)
        left[0] -= count
        return count

    monkeypatch.setattr(os, "pwrite", pwrite)


@FORMATS
async def test_a_failed_write_leaves_the_file_as_it_was(
    tmp_path: Path, make_sender: MakeSender, clock: Clock, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    sender = await make_sender(format=fmt)
    await send(sender, rows(1, 2))
    [part] = parts(tmp_path / "out")
    before, state = part.read_bytes(), sender.state()

    fail_writes_after(monkeypatch, 40)
    with pytest.raises(Unavailable) as failure:
        await sender.send(rows(3, 5))
    assert failure.value.reason == f"cannot write {part}: No space left on device"
    assert part.read_bytes() == before
    assert sender.state() == state

    monkeypatch.undo()
    await send(sender, rows(3, 5))
    await publish_all(sender, clock, tmp_path / "out")
    assert delivered(tmp_path / "out") == profiles(1, 5)


async def test_a_rotation_after_a_failed_undo_publishes_only_whole_sends(
    tmp_path: Path, make_sender: MakeSender, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = await make_sender()
    await send(sender, rows(1, 2))
    [part] = parts(tmp_path / "out")
    before = part.read_bytes()

    real, calls = os.ftruncate, [0]

    def ftruncate(fd: int, length: int) -> None:
        calls[0] += 1
        if calls[0] > 1:  # the cut before the write succeeds, the undo after it fails
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd, length)

    fail_writes_after(monkeypatch, 40)
    monkeypatch.setattr(os, "ftruncate", ftruncate)
    with pytest.raises(Unavailable):
        await sender.send(rows(3, 5))
    assert len(part.read_bytes()) == len(before) + 40  # the undo failed too

    monkeypatch.undo()
    await publish_all(sender, clock, tmp_path / "out")
    assert [path.read_bytes() for path in finals(tmp_path / "out")] == [before]


async def test_a_failed_first_write_leaves_no_file(
    tmp_path: Path, make_sender: MakeSender, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = await make_sender(format="csv")
    fail_writes_after(monkeypatch, 10)
    with pytest.raises(Unavailable, match="No space left on device"):
        await sender.send(rows(1, 2))
    assert not list((tmp_path / "out").iterdir())
    assert sender.state() is None

    monkeypatch.undo()
    await send(sender, rows(1, 2))
    await publish_all(sender, clock, tmp_path / "out")
    assert delivered(tmp_path / "out") == profiles(1, 2)


async def test_a_failed_rotation_writes_nothing_and_is_tried_again(
    tmp_path: Path, make_sender: MakeSender, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = await make_sender(rotate_bytes=1)
    await send(sender, rows(1, 2))
    [part] = parts(tmp_path / "out")
    before = part.read_bytes()

    def rename(source: Any, target: Any) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(Unavailable, match=r"cannot rename .*000001\.jsonl\.part to .*: Permission"):
        await sender.send(rows(3, 4))
    await sender.tick()  # logged, not raised: the actor's housekeeping carries on
    assert parts(tmp_path / "out") == [part]
    assert part.read_bytes() == before

    monkeypatch.undo()
    await send(sender, rows(3, 4))
    await publish_all(sender, clock, tmp_path / "out")
    assert delivered(tmp_path / "out") == profiles(1, 4)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only directory")
async def test_a_read_only_directory_is_unavailable(
    tmp_path: Path, make_sender: MakeSender
) -> None:
    sender = await make_sender()
    (tmp_path / "out").chmod(0o500)
    try:
        with pytest.raises(Unavailable, match=r"cannot create .*: Permission denied"):
            await sender.send(rows(1, 1))
    finally:
        (tmp_path / "out").chmod(0o700)
    assert not list((tmp_path / "out").iterdir())


async def test_an_unreadable_payload_fails_alone(tmp_path: Path, make_sender: MakeSender) -> None:
    sender = await make_sender()
    broken = OutboxRow(id=9, uid="p9", payload=b"{", hash=1, staged_at=START, attempts=0)
    outcome = await sender.send([row(1), broken, row(2)])
    assert outcome[0] is None
    assert outcome[2] is None
    assert isinstance(outcome[1], RecordError)
    assert not outcome[1].retryable
    assert [r["profile"] for r in read(parts(tmp_path / "out")[0])] == ["p1", "p2"]


async def test_a_changed_format_finishes_the_old_file(
    tmp_path: Path, make_sender: MakeSender, clock: Clock
) -> None:
    first = await make_sender()
    await send(first, rows(1, 2))
    recorded = first.state()

    second = await make_sender(recorded, format="csv")
    assert [f.name for f in finals(tmp_path / "out")] == ["leads-20270115T080000Z-000001.jsonl"]
    clock.now += 1
    await send(second, rows(3, 4))
    await publish_all(second, clock, tmp_path / "out")
    assert delivered(tmp_path / "out") == profiles(1, 4)
    assert finals(tmp_path / "out")[1].name.endswith("-000002.csv")


async def test_a_state_of_something_else_is_refused(make_sender: MakeSender) -> None:
    with pytest.raises(ValueError, match="not a state of file destination leads"):
        await make_sender("other-20270115T080000Z-000001.jsonl.part:10")
