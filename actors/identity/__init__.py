"""The identity merger: one profile per person across devices, sources and ids."""
