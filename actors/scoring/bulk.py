"""Scoring in bulk outside the daemon: a CSV of leads (`leadsync score-csv`), and the
profiles in the database under a model not yet deployed (`leadsync model check`).

Both only read what they score and use the daemon's own FitScorer, so a lead scores
the same offline as it will once it arrives as an identify.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import itertools
import json
import os
import re
import secrets
import stat
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from actors.scoring.fit import FitScorer, Traits
from actors.scoring.model import FIT_SEGMENTS, Model
from storage.scores import ScoreStore

SCORE_COLUMNS = ("mk_customer_fit_score", "mk_customer_fit_segment", "mk_customer_fit_signals")
SIGNAL_SEPARATOR = "; "
PROGRESS_EVERY = 2_000
"""CSV records between progress reports: asking the file its position is a system call."""
PREVIEW_CHUNK = 5_000
"""Profiles read per query by `preview`, as in a batch run."""
HISTOGRAM_BUCKETS = 10
"""0-9, 10-19, ..., 90-100: a 100 counts in the last bucket."""
NO_MODEL = ""
"""A fit_model no stored score carries (versions are never empty), so that
profiles_after loads the traits of every profile."""

STDIO = "-"
"""As the input, standard input; as the output, standard output."""
DEFAULT_ENCODING = "utf-8"
"""Read as utf-8-sig (a byte order mark is dropped), written without one."""

_TRAIT_PATH = re.compile(r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$")
"""As model.TraitPath: a --map target must be a name a model can refer to."""

_Fill = tuple[int, bool, tuple[str, ...], str]
"""(column index, account trait?, parent objects, trait name)."""


class CannotRead(Exception):
    """The input cannot be used at all: missing, unreadable, or without a usable header."""


class UnknownColumn(Exception):
    """A mapping names a column the header does not have."""


class BadEncoding(Exception):
    """`--encoding` names no codec, or one the model's own texts cannot be written in."""


class NotAFile(Exception):
    """The output exists and is not a regular file: renaming over it would replace a
    device, a FIFO or a link to one (/dev/stdout) with a file."""


@dataclass
class CsvResult:
    scored: int = 0
    skipped: int = 0
    """Rows that could not be scored: reported through `on_skip`, left out of the output."""


def valid_trait(name: str) -> bool:
    return _TRAIT_PATH.match(name) is not None


def column_traits(header: list[str], model: Model, overrides: Mapping[str, str]) -> list[str]:
    """The trait each column fills: its override, else the header itself when the
    model reads a trait of exactly that name (jobTitle), else the header lower-cased
    with spaces and dashes as underscores ("Job Title" is job_title)."""
    unknown = [column for column in overrides if column not in header]
    if unknown:
        raise UnknownColumn(
            f"no column {', '.join(map(repr, unknown))} in the header "
            f"(the columns are {', '.join(map(repr, header))})"
        )
    read = traits_read(model)
    return [overrides.get(name) or (name if name in read else _normalized(name)) for name in header]


def traits_read(model: Model) -> set[str]:
    """Every trait path the model's rules and inputs look at."""
    spec = model.spec
    read = {path for paths in spec.inputs.values() for path in paths}
    read.update(rule.trait for rule in spec.fit.rules if rule.trait not in spec.inputs)
    return read


def input_name(source: Path) -> str:
    """How messages name the input: `-` is <stdin>."""
    return "<stdin>" if str(source) == STDIO else str(source)


def check_encoding(model: Model, encoding: str) -> None:
    """Raise BadEncoding unless `encoding` is a codec that can write the model's own
    texts (segments, signals) into the output beside the input's."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise BadEncoding(
            f"unknown encoding {encoding!r} (for instance utf-8, cp1252, latin-1)"
        ) from None
    for text in (*FIT_SEGMENTS, *(rule.signal for rule in model.spec.fit.rules)):
        try:
            text.encode(encoding)
        except UnicodeEncodeError:
            raise BadEncoding(
                f"the model's text {text!r} cannot be written in {encoding}; "
                "choose another encoding"
            ) from None


def score_csv(
    model: Model,
    source: Path,
    target: Path,
    overrides: Mapping[str, str],
    on_skip: Callable[[int, str], None],
    progress: Callable[[int, int], None] | None = None,
    *,
    encoding: str = DEFAULT_ENCODING,
    on_unread: Callable[[list[tuple[str, str]]], None] | None = None,
) -> CsvResult:
    """Score every row of `source` into `target` (`-` for stdin, stdout), streaming. A
    row that cannot be scored goes to `on_skip` with its line number and is left out.
    A file `target` appears whole or not at all: it is written beside itself, then
    renamed over; an existing one that is not a regular file raises NotAFile.

    Both are in `encoding`; lines end as the input's first line does (LF if it has
    none). `on_unread` gets the (column, trait) pairs the model does not read, before
    any row is scored. `progress(bytes_read, bytes_total)` is called every few
    thousand rows when the input is a regular file."""
    check_encoding(model, encoding)
    final = None if str(target) == STDIO else _regular(target)
    name = input_name(source)
    with _opened(source) as raw:
        regular = stat.S_ISREG(os.fstat(raw.fileno()).st_mode)
        total = os.fstat(raw.fileno()).st_size if regular else 0
        # surrogateescape keeps undecodable bytes as lone surrogates, so a row with
        # some is found and skipped instead of fatal.
        text = io.TextIOWrapper(
            raw, encoding=_reading(encoding), errors="surrogateescape", newline=""
        )
        lines = _lines(text, name)
        first = next(lines, "")
        reader = csv.reader(itertools.chain([first] if first else [], lines))
        header = _header(reader, name, encoding)
        traits = column_traits(header, model, overrides)
        rows = _RowScorer(model, header, traits, encoding)
        if on_unread and (unread := rows.unread(traits_read(model))):
            on_unread(unread)
        result = CsvResult()
        with _output(final, encoding) as out:
            writer = csv.writer(out, lineterminator=_ending(first))
            writer.writerow(rows.header)
            line, records = reader.line_num, 0
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    problem: str | None = str(exc)
                else:
                    problem = rows.problem(row) if row else None
                start, line, records = line + 1, reader.line_num, records + 1
                if problem is not None:
                    result.skipped += 1
                    on_skip(start, problem)
                elif row:
                    writer.writerow(rows.score(row))
                    result.scored += 1
                if progress and regular and records % PROGRESS_EVERY == 0:
                    progress(raw.tell(), total)
    if progress and regular:
        progress(total, total)
    return result


def _reading(encoding: str) -> str:
    """UTF-8 input may start with a byte order mark (Excel writes one): drop it."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _ending(first: str) -> str:
    for ending in ("\r\n", "\n", "\r"):
        if first.endswith(ending):
            return ending
    return "\n"


def _regular(target: Path) -> Path:
    """`target`, unless something other than a regular file is there: a rename would
    replace it, and a link is not followed either (/dev/stdout links on to whatever
    standard output is, a terminal or a shell's redirection)."""
    try:
        mode = target.lstat().st_mode
    except OSError:
        return target  # absent (created), or the write says why it cannot be
    if stat.S_ISLNK(mode):
        raise NotAFile(
            f"{target} is a symbolic link (to {os.readlink(target)}), not a regular file; "
            "score-csv would replace the link: name the file itself, or - for standard output"
        )
    if not stat.S_ISREG(mode):
        raise NotAFile(
            f"{target} is {_kind(mode)}, not a regular file; score-csv replaces its output "
            "whole: name a file, or - for standard output"
        )
    return target


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((kind for test, kind in kinds if test(mode)), "not a file")


@contextlib.contextmanager
def _opened(source: Path) -> Iterator[BinaryIO]:
    if str(source) == STDIO:
        yield sys.stdin.buffer
        return
    try:
        raw = source.open("rb")
    except OSError as exc:
        raise CannotRead(f"{source}: cannot read: {exc.strerror}") from None
    with raw:
        yield raw


@contextlib.contextmanager
def _output(final: Path | None, encoding: str) -> Iterator[io.TextIOWrapper]:
    """Standard output as it comes (None), or a temporary file beside `final`,
    synced and renamed over it once complete and removed if not."""
    if final is None:
        out = io.TextIOWrapper(sys.stdout.buffer, encoding=encoding, newline="")
        try:
            yield out
            out.flush()
        finally:
            out.detach()  # standard output stays open for the summary
        return
    temporary = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, "w", encoding=encoding, newline="") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _lines(text: io.TextIOWrapper, source: str) -> Iterator[str]:
    """The file's lines; a read that fails is the input's fault, not the output's."""
    try:
        yield from text
    except OSError as exc:
        raise CannotRead(f"{source}: read failed: {exc.strerror}") from None


def _header(reader: Iterator[list[str]], source: str, encoding: str) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise CannotRead(f"{source}: empty, no header row") from None
    except csv.Error as exc:
        raise CannotRead(f"{source}:1: header row: {exc}") from None
    if (bad := _undecoded(header)) is not None:
        raise CannotRead(
            f"{source}:1: the header row is not {_named(encoding)} (byte 0x{bad[1]:02x}); "
            "give the file's --encoding, or convert it"
        )
    return header


def _named(encoding: str) -> str:
    return "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding


class _RowScorer:
    def __init__(self, model: Model, header: list[str], traits: list[str], encoding: str) -> None:
        self._fit = FitScorer(model)
        self._header = header
        self._traits = traits
        self._encoding = _named(encoding)
        self._inputs = [f"mk_{name}" for name in model.spec.inputs]
        added = [*SCORE_COLUMNS, *self._inputs]
        # A file scored before carries the old scores: they are replaced, not repeated.
        self._keep = [index for index, name in enumerate(header) if name not in added]
        self.header = [*(header[index] for index in self._keep), *added]
        self._fills = _plan(traits)

    def unread(self, read: set[str]) -> list[tuple[str, str]]:
        """(column, trait) of the input columns whose trait the model does not read,
        or that another column's nested trait displaces."""
        filled = {index for index, *_ in self._fills}
        return [
            (self._header[index], self._traits[index])
            for index in self._keep
            if self._traits[index] not in read or index not in filled
        ]

    def problem(self, row: list[str]) -> str | None:
        """Why the row cannot be scored, if it cannot."""
        if len(row) != len(self._header):
            return f"{len(row)} fields where the header has {len(self._header)}"
        if (bad := _undecoded(row)) is not None:
            column, byte = bad
            return f"not {self._encoding} (byte 0x{byte:02x} in column {self._header[column]!r})"
        return None

    def score(self, row: list[str]) -> list[Any]:
        profile: dict[str, Any] = {}
        account: dict[str, Any] = {}
        for index, is_account, parents, name in self._fills:
            value = row[index]
            if not value:
                continue
            node = account if is_account else profile
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = value
        fit = self._fit.score(Traits(profile, account))
        kept: list[Any] = [row[index] for index in self._keep]
        kept += (fit.score, fit.segment, SIGNAL_SEPARATOR.join(fit.signals))
        kept += [_cell(fit.inputs.get(name)) for name in self._inputs]
        return kept


def _plan(traits: list[str]) -> list[_Fill]:
    """Where each column's value goes. `account.x` is the account's trait x; a dotted
    name builds objects. A column whose trait another column's dotted name nests under
    (company beside company.industry) is left out: both cannot be."""
    paths = []
    for index, trait in enumerate(traits):
        parts = tuple(trait.split("."))
        is_account = parts[0] == "account" and len(parts) > 1
        paths.append((index, is_account, parts[1:] if is_account else parts))
    nested = {(acc, parts[:n]) for _, acc, parts in paths for n in range(1, len(parts))}
    return [
        (index, acc, parts[:-1], parts[-1])
        for index, acc, parts in paths
        if (acc, parts) not in nested
    ]


def _undecoded(row: list[str]) -> tuple[int, int] | None:
    """(column, byte) of the first byte the encoding could not decode, if any: kept
    as a lone surrogate, which no text that decoded has."""
    for column, value in enumerate(row):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                return column, ord(value[exc.start]) - 0xDC00
    return None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _normalized(header: str) -> str:
    return header.strip().lower().replace(" ", "_").replace("-", "_")


@dataclass
class Distribution:
    """Profiles per fit segment and per band of ten points."""

    segments: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIT_SEGMENTS, 0))
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BUCKETS)

    def add(self, score: int, segment: str) -> None:
        self.segments[segment] += 1
        self.histogram[min(score * HISTOGRAM_BUCKETS // 100, HISTOGRAM_BUCKETS - 1)] += 1


@dataclass
class Preview:
    candidate: Distribution = field(default_factory=Distribution)
    active: Distribution = field(default_factory=Distribution)
    profiles: int = 0
    changed: int = 0
    """Profiles the candidate puts in another segment than the active model does."""


def preview(
    store: ScoreStore,
    candidate: Model,
    active: Model,
    progress: Callable[[int], None] | None = None,
) -> Preview:
    """The fit both models give every profile now, from its current traits (not from
    stored scores, which may be older than the traits or by an older model)."""
    new, old = FitScorer(candidate), FitScorer(active)
    result = Preview()
    after = 0
    while True:
        # One snapshot a chunk: the daemon may be merging profiles meanwhile.
        with store.snapshot():
            profiles = store.profiles_after(after, PREVIEW_CHUNK, NO_MODEL)
        if not profiles:
            break
        for profile in profiles:
            refit = profile.refit
            assert refit is not None, "no score's fit_model is NO_MODEL"
            traits = Traits(refit.traits or {}, refit.account_traits or {})
            will, was = new.score(traits), old.score(traits)
            result.candidate.add(will.score, will.segment)
            result.active.add(was.score, was.segment)
            result.changed += will.segment != was.segment
        result.profiles += len(profiles)
        after = profiles[-1].row
        if progress:
            progress(result.profiles)
    return result
