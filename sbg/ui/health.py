"""The fleet at a glance: the health grid (entity by signal, coloured by state), the battery health
scores (a table sortable by health, each row opening on its components) and activity per minute.

With a hierarchy (``Monitor.hierarchy``: sites and racks) the grid groups its
rows by site and rack, a site filter narrows grid and table to one site,
and a roll-up table gives each rack's worst state and lowest health
(:mod:`sbg.ui.fleet`, :func:`sbg.io.hierarchy.rollup`).
"""

from __future__ import annotations

import time

import pandas as pd
import panel as pn
import param

from ..report.style import STATE_COLORS
from .fleet import ALL_SITES, fleet_cells, fleet_height, fleet_view, update_fleet
from .plots import (
    activity_view,
    blank_health,
    health_height,
    health_view,
    update_activity,
    update_health,
)
from .session import Session, served
from .style import CSS, HTML, title

__all__ = ["HealthGrid", "HEALTH_COLUMNS", "health_rows", "rollup_rows"]

#: The battery-health table's columns: the total, then each component (sbg.battery.health.COMPONENTS).
HEALTH_COLUMNS = ["entity", "health", "capacity", "resistance", "thermal", "anomalies", "data_quality", "soh",
                  "resistance_growth"]


def health_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """The battery-health table as shown: scores to one decimal, SOH and growth in percent, worst first.

    >>> health_rows(pd.DataFrame({"entity": ["a", "b"], "health": [90.04, 50.0], "capacity": [1.0, 2.0],
    ...     "resistance": 1.0, "thermal": 1.0, "anomalies": 1.0, "data_quality": 1.0, "soh": 0.9,
    ...     "resistance_growth": 0.1}))[["entity", "health", "soh"]].values.tolist()
    [['b', 50.0, 90.0], ['a', 90.0, 90.0]]
    """
    if scores is None or scores.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "entity" else float) for c in HEALTH_COLUMNS})
    table = scores[HEALTH_COLUMNS].copy()
    table["entity"] = pd.Series(table["entity"].astype(str).to_numpy(dtype=object), dtype=object)
    table[["soh", "resistance_growth"]] = table[["soh", "resistance_growth"]] * 100.0
    table[HEALTH_COLUMNS[1:]] = table[HEALTH_COLUMNS[1:]].astype(float).round(1)
    return table.sort_values("health", na_position="last", kind="stable").reset_index(drop=True)

#: The roll-up table's columns as shown.
#: The counts per state are in ``/api/status`` and the report; the panel keeps what fits its column.
ROLLUP_SHOWN = {"site": "site", "rack": "rack", "entities": "n", "state": "worst", "lowest_health": "health",
                "lowest_health_entity": "weakest"}


def rollup_rows(groups: pd.DataFrame | None, site: str = ALL_SITES) -> pd.DataFrame:
    """The roll-up table as shown: a row per site and rack (of ``site``), health to one decimal.

    >>> from sbg.io.hierarchy import Hierarchy, rollup
    >>> g = rollup(pd.Series({"a": "warning", "b": "normal"}), pd.Series({"a": 71.26}),
    ...            Hierarchy({"a": ("S1", "R1"), "b": ("S2", "R1")}))
    >>> rollup_rows(g, "S1")[["site", "worst", "health", "weakest"]].values.tolist()
    [['S1', 'warning', 71.3, 'a']]
    """
    if groups is None or groups.empty:
        return pd.DataFrame({v: pd.Series(dtype=object) for v in ROLLUP_SHOWN.values()})
    table = groups if site == ALL_SITES else groups[groups["site"] == site]
    table = table[list(ROLLUP_SHOWN)].rename(columns=ROLLUP_SHOWN).reset_index(drop=True)
    table["health"] = table["health"].astype(float).round(1)
    for c in ("site", "rack", "worst", "weakest"):
        table[c] = pd.Series(table[c].fillna("–").astype(str).to_numpy(dtype=object), dtype=object)
    # One narrow "group" column is shown, with its count of batteries; site, rack and n stay in the table,
    # hidden, for the filter and exports.
    group = [(s if not r or r == s else f"{s} › {r}") + f" ({n})"
             for s, r, n in zip(table["site"], table["rack"], table["n"], strict=True)]
    table.insert(0, "group", pd.Series(group, dtype=object))
    return table


def _state_colour(value) -> str:
    colour = STATE_COLORS.get(str(value))
    return f"background-color: {colour}; color: white; font-weight: 600" if colour and value != "normal" else ""


#: When the next served session may draw a new health grid (``time.monotonic()``).
_GRID_BUILDS = {"free_at": 0.0}


class HealthGrid(pn.viewable.Viewer):
    """The health grid and the activity chart, refreshed by :meth:`refresh` about once a second.

    The grid is drawn anew only when the fleet outgrows it (room for the
    next multiple of 8 entities); otherwise new states are patched into it.
    """

    session = param.ClassSelector(class_=Session, doc="The page's session.")

    def __init__(self, **params):
        super().__init__(**params)
        import holoviews as hv

        css = [CSS]
        self.health_empty = HTML('<div class="sbg-empty">No data yet: the fleet grid fills as rows arrive.</div>',
                                 sizing_mode="stretch_width", stylesheets=css)
        self.health_pipe = hv.streams.Pipe(data=pd.DataFrame())
        self.activity_pipe = hv.streams.Pipe(data=self.session.monitor.activity_frame(10))
        self._rows = -1
        self._states, self._drawn_at = None, 0.0
        self.health_pane = pn.pane.HoloViews(sizing_mode="stretch_width", linked_axes=False)
        # Shown and hidden through a layout: toggling a drawn HoloViews pane's own
        # ``visible`` makes Panel copy Bokeh stylesheet models into a str-only list.
        self.health_box = pn.Column(self.health_pane, sizing_mode="stretch_width", visible=False, margin=0)
        self.activity_pane = pn.pane.HoloViews(activity_view(self.activity_pipe), sizing_mode="stretch_width",
                                               linked_axes=False)
        self.legend = HTML(stylesheets=css, object=
            '<div class="sbg-legend">' + "".join(
                f'<span style="--c:{STATE_COLORS[k]}">{k}</span>'
                for k in ("normal", "warning", "critical", "stale", "data quality"))
            + "</div>")
        self._scores = None  # the last full health table, for the drill-down
        self.scores_table = pn.widgets.Tabulator(
            health_rows(None), disabled=True, show_index=False, sizing_mode="stretch_width", height=260,
            layout="fit_data_stretch", sorters=[{"field": "health", "dir": "asc"}],
            titles={"health": "health", "data_quality": "data quality", "soh": "SOH %",
                    "resistance_growth": "R growth %"},
            row_content=self.components, embed_content=False, stylesheets=css)
        self.hierarchy = self.session.monitor.hierarchy
        self._site = ALL_SITES
        self.site_select = pn.widgets.Select(label="Site", options=[ALL_SITES], value=ALL_SITES, width=220,
                                             visible=self.hierarchy is not None)
        self.site_select.param.watch(self._on_site, "value")
        self.fleet_pipe = hv.streams.Pipe(data=pd.DataFrame())
        self._fleet_rows = None  # the rows the grouped grid was drawn with
        self._fleet_states, self._fleet_drawn_at = None, 0.0
        self.fleet_pane = pn.pane.HoloViews(sizing_mode="stretch_width", linked_axes=False)
        # A grid of hundreds of batteries keeps 13 px a row and scrolls in a box of a screen's height.
        self.fleet_box = pn.Column(self.fleet_pane, sizing_mode="stretch_width", visible=False, margin=0,
                                   scroll=True, max_height=640)
        self.rollup_table = pn.widgets.Tabulator(
            rollup_rows(None), disabled=True, show_index=False, sizing_mode="stretch_width", height=230,
            layout="fit_columns", sorters=[], configuration={"columnDefaults": {"headerSort": False}},
            # Four columns fit the side column of a 1366 px screen (about 300 px) with the weakest battery's
            # id read whole: the count of batteries is in the group's label, and the type is a size smaller.
            stylesheets=[*css, ".tabulator-cell, .tabulator-col-title { font-size: 12.5px !important; }"],
            hidden_columns=["site", "rack", "n"],
            widths={"group": 96, "worst": 62, "health": 50}, titles={"health": "min"})
        self.rollup_table.style.map(_state_colour, subset=["worst"])
        self.unassigned_note = HTML("", stylesheets=css, visible=False, sizing_mode="stretch_width")
        self.rollup_box = pn.Column(
            title("By site and rack", margin=(10, 10, 0, 10)),
            HTML('<div class="sbg-note">Each rack (its batteries in brackets): the worst state now, and the '
                 'lowest health score (min) with its battery (weakest). Filter by site above.</div>', stylesheets=css),
            self.rollup_table, self.unassigned_note, sizing_mode="stretch_width", visible=False, margin=0)
        self.scores_box = pn.Column(
            title("Battery health", margin=(10, 10, 0, 10)),
            HTML('<div class="sbg-note">0-100 per battery, worst first; click a column to sort, a row\'s arrow for '
                 'its components.</div>', stylesheets=css),
            self.scores_table, sizing_mode="stretch_width", visible=False, margin=0)

    def __panel__(self):
        if self.hierarchy is not None:
            return pn.Column(title("Fleet health"), self.site_select, self.legend,
                             self.health_empty, self.rollup_box, self.fleet_box, self.scores_box,
                             title("Activity per minute", margin=(10, 10, 0, 10)),
                             self.activity_pane, sizing_mode="stretch_width")
        return pn.Column(title("Fleet health"), self.legend, self.health_empty, self.health_box, self.scores_box,
                         title("Activity per minute", margin=(10, 10, 0, 10)),
                         self.activity_pane, sizing_mode="stretch_width")

    def refresh(self):
        """The grid and the activity chart as the monitor stands now."""
        m = self.session.monitor
        health = m.health()
        scores = m.health_scores()
        if self.hierarchy is None:
            self._refresh_grid(health)
        else:
            self._refresh_fleet(health, scores)
        self._refresh_scores(scores)
        update_activity(self.activity_pane, self.activity_pipe, m.activity_frame(10))

    def _on_site(self, event):
        self._site = event.new
        self._fleet_rows = None  # other rows: the grid is drawn anew
        m = self.session.monitor
        scores = m.health_scores()
        self._refresh_fleet(m.health(), scores)
        self._refresh_scores(scores)

    def _refresh_fleet(self, health: pd.DataFrame, scores: pd.DataFrame):
        """The site filter's choices, the roll-up per site and rack, and the grid of the chosen site."""
        from ..io.hierarchy import rollup, worst_states

        h = self.hierarchy
        self.health_empty.visible = health.empty
        self.rollup_box.visible = self.fleet_box.visible = not health.empty
        if health.empty:
            return
        entities = pd.unique(health["entity"].astype(str))
        sites = [ALL_SITES, *h.sites(entities)]
        if list(self.site_select.options) != sites:
            self.site_select.options = sites
        states = worst_states(health)
        health_by = (pd.Series(scores["health"].to_numpy(dtype=float), index=scores["entity"].astype(str).to_numpy(
            dtype=object)) if len(scores) else None)
        groups = rollup(states, health_by, h, level="rack" if "rack" in h.levels else "site")
        table = rollup_rows(groups, self._site)
        if not table.equals(self.rollup_table.value):
            self.rollup_table.height = min(36 * len(table) + 42, 300)
            self.rollup_table.value = table
        unassigned = h.unassigned(entities)
        self.unassigned_note.visible = bool(unassigned)
        if unassigned:
            import html

            shown = ", ".join(html.escape(e) for e in unassigned[:20])
            more = f" and {len(unassigned) - 20} more" if len(unassigned) > 20 else ""
            self.unassigned_note.object = (f'<div class="sbg-note">{len(unassigned)} batter'
                                           f'{"ies" if len(unassigned) != 1 else "y"} not in the mapping '
                                           f'({html.escape(h.source)}), grouped as (unassigned): {shown}{more}</div>')
        cells = fleet_cells(health, h, self._site)
        rows = tuple(pd.unique(cells["row"]))
        now = time.monotonic()
        states = cells["state"].to_numpy().tobytes()
        if rows != self._fleet_rows:
            self._fleet_rows = rows
            self._fleet_states, self._fleet_drawn_at = states, now
            self.fleet_pipe.event(data=cells)
            self.fleet_pane.height = fleet_height(len(rows))
            self.fleet_pane.object = fleet_view(self.fleet_pipe, fleet_height(len(rows)))
        elif states != self._fleet_states or now - self._fleet_drawn_at >= 5:
            # As the flat grid: colours at once when a state changes, hover values every 5 s.
            self._fleet_states, self._fleet_drawn_at = states, now
            update_fleet(self.fleet_pane, self.fleet_pipe, cells)

    def _refresh_scores(self, scores: pd.DataFrame):
        """The battery-health table; patched only when a shown value changed (sorting stays the user's)."""
        self._scores = scores
        rows = health_rows(scores)
        if self.hierarchy is not None and not rows.empty:
            places = self.hierarchy.frame(rows["entity"]).set_index("entity")
            rows.insert(1, "site", pd.Series(places.loc[rows["entity"], "site"].to_numpy(dtype=object), dtype=object))
            rows.insert(2, "rack", pd.Series(places.loc[rows["entity"], "rack"].to_numpy(dtype=object), dtype=object))
            if self._site != ALL_SITES:
                rows = rows[rows["site"] == self._site].reset_index(drop=True)
        self.scores_box.visible = not rows.empty
        if not rows.empty and not rows.equals(self.scores_table.value):
            self.scores_table.value = rows

    def components(self, row) -> pn.viewable.Viewable:
        """The drill-down of one battery: each component's score, weight and what it measured."""
        scores = self._scores
        found = scores[scores["entity"].astype(str) == str(row["entity"])] if scores is not None else scores
        if found is None or found.empty:
            return pn.pane.Markdown("No data.")
        rec = found.iloc[0]
        from ..battery.health import COMPONENTS

        table = pd.DataFrame({
            "component": pd.Series([t for _, t, _ in COMPONENTS], dtype=object),
            "score": [round(float(rec[c]), 1) for c, _, _ in COMPONENTS],
            "status": pd.Series([str(rec[f"{c}_status"]) for c, _, _ in COMPONENTS], dtype=object),
            "source": pd.Series([src for _, _, src in COMPONENTS], dtype=object),
        })
        # pandas' to_html escapes every cell: entity-derived text stays text.
        return pn.Column(pn.pane.DataFrame(table, index=False, sizing_mode="stretch_width"),
                         pn.pane.Str(f"weights: {rec['weights']}; current sign: {rec['current_sign']}"),
                         sizing_mode="stretch_width")

    def _refresh_grid(self, health):
        """The fleet health grid: drawn anew when the fleet outgrows it, otherwise patched."""
        # Room for the next multiple of 8 entities: a fleet coming online does not redraw the grid per entity.
        n = -(-health["entity"].nunique() // 8) * 8 if not health.empty else 0
        now = time.monotonic()
        if n == 0 and self._rows < 0 and self.session.monitor.signals:
            # Before the first rows, a hidden grid of 8 blank rows is drawn with the page; the first
            # rows fill it in place (~30 ms). Drawn then, each session's new grid held the server's
            # loop for ~200 ms, all of them when a replay started.
            self._rows = 8
            self.health_pipe.event(data=blank_health(self.session.monitor.signals, 8))
            self.health_pane.object = health_view(self.health_pipe, health_height(8))
        if n != self._rows and not health.empty and served() and now < _GRID_BUILDS["free_at"]:
            # Another session has just drawn its grid: this one draws at a later tick. Twenty sessions
            # watching a replay that starts each drew theirs (~165 ms each) in the same turn of the
            # server's loop, which answered nothing else for 3 to 5 s.
            return
        self.health_empty.visible = health.empty
        self.health_box.visible = not health.empty
        if health.empty:
            return
        states = (tuple(health["entity"]), tuple(health["signal"]), health["state"].to_numpy().tobytes())
        if n != self._rows:
            # A new grid only when the fleet grows past a multiple of 8 entities.
            self._rows = n
            self._states, self._drawn_at = states, now
            self.health_pipe.event(data=health)
            self.health_pane.object = health_view(self.health_pipe, health_height(n))
            # The next session's grid waits as long as this one took: at most half the loop's time.
            _GRID_BUILDS["free_at"] = 2 * time.monotonic() - now
        elif states != self._states or now - self._drawn_at >= 5:
            # Colours at once when a state changes, scores and times under the hover every 5 s;
            # patched into the drawn grid.
            self._states, self._drawn_at = states, now
            update_health(self.health_pane, self.health_pipe, health)
