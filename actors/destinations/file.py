"""The `file` destination: each profile's payload as a line of a JSONL or CSV file.

Files. Records go to a part file, `{name}-{begun}-{counter}.{format}.part`, in the
configured directory. Rotation fsyncs it and renames it to the same name without
`.part` (then fsyncs the directory), so a reader never sees a partial file under a
final name, and the final name is known as soon as the part file exists (which is
what lets `open` find a rotated file again after a crash). `begun` is the UTC time of
the file's first record (20261123T154501Z) and `counter` grows by one per file, so
final names sort in the order the records were written (unless the clock goes back).
A file rotates once it holds `rotate_bytes` or its first record is `rotate_interval`
old; that is checked at the start of each send and on each `tick`, so a quiet
destination still closes its file. A clean stop (`finish`) rotates it too, so a
stopped daemon leaves no part file behind.
A part file is only ever created to hold records, so an empty file never appears.

Lines. Both formats carry the same fields, in this order: profile, user_id, email,
anonymous_id (each null, or empty in CSV, when the profile has none), staged_at (when
the profile's payload was staged, ISO 8601 UTC to the millisecond,
"2026-11-23T15:45:01.123Z") and traits (the mk_* scores under this destination's
names). JSONL: one JSON object per line. CSV (RFC 4180, UTF-8, CRLF): a header row at
the top of every file, and traits as one JSON object in one column, because the
mapped names differ from profile to profile and a file's columns cannot. A spreadsheet
opening the CSV file would run a cell beginning with =, +, -, @, tab or carriage return
as a formula, so such a cell gets a single quote in front (OWASP's advice against CSV
injection): only the ids can begin so (staged_at begins with a digit, traits with "{"),
and such an id reads back with the quote.

Exactly once across crashes. `state()` is "part file name:length" after the last
write, and the actor records it in the transaction that records those sends' outcome.
The argument assumes two things of the actor (actors/delivery/actor.py): `tick` never
runs between a send and the settlement recording it, and a round whose outcome was not
recorded is followed by a crash or by `close` and `open(recorded state)` before the
next send. A round is one send here (this sender never raises Refused, the one thing
that makes the actor send again before settling), so a file only ever rotates holding
exactly recorded content (at the start of a send, or on a tick between rounds), and
`open(recorded state)`:

- truncates the recorded part file to the recorded length: what lies beyond was
  written by sends whose outcome was not recorded, and those records are due again;
- deletes every other part file: none is recorded, so its records are due again too;
- if the recorded part file is gone, it was rotated since (by a tick after the last
  settlement, at the start of a later send, or by `finish`, which the actor calls only
  once every send is recorded), so its final file holds exactly the recorded content.

Records due again are then written once more: nothing lost, nothing doubled.

Writes are fsynced before `send` returns, and a failed write is cut back to the length
before it (again before the next write or rotation, should that fail too), so a file
only ever grows by whole sends.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread
import msgspec
import structlog

from actors.delivery.kinds import DestinationSettings, RateLimit, register
from actors.delivery.payload import Payload, decode, iso
from actors.delivery.sender import RecordError, Sender, Unavailable
from actors.settings import Duration, Positive
from storage.outbox import OutboxRow


@register
class FileDestination(DestinationSettings, tag="file", tag_field="type", kw_only=True, frozen=True):
    """CSV or JSONL files; a file appears under its final name only when complete."""

    ADDRESS = ("path",)
    LEGACY_ADDRESS = True

    path: str
    """A directory; created if missing."""
    format: Literal["jsonl", "csv"] = "jsonl"
    rotate_bytes: Positive = 64 * 1024 * 1024
    rotate_interval: Duration = Duration(3600)
    rate: RateLimit = RateLimit(requests=100, per=Duration(1))

    def sender(self, name: str) -> Sender:
        return FileSender(name, self)


log = structlog.get_logger(__name__)

CSV_HEADER = ("profile", "user_id", "email", "anonymous_id", "staged_at", "traits")
_STAMP = "%Y%m%dT%H%M%SZ"
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


class _JsonLine(msgspec.Struct):
    profile: str
    user_id: str | None
    email: str | None
    anonymous_id: str | None
    staged_at: str
    traits: dict[str, Any]


_encode_json = msgspec.json.Encoder().encode


@dataclass
class _Part:
    """The part file records are appended to, open for writing."""

    name: str
    begun: float
    fd: int
    length: int


def _csv_row(fields: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(fields)
    return buffer.getvalue().encode()


def _cell(value: str | None) -> str:
    """An id as a CSV cell that no spreadsheet runs as a formula."""
    if value is None:
        return ""
    return "'" + value if value.startswith(_FORMULA) else value


def _reason(action: str, path: Path, exc: OSError) -> str:
    return f"cannot {action} {path}: {exc.strerror or exc}"


class FileSender(Sender):
    serial = True
    max_batch = 1000

    def __init__(
        self, name: str, config: FileDestination, clock: Callable[[], float] = time.time
    ) -> None:
        self._name = name
        self._directory = Path(config.path)
        self._format = config.format
        self._rotate_bytes = config.rotate_bytes
        self._rotate_interval = config.rotate_interval
        self._clock = clock
        self._files = re.compile(
            re.escape(name)
            + r"-(?P<begun>\d{8}T\d{6}Z)-(?P<counter>\d{6,})"
            + r"\.(?P<format>jsonl|csv)(?P<part>\.part)?"
        )
        self._part: _Part | None = None
        self._state: tuple[str, int] | None = None
        self._next_counter = 1
        self._lock = anyio.Lock()
        """`tick` runs beside `send`; the file has one end."""

    async def open(self, state: str | None) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(self._open, state)

    async def send(self, rows: Sequence[OutboxRow]) -> list[RecordError | None]:
        async with self._lock:
            return await anyio.to_thread.run_sync(self._send, rows)

    async def tick(self) -> None:
        async with self._lock:
            try:
                await anyio.to_thread.run_sync(self._rotate_if_due)
            except Unavailable as exc:
                # The next send tries again, and reports the failure for its records.
                log.warning("cannot rotate file", destination=self._name, error=exc.reason)

    def state(self) -> str | None:
        return None if self._state is None else f"{self._state[0]}:{self._state[1]}"

    async def finish(self) -> None:
        """Publish the part file on a clean stop, so that a stopped daemon leaves no
        file hidden as a part. Every send is recorded by now, so the file holds
        exactly recorded content, as at a rotation."""
        async with self._lock:
            try:
                await anyio.to_thread.run_sync(self._finish)
            except Unavailable as exc:
                # Left a part file: the next start continues it.
                log.warning("cannot finish file", destination=self._name, error=exc.reason)

    def writing(self) -> str | None:
        part = self._part
        return None if part is None else str((self._directory / part.name).absolute())

    async def close(self) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(self._close)

    # --- In a worker thread ---------------------------------------------------------

    def _open(self, state: str | None) -> None:
        self._close()
        self._state = None
        if state is not None:
            name, _, length = state.rpartition(":")
            match = self._files.fullmatch(name)
            if match is None or not match["part"] or not length.isdigit():
                raise ValueError(f"not a state of file destination {self._name}: {state!r}")
            self._state = (name, int(length))
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            names = os.listdir(self._directory)
        except OSError as exc:
            raise Unavailable(_reason("open directory", self._directory, exc)) from exc
        highest = 0
        for name in names:
            match = self._files.fullmatch(name)
            if match is None:
                continue
            highest = max(highest, int(match["counter"]))
            if match["part"] and (self._state is None or name != self._state[0]):
                self._delete(name)
        self._next_counter = highest + 1
        if self._state is not None and self._state[0] in names:
            try:
                self._resume(*self._state)
            except BaseException:
                self._close()
                raise
        try:
            self._sync_directory()
        except OSError as exc:
            raise Unavailable(_reason("sync directory", self._directory, exc)) from exc

    def _resume(self, name: str, length: int) -> None:
        """Continue the recorded part file from its recorded length."""
        path = self._directory / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise Unavailable(_reason("open", path, exc)) from exc
        match = self._files.fullmatch(name)
        assert match is not None
        begun = datetime.strptime(match["begun"], _STAMP).replace(tzinfo=UTC).timestamp()
        self._part = part = _Part(name, begun, fd, length)
        try:
            size = os.fstat(fd).st_size
            if size > length:
                os.ftruncate(fd, length)
                os.fsync(fd)
        except OSError as exc:
            raise Unavailable(_reason("truncate", path, exc)) from exc
        if size < length:
            # Cut by something other than leadsync; the missing lines cannot be rebuilt,
            # and extending the file would fill it with zeros.
            log.warning(
                "file shorter than recorded; records in it were lost",
                destination=self._name,
                path=str(path),
                recorded=length,
                size=size,
            )
            part.length = size
        if part.length == 0:
            # Nothing to continue from (a CSV file would lack its header).
            self._close()
            self._delete(name)
        elif match["format"] != self._format:
            # The configured format changed: finish this file, start the next anew.
            self._rotate(part)

    def _send(self, rows: Sequence[OutboxRow]) -> list[RecordError | None]:
        outcome: list[RecordError | None] = []
        lines: list[bytes] = []
        for row in rows:
            try:
                payload = decode(row.payload)
            except msgspec.DecodeError as exc:
                outcome.append(RecordError(f"stored payload cannot be read: {exc}", False))
                continue
            outcome.append(None)
            lines.append(self._render(payload, row.staged_at))
        # Before writing: the part file holds only recorded sends at this point.
        self._rotate_if_due()
        if lines:
            self._append(b"".join(lines))
        return outcome

    def _render(self, payload: Payload, staged_at: float) -> bytes:
        if self._format == "jsonl":
            line = _JsonLine(
                payload.profile,
                payload.user_id,
                payload.email,
                payload.anonymous_id,
                iso(staged_at),
                payload.traits,
            )
            return _encode_json(line) + b"\n"
        return _csv_row(
            (
                _cell(payload.profile),
                _cell(payload.user_id),
                _cell(payload.email),
                _cell(payload.anonymous_id),
                iso(staged_at),
                _encode_json(payload.traits).decode(),
            )
        )

    def _append(self, data: bytes) -> None:
        part = self._part
        created = part is None
        if part is None:
            part = self._new_part()
            if self._format == "csv":
                data = _csv_row(CSV_HEADER) + data
        path = self._directory / part.name
        try:
            os.ftruncate(part.fd, part.length)  # what a failed write may have left
            view = memoryview(data)
            offset = part.length
            while view:
                written = os.pwrite(part.fd, view, offset)
                view, offset = view[written:], offset + written
            os.fsync(part.fd)
            if created:
                self._sync_directory()
        except OSError as exc:
            self._undo(part, created)
            raise Unavailable(_reason("write", path, exc)) from exc
        part.length += len(data)
        self._part = part
        self._state = (part.name, part.length)

    def _new_part(self) -> _Part:
        begun = int(self._clock())
        stamp = datetime.fromtimestamp(begun, UTC).strftime(_STAMP)
        name = f"{self._name}-{stamp}-{self._next_counter:06d}.{self._format}.part"
        self._next_counter += 1
        path = self._directory / name
        try:
            self._directory.mkdir(parents=True, exist_ok=True)  # if removed since `open`
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise Unavailable(_reason("create", path, exc)) from exc
        return _Part(name, begun, fd, 0)

    def _undo(self, part: _Part, created: bool) -> None:
        """Leave the file as it was before the failed write. Should this fail too, the
        next write or rotation cuts the file back first."""
        try:
            if created:
                os.close(part.fd)
                os.unlink(self._directory / part.name)
            else:
                os.ftruncate(part.fd, part.length)
                os.fsync(part.fd)
        except OSError as exc:
            log.warning("cannot undo a failed write", destination=self._name, error=exc.strerror)

    def _finish(self) -> None:
        if self._part is not None and self._part.length > 0:
            self._rotate(self._part)

    def _rotate_if_due(self) -> None:
        part = self._part
        if part is None or part.length == 0:
            return
        if part.length >= self._rotate_bytes or self._clock() - part.begun >= self._rotate_interval:
            self._rotate(part)

    def _rotate(self, part: _Part) -> None:
        """Publish the part file under its final name."""
        path = self._directory / part.name
        final = path.with_name(part.name.removesuffix(".part"))
        try:
            os.ftruncate(part.fd, part.length)  # what a failed write may have left
            os.fsync(part.fd)
            os.rename(path, final)
            self._part = None
            os.close(part.fd)
            self._sync_directory()
        except OSError as exc:
            raise Unavailable(f"cannot rename {path} to {final.name}: {exc.strerror}") from exc

    def _delete(self, name: str) -> None:
        try:
            os.unlink(self._directory / name)
        except OSError as exc:
            raise Unavailable(_reason("delete", self._directory / name, exc)) from exc

    def _sync_directory(self) -> None:
        """Make renames, creations and deletions in the directory durable."""
        fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _close(self) -> None:
        if self._part is not None:
            os.close(self._part.fd)
            self._part = None
