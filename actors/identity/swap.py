"""The rebuild's swap: the rebuilt graph put in place of the live one, and what the
rest of leadsync kept about the old one carried over, in one transaction.

The rules are here, the rows' moving is the storage's (storage/rebuild.py's
`GraphSwap`), so another backend implements set-based steps, not leadsync's rules.
"""

from __future__ import annotations

from actors.identity import isolate
from storage.errors import StorageRefused
from storage.graph import Change
from storage.rebuild import ProfileRows
from storage.session import Session
from storage.transaction import transaction

FOLLOW_THEIR_PROFILE = (ProfileRows.SCORES, ProfileRows.DELIVERY_STATES, ProfileRows.QUEUED)
"""What leadsync keeps of a person by profile row, carried over by profile id (the
same person, as far as the new rules go): the rebuild numbers the rows anew."""


def swap_in(db: Session, rebuilt: Session, checkpoint: int) -> None:
    """Replace `db`'s identity graph with `rebuilt`'s (a backend's scratch, which
    replayed the log to `checkpoint`; closed here) and set the checkpoint, in one
    transaction: readers see the old graph or the new one, never a mix. The caller
    holds the gate."""
    replayed = rebuilt.graph.checkpoint()
    if replayed != checkpoint:
        raise StorageRefused(
            f"the rebuild replayed to {replayed}, not {checkpoint}; nothing swapped"
        )
    with db.graph_swap(rebuilt) as swap, transaction(db):
        # Every profile id that ever resolved keeps resolving, and changes the scorer
        # has not taken yet are kept: both noted before the graph goes.
        swap.remember_profile_ids()
        swap.remember_changes()
        # Deletion requests belong to no profile: no profile's rows take them along.
        swap.set_deletion_requests_apart()
        swap.remember_by_uid(FOLLOW_THEIR_PROFILE)
        swap.replace_graph()
        # The events the merger holds are those the rebuild held.
        swap.replace_held(isolate.COMPONENT)
        # An id the new rules no longer produce redirects to wherever its oldest
        # identifier now lives, and the scorer hears it is gone, after the changes
        # the rebuild made and those it had not taken.
        swap.redirect_vanished_by_anchor()
        swap.restore_changes()
        swap.mark_vanished(Change.MERGED_AWAY)
        # Scores, delivery states and queued rows follow their profile id to its new
        # row. Those of an id that vanished go: the profile that took its identifiers
        # is rescored (the rebuild marked it changed) and queued afresh.
        swap.drop_vanished(FOLLOW_THEIR_PROFILE)
        swap.rekey_by_uid(FOLLOW_THEIR_PROFILE)
        db.graph.set_checkpoint(checkpoint)
        swap.new_generation()
