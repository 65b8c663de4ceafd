"""The live signal plots: one per signal, the entities chosen, the visible window, their legend."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import panel as pn
import param

from ..report.style import ENTITY_COLORS, STATE_COLORS
from .baseline import Baseline
from .plots import LiveBuffers, signal_view
from .session import NOTEBOOK_ROWS_PER_UPDATE, WINDOWS, Session, fitting_window, served
from .style import CSS, HTML, choices, title

__all__ = ["SignalPlots"]


def _median_interval(frame: pd.DataFrame) -> float:
    """The median of ``frame``'s positive ``interval_s`` (seconds between an entity's rows); NaN when none."""
    if "interval_s" not in frame or not len(frame):
        return float("nan")
    v = frame["interval_s"].to_numpy(dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.median(v)) if len(v) else float("nan")


class SignalPlots(pn.viewable.Viewer):
    """One streaming plot per signal of the monitor, for the entities chosen, over the visible window.

    The entities are the session's ``entities``: while the user has chosen
    none, the first ``max_entities`` seen are drawn and entities coming
    online take the free slots, without redrawing the plots. The rows come
    from the session's queue (:meth:`draw`) and, after a change of window,
    selection or source, from the monitor's retained history (:meth:`reset`).
    The ``baseline`` scatter is fed the same rows.
    """

    session = param.ClassSelector(class_=Session, doc="The page's session.")
    baseline = param.ClassSelector(class_=Baseline, doc="The baseline-vs-live scatter fed the same rows.")

    def __init__(self, **params):
        super().__init__(**params)
        session = self.session
        self.live: LiveBuffers | None = None
        self._live_window = None
        self._entity_options: list[str] = []
        self._auto_entities = not session.entities
        #: Whether the visible window still follows the data (until the user picks one).
        self._auto_window = True
        self._resetting = False
        self.window_select = pn.widgets.Select.from_param(session.param.window, label="Visible window",
                                                          sizing_mode="stretch_width")
        self.entity_choice = pn.widgets.MultiChoice.from_param(session.param.entities, label="Entities",
                                                               sizing_mode="stretch_width", max_items=24)
        self.signals_area = pn.Column(sizing_mode="stretch_width")
        # Before the first row the plots' time axes have nothing to show (they read 1970): a message instead.
        self.signals_empty = HTML("", sizing_mode="stretch_width", visible=False, stylesheets=[CSS])
        self.entity_legend = HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        session.param.watch(self._on_entities, "entities")
        session.param.watch(self._on_window, "window")

    def __panel__(self):
        return pn.Column(self.entity_legend, self.signals_empty, self.signals_area, sizing_mode="stretch_width")

    # ---- the entities ---------------------------------------------------
    def choose_automatically(self):
        """Draw the first entities seen again (the user's choice is dropped), from the next :meth:`reset`."""
        self._auto_entities = True
        self._set_entities([])

    def _set_entities(self, chosen, labels=None):
        """Sets the entity filter (and its options) without counting it as the user's choice."""
        self._resetting = True
        try:
            if labels is not None:
                self.session.param.entities.objects = choices(labels)
            self.session.entities = list(chosen)
        finally:
            self._resetting = False

    def _on_entities(self, event):
        if not self._resetting:
            # The user's own choice is kept; clearing it brings back the automatic one.
            self._auto_entities = not self.session.entities
            self.reset()

    def _on_window(self, event):
        if not self._resetting:
            self._auto_window = False  # the user's choice is kept from now on
            self.reset()

    def fit_window(self, frame: pd.DataFrame) -> bool:
        """Set the visible window from the data's usual interval (``frame``'s ``interval_s``), once, unless the
        user chose one; returns whether it changed. The caller then resets the plots.

        A 5-minute logger in a ten-minute window would show two points: it gets a day instead.
        """
        if not self._auto_window:
            return False
        interval = _median_interval(frame)
        if interval != interval:
            return False
        self._auto_window = False  # once, from the first rows that say their interval
        chosen = fitting_window(interval)
        if chosen == self.session.window:
            return False
        self._resetting = True
        try:
            self.session.window = chosen
        finally:
            self._resetting = False
        return True

    # ---- the rows -------------------------------------------------------
    def reset(self):
        """New buffers and plots for the current entity selection, primed with retained history."""
        session = self.session
        m = session.monitor
        self.fit_window(m.history.tail(5000))  # a page opened on rows already seen
        labels = [str(e) for e in m.pipeline.features.index.labels]
        if not labels and session.entities:
            # Reset: no entity is known until data flows again; keep the plots (and the browser's models).
            chosen = list(session.entities)
            labels = chosen
        elif self._auto_entities or any(e not in labels for e in session.entities):
            self._auto_entities = True
            chosen = labels[: session.max_entities]
        else:
            chosen = list(session.entities)
        # The automatic selection draws max_entities slots up front; entities take them as they appear.
        slots = session.max_entities if self._auto_entities else 0
        self._entity_options = labels
        self._set_entities(chosen, labels)
        live = self.live
        length = self._window_rows()
        if live is not None and live.entities[: len(chosen)] == [str(e) for e in chosen] \
                and len(live.slots) == max(len(chosen), slots) and live.signals == list(m.signals) \
                and self._live_window == session.window and live.length == length:
            # Same plots: empty their Buffers instead of replacing models the browser may still reference.
            live.clear()
        else:
            self.live = LiveBuffers(m.signals, chosen, length=length, bridge=session.bridge, slots=slots)
            self._live_window = session.window
            self.redraw()
        history = m.history.tail(200_000)
        if len(history):
            self.send(history[history["timestamp"] >= history["timestamp"].max() - session.window_span()])
        session.bridge.flush()

    def draw(self, frame: pd.DataFrame, restarted: bool = False):
        """Stream ``frame`` (the session's queued rows) into the plots; ``restarted``: the data started over."""
        bridge = self.session.bridge
        if self.fit_window(frame):
            self.reset()  # drawn anew from the retained history, these rows with it
            return
        if restarted:
            live = self.live
            buffers = [*live.slots, *live.flags.values(), *live.quality.values(), *live.forecasts.values()]
            if self.baseline.buffer is not None:
                buffers.append(self.baseline.buffer)
            bridge.clear(buffers)
        self.send(frame)
        bridge.flush()

    def send(self, frame: pd.DataFrame):
        """Queue a frame's rows for the plots; entities it brings take the free slots of the automatic selection."""
        session = self.session
        labels = session.monitor.pipeline.features.index.labels
        shown = len(self.live.entities)
        # In a notebook every update goes through the kernel's IOPub channel, which Jupyter stops (dropping
        # cell output as well) beyond 1 MB/s: there each update sends a bounded, extremes-keeping sample.
        cap = None if served() else NOTEBOOK_ROWS_PER_UPDATE
        session.rows_sent += self.live.send(frame, max_rows=cap)
        self._send_forecasts()
        grew = len(self.live.entities) != shown
        if len(labels) != len(self._entity_options):
            self._entity_options = [str(e) for e in labels]
            self._set_entities(self.live.entities if self._auto_entities else session.entities,
                               self._entity_options)
        elif grew:
            self._set_entities(self.live.entities)
        if grew:
            self._draw_legend()
        self.baseline.send(frame)

    def _send_forecasts(self):
        """The limit forecasts of the entities shown, from the pipeline's forecast detector (if it runs)."""
        forecast = next((d for d in self.session.monitor.pipeline.detectors
                         if d.label == "forecast" and d.enabled and hasattr(d, "projection")), None)
        if forecast is not None:
            self.live.send_forecasts(forecast.projection, WINDOWS[self.session.window])

    def _window_rows(self) -> int:
        """Rows per entity that cover the visible window (at the data's usual interval), plus a margin.

        Rows older than the window are off the axis: keeping them would only
        make the browser draw more.
        """
        dt = _median_interval(self.session.monitor.history.tail(5000))
        dt = dt if dt == dt else 1.0
        return int(min(max(WINDOWS[self.session.window] / dt * 1.2, 300), 20_000))

    # ---- the plots ------------------------------------------------------
    def redraw(self):
        """The plots drawn anew over the current buffers (and the baseline scatter with them)."""
        m = self.session.monitor
        if not m.signals:
            self.signals_area.objects = [HTML('<div class="sbg-empty">No numeric signals.</div>')]
            return
        bridge = self.session.bridge
        bridge.reset()
        span = WINDOWS[self.session.window]
        panes = []
        for s in m.signals:
            plot = pn.pane.HoloViews(signal_view(self.live, s), sizing_mode="stretch_width", linked_axes=False)
            bridge.watch(plot, span_s=span)
            panes.append(pn.Column(title(html.escape(s)), plot, sizing_mode="stretch_width"))
        ncols = 2 if len(panes) > 1 else 1
        self.signals_area.objects = [pn.GridBox(*panes, ncols=ncols, sizing_mode="stretch_width")]
        self._draw_legend()
        self.baseline.redraw()

    def show_waiting(self):
        """Before the first row (and after a reset): a message in place of the plots."""
        m = self.session.monitor
        waiting = m.replay.state == "idle" and not m.metrics.rows_in
        if self.signals_area.visible == waiting:
            # Shown and hidden through their layout, as the health grid is.
            if waiting:
                self.signals_empty.object = ('<div class="sbg-empty">The plots of '
                                             + ", ".join(f"<b>{html.escape(s)}</b>" for s in m.signals)
                                             + " draw here as rows arrive.</div>")
            self.signals_empty.visible = waiting
            self.signals_area.visible = not waiting

    def _draw_legend(self):
        self.entity_legend.object = '<div class="sbg-legend">' + "".join(
            f'<span style="--c:{ENTITY_COLORS[i % len(ENTITY_COLORS)]}">{html.escape(e)}</span>'
            for i, e in enumerate(self.live.entities)) + (
            f'<span style="--c:{STATE_COLORS["critical"]}">flagged point</span>'
            f'<span style="--c:{STATE_COLORS["data quality"]}">data-quality finding</span>'
            f'<span style="--c:#9ca3af">band: mean ± {self.session.monitor.pipeline.stats.band_k:g} std</span>'
            f'<span style="--c:{STATE_COLORS["warning"]}">dashed: trend to the limit, with its band</span></div>')
