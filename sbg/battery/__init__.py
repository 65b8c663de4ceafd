"""Battery-specific analyses over the enriched stream: per-cell health.

Contract: every object here updates on enriched pandas chunks in arrival
order, keeps bounded state per entity (fixed-size arrays, grown only by new
entities), exposes it through ``state_dict()``/``load_state_dict()``, and
gives the same result however the rows were cut into chunks.
"""

from .health import COMPONENTS, HealthScore

__all__ = ["COMPONENTS", "HealthScore"]
