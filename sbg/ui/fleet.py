"""The health grid grouped by site and rack, for fleets with a hierarchy (:mod:`sbg.io.hierarchy`).

Rows are batteries, ordered by site, rack and name and labelled with their
group, so a rack's batteries sit together; a site filter narrows the grid to
one site. Colours are patched into the drawn grid, as the flat grid's are
(:func:`sbg.ui.plots.update_health`): only a change of the rows shown draws a
new one.

>>> from sbg.io.hierarchy import Hierarchy
>>> h = Hierarchy({"b1": ("S1", "R1"), "b2": ("S2", "R1")})
>>> health = pd.DataFrame({"entity": ["b2", "b1", "b9"], "signal": "v", "state": [1, 0, 0], "score": 0.1,
...                        "last_seen": pd.Timestamp("2024-01-01")})
>>> fleet_cells(health, h)[["row", "state_name"]].values.tolist()
[['S1 › R1 › b1', 'normal'], ['S2 › R1 › b2', 'warning'], ['(unassigned) › b9', 'normal']]
>>> fleet_cells(health, h, site="S2")["row"].tolist()
['R1 › b2']
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io.hierarchy import UNASSIGNED, Hierarchy
from ..report.style import STATE_COLORS
from .plots import CANVAS, STATE_LABELS, _hv, drawn_plots

__all__ = ["ALL_SITES", "fleet_cells", "fleet_element", "fleet_view", "update_fleet", "fleet_height", "ROW_PX"]

#: The site filter's choice for the whole fleet.
ALL_SITES = "All sites"
#: Pixel height of a grid row: roomy for a few batteries, still a readable label at hundreds.
ROW_PX = (24, 13)
#: Hover columns of a cell, beside its signal and row.
_HOVER = ["state_name", "entity_id", "site", "rack", "score", "last_seen"]


def fleet_cells(health: pd.DataFrame, hierarchy: Hierarchy, site: str = ALL_SITES) -> pd.DataFrame:
    """The grid's cells: ``health`` (:meth:`Monitor.health`) with each battery's group, filtered to ``site``.

    Ordered by site, rack, battery and signal; ``row`` is the label drawn,
    ``site › rack › battery`` (the site left out when one site is shown, the
    rack when the hierarchy has none).
    """
    if health is None or health.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ["signal", "row", *_HOVER, "entity", "state"]})
    entities = pd.unique(health["entity"].astype(str))
    places = hierarchy.frame(entities)
    if site != ALL_SITES:
        places = places[places["site"] == site]
    racks = "rack" in hierarchy.levels
    labels = []
    for s, r, e in zip(places["site"], places["rack"], places["entity"], strict=True):
        parts = [s] if site == ALL_SITES else []
        if racks and s != UNASSIGNED:
            parts.append(r)
        labels.append(" › ".join([*parts, e]))
    places = places.assign(row=pd.Series(labels, index=places.index, dtype=object),
                           order=np.arange(len(places)))
    cells = health.assign(entity=health["entity"].astype(str).astype(object)).merge(places, on="entity", how="inner")
    signal_order = {s: i for i, s in enumerate(pd.unique(health["signal"]))}
    cells = cells.assign(sig_order=cells["signal"].map(signal_order)).sort_values(["order", "sig_order"],
                                                                                    kind="stable")
    def text(values) -> pd.Series:  # object, not pandas 3's str: HoloViews reshapes these columns
        return pd.Series(np.asarray(values, dtype=object), dtype=object)

    return pd.DataFrame({
        "signal": text(cells["signal"].astype(str)), "row": text(cells["row"]),
        "state_name": text(cells["state"].map(STATE_LABELS)), "entity_id": text(cells["entity"]),
        "site": text(cells["site"]), "rack": text(cells["rack"]),
        "score": cells["score"].astype(float).round(3).to_numpy(),
        "last_seen": text(cells["last_seen"].astype(str)), "entity": text(cells["entity"]),
        "state": cells["state"].to_numpy(),
    })


def fleet_height(n_rows: int) -> int:
    """Pixel height of a grid of ``n_rows`` batteries: 24 px a row up to 20, then 13 (the page scrolls it)."""
    per_row = ROW_PX[0] if n_rows <= 20 else ROW_PX[1]
    return int(max(150, per_row * n_rows + 80))


def fleet_element(cells: pd.DataFrame, height: int | None = None):
    """Battery x signal grid, rows grouped by site and rack, coloured by state."""
    hv = _hv()
    n_rows = max(cells["row"].nunique(), 1) if len(cells) else 1
    height = height or fleet_height(n_rows)
    cmap = {name: STATE_COLORS[name] for name in ("normal", "warning", "critical", "stale", "data quality")}
    data = cells[["signal", "row", *_HOVER]] if len(cells) else pd.DataFrame(
        {c: pd.Series(dtype=object) for c in ["signal", "row", *_HOVER]})
    return hv.HeatMap(data, ["signal", "row"], _HOVER).opts(
        hover_tooltips=[("battery", "@entity_id"), ("site", "@site"), ("rack", "@rack"), ("signal", "@signal"),
                        ("state", "@state_name"), ("score", "@score"), ("last seen", "@last_seen")],
        cmap=cmap, color="state_name", responsive=True, height=height, tools=["hover"], xlabel="", ylabel="",
        line_color="white", line_width=2 if n_rows <= 40 else 1, colorbar=False, show_legend=False,
        invert_yaxis=True, xaxis="top", xrotation=40, framewise=True, toolbar=None,
        fontsize={"yticks": 8 if n_rows > 40 else 10, "xticks": 10}, backend_opts=CANVAS,
    )


def fleet_view(pipe, height: int):
    """The grouped grid fed by a ``Pipe`` of :func:`fleet_cells` frames."""
    hv = _hv()

    def callback(data):
        return fleet_element(data, height)

    return hv.DynamicMap(callback, streams=[pipe])


def update_fleet(pane, pipe, cells: pd.DataFrame) -> bool:
    """New states for the grouped grid ``pane`` shows from ``pipe``; ``True`` when patched in place.

    When the drawn grid has the same cells in the same order, the colours and
    hover values go straight into its Bokeh source (a HoloViews update walks
    the page's whole model graph); otherwise the grid is drawn anew.
    """
    from holoviews.core.util import is_nan

    hv = _hv()
    plots = drawn_plots(pane)
    sources = [plot.handles.get("cds") for plot in plots]
    if not plots or cells.empty or any(cds is None for cds in sources):
        pipe.event(data=cells)
        return False
    signals, rows = cells["signal"].tolist(), cells["row"].tolist()
    text = {}
    for k in ("state_name", "entity_id", "site", "rack", "score", "last_seen"):
        dim = hv.Dimension(k)
        text[k] = ["-" if is_nan(v) else dim.pprint_value(v) for v in cells[k].tolist()]
    updates = []
    for cds in sources:
        data = cds.data
        if list(data.get("signal", ())) != signals or list(data.get("row", ())) != rows:
            # HoloViews may hold the cells in another order: align by (signal, row) once, else redraw.
            keyed = pd.Series(range(len(cells)), index=pd.MultiIndex.from_arrays([signals, rows]))
            drawn = pd.MultiIndex.from_arrays([list(data.get("signal", ())), list(data.get("row", ()))])
            if len(drawn) != len(keyed) or not keyed.index.is_unique or not drawn.isin(keyed.index).all():
                pipe.event(data=cells)
                return False
            at = keyed.loc[drawn].to_numpy()
        else:
            at = None
        update = {}
        for k in ("zvalues", "color", *text):
            if k not in data:
                continue
            values = text["state_name" if k in ("zvalues", "color") else k]
            update[k] = values if at is None else [values[i] for i in at]
        updates.append(update)
    pipe.update(data=cells)
    for plot, cds, update in zip(plots, sources, updates, strict=True):
        cds.data.update(update)
        plot.push()  # sends the events over the comm in notebooks; no-op when served
    return True
