"""Source kinds, one module each; each registers itself (actors/source_kinds.py)."""
