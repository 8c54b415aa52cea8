"""`leadsync check-config`: validate daemon.toml (and the model file it names) and
say what it sets up, so an edit can be checked before a restart."""

from __future__ import annotations

import argparse
import sys

from actors.destinations.file import FileDestination
from actors.exit_codes import EXIT_CONFIG
from actors.sources.http import HttpSource
from daemon.cli.options import Commands, command
from daemon.cli.render import duration
from daemon.config import LoadedConfig


def add_commands(commands: Commands) -> None:
    check = command(commands, "check-config", "validate the config and say what it sets up")
    check.set_defaults(handler=_check_config)


def _check_config(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    if config.scoring.model is None:
        scoring = "the model deployed last (leadsync model deploy), else the built-in example"
    else:
        from actors.scoring.model import ModelError
        from actors.scoring.model import load as load_model

        try:
            model = load_model(config.scoring.model)
        except ModelError as exc:
            print(f"leadsync: {exc}", file=sys.stderr)
            print(
                "leadsync: `leadsync run` would log this, keep the model deployed last and "
                "score with it; with none ever deployed, it would not start",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        scoring = f"model {config.scoring.model} (version {model.version})"
    print(f"{loaded.path}: OK")
    print(f"  data_dir   {config.daemon.data_dir}")
    print(f"  ingest API {config.http.listen}")
    token = " (bearer token required)" if config.admin.token is not None else ""
    print(f"  admin API  {config.admin.listen}{token}")
    kinds = ["user_id", "email", *(x.kind for x in config.identity.external_ids), "anonymous_id"]
    limits = ", ".join(f"{kind} {config.identity.limit(kind) or 'no cap'}" for kind in kinds)
    print(f"  identity   at most {limits} a profile")
    for name, source in config.sources.items():
        key = ""
        if isinstance(source, HttpSource):
            key = ", write key " + ("set" if source.write_key else "generated on first start")
        print(f"  source     {name} (type {source.type}, kind {source.kind}{key})")
    print(f"  scoring    {scoring}")
    for name, destination in config.destinations.items():
        limit = destination.rate
        daily = f", {limit.daily:,} a day" if limit.daily else ""
        files = ""
        if isinstance(destination, FileDestination):
            files = (
                f", files in {destination.path}, a new one every "
                f"{duration(destination.rotate_interval)} or "
                f"{destination.rotate_bytes / 2**20:g} MiB"
            )
        print(
            f"  destination {name} (type {destination.kind}, mode {destination.mode}, "
            f"at most {limit.requests} calls per {limit.per:g}s{daily}{files})"
        )
    return 0
