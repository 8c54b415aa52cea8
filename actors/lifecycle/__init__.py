"""Forgetting a person, and keeping them forgotten.

`forget` erases a person found by one identifier (storage/lifecycle.py does the
deleting): their profile and everything derived from it, and every event in the log
that carries one of their identifiers. It works on the files with the daemon stopped,
or inside the daemon, where it must not race anyone who writes, nor hold them long:

1. Outside every lock, the log is searched for events that mention the person's
   identifiers (the long part; ingestion and the pipeline carry on), then again for
   what was logged meanwhile, until a round finds nothing new; likewise the held
   events, quarantined messages, outbox and dead letters.
2. Then the main file's write gate is taken, ingestion held (`Suppressions.lock`: the
   log writer holds it from its filter to its commit, so no unfiltered event is in
   flight), and both files' write locks. The person is read again, and only what was
   added since step 1 is searched. Should they have an identifier never searched
   (the merger gave them one meanwhile), the locks are let go and step 1 runs for it
   (`LOCKED_TRIES`). Everything goes in one transaction per file, with the graph's
   generation bumped so that the merger's and the scorer's work in flight is redone.
3. Still holding ingestion, the identifiers join the daemon's suppression set: every
   later event of theirs is dropped at the log writer, counted, and answered 200.

An event is the person's if its home identifier (the first the merger extracts from
it, under which the merger records it) is one of theirs; see `search.Found`. A mere mention
in another person's properties is not, nor another user's event on a shared device.

The modules: identifiers.py (KIND:VALUE, and what a message carries), suppressions.py
(the filter at ingestion), search.py (whose events, profiles and strays), forget.py
(the locked step and the deletes).
"""
