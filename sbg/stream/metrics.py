"""Run metrics: counters a monitor keeps and every view reads.

``rows_in == rows_ok + rows_quarantined`` holds after every update; the
pipeline counts rows at the source, before any step can fail.

>>> m = Metrics()
>>> m.count_batch(rows_in=10, rows_ok=9, rows_quarantined=1)
>>> m.as_dict()["rows_in"], m.reconciles
(10, True)
"""

from __future__ import annotations

import time

import param

__all__ = ["Metrics"]


class Metrics(param.Parameterized):
    """Counters of one monitor. Watch any of them with ``param.bind`` or ``.param.watch``."""

    rows_in = param.Integer(default=0, doc="Rows read from the sources.")
    rows_ok = param.Integer(default=0, doc="Rows that passed validation.")
    rows_quarantined = param.Integer(default=0, doc="Rows rejected, with line, raw text and reason.")
    rows_skipped = param.Integer(default=0, doc="Rows passed over by a seek.")
    analyses = param.Integer(default=0, doc="Chunks processed by the pipeline.")
    errors = param.Integer(default=0, doc="Exceptions caught in pipeline steps, sinks or views.")
    entities = param.Integer(default=0, doc="Entities seen so far.")
    alerts_total = param.Integer(default=0, doc="Alerts raised so far.")
    alerts_firing = param.Integer(default=0, doc="Alerts currently firing.")
    ingest_rate = param.Number(default=0.0, doc="Rows per second of wall time, over the last few seconds.")
    uptime_s = param.Number(default=0.0, doc="Seconds since the run started.")
    sim_time = param.Date(default=None, allow_None=True, doc="Timestamp of the newest row processed.")
    lag_s = param.Number(default=0.0, doc="Simulated clock minus the newest row's time, in seconds.")
    last_error = param.String(default="", doc="Message of the most recent caught error.")

    def __init__(self, **params):
        super().__init__(**params)
        self._t0 = time.monotonic()
        self._rate_window: list[tuple[float, int]] = []

    def reset(self):
        with param.parameterized.batch_call_watchers(self):
            for name in ("rows_in", "rows_ok", "rows_quarantined", "rows_skipped", "analyses", "errors",
                         "entities", "alerts_total", "alerts_firing"):
                setattr(self, name, 0)
            self.ingest_rate = 0.0
            self.uptime_s = 0.0
            self.lag_s = 0.0
            self.sim_time = None
            self.last_error = ""
        self._t0 = time.monotonic()
        self._rate_window = []

    @property
    def reconciles(self) -> bool:
        return self.rows_in == self.rows_ok + self.rows_quarantined

    def count_batch(self, rows_in: int, rows_ok: int, rows_quarantined: int):
        if rows_in != rows_ok + rows_quarantined:
            raise AssertionError(f"batch does not reconcile: {rows_in} != {rows_ok} + {rows_quarantined}")
        now = time.monotonic()
        self._rate_window.append((now, rows_in))
        while self._rate_window and now - self._rate_window[0][0] > 5.0:
            self._rate_window.pop(0)
        span = now - self._rate_window[0][0] if len(self._rate_window) > 1 else 0.0
        rate = sum(n for _, n in self._rate_window[1:]) / span if span > 0 else 0.0
        with param.parameterized.batch_call_watchers(self):
            self.rows_in += rows_in
            self.rows_ok += rows_ok
            self.rows_quarantined += rows_quarantined
            self.ingest_rate = rate
            self.uptime_s = now - self._t0

    def record_error(self, where: str, exc: BaseException):
        self.errors += 1
        self.last_error = f"{where}: {type(exc).__name__}: {exc}"

    def as_dict(self) -> dict:
        d = {name: getattr(self, name) for name in self.param if name != "name"}
        d["uptime_s"] = time.monotonic() - self._t0
        d["sim_time"] = None if self.sim_time is None else str(self.sim_time)
        d["reconciles"] = self.reconciles
        return d
