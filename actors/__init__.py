"""The actor runtime and the actors: sources, the log writer, and what follows."""

__version__ = "0.1.0"
"""leadsync's version (pyproject.toml reads it here): in User-Agents, /status, --version."""
