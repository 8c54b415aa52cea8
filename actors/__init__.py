"""The actor runtime and the actors: sources, the log writer, and what follows."""
