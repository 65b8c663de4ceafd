"""The Panel dashboard: one Viewer over a shared monitor, in Jupyter and under ``panel serve``.

:class:`Dashboard` is a ``pn.viewable.Viewer`` taking a
:class:`~sbg.stream.monitor.Monitor`. In a notebook it displays inline and updates
live; served, :meth:`Dashboard.servable` puts it in a template page.

One monitor runs per data source per server process
(:func:`sbg.serve.registry.shared_monitor`), shared by every session: the replay is one
server-wide asyncio task, controls act on the shared monitor, and a tab
opened late first shows the retained history. Each session only subscribes:
new chunks queue up and a per-session callback drains them into bounded
Buffers at most ten times a second, on the session's own document. Closing
the tab unsubscribes and frees everything the session held.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import io
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
import panel as pn
import param

from ..alerts.rules import alerts_json
from ..detect.detectors import STALE_AFTER
from ..errors import SbgError
from ..report.build import Snapshot, render
from ..report.style import ENTITY_COLORS, STATE_COLORS, fmt_bytes
from ..serve.pacing import PACER
from ..serve.registry import (
    DATA_SUFFIXES,
    SESSION_KINDS,
    ServeConfig,
    data_files,
    default_monitor,
    forget_session,
    mark_behind,
    monitor_for,
    register_session,
    resolve_data_file,
    session_count,
)
from ..stream.monitor import Monitor
from ..stream.replay import SPEEDS, parse_speed
from .plots import (
    BufferBridge,
    LiveBuffers,
    activity_view,
    baseline_view,
    blank_health,
    health_height,
    health_view,
    signal_view,
    update_activity,
    update_health,
)

__all__ = ["Dashboard"]

#: Display windows offered in the sidebar (a time span, not a point count).
WINDOWS = {"1 min": 60, "5 min": 300, "10 min": 600, "30 min": 1800, "1 h": 3600, "6 h": 21600, "24 h": 86400}

#: When the next served session may draw a new health grid (``time.monotonic()``).
_GRID_BUILDS = {"free_at": 0.0}


#: What bad input to a page's callbacks raises besides SbgError (a NUL byte in a name, a crafted value, a
#: file the server cannot read): shown in the page like an SbgError, never raised into the server's log.
BAD_INPUT = (SbgError, ValueError, OSError, TypeError)


#: In a notebook, the live plots and cards update at most every NOTEBOOK_PLOT_MS and send at most about
#: NOTEBOOK_ROWS_PER_UPDATE rows per entity each time: Jupyter's server stops all of a kernel's output
#: (``iopub_data_rate_limit``, 1 MB/s over 3 s by default) beyond that, cell output included.
NOTEBOOK_PLOT_MS = 1000
#: Seconds after a Start, Pause, Resume... click when the cards show the replay's first rows.
CARDS_AFTER_CONTROL_S = 0.3
NOTEBOOK_ROWS_PER_UPDATE = 240


_STATE_VARS = "".join(f"--sbg-{state}: {color}; " for state, color in STATE_COLORS.items())
CSS = ":host, :root { " + _STATE_VARS + "}\n" + """
.sbg-live { display: inline-flex; align-items: center; gap: 8px; font-weight: 600; font-size: 14px;
            color: inherit; padding: 4px 10px; border-radius: 14px; background: rgba(255,255,255,0.12); }
.sbg-dot { width: 12px; height: 12px; border-radius: 50%; background: var(--sbg-stale); }
.sbg-live.running .sbg-dot { background: var(--sbg-normal); animation: sbg-pulse 1.4s ease-in-out infinite; }
.sbg-live.error .sbg-dot { background: var(--sbg-critical); animation: none; }
.sbg-readonly { display: inline-block; font-weight: 600; font-size: 13px; padding: 4px 10px; border-radius: 14px;
                background: rgba(255,255,255,0.18); color: #fff; }
.sbg-settings { font-size: 12px; border-collapse: collapse; width: 100%; }
.sbg-settings th { text-align: left; font-weight: 500; color: #6b7280; padding: 2px 6px 2px 0; }
.sbg-live.stale .sbg-dot { background: var(--sbg-warning); animation: none; }
@keyframes sbg-pulse { 0% { box-shadow: 0 0 0 0 rgba(22,163,74,0.7); } 70% { box-shadow: 0 0 0 10px rgba(22,163,74,0); }
                       100% { box-shadow: 0 0 0 0 rgba(22,163,74,0); } }
.sbg-kpiwrap { container-type: inline-size; width: 100%; }
.sbg-kpis { display: grid; grid-template-columns: repeat(auto-fit, minmax(92px, 1fr)); gap: 7px; width: 100%; }
/* Narrow (a notebook beside its sidebar): one row of the seven cards a watcher reads; analyses and
   uptime step aside (they stay in /api/status), and the values keep every digit. */
@container (max-width: 900px) {
  .sbg-kpiwrap .sbg-kpis { grid-template-columns: repeat(7, minmax(0, 1fr)); gap: 4px; }
  .sbg-kpiwrap .sbg-kpi[data-kpi="analyses"], .sbg-kpiwrap .sbg-kpi[data-kpi="uptime"] { display: none; }
  .sbg-kpiwrap .sbg-kpi { padding: 5px 6px; border-radius: 8px; }
  .sbg-kpiwrap .sbg-kpi .label { font-size: 9px; letter-spacing: 0; }
  .sbg-kpiwrap .sbg-kpi .value { font-size: 14px; }
  .sbg-kpiwrap .sbg-kpi .value.small { font-size: 12px; padding-top: 2px; }
  .sbg-kpiwrap .sbg-kpi .value.tiny { font-size: 10.5px; padding-top: 3px; }
}
.sbg-kpi { background: var(--panel-surface-color, #fff); border: 1px solid #e5e7eb; border-radius: 10px;
           padding: 7px 10px; min-width: 0; }
.sbg-kpi .label { font-size: 10.5px; text-transform: uppercase; letter-spacing: .02em; color: #6b7280;
                  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.sbg-kpi .value.small { font-size: 14.5px; padding-top: 4px; }
.sbg-kpi .value.tiny { font-size: 12.5px; padding-top: 6px; }
.sbg-kpi .value { font-size: 18px; font-weight: 650; font-variant-numeric: tabular-nums; color: #111827;
                  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.sbg-kpi.warning { border-color: var(--sbg-warning); } .sbg-kpi.warning .value { color: var(--sbg-warning); }
.sbg-kpi.critical { border-color: var(--sbg-critical); background: #fef2f2; }
.sbg-kpi.critical .value { color: var(--sbg-critical); }
.sbg-feed { font-size: 12.5px; line-height: 1.45; max-height: 330px; overflow-y: auto; }
.sbg-feed .ev { padding: 4px 8px; border-left: 4px solid var(--sbg-info); margin-bottom: 4px;
                background: #f9fafb; border-radius: 4px; overflow-wrap: anywhere; }
.sbg-feed .ev.warning { border-left-color: var(--sbg-warning); background: #fffbeb; }
.sbg-feed .ev.critical { border-left-color: var(--sbg-critical); background: #fef2f2; }
.sbg-feed .ev.error { border-left-color: var(--sbg-critical); background: #fee2e2; font-weight: 600; }
.sbg-feed .ev .t { color: #6b7280; font-variant-numeric: tabular-nums; margin-right: 6px; }
.sbg-empty { border: 2px dashed #d1d5db; border-radius: 12px; padding: 28px; text-align: center; color: #4b5563;
             font-size: 15px; background: #f9fafb; }
.sbg-empty b { color: #111827; }
.sbg-banner { border-radius: 8px; padding: 8px 14px; font-size: 13.5px; }
.sbg-banner.paused { background: #f3f4f6; color: #374151; border: 1px solid #d1d5db; }
.sbg-banner.error { background: #fef2f2; color: #991b1b; border: 1px solid #fecaca; }
.sbg-banner.finished { background: #ecfdf5; color: #065f46; border: 1px solid #a7f3d0; }
.sbg-plot-title { font-weight: 650; font-size: 13.5px; color: #111827; }
.sbg-note { font-size: 11.5px; color: #6b7280; }
.sbg-legend { font-size: 12px; color: #4b5563; display: flex; gap: 14px; flex-wrap: wrap; }
.sbg-legend span::before { content: ""; display: inline-block; width: 10px; height: 10px; border-radius: 2px;
                           margin-right: 5px; vertical-align: -1px; background: var(--c); }
"""


class HTML(pn.pane.HTML):
    """An HTML pane whose updates send its new text and nothing else.

    Panel re-resolves a pane's stylesheets on every change of its object,
    and in a notebook it points them at its CDN, although they were inlined
    when the pane was first drawn: every KPI refresh would then send a
    request out of the machine (and fail on an air-gapped one). The
    stylesheets of these panes never change after they are drawn.
    """

    def _update(self, ref, model):
        props = self._get_properties(model.document)
        props.pop("stylesheets", None)
        model.update(**props)


def _kpi_size(value: str) -> str:
    """The KPI value's font class: cards are about 90 px wide at 1366 px, room for 6 characters at full size."""
    return "" if len(value) <= 6 else "small" if len(value) <= 9 else "tiny"


def _choices(labels) -> dict:
    """Options for a choice widget, escaped: Bokeh's MultiChoice (choices.js) renders labels as HTML,
    so an entity id such as ``<img onerror=...>`` would run in every viewer's browser."""
    return {html.escape(label, quote=False): label for label in labels}


def _fmt_int(n) -> str:
    return f"{int(n):,}"


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _safe_name(text: str, limit: int = 120) -> str:
    """``text`` cut down to a file name without spaces, slashes or markup."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))[:limit]


def without_paths(message, data_dir, named=()) -> str:
    """``message`` as a page may show it: the server's paths replaced by the names the user knows.

    Each ``(path, label)`` of ``named`` becomes its label; any other path
    inside ``data_dir`` becomes its name relative to it, and ``data_dir``
    itself "the data directory". Served pages never show where the server
    keeps its files.

    >>> without_paths("/srv/data/uploads/a.csv: is empty", "/srv/data")
    'uploads/a.csv: is empty'
    >>> without_paths("No such file: '/srv/data/.9f.a.csv'", "/srv/data", [("/srv/data/.9f.a.csv", "a.csv")])
    "No such file: 'a.csv'"
    >>> without_paths("cannot write /srv/data", "/srv/data")
    'cannot write the data directory'
    """
    text = str(message)
    for path, label in named:
        for form in _path_forms(path):
            text = text.replace(form, label)
    root = _path_forms(data_dir)
    for form in root:
        text = text.replace(form.rstrip(os.sep) + os.sep, "")
    for form in root:
        text = text.replace(form, "the data directory")
    return text


def _path_forms(path) -> list[str]:
    """The ways a message may spell ``path``, longest first.

    A bare relative name ("data") is left out: it could stand for a plain word.
    """
    path = Path(path)
    forms = {str(path)} if os.sep in str(path) else set()
    with contextlib.suppress(OSError, ValueError):  # a NUL byte, a loop of links
        forms |= {str(path.resolve()), str(path.absolute())}
    return sorted(forms, key=len, reverse=True)


#: The alert table in the page's text size: in Tabulator's own (16 px, wide padding) the fixed columns
#: clipped their headers ("seve…", "ent…") and values ("06-03 13:57…", "temperat…") at 1366 px.
TABLE_CSS = """
:host .tabulator { font-size: 13px; }
:host .tabulator .tabulator-header .tabulator-col .tabulator-col-content { padding: 5px 6px; }
:host .tabulator .tabulator-row .tabulator-cell { padding: 5px 6px; }
"""  # ``:host`` outranks the theme's stylesheet, which Panel links after these


def _handle_comm_message(client, handler, msg):
    """``handler(msg)`` as pyviz_comms would call it: printed output and errors go to the cell."""
    from pyviz_comms import StandardOutput

    try:
        with StandardOutput() as stdout:
            handler(msg)
        if stdout and client._on_stdout:
            client._on_stdout(stdout)
    except Exception as exc:
        if client._on_error:
            client._on_error(exc)
        else:
            logging.getLogger(__name__).exception("a message from the page failed")


def _rows_label(rows: int | None) -> str:
    """``'10,800 rows'``, or what is known when the rows cannot be counted."""
    return "rows not counted" if rows is None else f"{_fmt_int(rows)} rows"


def _error_html(message: str) -> str:
    """A message in the sidebar's error style (escaped)."""
    return f'<span style="color:{STATE_COLORS["critical"]}">{html.escape(message)}</span>'


def report_filename(source: str, made_at: pd.Timestamp) -> str:
    """The name a downloaded report is saved under: the source and the UTC time it was made.

    >>> report_filename("fleet a+b", pd.Timestamp("2024-06-03 08:00:05", tz="UTC"))
    'sbg_report_fleet_a_b_20240603T080005Z.html'
    """
    return f"sbg_report_{_safe_name(source, 80)}_{made_at.tz_convert('UTC'):%Y%m%dT%H%M%SZ}.html"


def _env_megabytes(name: str) -> float | None:
    """A positive size in MB from the environment variable ``name``, or ``None`` when it is unset."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise SbgError(f"{name}={text!r}: give a positive number of megabytes")
    return value


class Dashboard(pn.viewable.Viewer):
    """Live dashboard over a :class:`~sbg.stream.monitor.Monitor`.

    Parameters
    ----------
    monitor : Monitor
        The model; shared by every viewer of the same source.
    data_dir : path
        Directory the source and baseline pickers list, and uploads go to.
    max_upload_mb : float
        Largest file the sidebar upload accepts. A file over it is refused
        with a message and nothing is written.

    Served, the defaults come from the environment ``sbg serve`` sets:
    ``SBG_DATA_DIR``, ``SBG_FILES``, ``SBG_SPEED`` and the others read by
    :func:`sbg.serve.registry.shared_monitor`'s caller, and ``SBG_MAX_UPLOAD_MB`` for
    ``max_upload_mb`` (``SBG_MAX_UPLOAD_MB=200 sbg serve``).

    The upload travels in one websocket message, base64-encoded (4/3 of the
    file's size), and Bokeh's server closes the connection on a message over
    its ``websocket_max_message_size`` (20 MB unless raised). A file too big
    for that never reaches the dashboard and the page loses its connection
    instead of showing a message, so the default limit is the largest file
    that fits. To accept larger files raise both:
    ``SBG_MAX_UPLOAD_MB=200 sbg serve -- --websocket-max-message-size=300000000``.
    """

    monitor = param.ClassSelector(class_=Monitor, doc="The monitor shown (shared by every session on it).")
    data_dir = param.String(default="", doc="Directory whose files can be chosen or uploaded.")
    window = param.Selector(default="10 min", objects=list(WINDOWS), doc="Visible time span of the live plots.")
    entities = param.ListSelector(default=[], objects=[], doc="Entities drawn in the live plots.")
    point_size = param.Number(default=4, bounds=(1, 12), doc="Point size of the baseline-vs-live scatter.")
    update_ms = param.Integer(default=250, bounds=(50, 5000), doc="Milliseconds between updates of counters and state.")
    plot_ms = param.Integer(default=100, bounds=(50, 10000), doc="Milliseconds between updates of the live plots.")
    read_only = param.Boolean(default=False, doc="Hide the controls that change shared state.")
    max_entities = param.Integer(default=4, bounds=(1, 24), doc="Entities drawn at first.")
    max_upload_mb = param.Number(default=14, bounds=(0, None), inclusive_bounds=(False, True),
                                 doc="Largest file the sidebar upload accepts, in MB (1,000,000 bytes).")

    def __init__(self, monitor: Monitor | None = None, **params):
        if monitor is not None:
            params["monitor"] = monitor
        if "max_upload_mb" not in params and (limit := _env_megabytes("SBG_MAX_UPLOAD_MB")) is not None:
            params["max_upload_mb"] = limit
        super().__init__(**params)
        if self.monitor is None:
            self.monitor = default_monitor()
        if not self.data_dir:
            self.data_dir = str(ServeConfig.from_env().data_root())
        self._pending: deque = deque()
        self._max_pending_rows = 200_000
        self._unsubscribe = None
        self._callback = None
        self._home: tuple | None = None  # (event loop, thread) the page is updated from
        self._last_slow = 0.0
        self._last_plot = 0.0
        self._last_fast = 0.0
        self._alerts_seen = -1
        self._events_seen = -1
        self._entity_options: list[str] = []
        self._auto_entities = not self.entities
        self._resetting = False
        self._session_id = id(self)
        self.rows_sent = 0
        self._settings_panes: list = []
        self.bridge = BufferBridge()
        self._build_widgets()
        self._build_views()
        self._attach(self.monitor)

    # ---- subscription -------------------------------------------------
    def _attach(self, monitor: Monitor):
        self._detach()
        self._pending.clear()
        pending = self._pending
        limit = self._max_pending_rows
        state = {"rows": 0, "span": self._window_span(), "newest": pd.NaT, "restarted": False}

        def on_chunk(chunk):
            # Runs in the replay task: only queue, never touch the document here. Rows older than the
            # visible window are off the plots' axis, and past the bound they could not all be drawn:
            # a session waiting for its browser (or its turn) keeps neither.
            newest = chunk["timestamp"].max() if len(chunk) else pd.NaT
            if pd.notna(newest) and pd.notna(state["newest"]) and newest < state["newest"]:
                # Time went back: the data started over (a loop or a seek). What is queued belongs to
                # the pass before, and the plots start afresh.
                pending.clear()
                state["rows"], state["restarted"] = 0, True
            if pd.notna(newest):
                state["newest"] = newest
            pending.append((chunk, newest))
            state["rows"] += len(chunk)
            cut = newest - state["span"] if pd.notna(newest) else None
            while len(pending) > 1 and (state["rows"] > limit or cut is not None and pending[0][1] < cut):
                state["rows"] -= len(pending.popleft()[0])

        self._pending_state = state
        self._unsubscribe = monitor.subscribe(on_chunk)
        register_session(self._session_id, self)
        self._reset_live()

    def _detach(self):
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        forget_session(self._session_id)

    def _reset_live(self):
        """New buffers and plots for the current entity selection, primed with retained history."""
        m = self.monitor
        labels = [str(e) for e in m.pipeline.features.index.labels]
        if not labels and self.entities:
            # Reset: no entity is known until data flows again; keep the plots (and the browser's models).
            chosen = list(self.entities)
            labels = chosen
        elif self._auto_entities or any(e not in labels for e in self.entities):
            self._auto_entities = True
            chosen = labels[: self.max_entities]
        else:
            chosen = list(self.entities)
        # The automatic selection draws max_entities slots up front; entities take them as they appear.
        slots = self.max_entities if self._auto_entities else 0
        self._entity_options = labels
        self._set_entities(chosen, labels)
        live = getattr(self, "live", None)
        length = self._window_rows()
        if live is not None and live.entities[: len(chosen)] == [str(e) for e in chosen] \
                and len(live.slots) == max(len(chosen), slots) and live.signals == list(m.signals) \
                and getattr(self, "_live_window", None) == self.window and live.length == length:
            # Same plots: empty their Buffers instead of replacing models the browser may still reference.
            live.clear()
        else:
            self.live = LiveBuffers(m.signals, chosen, length=length, bridge=self.bridge, slots=slots)
            self._live_window = self.window
            self._refresh_plots()
        history = m.history.tail(200_000)
        if len(history):
            self._send(history[history["timestamp"] >= history["timestamp"].max() - self._window_span()])
        self.bridge.flush()

    def _send(self, frame):
        """Queue a frame's rows for the plots; entities it brings take the free slots of the automatic selection."""
        labels = self.monitor.pipeline.features.index.labels
        shown = len(self.live.entities)
        # In a notebook every update goes through the kernel's IOPub channel, which Jupyter stops (dropping
        # cell output as well) beyond 1 MB/s: there each update sends a bounded, extremes-keeping sample.
        cap = None if self._served() else NOTEBOOK_ROWS_PER_UPDATE
        self.rows_sent += self.live.send(frame, max_rows=cap)
        grew = len(self.live.entities) != shown
        if len(labels) != len(self._entity_options):
            self._entity_options = [str(e) for e in labels]
            self._set_entities(self.live.entities if self._auto_entities else self.entities, self._entity_options)
        elif grew:
            self._set_entities(self.live.entities)
        if grew:
            self._draw_legend()
        self._send_baseline(frame)

    def _set_entities(self, chosen, labels=None):
        """Sets the entity filter (and its options) without counting it as the user's choice."""
        self._resetting = True
        try:
            if labels is not None:
                self.param.entities.objects = _choices(labels)
            self.entities = list(chosen)
        finally:
            self._resetting = False

    def _window_span(self) -> pd.Timedelta:
        return pd.Timedelta(seconds=WINDOWS[self.window])

    def _window_rows(self) -> int:
        """Rows per entity that cover the visible window (at the data's usual interval), plus a margin.

        Rows older than the window are off the axis: keeping them would only
        make the browser draw more.
        """
        tail = self.monitor.history.tail(5000)
        dt = 1.0
        if "interval_s" in tail and len(tail):
            v = tail["interval_s"].to_numpy(dtype=float)
            v = v[np.isfinite(v) & (v > 0)]
            if len(v):
                dt = float(np.median(v))
        return int(min(max(WINDOWS[self.window] / dt * 1.2, 300), 20_000))

    def _send_baseline(self, frame):
        x, y = self._xy
        if x in frame and y in frame:
            part = frame[["timestamp", x, y]].dropna().tail(5000).reset_index(drop=True)
            if len(part):
                self.bridge.update(self._baseline_buffer, part)

    # ---- widgets --------------------------------------------------------
    def _build_widgets(self):
        m = self.monitor
        files = data_files(self.data_dir)
        current = [self._relative(p) for p in m.paths]
        options = files + [c for c in current if c not in files]
        self.source_select = pn.widgets.Select(label="Data source", options=options, value=current[0],
                                               sizing_mode="stretch_width")
        self.baseline_select = pn.widgets.Select(
            label="Baseline", options=["(none)"] + files,
            value=self._relative(m.baseline_path) if m.baseline_path else "(none)", sizing_mode="stretch_width")
        self.upload = pn.widgets.FileInput(accept=",".join(DATA_SUFFIXES), sizing_mode="stretch_width")
        self.upload_status = HTML(self._upload_hint(), sizing_mode="stretch_width",
                                          styles={"font-size": "12px", "color": "#4b5563"})
        self.speed = pn.widgets.RadioButtonGroup(label="Speed", options=list(SPEEDS), value=self._speed_label(),
                                                 color="primary", variant="outline",
                                                 sizing_mode="stretch_width")
        self.start_btn = pn.widgets.Button(label="Start", color="success")
        self.pause_btn = pn.widgets.Button(label="Pause", color="warning")
        self.resume_btn = pn.widgets.Button(label="Resume", color="primary")
        self.stop_btn = pn.widgets.Button(label="Stop", color="danger")
        self.reset_btn = pn.widgets.Button(label="Reset", color="light")
        self.progress = pn.indicators.Progress(label="Progress", value=0, max=100, sizing_mode="stretch_width",
                                               bar_color="primary")
        self.progress_text = HTML("", styles={"font-size": "12px", "color": "#4b5563"})
        self.seek = pn.widgets.FloatSlider(label="Seek (% of the time span)", start=0, end=100, step=0.5,
                                           value=0, sizing_mode="stretch_width")
        self.seek_btn = pn.widgets.Button(label="Seek", color="default")
        self.window_select = pn.widgets.Select.from_param(self.param.window, label="Visible window",
                                                          sizing_mode="stretch_width")
        self.entity_choice = pn.widgets.MultiChoice.from_param(self.param.entities, label="Entities",
                                                               sizing_mode="stretch_width", max_items=24)
        self.export_csv = pn.widgets.FileDownload(callback=self._alerts_csv, filename="sbg_alerts.csv",
                                                  label="Alerts CSV", color="default")
        self.export_json = pn.widgets.FileDownload(callback=self._alerts_json, filename="sbg_alerts.json",
                                                   label="Alerts JSON", color="default")
        # Grey like the other secondary buttons: Panel 1.9's FileDownload drops `color` before it reaches
        # the browser, and `button_type` is deprecated.
        self.report_button = pn.widgets.FileDownload(callback=self._report_file, filename="sbg_report.html",
                                                     label="Download report", color="default",
                                                     sizing_mode="stretch_width",
                                                     description="An HTML report of the run so far, to open "
                                                                 "offline or hand over. The replay goes on.")
        # File names have no spaces: let them break anywhere rather than run under the main area.
        self.report_status = HTML("", sizing_mode="stretch_width",
                                          styles={"font-size": "12px", "color": "#4b5563",
                                                  "overflow-wrap": "anywhere"})
        signals = m.signals
        self._xy = (signals[0], signals[1] if len(signals) > 1 else signals[0])
        self.x_select = pn.widgets.Select(label="x", options=signals, value=self._xy[0], width=150)
        self.y_select = pn.widgets.Select(label="y", options=signals, value=self._xy[1], width=150)
        self.size_slider = pn.widgets.FloatSlider.from_param(self.param.point_size, label="Point size", width=160)

        self.start_btn.on_click(lambda e: self._control("start"))
        self.pause_btn.on_click(lambda e: self._control("pause"))
        self.resume_btn.on_click(lambda e: self._control("resume"))
        self.stop_btn.on_click(lambda e: self._control("stop"))
        self.reset_btn.on_click(lambda e: self._control("reset"))
        self.seek_btn.on_click(lambda e: self._control("seek"))
        # The seek slider follows the replay until the user moves it; Seek (or Reset) hands it back.
        self._seek_moved = self._seek_syncing = False
        self.seek.param.watch(self._on_seek_moved, "value")
        self.speed.param.watch(self._on_speed, "value")
        self.source_select.param.watch(self._on_source, "value")
        self.baseline_select.param.watch(self._on_source, "value")
        self.upload.param.watch(self._on_upload, "value")
        self.x_select.param.watch(self._on_xy, "value")
        self.y_select.param.watch(self._on_xy, "value")

    def _for_page(self, exc) -> str:
        """An error's message without the server's paths: the monitor's files by name, others as listed."""
        outside = [(p, p.name) for p in self.monitor.paths if Path(self._relative(p)).is_absolute()]
        return without_paths(exc, self.data_dir, outside)

    def _relative(self, path) -> str:
        try:
            return str(Path(path).resolve().relative_to(Path(self.data_dir).resolve()))
        except ValueError:
            return str(path)

    def _speed_label(self):
        speed = str(self.monitor.replay.speed).lower()
        if speed == "max":
            return "max"
        label = speed if speed.endswith("x") else f"{float(speed):g}x"
        return label if label in SPEEDS else "max"

    def _settings_panel(self):
        m = self.monitor
        self._unlink_settings()
        cards = []
        for det in m.pipeline.detectors:
            names = [p for p in det.param if p != "name" and not isinstance(det.param[p], param.Dict)]
            cards.append(pn.Card(self._settings_view(det, names), title=f"Detector: {det.label}", collapsed=True,
                                 sizing_mode="stretch_width"))
        for rule in m.engine.rules:
            names = ["severity", "min_score", "pending_rows", "clear_rows"]
            cards.append(pn.Card(self._settings_view(rule, names), title=f"Rule: {rule.name}", collapsed=True,
                                 sizing_mode="stretch_width"))
        return pn.Column(*cards, sizing_mode="stretch_width")

    def _settings_view(self, obj, names):
        """Widgets generated from the ``param`` declarations; a plain table for a read-only viewer.

        The table holds no widget at all: a disabled widget is disabled only
        in the browser, and a crafted message could still change the shared
        monitor's settings.
        """
        if not self.read_only:
            pane = pn.Param(obj, parameters=names, show_name=False, sizing_mode="stretch_width")
            self._settings_panes.append(pane)
            return pane
        rows = "".join(f"<tr><th>{html.escape(n)}</th><td>{html.escape(str(getattr(obj, n)))}</td></tr>"
                       for n in names)
        return HTML(f'<table class="sbg-settings">{rows}</table>', sizing_mode="stretch_width",
                            stylesheets=[CSS])

    def _unlink_settings(self):
        """Remove the watchers the settings widgets put on the shared detectors and rules.

        ``pn.Param`` watches the object it shows and nothing removes those
        watchers when a session ends: every closed tab left its settings
        widgets alive on the monitor all sessions share, and updated them on
        every change of a setting.
        """
        for pane in self._settings_panes:
            for watcher in list(pane._internal_callbacks):
                if watcher.inst is pane.object:
                    pane.object.param.unwatch(watcher)
                    pane._internal_callbacks.remove(watcher)
        self._settings_panes = []

    # ---- views ----------------------------------------------------------
    def _build_views(self):
        css = [CSS]
        self.live_indicator = HTML("", margin=(0, 10), stylesheets=css)
        self.kpis = HTML("", sizing_mode="stretch_width", stylesheets=css)
        self.banner = HTML("", sizing_mode="stretch_width", visible=False, stylesheets=css)
        self.empty_state = HTML("", sizing_mode="stretch_width", visible=False, stylesheets=css)
        self.health_empty = HTML('<div class="sbg-empty">No data yet: the fleet grid fills as rows arrive.</div>',
                                         sizing_mode="stretch_width", stylesheets=css)
        self.signals_area = pn.Column(sizing_mode="stretch_width")
        # Before the first row the plots' time axes have nothing to show (they read 1970): a message instead.
        self.signals_empty = HTML("", sizing_mode="stretch_width", visible=False, stylesheets=css)
        import holoviews as hv

        self.health_pipe = hv.streams.Pipe(data=pd.DataFrame())
        self.activity_pipe = hv.streams.Pipe(data=self.monitor.activity_frame(10))
        self._health_rows = -1
        self._health_states, self._health_at = None, 0.0
        self.health_pane = pn.pane.HoloViews(sizing_mode="stretch_width", linked_axes=False)
        # Shown and hidden through a layout: toggling a drawn HoloViews pane's own
        # ``visible`` makes Panel copy Bokeh stylesheet models into a str-only list.
        self.health_box = pn.Column(self.health_pane, sizing_mode="stretch_width", visible=False, margin=0)
        self.activity_pane = pn.pane.HoloViews(activity_view(self.activity_pipe), sizing_mode="stretch_width",
                                               linked_axes=False)
        self.entity_legend = HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self.baseline_pane = pn.pane.HoloViews(sizing_mode="stretch_width", linked_axes=False)
        self.alerts_table = pn.widgets.Tabulator(
            self._alerts_frame(), sizing_mode="stretch_width", height=330, disabled=True, show_index=False,
            pagination="local", page_size=10, header_filters=True, selectable=False,
            formatters={**{c: {"type": "plaintext"}
                           for c in ("start", "end", "severity", "kind", "entity", "rule", "signal", "state")},
                        "message": {"type": "textarea"}},  # wraps; escaped like plaintext
            # Every column in view at any width: the short ones fixed, the message takes the rest and wraps.
            layout="fit_columns",
            widths={"start": 128, "end": 128, "severity": 100, "kind": 78, "entity": 86, "rule": 104,
                    "signal": 116, "state": 86, "pass": 70},
            stylesheets=[TABLE_CSS],
        )
        self.alerts_table.style.apply(self._severity_style, axis=1)
        self.feed = HTML("", sizing_mode="stretch_width", stylesheets=css)
        self.legend = HTML(stylesheets=css, object=
            '<div class="sbg-legend">' + "".join(
                f'<span style="--c:{STATE_COLORS[k]}">{k}</span>'
                for k in ("normal", "warning", "critical", "stale", "data quality"))
            + "</div>")
        self.progress_text.stylesheets = css
        self.upload_status.stylesheets = css

    @staticmethod
    def _severity_style(row):
        colors = {"critical": "#fee2e2", "warning": "#fef3c7", "info": "#e0f2fe"}
        color = colors.get(row.get("severity"), "")
        if row.get("state") == "resolved":
            color = "#f9fafb"
        return [f"background-color: {color}" if color else "" for _ in row]

    def _alerts_frame(self, limit=500) -> pd.DataFrame:
        table = self.monitor.alerts.head(limit)
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

    def _refresh_plots(self):
        span = WINDOWS[self.window]
        m = self.monitor
        if not m.signals:
            self.signals_area.objects = [HTML('<div class="sbg-empty">No numeric signals.</div>')]
            return
        self.bridge.reset()
        panes = []
        for s in m.signals:
            plot = pn.pane.HoloViews(signal_view(self.live, s), sizing_mode="stretch_width", linked_axes=False)
            self.bridge.watch(plot, span_s=span)
            panes.append(pn.Column(HTML(f'<div class="sbg-plot-title">{html.escape(s)}</div>',
                                        stylesheets=[CSS], margin=(0, 10)), plot, sizing_mode="stretch_width"))
        ncols = 2 if len(panes) > 1 else 1
        self.signals_area.objects = [pn.GridBox(*panes, ncols=ncols, sizing_mode="stretch_width")]
        self._draw_legend()
        self._baseline_buffer = self._new_xy_buffer()
        self.baseline_pane.object = baseline_view(m.reference, self._baseline_buffer, *self._xy,
                                                  size=self.point_size)
        self.bridge.watch(self.baseline_pane)

    def _draw_legend(self):
        self.entity_legend.object = '<div class="sbg-legend">' + "".join(
            f'<span style="--c:{ENTITY_COLORS[i % len(ENTITY_COLORS)]}">{html.escape(e)}</span>'
            for i, e in enumerate(self.live.entities)) + (
            f'<span style="--c:{STATE_COLORS["critical"]}">flagged point</span>'
            f'<span style="--c:{STATE_COLORS["data quality"]}">data-quality finding</span>'
            f'<span style="--c:#9ca3af">band: mean ± {self.monitor.pipeline.stats.band_k:g} std</span></div>')

    def _new_xy_buffer(self):
        import holoviews as hv

        x, y = self._xy
        empty = pd.DataFrame({"timestamp": pd.Series([], dtype="datetime64[ns]"),
                              x: pd.Series([], dtype=float), y: pd.Series([], dtype=float)})
        if x == y:
            empty = empty.loc[:, ~empty.columns.duplicated()]
        return hv.streams.Buffer(empty, length=5000, index=False)

    # ---- callbacks ------------------------------------------------------
    def _control(self, action):
        if self.read_only:
            return
        r = self.monitor.replay
        try:
            if action == "start":
                r.start()
            elif action == "pause":
                r.pause()
            elif action == "resume":
                r.resume()
            elif action == "stop":
                r.stop()
            elif action == "reset":
                r.reset()
                self._seek_moved = False
                self._reset_live()
            elif action == "seek":
                r.seek(self.seek.value / 100)
                self._seek_moved = False
                self._reset_live()
        except BAD_INPUT as exc:  # a seek reads the data file, which may have gone
            self.monitor.pipeline.emit_event("error", f"{action} failed: {self._for_page(exc)}", "critical")
        self._update_fast(force=True)
        # And the cards again once the replay has moved: in a notebook the next update would be a second
        # away, and rows seemed not to rise after Resume.
        stretch = PACER.stretch if self._served() else 1.0
        self._last_fast = time.monotonic() - self._fast_period(stretch) + CARDS_AFTER_CONTROL_S

    def _on_seek_moved(self, event):
        if not self._seek_syncing:
            self._seek_moved = True

    def _sync_controls(self, state, fraction):
        """One next step in view at a time: Start before a run, Pause while it runs, Resume while paused.

        The seek slider shows where the replay is (``fraction`` of the time
        span), unless the user has moved it and not yet pressed Seek.
        """
        shown = {self.start_btn: state in ("idle", "stopped", "finished"), self.pause_btn: state == "running",
                 self.resume_btn: state == "paused"}
        for button, visible in shown.items():
            if button.visible != visible:
                button.visible = visible
        idle = state not in ("running", "paused")
        if self.stop_btn.disabled != idle:
            self.stop_btn.disabled = idle
        if not self._seek_moved and fraction is not None:
            value = min(100.0, max(0.0, round(fraction * 200) / 2))  # the slider's 0.5 % steps
            if abs(self.seek.value - value) >= 0.5:
                self._seek_syncing = True
                try:
                    self.seek.value = value
                finally:
                    self._seek_syncing = False

    @staticmethod
    def _time_fraction(r):
        """How far the replay is through the data's time span (0..1), once the span is known."""
        if r.sim_time is None:
            return 0.0 if r.state == "idle" else None
        first, last = r.first_ts, r.last_ts
        if first is None or last is None or last <= first:
            return r.percent / 100
        return (pd.Timestamp(r.sim_time).value - first) / (last - first)

    def _on_speed(self, event):
        if self.read_only:
            return
        try:
            parse_speed(event.new)  # a crafted value would stop the replay at its next tick
        except BAD_INPUT as exc:
            self.upload_status.object = _error_html(f"Speed not changed: {exc}")
            return
        self.monitor.replay.speed = event.new

    def _on_source(self, event):
        if self.read_only:
            return
        try:
            path = resolve_data_file(self.source_select.value, self.data_dir)
            base = None if self.baseline_select.value == "(none)" else resolve_data_file(
                self.baseline_select.value, self.data_dir)
            monitor = monitor_for([path], baseline=base, speed=self.speed.value)
        except BAD_INPUT as exc:  # a NUL byte in a crafted name raises ValueError, an unreadable file OSError
            self.upload_status.object = _error_html(self._for_page(exc))
            return
        self.monitor = monitor
        self._xy = (monitor.signals[0], monitor.signals[1] if len(monitor.signals) > 1 else monitor.signals[0])
        self._auto_entities = True
        self._set_entities([])
        self._attach(monitor)  # new buffers and plots, for the new signals
        # Then the x/y pickers: set one by one they pass through pairs of old and new signals, and a
        # redraw before the new buffers existed raised KeyError for a source with other signals.
        self._resetting = True
        try:
            self.x_select.options = self.y_select.options = monitor.signals
            self.x_select.value, self.y_select.value = self._xy
        finally:
            self._resetting = False
        self.settings_area.objects = [self._settings_panel()]
        self._update_fast(force=True)

    def _on_upload(self, event):
        if self.read_only or not event.new:
            return
        name = _safe_name(Path(self.upload.filename or "upload.csv").name)
        if not name.lower().endswith(DATA_SUFFIXES):
            self.upload_status.object = _error_html(f"{name}: only .csv, .csv.gz and .parquet files can be uploaded.")
            return
        if len(event.new) > self.max_upload_mb * 1e6:
            self.upload_status.object = _error_html(
                f"{name} is {fmt_bytes(len(event.new))}, over the upload limit of {self.max_upload_mb:g} MB; "
                "it was not saved.")
            return
        folder = Path(self.data_dir) / "uploads"
        target = folder / name
        # Written under a hidden name beside the target (same suffix: the reader goes by it), checked, then
        # renamed over it in one step: a file that does not load never replaces or deletes what was there.
        temp = folder / f".{secrets.token_hex(8)}.{name}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(temp, "xb") as fh:
                fh.write(event.new)
            Monitor([temp])  # validate the schema before offering it
            os.replace(temp, target)
        except BAD_INPUT as exc:
            # Named as the user named it: the page never shows the server's paths.
            reason = without_paths(exc, self.data_dir, [(temp, name), (target, name)])
            self.upload_status.object = _error_html(f"{reason} ({name} was not saved)")
            return
        finally:
            with contextlib.suppress(OSError):  # gone once renamed; a failed upload leaves nothing
                temp.unlink(missing_ok=True)
        rel = self._relative(target)
        self.source_select.options = data_files(self.data_dir)
        self.upload_status.object = f"Uploaded {html.escape(rel)}."
        self.source_select.value = rel

    def _on_xy(self, event):
        if getattr(self, "_resetting", False):
            return  # a source change sets the pickers itself
        chosen = (self.x_select.value, self.y_select.value)
        if any(s not in self.monitor.signals for s in chosen):  # a crafted value
            self.upload_status.object = _error_html(f"{str(event.new)[:80]!r} is not a signal of this source")
            return
        self._xy = chosen
        self._refresh_plots()
        self._send_baseline(self.monitor.history.tail(5000))
        self.bridge.flush()

    @param.depends("entities", watch=True)
    def _on_entities(self):
        if not getattr(self, "_resetting", False):
            # The user's own choice is kept; clearing it brings back the automatic one.
            self._auto_entities = not self.entities
            self._reset_live()

    @param.depends("window", watch=True)
    def _on_window(self):
        if getattr(self, "_pending_state", None) is not None:
            self._pending_state["span"] = self._window_span()
        if not getattr(self, "_resetting", False):
            self._reset_live()

    @param.depends("point_size", watch=True)
    def _on_size(self):
        self.baseline_pane.object = baseline_view(self.monitor.reference, self._baseline_buffer, *self._xy,
                                                  size=self.point_size)

    def _upload_hint(self) -> str:
        return f"Upload a .csv, .csv.gz or .parquet file of up to {self.max_upload_mb:g} MB."

    @param.depends("max_upload_mb", watch=True)
    def _on_upload_limit(self):
        self.upload_status.object = self._upload_hint()

    async def _report_file(self):
        """The report of the run so far, as the download button's file.

        The snapshot is taken here, on the event loop the replay also runs on,
        so it sees whole chunks; it costs tens of milliseconds. Rendering takes
        up to seconds, so it runs on a worker thread: the replay (shared by
        every session) and this page keep going meanwhile. The thread does not
        carry this session's document, so the report is the one ``sbg report``
        writes.
        """
        monitor = self.monitor
        self.report_button.loading = True
        try:
            snap = Snapshot.of(monitor)
            text = await asyncio.get_running_loop().run_in_executor(None, render, snap)
        except Exception as exc:
            monitor.pipeline.fault("report", exc)
            self.report_status.object = _error_html(f"The report could not be made: {type(exc).__name__}: {exc}")
            raise  # the server log gets the traceback
        finally:
            self.report_button.loading = False
        data = text.encode("utf-8")
        filename = report_filename(monitor.source_key, snap.made_at)
        self.report_button.filename = filename
        run = "the finished run" if snap.progress.get("state") == "finished" else \
            f"the run so far ({snap.progress.get('percent') or 0:.0f}%)"
        self.report_status.object = html.escape(f"Report of {run}, {fmt_bytes(len(data))}: {filename}")
        return io.BytesIO(data)

    def _alerts_csv(self):
        from ..io.csvsafe import neutralise_frame

        # Opened in spreadsheets: no cell may run as a formula.
        return io.StringIO(neutralise_frame(self.monitor.alerts).to_csv(index=False))

    def _alerts_json(self):
        return io.StringIO(alerts_json(self.monitor.alerts))

    # ---- periodic update ----------------------------------------------
    def _drain(self):
        if not self._pending:
            return
        self._last_plot = time.monotonic()
        chunks = [chunk for chunk, _ in self._pending]
        self._pending.clear()
        self._pending_state["rows"] = 0
        if self._pending_state.pop("restarted", False):
            self._pending_state["restarted"] = False
            live = self.live
            buffers = [*live.slots, *live.flags.values(), *live.quality.values()]
            if getattr(self, "_baseline_buffer", None) is not None:
                buffers.append(self._baseline_buffer)
            self.bridge.clear(buffers)
        frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
        self._send(frame)
        self.bridge.flush()

    def _tick(self):
        if self._closed():
            # The tab has gone: stop ticking. Bokeh does not expire a session while one of its
            # callbacks holds or waits for the document lock, and on a busy server a tick nearly
            # always does: closed sessions piled up (58 of them in a churn), each still ticking.
            self.stop_updates()
            # And ask for it to go at Bokeh's next check (`sbg serve --check-unused-sessions`, 2 s):
            # the unused-session lifetime is long (60 s) so that a page slow to load on a busy server
            # keeps the session its HTML was made for; a closed tab should not wait for it.
            pn.state.curdoc.session_context._session.request_expiration()
            return
        if self.live is None or self._disconnected():
            return
        if not self._served():
            self._keep_comms_home()  # the page's comms exist once it is drawn
        now = time.monotonic()
        # Served, every session's periods stretch while the server's loop runs late, so that many
        # sessions cannot starve it (sbg.serve.pacing). Called twice per plot period: a due update waits at
        # most half a period, and the 10 % slack keeps timer jitter from pushing it a whole period back.
        served = self._served()
        stretch = PACER.stretch if served else 1.0
        period = self._tick_ms(stretch)
        if served and self._callback is not None and abs(period - self._callback.period) > 0.25 * self._callback.period:
            self._callback.period = period  # no idle ticks when the updates are spaced out
        plot_ms = self.plot_ms if served else max(self.plot_ms, NOTEBOOK_PLOT_MS)
        plot_due = bool(self._pending) and now - self._last_plot >= 0.9 * stretch * plot_ms / 1000
        slow_due = now - self._last_slow >= stretch
        fast_due = now - self._last_fast >= self._fast_period(stretch)
        if not (plot_due or slow_due or fast_due):
            return
        if served and self._browser_behind():
            # Rows wait in the bounded queue and go in one larger update once the browser catches up.
            mark_behind(self._session_id, True)
            return
        mark_behind(self._session_id, False)
        try:
            # One message per document for the whole update. No ``doc.models.freeze()``: an update
            # here adds or replaces no model (rows stream, counts and colours change in place), so
            # Bokeh never walks the page's model graph, while a freeze walks it (~50 ms for the
            # dashboard's ~900 models) every time it ends: over a replay of the bundled fleet,
            # 22 walks frozen against 1 without, and a third of the server's time with 20 sessions.
            with contextlib.ExitStack() as stack:
                for doc, comm in self._documents():
                    stack.enter_context(pn.io.hold(doc, comm=comm))
                if plot_due:
                    self._drain()
                if slow_due:
                    self._last_slow = now
                    self._update_slow()
                if fast_due:
                    self._last_fast = now
                    self._update_fast()
            if plot_due or slow_due:
                for doc, _ in self._documents():
                    # Bokeh keeps each model attached since the last message in a set until a message
                    # carries it; a plot replaced before then (a looped replay redraws them) stayed forever.
                    doc.models.flush_synced(lambda model: model.document is not None)
        except Exception as exc:  # a view must never stop the replay
            self.monitor.pipeline.fault("dashboard", exc)

    async def _tick_in_turn(self):
        """The served tick: waits for room in the event loop's turn (``Pacer.turn``), then ticks."""
        await PACER.turn()
        started = time.perf_counter()
        try:
            self._tick()
        finally:
            PACER.spend(time.perf_counter() - started)

    @staticmethod
    def _browser_behind() -> bool:
        """Whether the server still holds bytes of an earlier update for this session's browser.

        The display callback runs outside the document lock (``background=True``), so Panel
        writes its messages to the websocket without waiting for them to go out. A browser
        slower than the updates (a busy laptop, a slow link, a background tab) would make the
        server queue message after message for it, without bound: 4,000 unsent frames and
        +100 MB in 3 minutes for one tab at ``--speed max``. So a session sends nothing new
        while its socket's write buffer is not empty.
        """
        session = getattr(pn.state.curdoc.session_context, "_session", None)
        for conn in getattr(session, "_subscribed_connections", ()):
            stream = getattr(getattr(conn._socket, "ws_connection", None), "stream", None)
            if stream is not None and stream.writing():
                return True
        return False

    @staticmethod
    def _served() -> bool:
        doc = pn.state.curdoc
        return doc is not None and doc.session_context is not None

    @staticmethod
    def _closed() -> bool:
        """True in a served session whose tab has gone: its websocket was open and is closed."""
        doc = pn.state.curdoc
        session = getattr(getattr(doc, "session_context", None), "_session", None)
        return session is not None and bool(pn.state._connected.get(doc)) and session.connection_count == 0

    @staticmethod
    def _disconnected() -> bool:
        """True in a served session whose websocket is not open (not yet, or no longer).

        Nothing may reach a HoloViews plot then: a plot refreshed in a session
        Panel does not count as connected reschedules itself on every tick of
        the event loop, and each pending callback blocks the session's
        expiry, so a closed tab was never freed and the loop spun at full CPU.
        """
        if not Dashboard._served():
            return False  # a notebook, or in-process
        return not pn.state._connected.get(pn.state.curdoc)

    def _documents(self):
        """The documents showing this view, with their notebook comm (``None`` when served)."""
        if self._served():
            return [(pn.state.curdoc, None)]
        found = {}
        for ref, (model, _) in list(getattr(getattr(self, "_inline", None), "_models", {}).items()):
            if model.document is not None:
                view = pn.state._views.get(ref)
                found[id(model.document)] = (model.document, view[3] if view else None)
        return list(found.values())

    def _update_fast(self, force=False):
        m = self.monitor
        r = m.replay
        d = m.metrics
        state = r.state
        errors = d.errors
        css = "error" if errors else ("running" if state == "running" else "")
        label = {"running": "Live", "paused": "Paused", "stopped": "Stopped", "idle": "Ready",
                 "finished": "Finished"}[state]
        if errors:
            label += f" · {errors} error{'s' if errors != 1 else ''}"
        data = m.data_state()
        title = "replay state"
        if data["state"] == "stale" and state == "running":
            css = "error" if errors else "stale"  # an amber dot, not the pulsing green of rows arriving
            label += f" · no data for {_fmt_duration(data['silent_s'])}"
        elif data["state"] in ("stale", "partly stale"):
            label += f" · {data['stale_count']} of {data['entities']} stale"
            title = f"no rows for {pd.Timedelta(STALE_AFTER).total_seconds():g} s of replay time: " + ", ".join(data["stale_entities"][:20])
        elif data["state"] == "behind" and state == "running":
            # The source has the rows; the monitor is still processing them (sbg.stream.monitor.Monitor.data_state).
            label += f" · {_fmt_duration(data['behind_s'])} behind"
            title = (f"processing trails the replay clock by {_fmt_duration(data['behind_s'])} of data time; "
                     "no data is missing")
        if self._served() and PACER.stretch >= 1.1:
            title += (f"; plots update every {PACER.stretch * self.plot_ms / 1000:.1f} s "
                      f"to keep the busy server responsive ({session_count()} sessions)")
        self.live_indicator.object = (f'<span class="sbg-live {css}" title="{html.escape(title)}" '
                                      f'data-state="{state}" data-data="{data["state"]}">'
                                      f'<span class="sbg-dot"></span>{label}</span>')
        if r.rows_total is None and not getattr(r, "_sbg_scanning", False):
            # A replay started before anyone looked (--autostart) has not counted its rows: count them aside.
            r._sbg_scanning = True
            threading.Thread(target=m.count_rows, name="sbg-scan", daemon=True).start()
        pct = r.percent
        self.progress.value = int(pct)
        if not self.read_only:
            self._sync_controls(state, self._time_fraction(r))
        total = "…" if r.rows_total is None else _fmt_int(r.rows_total)
        looping = ""
        if r.loop:
            looping = (f' · <span title="The data starts over when it ends. Rows in counts every pass; the '
                       f'alerts of earlier passes stay in the table, with their pass.">pass {r.loops + 1}, '
                       f"looping</span>")
        self.progress_text.object = (f"{_fmt_int(r.rows_emitted)} of {total} rows · "
                                     f"{pct:.1f}% · speed {html.escape(str(r.speed))}{looping}")
        sim_ts = None if r.sim_time is None else pd.Timestamp(r.sim_time)
        sim = "–" if sim_ts is None else sim_ts.strftime("%H:%M:%S")
        sim_label = "Sim time" if sim_ts is None else f"Sim {sim_ts:%m-%d}"
        cards = [
            ("Rows in", "rows_in", _fmt_int(d.rows_in), ""),
            ("Quarantine", "rows_quarantined", _fmt_int(d.rows_quarantined), "warning" if d.rows_quarantined else ""),
            ("Analyses", "analyses", _fmt_int(d.analyses), ""),
            ("Rows/s", "ingest_rate", f"{d.ingest_rate:,.0f}" if state == "running" else "0", ""),
            ("Uptime", "uptime", _fmt_duration(time.time() - m.started_at.timestamp()), ""),
            ("Entities", "entities", _fmt_int(d.entities), ""),
            ("Firing", "alerts_firing", _fmt_int(d.alerts_firing), "critical" if d.alerts_firing else ""),
            (sim_label, "sim_time", sim, ""),
            ("Done", "percent", f"{pct:.1f}%", ""),
        ]
        # Long values take a smaller font rather than an ellipsis: 480,760 rows must be read whole.
        self.kpis.object = '<div class="sbg-kpiwrap"><div class="sbg-kpis">' + "".join(
            f'<div class="sbg-kpi {cls}" data-kpi="{key}" title="{html.escape(f"{name}: {value}")}">'
            f'<div class="label">{html.escape(name)}</div>'
            f'<div class="value {_kpi_size(value)}">{html.escape(value)}</div></div>'
            for name, key, value, cls in cards) + "</div></div>"
        banner = ""
        if errors:
            going = "The replay goes on; see" if state == "running" else "See"
            banner = (f'<div class="sbg-banner error"><b>Errors: {errors}.</b> Latest: '
                      f"{html.escape(self._for_page(d.last_error[:300]))}. {going} the event feed.</div>")
        elif state == "paused":
            banner = '<div class="sbg-banner paused"><b>Paused.</b> The clock is held; press Resume to carry on.</div>'
        elif state == "finished":
            banner = ('<div class="sbg-banner finished"><b>Replay finished.</b> '
                      f"{_fmt_int(d.rows_in)} rows, {_fmt_int(d.alerts_total)} alerts. Reset to replay again.</div>")
        self.banner.object = banner
        self.banner.visible = bool(banner)
        if state == "idle" and not d.rows_in:
            names = ", ".join(html.escape(p.name) for p in m.paths)
            empty = (f'<div class="sbg-empty">Ready to replay <b>{names}</b> '
                     f"({_rows_label(m.count_rows())}). "
                     + ("An admin starts the replay; this page follows it." if self.read_only
                        else "Press <b>Start</b> in the sidebar.") + "</div>")
            if not isinstance(self.empty_state.object, str) or self.empty_state.object != empty:
                self.empty_state.object = empty
            self.empty_state.visible = True
        else:
            self.empty_state.visible = False
        waiting = state == "idle" and not d.rows_in
        if self.signals_area.visible == waiting:
            # Shown and hidden through their layout, as the health grid is.
            if waiting:
                self.signals_empty.object = ('<div class="sbg-empty">The plots of '
                                             + ", ".join(f"<b>{html.escape(s)}</b>" for s in m.signals)
                                             + " draw here as rows arrive.</div>")
            self.signals_empty.visible = waiting
            self.signals_area.visible = not waiting

    def _update_health(self, health):
        """The fleet health grid: drawn anew when the fleet outgrows it, otherwise patched."""
        # Room for the next multiple of 8 entities: a fleet coming online does not redraw the grid per entity.
        n = -(-health["entity"].nunique() // 8) * 8 if not health.empty else 0
        now = time.monotonic()
        if n == 0 and self._health_rows < 0 and self.monitor.signals:
            # Before the first rows, a hidden grid of 8 blank rows is drawn with the page; the first
            # rows fill it in place (~30 ms). Drawn then, each session's new grid held the server's
            # loop for ~200 ms, all of them when a replay started.
            self._health_rows = 8
            self.health_pipe.event(data=blank_health(self.monitor.signals, 8))
            self.health_pane.object = health_view(self.health_pipe, health_height(8))
        if n != self._health_rows and not health.empty and self._served() and now < _GRID_BUILDS["free_at"]:
            # Another session has just drawn its grid: this one draws at a later tick. Twenty sessions
            # watching a replay that starts each drew theirs (~165 ms each) in the same turn of the
            # server's loop, which answered nothing else for 3 to 5 s.
            return
        self.health_empty.visible = health.empty
        self.health_box.visible = not health.empty
        if health.empty:
            return
        states = (tuple(health["entity"]), tuple(health["signal"]), health["state"].to_numpy().tobytes())
        if n != self._health_rows:
            # A new grid only when the fleet grows past a multiple of 8 entities.
            self._health_rows = n
            self._health_states, self._health_at = states, now
            self.health_pipe.event(data=health)
            self.health_pane.object = health_view(self.health_pipe, health_height(n))
            # The next session's grid waits as long as this one took: at most half the loop's time.
            _GRID_BUILDS["free_at"] = 2 * time.monotonic() - now
        elif states != self._health_states or now - self._health_at >= 5:
            # Colours at once when a state changes, scores and times under the hover every 5 s;
            # patched into the drawn grid.
            self._health_states, self._health_at = states, now
            update_health(self.health_pane, self.health_pipe, health)

    def _update_slow(self):
        m = self.monitor
        if self._disconnected():
            return
        self._update_health(m.health())
        update_activity(self.activity_pane, self.activity_pipe, m.activity_frame(10))
        version = (len(m.engine.alerts), sum(a.reopened for a in m.engine.alerts.values()),
                   sum(a.state == "resolved" for a in m.engine.alerts.values()))
        if version != self._alerts_seen:
            self._alerts_seen = version
            self.alerts_table.value = self._alerts_frame()
        events = list(m.events)[-100:]
        key = (len(m.events), events[-1]["time"] if events else None, events[-1]["message"] if events else None)
        if key != self._events_seen:
            self._events_seen = key
            items = []
            for ev in reversed(events):
                cls = "error" if ev["kind"] == "error" else ev["severity"]
                sim, wall = ev.get("sim_time"), ev["time"][11:19]
                stamp = sim[11:19] if sim else wall
                tip = (f"data time {sim.replace('T', ' ')}; logged at {wall} (wall clock)" if sim else
                       f"logged at {wall} (wall clock), before any data")
                items.append(f'<div class="ev {html.escape(cls)}"><span class="t" title="{html.escape(tip)}">'
                             f'{html.escape(stamp)}</span>{html.escape(ev["kind"])}: {html.escape(ev["message"])}</div>')
            self.feed.object = ('<div class="sbg-feed">' + ("".join(items) or
                                "<div class=\"ev\">No events yet: alert changes, quarantined rows and errors "
                                "appear here.</div>") + "</div>")

    def _keep_comms_home(self):
        """Handle the page's comm messages on the loop this view updates the page from.

        JupyterLab (4.4 on) sends comm messages to a kernel subshell
        (``commsOverSubshells``, on by default), and ipykernel 7 runs each
        subshell on a thread of its own. Panel then applied the page's events
        to the Bokeh document on that thread while the periodic update changed
        and sent the same document on the notebook's: the fragments of their
        messages interleaved, the page's comm receiver failed on every later
        update ('Expected binary fragment but received text fragment') and
        the dashboard froze; a Resume clicked there ran the replay on that
        thread, read mid-chunk by the updates. So each message is passed on,
        in order, to this view's own loop.
        """
        if self._home is None:
            return
        loop, thread = self._home
        for _, client in list(getattr(getattr(self, "_inline", None), "_comms", {}).values()):
            handler = getattr(client, "_on_msg", None)
            if handler is None or getattr(handler, "sbg_home", False):
                continue

            def on_msg(msg, handler=handler, client=client):
                if threading.current_thread() is thread or loop.is_closed():
                    handler(msg)
                else:
                    loop.call_soon_threadsafe(_handle_comm_message, client, handler, msg)

            on_msg.sbg_home = True
            client._on_msg = on_msg

    def start_updates(self):
        """Begin the per-session display callback (served sessions and notebooks)."""
        with contextlib.suppress(RuntimeError):  # no loop: driven by hand (tests, scripts)
            self._home = (asyncio.get_running_loop(), threading.current_thread())
        if self._callback is None:
            # In the background (no busy events: each one set Panel's global busy flag, a fifth of the
            # server's time with 20 sessions ticking 20 times a second) and without a log line per tick.
            tick = self._tick_in_turn if self._served() else self._tick
            self._callback = pn.io.PeriodicCallback(callback=tick, period=self._tick_ms(1.0),
                                                    background=True, log=False)
            self._callback.start()
            if self._served():
                PACER.freeze = True  # long-lived session objects out of the collector's sight
                PACER.start()
        self._update_fast(force=True)
        self._update_slow()

    def _fast_period(self, stretch: float) -> float:
        """Seconds between updates of the cards and state (a notebook's are spaced out: see NOTEBOOK_PLOT_MS)."""
        return stretch * (self.update_ms if self._served() else max(self.update_ms, NOTEBOOK_PLOT_MS)) / 1000

    def _tick_ms(self, stretch: float) -> int:
        """Milliseconds between ticks: half the shortest (stretched) update period."""
        return int(max(25, stretch * min(self.update_ms, self.plot_ms) / 2))

    def stop_updates(self):
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    def close(self):
        """Unsubscribe and drop this view's buffers (called when a served session ends).

        The buffers are dropped, not cleared: clearing would try to redraw
        plots whose document is already gone.
        """
        self.stop_updates()
        self._detach()
        self._unlink_settings()
        self._pending.clear()
        self.bridge.reset()
        self.live = None

    # ---- layout ---------------------------------------------------------
    def _main(self):
        top = pn.Column(self.kpis, self.banner, self.empty_state, sizing_mode="stretch_width")
        right = pn.Column(HTML('<div class="sbg-plot-title">Fleet health</div>', stylesheets=[CSS],
                                       margin=(0, 10)), self.legend,
                          self.health_empty, self.health_box,
                          HTML('<div class="sbg-plot-title">Activity per minute</div>', stylesheets=[CSS],
                               margin=(10, 10, 0, 10)),
                          self.activity_pane, sizing_mode="stretch_width")
        plots = pn.Row(pn.Column(self.entity_legend, self.signals_empty, self.signals_area,
                                 sizing_mode="stretch_width"), right,
                       sizing_mode="stretch_width")
        plots[0].width_policy = "max"
        right.styles = {"flex": "0 0 32%"}
        # Side by side on a wide screen; the events go under the alerts when there is no room for both
        # (a laptop, a notebook), so the alert table keeps every column in view.
        bottom = pn.FlexBox(
            pn.Column(pn.Row(pn.pane.Markdown("### Alerts", margin=(0, 5)), pn.Spacer(), self.export_csv,
                             self.export_json, sizing_mode="stretch_width"), self.alerts_table,
                      sizing_mode="stretch_width", styles={"flex": "1 1 760px"}),
            pn.Column(pn.pane.Markdown("### Events", margin=(0, 5)),
                      HTML('<div class="sbg-note">Times are the data\'s own (hover for the wall clock).</div>',
                           stylesheets=[CSS], margin=(0, 10)), self.feed,
                      sizing_mode="stretch_width", styles={"flex": "1 1 380px"}),
            flex_wrap="wrap", sizing_mode="stretch_width",
        )
        baseline = pn.Column(pn.Row(self.x_select, self.y_select, self.size_slider), self.baseline_pane,
                             sizing_mode="stretch_width")
        return pn.Column(top, plots, bottom, pn.layout.Divider(), baseline, sizing_mode="stretch_width")

    def _sidebar(self):
        controls = pn.Column(
            pn.Row(self.start_btn, self.pause_btn, self.resume_btn, self.stop_btn, self.reset_btn,
                   sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )
        self.settings_area = pn.Column(self._settings_panel(), sizing_mode="stretch_width")
        items = [self.source_select, self.upload, self.upload_status, self.baseline_select,
                 pn.pane.Markdown("**Speed**", margin=(5, 10, 0, 10)), self.speed]
        if not self.read_only:
            items.append(controls)
        items += [self.progress, self.progress_text]
        if not self.read_only:
            items += [pn.Row(self.seek, self.seek_btn, sizing_mode="stretch_width")]
        items += [pn.pane.Markdown("**Report**", margin=(10, 10, 0, 10)), self.report_button, self.report_status]
        items += [self.window_select, self.entity_choice,
                  pn.pane.Markdown("**Detectors and rules**", margin=(10, 10, 0, 10)), self.settings_area]
        if self.read_only:
            for w in (self.source_select, self.baseline_select, self.upload, self.speed):
                w.disabled = True
        return pn.Column(*items, sizing_mode="stretch_width")

    def __panel__(self):
        """Inline layout (notebooks): sidebar beside the main area."""
        if not hasattr(self, "_inline"):
            # Beside its sidebar, a notebook's dashboard has about 620 px for the alert table: the message
            # keeps a readable width when kind, rule, end and a loop's pass step aside (the message names the
            # rule; the CSV and JSON exports keep every column).
            self.alerts_table.hidden_columns = ["kind", "rule", "end", "pass"]
            self.alerts_table.widths = {"start": 124, "severity": 100, "entity": 84, "signal": 116, "state": 80}
            self._inline = pn.Row(
                pn.Column(pn.Row(pn.pane.Markdown("## sbg", margin=(0, 10)), self.live_indicator),
                          self._sidebar(), width=320),
                self._main(), sizing_mode="stretch_width")
            self.start_updates()
        return self._inline

    def servable(self, title: str = "sbg · Smart Battery Guardian", **kwargs):
        """Serve as a page: template with header, sidebar and main area; cleans up with the session."""
        # pn.state.served looks at the caller's module name, which is this one: ask the document instead.
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None:
            return super().servable(title=title, **kwargs)
        _quiet_closed_sockets()
        header = [self.live_indicator]
        admins = [u.strip() for u in os.environ.get("SBG_ADMIN_USERS", "").split(",") if u.strip()]
        if admins and pn.state.user not in admins:
            # sbg serve --admin-users: everyone else watches; the callbacks check read_only too.
            self.read_only = True
            header.append(HTML(f'<span class="sbg-readonly" title="signed in as '
                                       f'{html.escape(str(pn.state.user))}">View only</span>', stylesheets=[CSS]))
        # Bootstrap: the one template that needs no web fonts from the internet. No busy spinner:
        # every periodic callback of every session sets Panel's global busy flag, which updates
        # the spinner of every open page, so each tick cost more with each session (n**2 in all).
        template = pn.template.BootstrapTemplate(
            title=title, sidebar=[self._sidebar()], main=[self._main()], header=header,
            header_background="#0f172a", sidebar_width=340, busy_indicator=None,
        )
        self.start_updates()

        session_id = doc.session_context.id

        def on_destroyed(session_context):
            if session_context.id == session_id:
                self.close()
                PACER.thaw()  # its frozen objects are garbage now

        pn.state.on_session_destroyed(on_destroyed)
        return template.servable(**kwargs)


def _quiet_closed_sockets():
    """Keep a closed browser tab out of the server log's tracebacks (once per event loop).

    When a tab closes while the server is writing to its websocket, the
    write's task ends in ``WebSocketClosedError`` and nobody awaits it, so
    asyncio logged "Task exception was never retrieved" with a traceback for
    every closed tab. A tab going away is normal: that one is logged at debug
    level; every other unhandled exception still goes to the default handler.
    """
    loop = asyncio.get_running_loop()
    if getattr(loop, "_sbg_quiet_sockets", False):
        return
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    def handler(loop, context):
        if isinstance(context.get("exception"), (WebSocketClosedError, StreamClosedError)):
            logging.getLogger("sbg").debug("a browser went away during a write: %s", context.get("message"))
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    loop._sbg_quiet_sockets = True


SESSION_KINDS["dashboards"] = Dashboard


def serve_page():
    """Lay out one session's dashboard on the page being served (the served apps call this)."""
    pn.extension("tabulator", notifications=True)
    Dashboard().servable()
