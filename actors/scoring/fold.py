"""Following the event log: each weighted event folded into its home identifier's
behavioural aggregate, with the log checkpoint in the same transaction (exact after a
crash, like every consumer); held events folded again when their retry is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import structlog

from actors.messages import Event
from actors.poison import HELD
from actors.scoring.likelihood import Intent, epoch
from actors.scoring.work import COMPONENT, ScoringWork
from storage.held import Held, Withdrawn
from storage.log import StoredEvent

log = structlog.get_logger(__name__)

FOLD_BATCH = 5_000
"""Log events folded per transaction."""
_decode_event = msgspec.json.Decoder(Event).decode
_decode_intent = msgspec.json.Decoder(Intent).decode
_encode = msgspec.json.Encoder().encode

_Weighed = tuple[tuple[str, str], float, str, float]
"""An event's home identifier (kind, value), its points, signal and time."""


class _GraphMoved(Exception):
    """The graph's generation moved while a fold was in hand (see `_fold`)."""


class Fold(ScoringWork):
    """`fold_events` and `retry_held`: the log into the aggregates."""

    def fold_events(self, up_to: int, limit: int = FOLD_BATCH) -> int:
        """Fold the next events (at most up to log sequence `up_to`); returns how many
        were read, 0 when caught up."""
        self.attempts.begin()
        generation = self.store.generation()
        after = self.store.checkpoint()
        events = self.store.read_events(after, min(limit, up_to - after))
        if not events:
            return 0
        weighed: list[_Weighed] = []
        for stored in events:
            key = str(stored.seq)
            item = self.attempts.run("event", key, self._weigh, stored, body=stored.body)
            if item is not None and item is not HELD:
                weighed.append(item)
        try:
            self._fold(weighed, checkpoint=events[-1].seq, generation=generation)
        except _GraphMoved:
            return 0  # read again next round, without what a forget erased
        return len(events)

    def retry_held(self, limit: int = FOLD_BATCH) -> int:
        """Fold again the held events whose retry was asked for (`leadsync held retry`),
        releasing those that fold now; returns how many were tried."""
        if self.held is None:
            return 0
        self.attempts.begin()
        if self.replaying():
            return 0  # the replay reads them from the log; a retry now would fold twice
        items = self.held.to_retry(COMPONENT, "event", limit)
        if not items:
            return 0
        weighed: list[_Weighed] = []
        released: list[Held] = []
        for item in items:
            stored = StoredEvent(int(item.key), "", item.body or b"")
            outcome = self.attempts.run("event", item.key, self._weigh, stored, body=item.body)
            if outcome is HELD:
                continue  # held again: its retry flag is cleared with the new error
            released.append(item)
            if outcome is not None:
                weighed.append(outcome)
        try:
            self._fold(weighed, release=released)
        except Withdrawn as exc:
            log.info("held events not folded: they changed meanwhile", error=str(exc))
            return 0
        log.info("held events folded again", tried=len(items), released=len(released))
        return len(items)

    def _weigh(self, stored: StoredEvent) -> _Weighed | None:
        """What one event adds to its home identifier's aggregate, if anything."""
        event = _decode_event(stored.body)
        weight = self.likelihood.weigh(event)
        if weight is None:
            return None
        identifiers = self.extractor.identifiers(event)
        at, received = epoch(event.timestamp), epoch(event.received_at)
        if not identifiers or at is None or received is None:
            return None
        home = identifiers[0]
        # A client clock years ahead (no sentAt to correct it by) must not park an
        # aggregate in the future, where it would outweigh every real event.
        return (home.kind, home.value), weight[0], weight[1], min(at, received)

    def _fold(
        self,
        weighed: list[_Weighed],
        checkpoint: int | None = None,
        release: Sequence[Held] = (),
        generation: int | None = None,
    ) -> None:
        """Add weighed events to their aggregates, and commit them with the checkpoint
        (or, for held events applied at last, with their release)."""
        half_life = self.likelihood.half_life
        stored_states = self.store.intents([key for key, *_ in weighed])
        states: dict[tuple[str, str], Intent] = {
            key: _decode_intent(state) for key, state in stored_states.items()
        }
        for key, points, signal, at in weighed:
            intent = states.get(key)
            if intent is None:
                intent = states[key] = Intent(at, {})
            intent.add(points, signal, at, half_life)
        # Only this scorer writes aggregates, so what was read above is still current.
        with self.transaction():
            if generation is not None and self.store.generation() != generation:
                # A forget (or a rebuild) committed since the events were read: what
                # was read may be erased, so nothing of it is written.
                raise _GraphMoved
            self.store.save_intents(
                {key: (intent.as_of, _encode(intent)) for key, intent in states.items()}
            )
            if checkpoint is not None:
                self.store.set_checkpoint(checkpoint)
            if release and self.held is not None:
                self.held.release(release)
