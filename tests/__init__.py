"""Tests start real daemons on loopback ports with temporary data directories."""
