"""Benchmarks that print figures next to the limits measured in the same run."""
