"""The detectors' and alert rules' settings, as widgets made from their ``param`` declarations."""

from __future__ import annotations

import html

import panel as pn
import param

from .session import Session
from .style import CSS, HTML

__all__ = ["SettingsPanel"]

#: The settings of an alert rule shown on the page.
RULE_SETTINGS = ["severity", "min_score", "pending_rows", "clear_rows", "clear_for"]


class SettingsPanel(pn.viewable.Viewer):
    """One collapsed card per detector and alert rule of the monitor, with its settings.

    The widgets change the shared monitor's objects, for every session on
    it; a read-only page gets plain tables instead. The cards are made when
    the panel is first laid out, and made again by :meth:`rebuild` (a new
    source).
    """

    session = param.ClassSelector(class_=Session, doc="The page's session.")

    def __init__(self, **params):
        super().__init__(**params)
        self._panes: list = []
        self.area: pn.Column | None = None

    def __panel__(self):
        if self.area is None:
            self.area = pn.Column(self._cards(), sizing_mode="stretch_width")
        return self.area

    def rebuild(self):
        """The cards for the monitor shown now (once laid out)."""
        if self.area is not None:
            self.area.objects = [self._cards()]

    def _cards(self):
        m = self.session.monitor
        self.unlink()
        cards = []
        for det in m.pipeline.detectors:
            names = [p for p in det.param if p != "name" and not isinstance(det.param[p], param.Dict)]
            cards.append(pn.Card(self._view(det, names), title=f"Detector: {det.label}", collapsed=True,
                                 sizing_mode="stretch_width"))
        for rule in m.engine.rules:
            cards.append(pn.Card(self._view(rule, RULE_SETTINGS), title=f"Rule: {rule.name}", collapsed=True,
                                 sizing_mode="stretch_width"))
        return pn.Column(*cards, sizing_mode="stretch_width")

    def _view(self, obj, names):
        """Widgets generated from the ``param`` declarations; a plain table for a read-only viewer.

        The table holds no widget at all: a disabled widget is disabled only
        in the browser, and a crafted message could still change the shared
        monitor's settings.
        """
        if not self.session.read_only:
            # A number that may be unset ("from the data") is a box that can be left empty, not a slider; so is
            # one far smaller than its range (a tail probability of 0.001 on a 0-1 slider read "0").
            boxes = {n: pn.widgets.FloatInput for n in names
                     if isinstance(obj.param[n], param.Number) and (obj.param[n].allow_None or _tiny(obj, n))}
            pane = pn.Param(obj, parameters=names, widgets=boxes, show_name=False, sizing_mode="stretch_width")
            self._panes.append(pane)
            return pane
        rows = "".join(f"<tr><th>{html.escape(n)}</th><td>{html.escape(str(getattr(obj, n)))}</td></tr>"
                       for n in names)
        return HTML(f'<table class="sbg-settings">{rows}</table>', sizing_mode="stretch_width",
                    stylesheets=[CSS])

    def unlink(self):
        """Remove the watchers the settings widgets put on the shared detectors and rules.

        ``pn.Param`` watches the object it shows and nothing removes those
        watchers when a session ends: every closed tab left its settings
        widgets alive on the monitor all sessions share, and updated them on
        every change of a setting.
        """
        for pane in self._panes:
            for watcher in list(pane._internal_callbacks):
                if watcher.inst is pane.object:
                    pane.object.param.unwatch(watcher)
                    pane._internal_callbacks.remove(watcher)
        self._panes = []


def _tiny(obj, name) -> bool:
    """Whether a bounded number is under a hundredth of its slider's range (the slider would show it as 0)."""
    lo, hi = obj.param[name].bounds or (None, None)
    value = getattr(obj, name)
    if lo is None or hi is None or value is None or isinstance(obj.param[name], param.Integer):
        return False
    return 0 < abs(value) < (hi - lo) / 100
