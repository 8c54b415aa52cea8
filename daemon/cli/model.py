"""`leadsync model check|deploy|history`: lead scoring models, straight from and into
the database, so they work with the daemon stopped too. A running daemon's scorer
looks for a new active model every second, so a deploy needs no daemon to be asked."""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from pathlib import Path

from actors.exit_codes import EXIT_DATAERR, EXIT_STORAGE
from daemon.backend import backend_for
from daemon.cli import offline
from daemon.cli.options import Commands, command
from daemon.cli.render import Bar, count, print_columns
from daemon.config import LoadedConfig
from storage.errors import StorageError


def add_commands(commands: Commands) -> None:
    model = commands.add_parser("model", help="check, deploy and list lead scoring models")
    model_commands = model.add_subparsers(dest="model_command", metavar="COMMAND")
    model_commands.required = True

    model_check = command(
        model_commands,
        "check",
        "validate a model file and compare the fit it would give the current profiles "
        "with the active model's",
    )
    model_check.add_argument("file", metavar="FILE", help="the model file (TOML)")
    model_check.set_defaults(handler=_model_check)
    model_deploy = command(
        model_commands,
        "deploy",
        "make a model file the active model (an older version too: a rollback); every "
        "profile is rescored in the next batch run",
    )
    model_deploy.add_argument("file", metavar="FILE", help="the model file (TOML)")
    model_deploy.set_defaults(handler=_model_deploy)
    history = command(
        model_commands, "history", "list the models deployed, newest (the active one) first"
    )
    history.add_argument("--limit", type=int, default=20, help="how many, newest first")
    history.set_defaults(handler=_model_history)


def _model_check(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """Validate; then, if there are profiles, what the model would make of them."""
    from actors.scoring import bulk
    from actors.scoring.deploy import deployed
    from actors.scoring.model import ModelError, example, load

    try:
        model = load(args.file)
    except ModelError as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_DATAERR
    spec = model.spec
    print(
        f"{args.file}: OK, model {model.version} ({len(spec.fit.rules)} fit rules, "
        f"{len(spec.likelihood.events)} event weights)"
    )
    database = offline.database(loaded)
    if not database.is_file():
        print(f"no database at {database} (data_dir from {loaded.path}): no profiles to score")
        return 0
    try:
        with closing(backend_for(loaded.config).session()) as session:
            store = session.scores
            active = deployed(store) or example()
            with Bar("scoring profiles", "profiles") as bar:
                preview = bulk.preview(store, model, active, bar.update)
    except StorageError as exc:
        print(f"leadsync: cannot read {database}: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    if not preview.profiles:
        print(f"no profiles in {database} yet: nothing to compare")
        return 0
    print(
        f"\nthe fit of {count(preview.profiles, 'profile')} in {database}, "
        "by the active model and by this file:\n"
    )
    now, then = f"{active.version} (active)", f"{model.version} (this file)"
    rows = [["fit segment", now, then]]
    rows += [
        [name, f"{preview.active.segments[name]:,}", f"{preview.candidate.segments[name]:,}"]
        for name in preview.active.segments
    ]
    rows.append(["", "", ""])
    rows.append(["score", now, then])
    for index, (was, will) in enumerate(
        zip(preview.active.histogram, preview.candidate.histogram, strict=True)
    ):
        low = index * 100 // bulk.HISTOGRAM_BUCKETS
        high = 100 if index == bulk.HISTOGRAM_BUCKETS - 1 else low + 9
        rows.append([f"{low}-{high}", f"{was:,}", f"{will:,}"])
    print_columns(rows)
    print(
        f"\n{preview.changed:,} of {count(preview.profiles, 'profile')} would change segment"
        if preview.changed
        else "\nno profile would change segment"
    )
    return 0


def _model_deploy(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """Straight into the database: the daemon's scorer looks for a new active model
    every second, so no daemon needs to be asked (or even running)."""
    from actors.scoring.deploy import Outcome, deploy
    from actors.scoring.model import ModelError, load

    try:
        model = load(args.file)
    except ModelError as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        return EXIT_DATAERR
    database = offline.database(loaded)
    if not database.is_file():
        print(
            f"leadsync: no database at {database} (data_dir from {loaded.path}); start the "
            "daemon once first, or name the file in daemon.toml ([scoring] model)",
            file=sys.stderr,
        )
        return EXIT_STORAGE
    try:
        # Durable: "deployed" on the terminal must survive a power cut.
        with closing(backend_for(loaded.config).session(durable=True)) as session:
            store = session.scores
            before = store.active_model()
            outcome = deploy(store, model, str(Path(args.file).resolve()), again=True)
    except ModelError as exc:
        print(f"leadsync: {exc}", file=sys.stderr)
        print("  nothing was deployed; the active model stays", file=sys.stderr)
        return EXIT_DATAERR
    except StorageError as exc:
        print(f"leadsync: cannot deploy into {database}: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    if outcome is Outcome.ALREADY_ACTIVE:
        print(f"model {model.version} is already the active model: nothing changed")
        return 0
    was = f"replacing {before[0]}" if before else "the first model deployed"
    print(f"{outcome.value} model {model.version} from {args.file} ({was})")
    print(
        "every profile is rescored with it in the next batch run "
        "(`leadsync scoring run` runs one now);"
    )
    print("a running daemon switches to it within a second")
    return 0


def _model_history(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from actors.scoring.model import example

    database = offline.database(loaded)
    deploys = []
    if database.is_file():
        try:
            with closing(backend_for(loaded.config).session()) as session:
                deploys = session.scores.deploys(args.limit)
        except StorageError as exc:
            print(f"leadsync: cannot read {database}: {exc}", file=sys.stderr)
            return EXIT_STORAGE
    if not deploys:
        print(
            f"no model deployed yet: the daemon deploys the built-in example "
            f"({example().version}) when it starts, unless [scoring] model names a file"
        )
        return 0
    rows = [["", "version", "deployed", "origin"]]
    rows += [
        ["active" if index == 0 else "", d.version, d.deployed_at, d.origin]
        for index, d in enumerate(deploys)
    ]
    print_columns(rows, numbers=False)
    return 0
