"""The replay's controls: Start, Pause, Resume, Stop, Reset, the seek slider, and the progress they move."""

from __future__ import annotations

import html

import pandas as pd
import panel as pn
import param

from .paths import BAD_INPUT
from .session import Session
from .style import CSS, HTML, fmt_int

__all__ = ["Controls"]


def time_fraction(r) -> float | None:
    """How far the replay ``r`` is through the data's time span (0..1), once the span is known."""
    if r.sim_time is None:
        return 0.0 if r.state == "idle" else None
    first, last = r.first_ts, r.last_ts
    if first is None or last is None or last <= first:
        return r.percent / 100
    return (pd.Timestamp(r.sim_time).value - first) / (last - first)


class Controls(pn.viewable.Viewer):
    """Buttons that act on the shared replay, one next step in view at a time, and its progress.

    A read-only page shows only the progress: the buttons and the seek
    slider are left out of its layout, and :meth:`control` refuses.
    """

    session = param.ClassSelector(class_=Session, doc="The page's session.")
    moved = param.Callable(default=None, doc="Called after a reset or a seek: the data starts over.")
    acted = param.Callable(default=None, doc="Called after every control, done or refused.")

    def __init__(self, **params):
        super().__init__(**params)
        self.start_btn = pn.widgets.Button(label="Start", color="success")
        self.pause_btn = pn.widgets.Button(label="Pause", color="warning")
        self.resume_btn = pn.widgets.Button(label="Resume", color="primary")
        self.stop_btn = pn.widgets.Button(label="Stop", color="danger")
        self.reset_btn = pn.widgets.Button(label="Reset", color="light")
        self.progress = pn.indicators.Progress(label="Progress", value=0, max=100, sizing_mode="stretch_width",
                                               bar_color="primary")
        self.progress_text = HTML("", styles={"font-size": "12px", "color": "#4b5563"}, stylesheets=[CSS])
        self.seek = pn.widgets.FloatSlider(label="Seek (% of the time span)", start=0, end=100, step=0.5,
                                           value=0, sizing_mode="stretch_width")
        self.seek_btn = pn.widgets.Button(label="Seek", color="default")
        for action in ("start", "pause", "resume", "stop", "reset"):
            getattr(self, f"{action}_btn").on_click(lambda e, action=action: self.control(action))
        self.seek_btn.on_click(lambda e: self.control("seek"))
        # The seek slider follows the replay until the user moves it; Seek (or Reset) hands it back.
        self._seek_moved = self._seek_syncing = False
        self.seek.param.watch(self._on_seek_moved, "value")

    def __panel__(self):
        return pn.Column(*self.items(), sizing_mode="stretch_width")

    def items(self) -> list:
        """The pieces in order, for a sidebar to lay out among its own: no buttons on a read-only page."""
        items = []
        if not self.session.read_only:
            items.append(pn.Column(pn.Row(self.start_btn, self.pause_btn, self.resume_btn, self.stop_btn,
                                          self.reset_btn, sizing_mode="stretch_width"),
                                   sizing_mode="stretch_width"))
        items += [self.progress, self.progress_text]
        if not self.session.read_only:
            items.append(pn.Row(self.seek, self.seek_btn, sizing_mode="stretch_width"))
        return items

    def control(self, action: str):
        """Act on the replay: ``start``, ``pause``, ``resume``, ``stop``, ``reset`` or ``seek`` (to the slider)."""
        if self.session.read_only:
            return
        monitor = self.session.monitor
        r = monitor.replay
        try:
            if action == "seek":
                r.seek(self.seek.value / 100)
            elif action in ("start", "pause", "resume", "stop", "reset"):
                getattr(r, action)()
            if action in ("reset", "seek"):
                self._seek_moved = False
                if self.moved is not None:
                    self.moved()
        except BAD_INPUT as exc:  # a seek reads the data file, which may have gone
            monitor.pipeline.emit_event("error", f"{action} failed: {self.session.for_page(exc)}", "critical")
        if self.acted is not None:
            self.acted()

    def refresh(self):
        """Progress and the buttons as the replay stands now."""
        r = self.session.monitor.replay
        pct = r.percent
        self.progress.value = int(pct)
        if not self.session.read_only:
            self._sync(r.state, time_fraction(r))
        # A followed source has no end: no share done, and nothing to seek to.
        self.progress.visible = self.seek.visible = self.seek_btn.visible = not r.follows
        if r.follows:
            files = len(getattr(r.sources[0], "tails", {}) or {})
            self.progress_text.object = (f"{fmt_int(r.rows_emitted)} rows · following {files} file"
                                         f"{'' if files == 1 else 's'} as they grow")
            return
        total = "…" if r.rows_total is None else fmt_int(r.rows_total)
        looping = ""
        if r.loop:
            looping = (f' · <span title="The data starts over when it ends. Rows in counts every pass; the '
                       f'alerts of earlier passes stay in the table, with their pass.">pass {r.loops + 1}, '
                       f"looping</span>")
        self.progress_text.object = (f"{fmt_int(r.rows_emitted)} of {total} rows · "
                                     f"{pct:.1f}% · speed {html.escape(str(r.speed))}{looping}")

    def _on_seek_moved(self, event):
        if not self._seek_syncing:
            self._seek_moved = True

    def _sync(self, state, fraction):
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
