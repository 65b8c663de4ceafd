"""How often each served session may update its page, so that many sessions cannot starve the server.

Every session updates its own page: streams new rows to its plots (up to 10
times a second), rewrites its KPI cards (4 times a second) and refreshes its
grid, chart and tables (once a second). That work runs on the server's one
event loop and grows with the number of sessions: 20 tabs at those rates
kept the loop busy nearly all the time, and ``/api/status`` (or a click)
waited seconds for its turn.

:class:`Pacer` watches what every request actually waits for, the lag of the
event loop (how late a timer fires), and stretches every session's update
periods by one common factor while the loop runs late, then eases back once
it keeps time. One tab keeps its full rates; many share the loop and each
updates less often. Rows are coalesced into fewer, larger updates, never
dropped. Whatever makes the loop late (many sessions, a slow machine, cores
shared with other programs) is answered the same way, with no per-machine
tuning.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import time
from collections import deque

__all__ = ["PACER", "Pacer"]


class Pacer:
    """Measures the event loop's lag and derives the stretch of the sessions' update periods.

    Parameters
    ----------
    interval : float
        Seconds between the lag probes.
    window : float
        Seconds of probes behind each change of the stretch.
    high_ms, low_ms : float
        The stretch grows by half when the 90th percentile of a window's lags
        is over ``high_ms``, and shrinks by a fifth when it is under
        ``low_ms`` (in between it holds, so it does not swing).
    high_share, low_share : float
        The same for the share of the window's time the sessions' updates
        took (:meth:`spend`): it grows over ``high_share`` and shrinks only
        when both the lags and the share are low.
    max_stretch : float
        Longest stretch: 10 plot updates a second become at worst
        ``10 / max_stretch``.
    turn_budget : float
        Seconds of session updates one turn of the event loop may run
        before the other sessions' updates wait for the next turn (see
        :meth:`turn`).
    refresh : float
        Seconds objects stay frozen from the collector (with ``freeze`` on,
        see :meth:`_freeze_step`) before they are all looked at again.

    >>> p = Pacer(window=1.0)
    >>> for i in range(30):  # a loop keeping time
    ...     p.observe(0.002, now=i * 0.1)
    >>> p.stretch
    1.0
    >>> for i in range(30, 60):  # a loop running 300 ms late
    ...     p.observe(0.3, now=i * 0.1)
    >>> p.stretch
    3.375
    >>> for i in range(60, 200):  # on time again: back to the full rates
    ...     p.observe(0.002, now=i * 0.1)
    >>> p.stretch
    1.0
    >>> p.summary()["lag_p50_ms"]
    2.0
    """

    def __init__(self, interval: float = 0.1, window: float = 2.0, high_ms: float = 200.0,
                 low_ms: float = 100.0, max_stretch: float = 10.0, keep: int = 100, refresh: float = 600.0,
                 turn_budget: float = 0.025, high_share: float = 0.5, low_share: float = 0.3):
        self.interval = interval
        self.window = window
        self.high_ms = high_ms
        self.low_ms = low_ms
        self.max_stretch = max_stretch
        self.stretch = 1.0
        self._lags: deque = deque(maxlen=keep)
        self._window: list[float] = []
        self._since: float | None = None
        self._task = None
        #: Durations (seconds) of the latest full collections of Python's cyclic garbage collector,
        #: which hold the loop like a long callback; recorded once :meth:`start` has run.
        self.full_collections: deque = deque(maxlen=20)
        self.full_collection_count = 0
        self._gc_started: float | None = None
        #: Freeze the survivors of each full collection (served only, see :meth:`_freeze_step`).
        self.freeze = False
        self.refresh = refresh
        self._collected = False
        self._thaw_due: float | None = None
        self._frozen_at: float | None = None
        #: Seconds of session updates one turn of the loop may run (see :meth:`turn`).
        self.turn_budget = turn_budget
        self._spent = 0.0
        self._turn_marked = False
        self._turn_loop = None
        self.turns_deferred = 0
        self.high_share, self.low_share = high_share, low_share
        self.share = 0.0
        self._spent_total = self._spent_mark = 0.0

    def _on_gc(self, phase: str, info: dict):
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.full_collections.append(time.perf_counter() - self._gc_started)
            self.full_collection_count += 1
            self._gc_started = None
            self._collected = True

    def thaw(self):
        """Asks for every frozen object to be looked at again (a session has gone: its objects are garbage)."""
        self._thaw_due = time.monotonic()

    def _freeze_step(self, now: float):
        """Moves the survivors of the last full collection out of the collector's sight, and back in when due.

        A served dashboard holds some 150,000 tracked objects per session (its
        Bokeh models, Panel objects, parameters) that live as long as the
        session. Python's collector walks all of them in every full
        collection: with 20 sessions, one second holding the loop every 8 to
        12 seconds. ``gc.freeze()`` after a full collection moves the
        survivors to a generation the collector skips, so the next full
        collections walk only what is newer. Cyclic garbage among frozen
        objects (a closed session's document, plots replaced when a looped
        replay redraws) is not freed while frozen, so everything is thawed
        (``gc.unfreeze()``) when a session closes and every ``refresh``
        seconds; the full collection after a thaw walks everything once.
        """
        if self._thaw_due is not None and now - self._thaw_due >= 1.0 \
                or self._frozen_at is not None and now - self._frozen_at >= self.refresh:
            # A second's grace after a close gathers the sessions closing together into one thaw.
            gc.unfreeze()
            self._thaw_due = self._frozen_at = None
            self._collected = False
        elif self._collected:
            gc.freeze()
            self._collected = False
            if self._frozen_at is None:
                self._frozen_at = now

    async def turn(self):
        """Waits until the event loop's current turn has room for one more session update.

        Every session's timer falls due at about the same moment, so the loop
        ran all of their updates in one turn before it looked at its sockets
        again: with 20 sessions, turns of 300 ms to 1.3 s, and a request (an
        ``/api/status``, a click) waits for a few turns. Updates past
        ``turn_budget`` in one turn yield to the next one, behind the
        requests that came in meanwhile; each waits its turn, none is dropped.
        With 20 sessions, ``/api/status`` answered in up to 1.5 s before and in
        at most 0.25 s after. Call :meth:`spend` with the update's time once
        it is done.
        """
        loop = asyncio.get_running_loop()
        if self._turn_loop is not loop:
            # A turn marked on another loop (one that has stopped) would never end.
            self._new_turn()
            self._turn_loop = loop
        while self._spent >= self.turn_budget:
            self.turns_deferred += 1
            # A timer, not ``sleep(0)``: a turn runs what is already due first, then the sockets'
            # callbacks, then the timers, so the deferred updates go after the requests that arrived.
            await asyncio.sleep(1e-6)
        if not self._turn_marked:
            # Scheduled before any update that yields now, so it runs first in the next turn.
            self._turn_marked = True
            loop.call_soon(self._new_turn)

    def spend(self, seconds: float):
        """Counts a session update's time against the current turn of the loop."""
        self._spent += seconds
        self._spent_total += seconds

    def _new_turn(self):
        self._spent = 0.0
        self._turn_marked = False

    def start(self):
        """Starts probing the running loop (once; a no-op without a running loop)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # A fresh context: started from a session's callback, the task must not hold that session's document.
        self._task = loop.create_task(self._run(), context=contextvars.Context())

    async def _run(self):
        while True:
            due = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.observe(max(0.0, now - due), now)
            if self.freeze:
                self._freeze_step(now)

    def observe(self, lag: float, now: float | None = None):
        """Records one probe's lag (seconds); adjusts the stretch once a window."""
        now = time.monotonic() if now is None else now
        self._lags.append(lag)
        self._window.append(lag)
        if self._since is None:
            self._since = now
        if now - self._since < self.window:
            return
        p90 = 1000 * _quantile(sorted(self._window), 0.9)
        # The share of the loop's time the sessions' updates took (see :meth:`turn`): spread over
        # turns, they no longer make the loop late, but they can still leave it no time to spare.
        self.share = (self._spent_total - self._spent_mark) / (now - self._since)
        self._window, self._since, self._spent_mark = [], now, self._spent_total
        if p90 > self.high_ms or self.share > self.high_share:
            self.stretch = min(self.max_stretch, self.stretch * 1.5)
        elif p90 < self.low_ms and self.share < self.low_share:
            self.stretch = max(1.0, self.stretch * 0.8)

    def summary(self) -> dict:
        """The stretch and the recent lags in milliseconds (zeros before any probe)."""
        lags = sorted(self._lags)
        out = {"stretch": round(self.stretch, 2), "lag_samples": len(lags)}
        for name, q in (("lag_p50_ms", 0.5), ("lag_p95_ms", 0.95), ("lag_max_ms", 1.0)):
            out[name] = round(1000 * _quantile(lags, q), 1) if lags else 0.0
        out["full_collections"] = self.full_collection_count
        out["full_collection_max_ms"] = round(1000 * max(self.full_collections, default=0.0), 1)
        out["updates_deferred"] = self.turns_deferred
        out["update_share"] = round(self.share, 2)
        return out


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


#: The server's pacer: started by the first served session, read by every one.
PACER = Pacer()
