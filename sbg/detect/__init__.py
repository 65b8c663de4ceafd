"""Scoring rows: numba kernels, per-entity features with bounded state, the detectors and the one flag rule."""

# The forecast detector lives in its own module; importing it here registers it with the others.
from . import forecast  # noqa: F401
