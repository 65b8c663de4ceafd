"""The alerts table and the event feed: what fired, what resolved, what went wrong, newest first."""

from __future__ import annotations

import html

import pandas as pd
import panel as pn
import param

from .session import Session
from .style import CSS, HTML, TABLE_CSS

__all__ = ["AlertsFeed", "alerts_frame"]

_EMPTY_FEED = ('<div class="ev">No events yet: alert changes, quarantined rows and errors '
               "appear here.</div>")


def alerts_frame(alerts: pd.DataFrame, limit: int = 500) -> pd.DataFrame:
    """The alert table's rows: the newest ``limit`` alerts, with short data times as text."""
    table = alerts.head(limit)
    cols = ["start", "severity", "kind", "entity", "rule", "signal", "message", "state", "end"]
    if "pass" in table.columns:  # a looped replay: which pass of the data raised it
        cols.append("pass")
    if table.empty:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in cols})
    out = table[cols].copy()
    for c in ("severity", "kind", "entity", "rule", "signal", "message", "state"):
        out[c] = out[c].astype(object)
    # Short data times as text (they sort as text within a year): a datetime formatter would need
    # Tabulator's luxon, which is not loaded in a notebook.
    for c in ("start", "end"):
        out[c] = out[c].dt.strftime("%m-%d %H:%M:%S").fillna("").astype(object)
    return out


def _severity_style(row):
    colors = {"critical": "#fee2e2", "warning": "#fef3c7", "info": "#e0f2fe"}
    color = colors.get(row.get("severity"), "")
    if row.get("state") == "resolved":
        color = "#f9fafb"
    return [f"background-color: {color}" if color else "" for _ in row]


class AlertsFeed(pn.viewable.Viewer):
    """The alert table (``alerts_table``) and the event feed (``feed``), refreshed by :meth:`refresh`.

    Each is sent to the page only when it changed. Every text is escaped:
    entity ids, rule names and messages come from the data.
    """

    session = param.ClassSelector(class_=Session, doc="The page's session.")

    def __init__(self, **params):
        super().__init__(**params)
        self._alerts_seen = -1
        self._events_seen = -1
        self.alerts_table = pn.widgets.Tabulator(
            alerts_frame(self.session.monitor.alerts), sizing_mode="stretch_width", height=330, disabled=True,
            show_index=False, pagination="local", page_size=10, header_filters=True, selectable=False,
            formatters={**{c: {"type": "plaintext"}
                           for c in ("start", "end", "severity", "kind", "entity", "rule", "signal", "state")},
                        "message": {"type": "textarea"}},  # wraps; escaped like plaintext
            # Every column in view at any width: the short ones fixed, the message takes the rest and wraps.
            layout="fit_columns",
            widths={"start": 128, "end": 128, "severity": 100, "kind": 78, "entity": 86, "rule": 104,
                    "signal": 116, "state": 86, "pass": 70},
            stylesheets=[TABLE_CSS],
        )
        self.alerts_table.style.apply(_severity_style, axis=1)
        self.feed = HTML("", sizing_mode="stretch_width", stylesheets=[CSS])

    def __panel__(self):
        return pn.Column(pn.pane.Markdown("### Alerts", margin=(0, 5)), self.alerts_table,
                         pn.pane.Markdown("### Events", margin=(0, 5)), self.feed, sizing_mode="stretch_width")

    def narrow(self):
        """Fit the table beside a notebook's sidebar (about 620 px).

        The message keeps a readable width when kind, rule, end and a loop's
        pass step aside (the message names the rule; the CSV and JSON exports
        keep every column).
        """
        self.alerts_table.hidden_columns = ["kind", "rule", "end", "pass"]
        self.alerts_table.widths = {"start": 124, "severity": 100, "entity": 84, "signal": 116, "state": 80}

    def refresh(self):
        """The table and the feed as the monitor stands now (each sent only when it changed)."""
        m = self.session.monitor
        version = (len(m.engine.alerts), sum(a.reopened for a in m.engine.alerts.values()),
                   sum(a.state == "resolved" for a in m.engine.alerts.values()))
        if version != self._alerts_seen:
            self._alerts_seen = version
            self.alerts_table.value = alerts_frame(m.alerts)
        events = list(m.events)[-100:]
        key = (len(m.events), events[-1]["time"] if events else None, events[-1]["message"] if events else None)
        if key != self._events_seen:
            self._events_seen = key
            items = []
            for ev in reversed(events):
                cls = "error" if ev["kind"] == "error" else ev["severity"]
                sim, wall = ev.get("sim_time"), ev["time"][11:19]
                # The data's date too, as the alert table shows it: a log spans days as often as minutes.
                stamp = f"{sim[5:10]} {sim[11:19]}" if sim else wall
                tip = (f"data time {sim.replace('T', ' ')}; logged at {wall} (wall clock)" if sim else
                       f"logged at {wall} (wall clock), before any data")
                items.append(f'<div class="ev {html.escape(cls)}"><span class="t" title="{html.escape(tip)}">'
                             f'{html.escape(stamp)}</span>{html.escape(ev["kind"])}: {html.escape(ev["message"])}</div>')
            self.feed.object = '<div class="sbg-feed">' + ("".join(items) or _EMPTY_FEED) + "</div>"
