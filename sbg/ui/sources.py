"""What a page replays: the data source and baseline pickers, the upload, and the replay's speed."""

from __future__ import annotations

import contextlib
import html
import os
import secrets
from pathlib import Path

import panel as pn
import param

from ..report.style import fmt_bytes
from ..serve.registry import DATA_SUFFIXES, data_files, monitor_for, resolve_data_file
from ..stream.monitor import Monitor
from ..stream.replay import parse_speed, speed_label, speed_options
from .paths import BAD_INPUT, safe_name, without_paths
from .session import Session
from .style import CSS, HTML, error_html

__all__ = ["SourcePicker"]


class SourcePicker(pn.viewable.Viewer):
    """Pickers for the data source and its baseline (files of the data directory), an upload, and the speed.

    Choosing a source opens (or joins) the shared monitor for it
    (:func:`sbg.serve.registry.monitor_for`) and hands it to ``switch``.
    Everything the browser sends is checked: a crafted name, a file that
    does not load or a speed that is not one is refused with a message in
    ``upload_status``, never raised into the server's log. A read-only page
    shows the pickers disabled and ignores them.
    """

    session = param.ClassSelector(class_=Session, doc="The page's session.")
    switch = param.Callable(default=None, doc="Called with the monitor of a newly chosen source.")

    def __init__(self, **params):
        super().__init__(**params)
        self._picked = False  # whether the user chose a speed on this page (kept when the source changes)
        m, session = self.session.monitor, self.session
        files = data_files(session.data_dir)
        current = [session.relative(p) for p in m.paths]
        options = files + [c for c in current if c not in files]
        self.source_select = pn.widgets.Select(label="Data source", options=options, value=current[0],
                                               sizing_mode="stretch_width")
        self.baseline_select = pn.widgets.Select(
            label="Baseline", options=["(none)"] + files,
            value=session.relative(m.baseline_path) if m.baseline_path else "(none)", sizing_mode="stretch_width")
        self.upload = pn.widgets.FileInput(accept=",".join(DATA_SUFFIXES), sizing_mode="stretch_width")
        self.upload_status = HTML(self._upload_hint(), sizing_mode="stretch_width",
                                  styles={"font-size": "12px", "color": "#4b5563"}, stylesheets=[CSS])
        current = self.session.monitor.replay.speed
        # Six speeds fit the sidebar's width once a data-suited one (10000x) joins the five listed.
        self.speed = pn.widgets.RadioButtonGroup(label="Speed", options=speed_options(current),
                                                 value=speed_label(current), color="primary", variant="outline",
                                                 sizing_mode="stretch_width",
                                                 stylesheets=[".bk-btn { padding-left: 2px; padding-right: 2px; }"])
        self.speed.param.watch(self._on_speed, "value")
        self.source_select.param.watch(self._on_source, "value")
        self.baseline_select.param.watch(self._on_source, "value")
        self.upload.param.watch(self._on_upload, "value")
        self.session.param.watch(self._on_upload_limit, "max_upload_mb")

    def __panel__(self):
        return pn.Column(*self.items(), sizing_mode="stretch_width")

    def items(self) -> list:
        """The pieces in order, for a sidebar to lay out among its own (disabled on a read-only page)."""
        if self.session.read_only:
            for w in (self.source_select, self.baseline_select, self.upload, self.speed):
                w.disabled = True
        if self.session.monitor.replay.follows:  # rows go out as they arrive: there is no speed to choose
            self.speed.disabled = True
        return [self.source_select, self.upload, self.upload_status, self.baseline_select,
                pn.pane.Markdown("**Speed**", margin=(5, 10, 0, 10)), self.speed]

    def refuse(self, message: str):
        """Show why the page's input was refused (escaped)."""
        self.upload_status.object = error_html(message)

    def _upload_hint(self) -> str:
        return f"Upload a .csv, .csv.gz or .parquet file of up to {self.session.max_upload_mb:g} MB."

    def _on_upload_limit(self, event):
        self.upload_status.object = self._upload_hint()

    def _on_speed(self, event):
        if self.session.read_only:
            return
        try:
            parse_speed(event.new)  # a crafted value would stop the replay at its next tick
        except BAD_INPUT as exc:
            self.refuse(f"Speed not changed: {exc}")
            return
        self.session.monitor.replay.speed = event.new
        self._picked = True

    def _on_source(self, event):
        if self.session.read_only:
            return
        data_dir = self.session.data_dir
        try:
            path = resolve_data_file(self.source_select.value, data_dir)
            base = None if self.baseline_select.value == "(none)" else resolve_data_file(
                self.baseline_select.value, data_dir)
            # A speed the user picked is kept; otherwise the new source gets one that suits its own interval.
            monitor = monitor_for([path], baseline=base, speed=self.speed.value if self._picked else None)
        except BAD_INPUT as exc:  # a NUL byte in a crafted name raises ValueError, an unreadable file OSError
            self.refuse(self.session.for_page(exc))
            return
        if self.switch is not None:
            self.switch(monitor)

    def _on_upload(self, event):
        if self.session.read_only or not event.new:
            return
        name = safe_name(Path(self.upload.filename or "upload.csv").name)
        if not name.lower().endswith(DATA_SUFFIXES):
            self.refuse(f"{name}: only .csv, .csv.gz and .parquet files can be uploaded.")
            return
        limit = self.session.max_upload_mb
        if len(event.new) > limit * 1e6:
            self.refuse(f"{name} is {fmt_bytes(len(event.new))}, over the upload limit of {limit:g} MB; "
                        "it was not saved.")
            return
        folder = Path(self.session.data_dir) / "uploads"
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
            reason = without_paths(exc, self.session.data_dir, [(temp, name), (target, name)])
            self.refuse(f"{reason} ({name} was not saved)")
            return
        finally:
            with contextlib.suppress(OSError):  # gone once renamed; a failed upload leaves nothing
                temp.unlink(missing_ok=True)
        rel = self.session.relative(target)
        self.source_select.options = data_files(self.session.data_dir)
        self.upload_status.object = f"Uploaded {html.escape(rel)}."
        self.source_select.value = rel
