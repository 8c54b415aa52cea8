"""Making a model the active one, from the CLI, at start and on SIGHUP.

One version always means one model: a file whose version was deployed before with
other content is refused, so the version every score records can be trusted. The
model configured in daemon.toml is deployed once per version: editing it without
bumping the version, or a restart after `leadsync model deploy` installed another,
does not quietly swap models.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from actors.scoring.model import Model, ModelError, example, load, parse
from storage.base import ScoreStore

EXAMPLE_ORIGIN = "built-in example"


class Outcome(enum.Enum):
    DEPLOYED = "deployed"
    ALREADY_ACTIVE = "already active"
    DEPLOYED_BEFORE = "deployed before, not again"


def deploy(
    store: ScoreStore,
    model: Model,
    origin: str,
    *,
    again: bool,
    gate: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> Outcome:
    """Make `model` active. `again`: also if this version was active once before (a
    rollback); otherwise a version deploys at most once."""
    with gate():
        store.begin()
        try:
            known = store.model(model.version)
            if known is not None and known[0] != model.digest:
                raise ModelError(
                    f"{origin}: version {model.version!r} was deployed before with other "
                    "content; give the changed model a new version"
                )
            active = store.active_model()
            if active is not None and active[0] == model.version:
                return Outcome.ALREADY_ACTIVE
            if known is not None and not again:
                return Outcome.DEPLOYED_BEFORE
            store.deploy(model.version, model.digest, model.text, origin)
            store.commit()
            return Outcome.DEPLOYED
        finally:
            store.rollback()


def active(
    store: ScoreStore, gate: Callable[[], AbstractContextManager[None]] = nullcontext
) -> Model:
    """The model deployed last, or the shipped example if none ever was (deployed
    now, so that scores always name a version that is in the history)."""
    found = store.active_model()
    if found is None:
        model = example()
        deploy(store, model, EXAMPLE_ORIGIN, again=False, gate=gate)
        return model
    version, text = found
    return parse(text, f"<model {version} as deployed>")


def deploy_configured(
    store: ScoreStore,
    path: str,
    gate: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> tuple[Model, Outcome]:
    """The `[scoring] model` file, at start and on SIGHUP. Raises ModelError for a
    file that cannot be used; the running model then stays."""
    model = load(path)
    return model, deploy(store, model, path, again=False, gate=gate)
