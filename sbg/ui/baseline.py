"""The baseline-versus-live scatter: two signals of the reference data against the rows streaming in."""

from __future__ import annotations

import html

import pandas as pd
import panel as pn
import param

from .plots import baseline_view
from .session import Session

__all__ = ["Baseline"]


class Baseline(pn.viewable.Viewer):
    """A scatter of signal ``x`` against ``y``: the baseline (the monitor's reference) under the live rows.

    :meth:`send` feeds it the rows the live plots get; :meth:`redraw` draws
    it anew (new axes, a new source). A pair that is not two signals of the
    source (a crafted value from the browser) is refused through ``refused``.
    A source with one signal has no pair to draw: the card says so instead.
    """

    session = param.ClassSelector(class_=Session, doc="The page's session.")
    refused = param.Callable(default=None, doc="Called with a message when the page's choice is refused.")

    def __init__(self, **params):
        super().__init__(**params)
        signals = self.session.monitor.signals
        self.xy = self.default_axes(signals)
        self.buffer = None
        self.x_select = pn.widgets.Select(label="x", options=signals, value=self.xy[0], width=150)
        self.y_select = pn.widgets.Select(label="y", options=signals, value=self.xy[1], width=150)
        self.size_slider = pn.widgets.FloatSlider.from_param(self.session.param.point_size, label="Point size",
                                                             width=160)
        self.pane = pn.pane.HoloViews(sizing_mode="stretch_width", linked_axes=False)
        self.note = pn.pane.HTML("", visible=False, sizing_mode="stretch_width")
        self.controls = pn.Row(self.x_select, self.y_select, self.size_slider)
        self._choosing = False
        self.x_select.param.watch(self._on_xy, "value")
        self.y_select.param.watch(self._on_xy, "value")
        self.session.param.watch(self._on_size, "point_size")

    def __panel__(self):
        return pn.Column(self.controls, self.note, self.pane, sizing_mode="stretch_width")

    @staticmethod
    def default_axes(signals) -> tuple[str, str]:
        """The first two signals (the first twice when there is one)."""
        return signals[0], signals[1] if len(signals) > 1 else signals[0]

    def use_signals(self, signals):
        """Offer ``signals`` (a new source's) in the pickers, without redrawing: the owner redraws."""
        self._choosing = True
        try:
            self.x_select.options = self.y_select.options = signals
            self.x_select.value, self.y_select.value = self.xy
        finally:
            self._choosing = False

    def redraw(self):
        """A new source for the live points and the scatter drawn anew over it, streaming through the bridge."""
        signals = self.session.monitor.signals
        single = len(signals) < 2
        self.controls.visible = self.pane.visible = not single
        self.note.visible = single
        if single:  # one signal: no plane to draw the baseline and the live rows in
            self.buffer = None
            self.pane.object = None
            name = html.escape(str(signals[0])) if signals else "none"
            self.note.object = (f'<div class="sbg-empty"><b>Baseline vs live</b> draws two signals against each '
                                f'other; this source has one (<b>{name}</b>), plotted above.</div>')
            return
        self.buffer = self._new_buffer()
        self._draw()
        self.session.bridge.watch(self.pane)

    def send(self, frame: pd.DataFrame):
        """Add ``frame``'s points (its newest 5,000) to the scatter."""
        x, y = self.xy
        if self.buffer is not None and x in frame and y in frame:
            part = frame[list(dict.fromkeys(["timestamp", x, y]))].dropna().tail(5000).reset_index(drop=True)
            if len(part):
                self.session.bridge.update(self.buffer, part)

    def _draw(self):
        self.pane.object = baseline_view(self.session.monitor.reference, self.buffer, *self.xy,
                                         size=self.session.point_size)

    def _new_buffer(self):
        import holoviews as hv

        x, y = self.xy
        empty = pd.DataFrame({"timestamp": pd.Series([], dtype="datetime64[ns]"),
                              x: pd.Series([], dtype=float), y: pd.Series([], dtype=float)})
        if x == y:
            empty = empty.loc[:, ~empty.columns.duplicated()]
        return hv.streams.Buffer(empty, length=5000, index=False)

    def _on_xy(self, event):
        if self._choosing:
            return  # a source change sets the pickers itself
        chosen = (self.x_select.value, self.y_select.value)
        if any(s not in self.session.monitor.signals for s in chosen):  # a crafted value
            if self.refused is not None:
                self.refused(f"{str(event.new)[:80]!r} is not a signal of this source")
            return
        self.xy = chosen
        self.redraw()
        self.send(self.session.monitor.history.tail(5000))
        self.session.bridge.flush()

    def _on_size(self, event):
        if self.buffer is not None:
            self._draw()
