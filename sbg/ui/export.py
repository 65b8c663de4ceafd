"""Downloads of the run so far: the HTML report, and the alerts as CSV or JSON."""

from __future__ import annotations

import asyncio
import html
import io

import pandas as pd
import panel as pn
import param

from ..alerts.log import alerts_json
from ..report.build import Snapshot, render
from ..report.style import fmt_bytes
from .paths import report_filename
from .session import Session
from .style import HTML, error_html

__all__ = ["Export", "alerts_csv"]


def alerts_csv(alerts: pd.DataFrame) -> io.StringIO:
    """The alerts as a CSV file whose cells no spreadsheet runs as a formula."""
    from ..io.csvsafe import neutralise_frame

    return io.StringIO(neutralise_frame(alerts).to_csv(index=False))


class Export(pn.viewable.Viewer):
    """The report download (``report_button``, ``report_status``) and the alert downloads (CSV, JSON).

    Each file is made when its button is pressed, from the monitor as it
    stands: the replay goes on meanwhile.
    """

    session = param.ClassSelector(class_=Session, doc="The page's session.")

    def __init__(self, **params):
        super().__init__(**params)
        self.export_csv = pn.widgets.FileDownload(callback=self.alerts_csv, filename="sbg_alerts.csv",
                                                  label="Alerts CSV", color="default")
        self.export_json = pn.widgets.FileDownload(callback=self.alerts_json, filename="sbg_alerts.json",
                                                   label="Alerts JSON", color="default")
        # Grey like the other secondary buttons: Panel 1.9's FileDownload drops `color` before it reaches
        # the browser, and `button_type` is deprecated.
        self.report_button = pn.widgets.FileDownload(callback=self.report, filename="sbg_report.html",
                                                     label="Download report", color="default",
                                                     sizing_mode="stretch_width",
                                                     description="An HTML report of the run so far, to open "
                                                                 "offline or hand over. The replay goes on.")
        # File names have no spaces: let them break anywhere rather than run under the main area.
        self.report_status = HTML("", sizing_mode="stretch_width",
                                  styles={"font-size": "12px", "color": "#4b5563", "overflow-wrap": "anywhere"})

    def __panel__(self):
        return pn.Column(*self.report_items(), pn.Row(self.export_csv, self.export_json),
                         sizing_mode="stretch_width")

    def report_items(self) -> list:
        """The report's heading, button and status, for a sidebar."""
        return [pn.pane.Markdown("**Report**", margin=(10, 10, 0, 10)), self.report_button, self.report_status]

    async def report(self) -> io.BytesIO:
        """The report of the run so far, as the download button's file.

        The snapshot is taken here, on the event loop the replay also runs on,
        so it sees whole chunks; it costs tens of milliseconds. Rendering takes
        up to seconds, so it runs on a worker thread: the replay (shared by
        every session) and this page keep going meanwhile. The thread does not
        carry this session's document, so the report is the one ``sbg report``
        writes. A failure is counted, shown in ``report_status`` and raised on
        (the server's log gets the traceback).
        """
        monitor = self.session.monitor
        self.report_button.loading = True
        try:
            snap = Snapshot.of(monitor)
            text = await asyncio.get_running_loop().run_in_executor(None, render, snap)
        except Exception as exc:
            monitor.pipeline.fault("report", exc)
            self.report_status.object = error_html(f"The report could not be made: {type(exc).__name__}: {exc}")
            raise
        finally:
            self.report_button.loading = False
        data = text.encode("utf-8")
        filename = report_filename(monitor.source_key, snap.made_at)
        self.report_button.filename = filename
        run = "the finished run" if snap.progress.get("state") == "finished" else \
            f"the run so far ({snap.progress.get('percent') or 0:.0f}%)"
        self.report_status.object = html.escape(f"Report of {run}, {fmt_bytes(len(data))}: {filename}")
        return io.BytesIO(data)

    def alerts_csv(self) -> io.StringIO:
        """The alerts as CSV, opened in spreadsheets: no cell may run as a formula."""
        return alerts_csv(self.session.monitor.alerts)

    def alerts_json(self) -> io.StringIO:
        return io.StringIO(alerts_json(self.session.monitor.alerts))
