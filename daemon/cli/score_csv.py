"""`leadsync score-csv`: Customer Fit for a CSV of leads, offline, with a model file
and no daemon or config; streamed, with a progress bar on a terminal."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from actors.exit_codes import (
    EXIT_DATAERR,
    EXIT_FAILURE,
    EXIT_NOINPUT,
    EXIT_STORAGE,
    EXIT_USAGE,
)
from daemon.cli.options import Commands
from daemon.cli.render import Bar, count

SKIPS_SHOWN = 20
"""Unscorable CSV rows reported one by one; the rest are counted."""


def add_commands(commands: Commands) -> None:
    csv_help = "score a CSV of leads offline (Customer Fit only) with a model file"
    score_csv = commands.add_parser("score-csv", help=csv_help, description=csv_help)
    score_csv.add_argument("--model", metavar="FILE", required=True, help="the model file")
    score_csv.add_argument("input", metavar="IN.csv", help="leads, with a header row (- for stdin)")
    score_csv.add_argument(
        "output", metavar="OUT.csv", help="every input column, then the scores (- for stdout)"
    )
    score_csv.add_argument(
        "--encoding",
        default="utf-8",
        help="of the input and the output (default utf-8; a byte order mark is dropped)",
    )
    score_csv.add_argument(
        "--map",
        metavar="COLUMN=TRAIT",
        action="append",
        default=[],
        help="the trait a column fills (repeatable). Default: the header if the model "
        "reads that name, else the header lower-cased with spaces and dashes as "
        "underscores. company.industry builds a nested trait, account.x an account trait",
    )
    score_csv.set_defaults(handler=_score_csv, needs_config=False)


def _score_csv(args: argparse.Namespace) -> int:
    from actors.scoring import bulk
    from actors.scoring.model import ModelError, load

    overrides: dict[str, str] = {}
    for item in args.map:
        column, sep, trait = item.rpartition("=")
        if not sep or not column or not bulk.valid_trait(trait):
            print(
                f"leadsync: --map {item!r}: expected COLUMN=TRAIT, with a trait name like "
                "job_title, company.industry or account.employees",
                file=sys.stderr,
            )
            return EXIT_USAGE
        overrides[column] = trait
    try:
        model = load(args.model)
    except ModelError as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_DATAERR
    name = bulk.input_name(Path(args.input))
    bar = Bar(f"scoring {name}", "bytes")
    shown = 0

    def report(line: int, reason: str) -> None:
        nonlocal shown
        if shown < SKIPS_SHOWN:
            shown += 1
            bar.say(f"{name}:{line}: {reason}")

    def unread(columns: list[tuple[str, str]]) -> None:
        listed = ", ".join(f"{column!r} (as {trait})" for column, trait in columns)
        reads = ", ".join(sorted(bulk.traits_read(model)))
        bar.say(f"{name}: the model reads nothing from {listed}; copied, not scored")
        bar.say(f"{name}: --map COLUMN=TRAIT gives a column a trait it reads: {reads}")

    interrupted = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with bar:
            result = bulk.score_csv(
                model,
                Path(args.input),
                Path(args.output),
                overrides,
                report,
                bar.update_bytes,
                encoding=args.encoding,
                on_unread=unread,
            )
    except bulk.CannotRead as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_NOINPUT
    except (bulk.UnknownColumn, bulk.BadEncoding) as exc:
        flag = "--map" if isinstance(exc, bulk.UnknownColumn) else "--encoding"
        print(f"leadsync: {flag}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except bulk.NotAFile as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    except OSError as exc:
        print(f"leadsync: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return EXIT_STORAGE
    finally:
        signal.signal(signal.SIGTERM, interrupted)
    if result.skipped > SKIPS_SHOWN:
        print(
            f"{name}: {count(result.skipped - SKIPS_SHOWN, 'more row')} could not be scored",
            file=sys.stderr,
        )
    # With the scores on standard output, the summary must not land among them.
    summary = sys.stderr if args.output == bulk.STDIO else sys.stdout
    into = "<stdout>" if args.output == bulk.STDIO else args.output
    print(
        f"scored {count(result.scored, 'row')} into {into} with model {model.version}",
        file=summary,
    )
    if result.skipped:
        print(
            f"{count(result.skipped, 'row')} could not be scored and "
            f"{'is' if result.skipped == 1 else 'are'} not in {into}",
            file=summary,
        )
        return EXIT_FAILURE
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """`kill` then cleans up like Ctrl-C: no temporary file is left behind."""
    raise SystemExit(128 + signum)
