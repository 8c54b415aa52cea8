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

import structlog

from actors.scoring.model import Model, ModelError, example, load, parse
from storage.scores import ScoreStore
from storage.transaction import transaction

EXAMPLE_ORIGIN = "built-in example"
DEPLOYS_TRIED = 20
log = structlog.get_logger(__name__)


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
    with transaction(store, gate):
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
        return Outcome.DEPLOYED


def active(
    store: ScoreStore, gate: Callable[[], AbstractContextManager[None]] = nullcontext
) -> Model:
    """The model deployed last that this leadsync can read, or the shipped example if
    none ever was (deployed now, so that scores always name a version that is in the
    history)."""
    model = deployed(store)
    if model is None:
        model = example()
        deploy(store, model, EXAMPLE_ORIGIN, again=False, gate=gate)
    return model


def deployed(store: ScoreStore) -> Model | None:
    """The model deployed last that this leadsync can read, if any."""
    for entry in store.deploys(DEPLOYS_TRIED):
        found = store.model(entry.version)
        if found is None:
            continue
        try:
            return parse(found[1], f"<model {entry.version} as deployed>")
        except ModelError as exc:
            # From a newer leadsync, or edited by hand: an older deploy is better than
            # a scorer that crashes at every start and takes the daemon with it.
            log.error("deployed model cannot be used; trying the one before", error=str(exc))
    return None


def deploy_configured(
    store: ScoreStore,
    path: str,
    gate: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> tuple[Model, Outcome]:
    """The `[scoring] model` file, at start and on SIGHUP. Raises ModelError for a
    file that cannot be used; the running model then stays."""
    model = load(path)
    return model, deploy(store, model, path, again=False, gate=gate)
