"""`leadsync sources`: each http source's name, kind and write key.

A key the daemon generated (a source with no `write_key` in daemon.toml) is logged
only once, when generated; this command reads it back from the database file itself,
so it shows it to whoever can read the database, with the daemon stopped too.
"""

from __future__ import annotations

import argparse
import json

from actors.exit_codes import EXIT_STORAGE
from actors.sources.http import GENERATED_KEY, HttpSource
from daemon.cli import offline
from daemon.cli.options import Commands, with_config
from daemon.cli.render import print_columns
from daemon.config import LoadedConfig
from storage.session import Session

NOT_YET = "(none yet: generated at the daemon's first start)"


def add_commands(commands: Commands) -> None:
    text = (
        "show each source's name, kind and write key (generated keys are read from the "
        "database: run it as a user who can read it)"
    )
    sources = with_config(commands.add_parser("sources", help=text, description=text))
    sources.add_argument("--json", action="store_true", help="print a JSON list")
    sources.set_defaults(handler=_sources)


def _generated_keys(session: Session, names: list[str]) -> dict[str, str]:
    found = {name: session.meta(GENERATED_KEY.format(name)) for name in names}
    return {name: key for name, key in found.items() if key is not None}


def _sources(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    sources = loaded.config.sources
    keyed = {name: s for name, s in sources.items() if isinstance(s, HttpSource)}
    generated = [name for name, source in keyed.items() if source.write_key is None]
    found: dict[str, str] = {}
    if generated and offline.database(loaded).is_file():
        read = offline.with_session(loaded, lambda session: _generated_keys(session, generated))
        if read is None:
            return EXIT_STORAGE
        found = read
    rows = [
        {
            "source": name,
            "kind": source.kind,
            "write_key": source.write_key or found.get(name),
            "origin": "daemon.toml" if source.write_key else "generated at first start",
        }
        for name, source in keyed.items()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no sources in {loaded.path}")
        return 0
    table = [["source", "kind", "write key", "origin"]]
    table += [
        [str(r["source"]), str(r["kind"]), r["write_key"] or NOT_YET, str(r["origin"])]
        for r in rows
    ]
    print_columns(table, numbers=False)
    return 0
