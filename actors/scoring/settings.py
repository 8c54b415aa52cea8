"""[scoring]: which model scores profiles, and how often the batch run goes."""

from __future__ import annotations

import msgspec

from actors.settings import Duration


class ScoringSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    model: str | None = None
    """A model file, deployed at start and on SIGHUP when its version is new. None:
    the model deployed last (`leadsync model deploy`), else the shipped example."""
    batch_interval: Duration = Duration(4 * 3600)
    """How often Likelihood to Buy is recomputed for every profile."""
