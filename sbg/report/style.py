"""How sbg looks, shared by the dashboard and the report: state and entity colours, sizes, byte counts."""

from __future__ import annotations

__all__ = ["STATE_COLORS", "ENTITY_COLORS", "LIVE_COLOR", "FLAG_SIZE", "fmt_bytes"]

STATE_COLORS = {
    "normal": "#16a34a",
    "info": "#0284c7",
    "warning": "#d97706",
    "critical": "#dc2626",
    "stale": "#9ca3af",
    "data quality": "#7c3aed",
}
#: Entity colours: blues, teals and greys, so no entity looks like a warning, a flag (red) or a
#: data-quality finding (violet).
ENTITY_COLORS = ["#2563eb", "#0d9488", "#0369a1", "#475569", "#0891b2", "#4f46e5", "#15803d", "#64748b",
                 "#1e40af", "#0f766e", "#155e75", "#334155"]
#: Live points of the baseline view: neutral, since red means flagged.
LIVE_COLOR = "#334155"
#: Marker size of flagged points and data-quality findings on the live curves: large enough to see.
FLAG_SIZE = 10


def fmt_bytes(n) -> str:
    """A byte count in decimal units, as sbg writes sizes everywhere (a MB is 1,000,000 bytes).

    >>> fmt_bytes(512), fmt_bytes(14_300_000), fmt_bytes(None)
    ('512 B', '14.3 MB', '–')
    """
    if n is None:
        return "–"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
