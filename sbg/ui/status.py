"""The replay's state at a glance: the live indicator, the KPI cards, the banner and the empty state."""

from __future__ import annotations

import html
import threading
import time

import pandas as pd
import panel as pn
import param

from ..detect.detectors import STALE_AFTER, STALE_INTERVALS
from ..serve.pacing import PACER
from ..serve.registry import session_count
from .session import Session
from .style import CSS, HTML, fmt_duration, fmt_int, kpi_size, rows_label

__all__ = ["StatusCards"]

_LABELS = {"running": "Live", "paused": "Paused", "stopped": "Stopped", "idle": "Ready", "finished": "Finished"}


class StatusCards(pn.viewable.Viewer):
    """What the replay is doing, refreshed by :meth:`refresh` every ``update_ms``.

    ``live_indicator`` goes in the page's header; the cards, the banner and
    the empty state (before the first row) go at the top of the main area.
    """

    session = param.ClassSelector(class_=Session, doc="The page's session.")

    def __init__(self, **params):
        super().__init__(**params)
        css = [CSS]
        self.live_indicator = HTML("", margin=(0, 10), stylesheets=css)
        self.kpis = HTML("", sizing_mode="stretch_width", stylesheets=css)
        self.banner = HTML("", sizing_mode="stretch_width", visible=False, stylesheets=css)
        self.empty_state = HTML("", sizing_mode="stretch_width", visible=False, stylesheets=css)

    def __panel__(self):
        return pn.Column(self.kpis, self.banner, self.empty_state, sizing_mode="stretch_width")

    def refresh(self, served: bool = False):
        """Show the monitor's state now; ``served`` adds the update pacing to the indicator's tooltip."""
        m = self.session.monitor
        r = m.replay
        d = m.metrics
        state = r.state
        self.live_indicator.object = self._indicator(served)
        if r.rows_total is None and not getattr(r, "_sbg_scanning", False):
            # A replay started before anyone looked (--autostart) has not counted its rows: count them aside.
            r._sbg_scanning = True
            threading.Thread(target=m.count_rows, name="sbg-scan", daemon=True).start()
        pct = r.percent
        sim_ts = None if r.sim_time is None else pd.Timestamp(r.sim_time)
        sim = "–" if sim_ts is None else sim_ts.strftime("%H:%M:%S")
        sim_label = "Sim time" if sim_ts is None else f"Sim {sim_ts:%m-%d}"
        cards = [
            ("Rows in", "rows_in", fmt_int(d.rows_in), ""),
            ("Quarantine", "rows_quarantined", fmt_int(d.rows_quarantined), "warning" if d.rows_quarantined else ""),
            ("Analyses", "analyses", fmt_int(d.analyses), ""),
            ("Rows/s", "ingest_rate", f"{d.ingest_rate:,.0f}" if state == "running" else "0", ""),
            ("Uptime", "uptime", fmt_duration(time.time() - m.started_at.timestamp()), ""),
            ("Entities", "entities", fmt_int(d.entities), ""),
            ("Firing", "alerts_firing", fmt_int(d.alerts_firing), "critical" if d.alerts_firing else ""),
            (sim_label, "sim_time", sim, ""),
            ("Done", "percent", f"{pct:.1f}%", "") if not r.follows else ("Source", "percent", "following", ""),
        ]
        # Long values take a smaller font rather than an ellipsis: 480,760 rows must be read whole.
        self.kpis.object = '<div class="sbg-kpiwrap"><div class="sbg-kpis">' + "".join(
            f'<div class="sbg-kpi {cls}" data-kpi="{key}" title="{html.escape(f"{name}: {value}")}">'
            f'<div class="label">{html.escape(name)}</div>'
            f'<div class="value {kpi_size(value)}">{html.escape(value)}</div></div>'
            for name, key, value, cls in cards) + "</div></div>"
        self._refresh_banner()
        self._refresh_empty_state()

    def _indicator(self, served: bool) -> str:
        m = self.session.monitor
        state, errors = m.replay.state, m.metrics.errors
        css = "error" if errors else ("running" if state == "running" else "")
        label = _LABELS[state]
        if errors:
            label += f" · {errors} error{'s' if errors != 1 else ''}"
        data = m.data_state()
        title = "replay state"
        if data["state"] == "stale" and state == "running":
            css = "error" if errors else "stale"  # an amber dot, not the pulsing green of rows arriving
            label += f" · no data for {fmt_duration(data['silent_s'])}"
        elif data["state"] in ("stale", "partly stale"):
            label += f" · {data['stale_count']} of {data['entities']} stale"
            title = (f"no rows for {pd.Timedelta(STALE_AFTER).total_seconds():g} s (or {STALE_INTERVALS} of their "
                     "usual intervals, when longer) of replay time: "
                     + ", ".join(data["stale_entities"][:20]))
        elif data["state"] == "behind" and state == "running":
            # The source has the rows; the monitor is still processing them (sbg.stream.monitor.Monitor.data_state).
            label += f" · {fmt_duration(data['behind_s'])} behind"
            title = (f"processing trails the replay clock by {fmt_duration(data['behind_s'])} of data time; "
                     "no data is missing")
        if served and PACER.stretch >= 1.1:
            title += (f"; plots update every {PACER.stretch * self.session.plot_ms / 1000:.1f} s "
                      f"to keep the busy server responsive ({session_count()} sessions)")
        return (f'<span class="sbg-live {css}" title="{html.escape(title)}" '
                f'data-state="{state}" data-data="{data["state"]}">'
                f'<span class="sbg-dot"></span>{label}</span>')

    def _refresh_banner(self):
        m = self.session.monitor
        d, state = m.metrics, m.replay.state
        banner = ""
        if d.errors:
            going = "The replay goes on; see" if state == "running" else "See"
            banner = (f'<div class="sbg-banner error"><b>Errors: {d.errors}.</b> Latest: '
                      f"{html.escape(self.session.for_page(d.last_error[:300]))}. {going} the event feed.</div>")
        elif state == "paused":
            banner = '<div class="sbg-banner paused"><b>Paused.</b> The clock is held; press Resume to carry on.</div>'
        elif state == "finished":
            banner = ('<div class="sbg-banner finished"><b>Replay finished.</b> '
                      f"{fmt_int(d.rows_in)} rows, {fmt_int(d.alerts_total)} alerts. Reset to replay again.</div>")
        self.banner.object = banner
        self.banner.visible = bool(banner)

    def _refresh_empty_state(self):
        m = self.session.monitor
        if m.replay.state == "idle" and not m.metrics.rows_in:
            names = ", ".join(html.escape(p.name) for p in m.paths)
            empty = (f'<div class="sbg-empty">Ready to replay <b>{names}</b> '
                     f"({rows_label(m.count_rows())}). "
                     + ("An admin starts the replay; this page follows it." if self.session.read_only
                        else "Press <b>Start</b> in the sidebar.") + "</div>")
            if not isinstance(self.empty_state.object, str) or self.empty_state.object != empty:
                self.empty_state.object = empty
            self.empty_state.visible = True
        else:
            self.empty_state.visible = False
