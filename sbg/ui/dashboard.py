"""The Panel dashboard: one page over a shared monitor, in Jupyter and under ``panel serve``.

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

The page is made of small views over one :class:`~sbg.ui.session.Session`
(the subscription, the queue, the periodic update and the page's settings):

=====================  ==========================================================
``status``             :class:`~sbg.ui.status.StatusCards`: live indicator, KPI cards, banner
``sources``            :class:`~sbg.ui.sources.SourcePicker`: source, baseline, upload, speed
``controls``           :class:`~sbg.ui.controls.Controls`: Start ... Reset, seek, progress
``plots``              :class:`~sbg.ui.signals.SignalPlots`: the live plots, entities, window
``baseline``           :class:`~sbg.ui.baseline.Baseline`: the baseline-vs-live scatter
``health``             :class:`~sbg.ui.health.HealthGrid`: health grid, activity per minute
``alerts``             :class:`~sbg.ui.alerts_feed.AlertsFeed`: alert table, event feed
``export``             :class:`~sbg.ui.export.Export`: report, alerts CSV and JSON
``settings``           :class:`~sbg.ui.settings.SettingsPanel`: detectors' and rules' settings
=====================  ==========================================================

:class:`Dashboard` lays them out and wires the few things one view does to
another (a new source, a reset).
"""

from __future__ import annotations

import asyncio
import html
import logging
import os

import panel as pn

from ..errors import SbgError
from ..serve.pacing import PACER
from ..serve.registry import SESSION_KINDS, ServeConfig, default_monitor
from ..stream.monitor import Monitor
from .alerts_feed import AlertsFeed
from .baseline import Baseline
from .controls import Controls
from .export import Export
from .health import HealthGrid
from .session import Session, served
from .settings import SettingsPanel
from .signals import SignalPlots
from .sources import SourcePicker
from .status import StatusCards
from .style import CSS, HTML

__all__ = ["Dashboard", "serve_page"]


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


def _setting(name: str) -> property:
    """A page setting of the dashboard, kept by its session (where every view reads it)."""
    def get(self):
        return getattr(self.session, name)

    def set_(self, value):
        setattr(self.session, name, value)

    return property(get, set_, doc=Session.param[name].doc)


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

    monitor = _setting("monitor")
    data_dir = _setting("data_dir")
    window = _setting("window")
    entities = _setting("entities")
    point_size = _setting("point_size")
    update_ms = _setting("update_ms")
    plot_ms = _setting("plot_ms")
    read_only = _setting("read_only")
    max_entities = _setting("max_entities")
    max_upload_mb = _setting("max_upload_mb")

    def __init__(self, monitor: Monitor | None = None, **params):
        if monitor is not None:
            params["monitor"] = monitor
        if "max_upload_mb" not in params and (limit := _env_megabytes("SBG_MAX_UPLOAD_MB")) is not None:
            params["max_upload_mb"] = limit
        super().__init__()
        self.session = session = Session(**params)
        if session.monitor is None:
            session.monitor = default_monitor()
        if not session.data_dir:
            session.data_dir = str(ServeConfig.from_env().data_root())
        self._inline = None
        self.status = StatusCards(session=session)
        self.sources = SourcePicker(session=session, switch=self.switch)
        self.controls = Controls(session=session, moved=self._restart_plots, acted=self._after_control)
        self.baseline = Baseline(session=session, refused=self.sources.refuse)
        self.plots = SignalPlots(session=session, baseline=self.baseline)
        self.health = HealthGrid(session=session)
        self.alerts = AlertsFeed(session=session)
        self.export = Export(session=session)
        self.settings = SettingsPanel(session=session)
        session.connect(rows=self.plots.draw, slow=self.refresh_fleet, fast=self.refresh_status)
        session.attach(session.monitor)
        self.plots.reset()

    # ---- what one view does to the others ------------------------------
    def switch(self, monitor: Monitor):
        """Show ``monitor`` (a source chosen in the page): new plots for its signals, its settings."""
        self.baseline.xy = Baseline.default_axes(monitor.signals)
        self.plots.choose_automatically()
        self.session.attach(monitor)
        self.plots.reset()  # new buffers and plots, for the new signals
        # Then the x/y pickers: set one by one they pass through pairs of old and new signals, and a
        # redraw before the new buffers existed raised KeyError for a source with other signals.
        self.baseline.use_signals(monitor.signals)
        self.settings.rebuild()
        self.refresh_status()

    def _restart_plots(self):
        self.plots.reset()  # a reset or a seek: the plots start afresh

    def _after_control(self):
        self.refresh_status()
        self.session.refresh_soon()

    # ---- updates ----------------------------------------------------------
    def refresh(self):
        """Bring every card, table and grid up to date with the monitor now (the plots draw from the queue)."""
        self.refresh_status()
        self.refresh_fleet()

    def refresh_status(self):
        """The live indicator, cards, banner, progress and buttons (every ``update_ms``)."""
        self.status.refresh(served=served())
        self.controls.refresh()
        self.plots.show_waiting()

    def refresh_fleet(self):
        """The health grid, activity, alert table and event feed (about once a second)."""
        if self.session.disconnected():
            return
        self.health.refresh()
        self.alerts.refresh()

    def start_updates(self):
        """Begin the per-session display callback (served sessions and notebooks)."""
        self.session.start(layout=self._inline)
        self.refresh()

    def stop_updates(self):
        self.session.stop()

    def close(self):
        """Unsubscribe and drop this view's buffers (called when a served session ends)."""
        self.session.close()
        self.settings.unlink()
        self.plots.live = None

    # ---- layout ---------------------------------------------------------
    def _main(self):
        right = self.health.__panel__()
        right.styles = {"flex": "0 0 32%"}
        left = self.plots.__panel__()
        left.width_policy = "max"
        plots = pn.Row(left, right, sizing_mode="stretch_width")
        # Side by side on a wide screen; the events go under the alerts when there is no room for both
        # (a laptop, a notebook), so the alert table keeps every column in view.
        bottom = pn.FlexBox(
            pn.Column(pn.Row(pn.pane.Markdown("### Alerts", margin=(0, 5)), pn.Spacer(), self.export.export_csv,
                             self.export.export_json, sizing_mode="stretch_width"), self.alerts.alerts_table,
                      sizing_mode="stretch_width", styles={"flex": "1 1 760px"}),
            pn.Column(pn.pane.Markdown("### Events", margin=(0, 5)),
                      HTML('<div class="sbg-note">Times are the data\'s own (hover for the wall clock).</div>',
                           stylesheets=[CSS], margin=(0, 10)), self.alerts.feed,
                      sizing_mode="stretch_width", styles={"flex": "1 1 380px"}),
            flex_wrap="wrap", sizing_mode="stretch_width",
        )
        return pn.Column(self.status.__panel__(), plots, bottom, pn.layout.Divider(), self.baseline.__panel__(),
                         sizing_mode="stretch_width")

    def _sidebar(self):
        return pn.Column(
            *self.sources.items(), *self.controls.items(), *self.export.report_items(),
            self.plots.window_select, self.plots.entity_choice,
            pn.pane.Markdown("**Detectors and rules**", margin=(10, 10, 0, 10)), self.settings.__panel__(),
            sizing_mode="stretch_width")

    def __panel__(self):
        """Inline layout (notebooks): sidebar beside the main area."""
        if self._inline is None:
            self.alerts.narrow()
            self._inline = pn.Row(
                pn.Column(pn.Row(pn.pane.Markdown("## sbg", margin=(0, 10)), self.status.live_indicator),
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
        header = [self.status.live_indicator]
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
