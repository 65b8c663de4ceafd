"""One page's session over a monitor: its settings, its queue of new rows, and the periodic update.

A :class:`Session` subscribes to the shared :class:`~sbg.stream.monitor.Monitor`:
new chunks queue up (bounded) while the replay task runs, and a per-page
periodic callback hands them to the plots and refreshes the cards, on the
page's own document (served) or the notebook's loop. It registers with
:mod:`sbg.serve.registry` so ``/api/status`` and the update pacing see it.

The views (:mod:`sbg.ui.controls`, :mod:`sbg.ui.signals` and the others) take the
session, as Panel's Viewer components take their data store: its parameters
are the page's settings, and ``session.monitor`` is the monitor shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from pathlib import Path

import pandas as pd
import panel as pn
import param

from ..serve.pacing import PACER
from ..serve.registry import forget_session, mark_behind, register_session
from ..stream.monitor import Monitor
from .paths import relative_to, without_paths

__all__ = ["CARDS_AFTER_CONTROL_S", "NOTEBOOK_PLOT_MS", "NOTEBOOK_ROWS_PER_UPDATE", "WINDOWS", "Session", "fitting_window",
           "served"]

#: Display windows offered in the sidebar (a time span, not a point count).
WINDOWS = {"1 min": 60, "5 min": 300, "10 min": 600, "30 min": 1800, "1 h": 3600, "6 h": 21600, "24 h": 86400,
           "7 d": 7 * 86400, "30 d": 30 * 86400}

#: Rows of an entity the visible window chosen for the data holds at least (see :func:`fitting_window`).
WINDOW_ROWS = 200


def fitting_window(interval_s: float) -> str:
    """The visible window for data sampled every ``interval_s`` seconds: the shortest that holds
    :data:`WINDOW_ROWS` rows, and at least ten minutes (the longest there is for sparser data).

    >>> fitting_window(1.0), fitting_window(300.0), fitting_window(3600.0), fitting_window(float("nan"))
    ('10 min', '24 h', '30 d', '10 min')
    """
    if not interval_s > 0:
        return "10 min"
    need = max(WINDOW_ROWS * interval_s, WINDOWS["10 min"])
    return next((name for name, span in WINDOWS.items() if span >= need), list(WINDOWS)[-1])

#: In a notebook, the live plots and cards update at most every NOTEBOOK_PLOT_MS and send at most about
#: NOTEBOOK_ROWS_PER_UPDATE rows per entity each time: Jupyter's server stops all of a kernel's output
#: (``iopub_data_rate_limit``, 1 MB/s over 3 s by default) beyond that, cell output included.
NOTEBOOK_PLOT_MS = 1000
NOTEBOOK_ROWS_PER_UPDATE = 240
#: Seconds after a Start, Pause, Resume... click when the cards show the replay's first rows.
CARDS_AFTER_CONTROL_S = 0.3


def served() -> bool:
    """Whether this runs in a served session (``panel serve``), not a notebook or plain Python."""
    doc = pn.state.curdoc
    return doc is not None and doc.session_context is not None


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


# Over 300 lines: about half of them are the reasons behind the tick's pacing and the comm guard
# (each a bug seen under load or in JupyterLab), kept beside the code they explain; the rest is one
# concern, getting the monitor's rows and state to one page.
class Session(param.Parameterized):
    # One class of ~330 lines: the chunk queue, its back-pressure and the page's periodic callbacks share one
    # lock and one lifetime (attach, detach on a new monitor, close with the page); the views only read it.
    """One page's subscription to a monitor, its settings and its periodic update.

    The page's views connect to it with :meth:`connect`: ``rows`` takes each
    batch of queued chunks (as one frame, and whether the data started over),
    ``slow`` runs about once a second and ``fast`` every ``update_ms``.

    >>> from sbg.io.datasets import DATA_DIR
    >>> session = Session(monitor=Monitor([DATA_DIR / "machine_monitor.csv"], speed="max"))
    >>> session.attach(session.monitor)
    >>> session.monitor.run_to_end()
    >>> session.queued_rows > 0
    True
    >>> session.close(); session.monitor.close()
    """

    monitor = param.ClassSelector(class_=Monitor, doc="The monitor shown (shared by every session on it).")
    data_dir = param.String(default="", doc="Directory whose files can be chosen or uploaded.")
    window = param.Selector(default="10 min", objects=list(WINDOWS), doc=(
        "Visible time span of the live plots. Until it is chosen, it follows the data: the shortest span "
        "that holds 200 rows of an entity at its usual interval (10 min at 1 Hz, 24 h at 5 min)."))
    entities = param.ListSelector(default=[], objects=[], doc="Entities drawn in the live plots.")
    point_size = param.Number(default=4, bounds=(1, 12), doc="Point size of the baseline-vs-live scatter.")
    update_ms = param.Integer(default=250, bounds=(50, 5000), doc="Milliseconds between updates of counters and state.")
    plot_ms = param.Integer(default=100, bounds=(50, 10000), doc="Milliseconds between updates of the live plots.")
    read_only = param.Boolean(default=False, doc="Hide the controls that change shared state.")
    max_entities = param.Integer(default=4, bounds=(1, 24), doc="Entities drawn at first.")
    max_upload_mb = param.Number(default=14, bounds=(0, None), inclusive_bounds=(False, True),
                                 doc="Largest file the sidebar upload accepts, in MB (1,000,000 bytes).")

    def __init__(self, **params):
        super().__init__(**params)
        from .plots import BufferBridge

        #: Streams the plots' new rows into what the browser drew (one per page).
        self.bridge = BufferBridge()
        #: Rows this page has sent to its plots so far (``/api/status?sessions=1``).
        self.rows_sent = 0
        self._pending: deque = deque()
        self._max_pending_rows = 200_000
        self._pending_state = {"rows": 0, "span": self.window_span(), "newest": pd.NaT, "restarted": False}
        self._unsubscribe = None
        self._callback = None
        self._home: tuple | None = None  # (event loop, thread) the page is updated from
        self._layout = None  # the notebook's drawn layout (served pages have their document)
        self._open = True
        self._last_slow = self._last_plot = self._last_fast = 0.0
        self._session_id = id(self)
        self._on_rows = self._on_slow = self._on_fast = lambda *args: None

    def connect(self, rows, slow, fast):
        """The views' updates: ``rows(frame, restarted)``, ``slow()`` and ``fast()``."""
        self._on_rows, self._on_slow, self._on_fast = rows, slow, fast

    # ---- subscription -------------------------------------------------
    def attach(self, monitor: Monitor):
        """Show ``monitor``: subscribe to its chunks (and count this page for the registry)."""
        self.detach()
        self.monitor = monitor
        self._pending.clear()
        pending = self._pending
        limit = self._max_pending_rows
        state = {"rows": 0, "span": self.window_span(), "newest": pd.NaT, "restarted": False}

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

    def detach(self):
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        forget_session(self._session_id)

    @param.depends("window", watch=True)
    def _on_window(self):
        self._pending_state["span"] = self.window_span()

    def window_span(self) -> pd.Timedelta:
        """The visible window as a time span."""
        return pd.Timedelta(seconds=WINDOWS[self.window])

    @property
    def queued(self) -> list[pd.DataFrame]:
        """The chunks waiting for the next plot update, oldest first."""
        return [chunk for chunk, _ in self._pending]

    @property
    def queued_rows(self) -> int:
        """Rows waiting for the next plot update."""
        return self._pending_state["rows"]

    # ---- what a page shows of the server ------------------------------
    def relative(self, path) -> str:
        """``path`` as the pickers list it: relative to the data directory when inside it."""
        return relative_to(path, self.data_dir)

    def for_page(self, exc) -> str:
        """An error's message without the server's paths: the monitor's files by name, others as listed."""
        outside = [(p, p.name) for p in self.monitor.paths if Path(self.relative(p)).is_absolute()]
        return without_paths(exc, self.data_dir, outside)

    # ---- periodic update ----------------------------------------------
    def start(self, layout=None):
        """Begin the periodic update (served sessions and notebooks); ``layout`` is a notebook's drawn view."""
        if layout is not None:
            self._layout = layout
        with contextlib.suppress(RuntimeError):  # no loop: driven by hand (tests, scripts)
            self._home = (asyncio.get_running_loop(), threading.current_thread())
        if self._callback is None:
            # In the background (no busy events: each one set Panel's global busy flag, a fifth of the
            # server's time with 20 sessions ticking 20 times a second) and without a log line per tick.
            tick = self._tick_in_turn if served() else self.tick
            self._callback = pn.io.PeriodicCallback(callback=tick, period=self._tick_ms(1.0),
                                                    background=True, log=False)
            self._callback.start()
            if served():
                PACER.freeze = True  # long-lived session objects out of the collector's sight
                PACER.start()

    def stop(self):
        """Stop the periodic update."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    def close(self):
        """Unsubscribe and drop what this page held (called when a served session ends).

        The buffers are dropped, not cleared: clearing would try to redraw
        plots whose document is already gone.
        """
        self.stop()
        self.detach()
        self._pending.clear()
        self.bridge.reset()
        self._open = False

    def refresh_soon(self):
        """Refresh the cards again shortly (``CARDS_AFTER_CONTROL_S``), once a control has moved the replay.

        In a notebook the next update would otherwise be a second away, and
        rows seemed not to rise after Resume.
        """
        stretch = PACER.stretch if served() else 1.0
        self._last_fast = time.monotonic() - self._fast_period(stretch) + CARDS_AFTER_CONTROL_S

    def _fast_period(self, stretch: float) -> float:
        """Seconds between updates of the cards and state (a notebook's are spaced out: see NOTEBOOK_PLOT_MS)."""
        return stretch * (self.update_ms if served() else max(self.update_ms, NOTEBOOK_PLOT_MS)) / 1000

    def _tick_ms(self, stretch: float) -> int:
        """Milliseconds between ticks: half the shortest (stretched) update period."""
        return int(max(25, stretch * min(self.update_ms, self.plot_ms) / 2))

    def _drain(self):
        if not self._pending:
            return
        self._last_plot = time.monotonic()
        chunks = [chunk for chunk, _ in self._pending]
        self._pending.clear()
        self._pending_state["rows"] = 0
        restarted = self._pending_state.pop("restarted", False)
        self._pending_state["restarted"] = False
        frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
        self._on_rows(frame, restarted)

    def tick(self, draw: bool = False):
        """One run of the periodic update: what is due of the plots (all queued rows if ``draw``), cards and grid."""
        if draw:
            self._last_plot = 0.0
        if self.closed():
            # The tab has gone: stop ticking. Bokeh does not expire a session while one of its
            # callbacks holds or waits for the document lock, and on a busy server a tick nearly
            # always does: closed sessions piled up (58 of them in a churn), each still ticking.
            self.stop()
            # And ask for it to go at Bokeh's next check (`sbg serve --check-unused-sessions`, 2 s):
            # the unused-session lifetime is long (60 s) so that a page slow to load on a busy server
            # keeps the session its HTML was made for; a closed tab should not wait for it.
            pn.state.curdoc.session_context._session.request_expiration()
            return
        if not self._open or self.disconnected():
            return
        is_served = served()
        if not is_served:
            self._keep_comms_home()  # the page's comms exist once it is drawn
        now = time.monotonic()
        # Served, every session's periods stretch while the server's loop runs late, so that many
        # sessions cannot starve it (sbg.serve.pacing). Called twice per plot period: a due update waits at
        # most half a period, and the 10 % slack keeps timer jitter from pushing it a whole period back.
        stretch = PACER.stretch if is_served else 1.0
        period = self._tick_ms(stretch)
        if is_served and self._callback is not None and abs(period - self._callback.period) > 0.25 * self._callback.period:
            self._callback.period = period  # no idle ticks when the updates are spaced out
        plot_ms = self.plot_ms if is_served else max(self.plot_ms, NOTEBOOK_PLOT_MS)
        plot_due = bool(self._pending) and now - self._last_plot >= 0.9 * stretch * plot_ms / 1000
        slow_due = now - self._last_slow >= stretch
        fast_due = now - self._last_fast >= self._fast_period(stretch)
        if not (plot_due or slow_due or fast_due):
            return
        if is_served and self.browser_behind():
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
                for doc, comm in self.documents():
                    stack.enter_context(pn.io.hold(doc, comm=comm))
                if plot_due:
                    self._drain()
                if slow_due:
                    self._last_slow = now
                    self._on_slow()
                if fast_due:
                    self._last_fast = now
                    self._on_fast()
            if plot_due or slow_due:
                for doc, _ in self.documents():
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
            self.tick()
        finally:
            PACER.spend(time.perf_counter() - started)

    # ---- the page's connection ------------------------------------------
    @staticmethod
    def browser_behind() -> bool:
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
    def closed() -> bool:
        """True in a served session whose tab has gone: its websocket was open and is closed."""
        doc = pn.state.curdoc
        session = getattr(getattr(doc, "session_context", None), "_session", None)
        return session is not None and bool(pn.state._connected.get(doc)) and session.connection_count == 0

    @staticmethod
    def disconnected() -> bool:
        """True in a served session whose websocket is not open (not yet, or no longer).

        Nothing may reach a HoloViews plot then: a plot refreshed in a session
        Panel does not count as connected reschedules itself on every tick of
        the event loop, and each pending callback blocks the session's
        expiry, so a closed tab was never freed and the loop spun at full CPU.
        """
        if not served():
            return False  # a notebook, or in-process
        return not pn.state._connected.get(pn.state.curdoc)

    def documents(self):
        """The documents showing this page, with their notebook comm (``None`` when served)."""
        if served():
            return [(pn.state.curdoc, None)]
        found = {}
        for ref, (model, _) in list(getattr(self._layout, "_models", {}).items()):
            if model.document is not None:
                view = pn.state._views.get(ref)
                found[id(model.document)] = (model.document, view[3] if view else None)
        return list(found.values())

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
        for _, client in list(getattr(self._layout, "_comms", {}).values()):
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
