"""Scoring rows: numba kernels, per-entity features with bounded state, the detectors and the one flag rule."""
