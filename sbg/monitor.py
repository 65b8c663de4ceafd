"""A monitor: sources, replay, pipeline, history, metrics and alert log in one object.

The monitor is the model every view takes (dashboard, report, CLI). One
monitor runs per data source; views subscribe to it and never own its state.

>>> from sbg.datasets import DATA_DIR
>>> m = Monitor([DATA_DIR / "machine_monitor.csv"], speed="max")
>>> m.run_to_end()
>>> m.metrics.reconciles, m.metrics.rows_in
(True, 10800)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .alerts import AlertEngine, AlertLog
from .config import Settings
from .errors import SbgError
from .metrics import Metrics
from .pipeline import Pipeline
from .replay import Replay, parse_speed
from .sources import Batch, Source

__all__ = ["Monitor", "load_reference"]


def load_reference(path, **schema_options) -> pd.DataFrame:
    """Read a whole baseline file (validated) into one frame."""
    src = Source(path, **schema_options)
    parts = [b.frame for b in src.batches()]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if frame.empty:
        raise SbgError(f"{path}: baseline has no valid rows")
    return frame


class Monitor:
    """Replay one or more files through the pipeline, keeping history, metrics and alerts.

    Parameters
    ----------
    paths : list of path-like
        Data files, merged by time.
    baseline : path-like, optional
        Known-good reference for the baseline detector.
    settings : Settings or path-like, optional
        Configuration (YAML path or parsed).
    alerts_db : path-like, optional
        SQLite alert log.
    speed, loop : replay options.
    schema_options : passed to every :class:`~sbg.sources.Source`.
    """

    def __init__(self, paths, baseline=None, settings=None, alerts_db=None, speed="max", loop=False,
                 max_chunk_rows=None, quarantine_keep: int = 1000, **schema_options):
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if not paths:
            raise SbgError("no data file given")
        if settings is None or isinstance(settings, (str, Path)):
            settings = Settings.from_yaml(settings) if settings else Settings()
        parse_speed(speed)
        self.settings = settings
        self.paths = [Path(p) for p in paths]
        self.sources = [Source(p, **schema_options) for p in self.paths]
        self.baseline_path = Path(baseline) if baseline else None
        self.reference = load_reference(baseline, **schema_options) if baseline else None
        signals, carried = [], []
        for s in self.sources:
            signals += [c for c in s.schema.signals if c not in signals]
            carried += [c for c in s.schema.carried if c not in carried and c not in signals]
        self.signals, self.carried = signals, carried
        self.source_key = "+".join(s.name for s in self.sources)
        self.metrics = Metrics()
        self.log = AlertLog(alerts_db) if alerts_db else None
        self.engine = AlertEngine(settings.make_rules(), source=self.source_key)
        self.pipeline = Pipeline(
            stats=settings.make_stats(), detectors=settings.make_detectors(self.reference), engine=self.engine,
            metrics=self.metrics, log=self.log, signals=signals, carried=carried,
        )
        self.history = settings.make_history()
        self.quarantine: deque = deque(maxlen=quarantine_keep)
        replay_opts = settings.replay_options()
        if max_chunk_rows:
            replay_opts["max_chunk_rows"] = max_chunk_rows
        self.replay = Replay(self.sources, speed=speed, loop=loop, **replay_opts)
        self.replay.on_batch(self._on_batch)
        self.replay.on_restart(self._on_restart)
        self._chunk_subscribers: list[Callable[[pd.DataFrame], None]] = []
        self._latest: pd.DataFrame | None = None
        #: wall-clock minute -> [rows ingested, alerts raised]
        self.activity: dict[int, list[int]] = {}
        self.started_at = pd.Timestamp.now(tz="UTC")
        self.engine.subscribe(self._count_alert)
        self.enriched = self.pipeline.connect(self.replay.stream.map(self._align))
        self.enriched.stream.sink(self._sink)

    @property
    def events(self):
        return self.pipeline.events

    @property
    def alerts(self) -> pd.DataFrame:
        """Alerts so far, newest first."""
        return self.engine.table()

    def _align(self, chunk: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in (*self.signals, *self.carried) if c not in chunk.columns]
        for c in missing:
            chunk[c] = float("nan") if c in self.signals else ""
        return chunk[["timestamp", "entity", *self.signals, *self.carried]]

    def _on_batch(self, batch: Batch):
        if batch.quarantined:
            self.quarantine.extend(batch.quarantined)
            for q in batch.quarantined[:20]:
                self.pipeline.emit_event("quarantine", f"{Path(q.source).name}:{q.line}: {q.reason}", "warning")
            if len(batch.quarantined) > 20:
                self.pipeline.emit_event("quarantine", f"... and {len(batch.quarantined) - 20} more rows quarantined",
                                         "warning")
        self.metrics.count_batch(batch.rows_quarantined, 0, batch.rows_quarantined)

    def _minute(self):
        minute = int(time.time() // 60)
        slot = self.activity.get(minute)
        if slot is None:
            slot = self.activity[minute] = [0, 0]
            for old in [m for m in self.activity if m < minute - 60]:
                del self.activity[old]
        return slot

    def _count_alert(self, event, alert):
        if event == "fired":
            self._minute()[1] += 1

    def _sink(self, enriched: pd.DataFrame):
        self.metrics.count_batch(len(enriched), len(enriched), 0)
        self._minute()[0] += len(enriched)
        try:
            cols = ["timestamp", *[f"{s}__score" for s in self.signals if f"{s}__score" in enriched.columns]]
            last = enriched.groupby("entity", sort=False)[cols].last()
            self._latest = last if self._latest is None else last.combine_first(self._latest)
        except Exception as exc:
            self.metrics.record_error("health", exc)
        try:
            self.history.append(enriched[self.history_columns(enriched)])
        except Exception as exc:
            self.metrics.record_error("history", exc)
        for cb in list(self._chunk_subscribers):
            try:
                cb(enriched)
            except Exception as exc:
                self.metrics.record_error("chunk subscriber", exc)
                self.pipeline.emit_event("error", f"view failed: {type(exc).__name__}: {exc}", "critical")
        if self.log is not None:
            progress = self.replay.rows_emitted + self.replay.rows_quarantined
            self.log.write([], progress=(self.source_key, progress, str(self.replay.sim_time)))

    def health(self, stale_after: str = "60s") -> pd.DataFrame:
        """State per entity and signal: 0 normal, 1 flagged, 2 critical alert firing, 3 no recent data.

        An entity is stale when its newest row is older than ``stale_after``
        on the replay's clock: silence is shown as silence, never as normal.
        """
        if self._latest is None or self._latest.empty:
            return pd.DataFrame(columns=["entity", "signal", "state", "score", "last_seen"])
        latest = self._latest
        now = pd.Timestamp(self.replay.sim_time) if self.replay.sim_time is not None else latest["timestamp"].max()
        stale = (now - latest["timestamp"]) > pd.Timedelta(stale_after)
        critical = {(a.entity, a.signal) for a in self.engine.alerts.values()
                    if a.state == "firing" and a.severity == "critical"}
        rows = []
        for entity, rec in latest.iterrows():
            for s in self.signals:
                score = rec.get(f"{s}__score", np.nan)
                state = 3 if stale[entity] else 2 if (str(entity), s) in critical else 1 if score >= 0.5 else 0
                rows.append((str(entity), s, state, score, rec["timestamp"]))
        return pd.DataFrame(rows, columns=["entity", "signal", "state", "score", "last_seen"])

    def activity_frame(self, minutes: int = 10) -> pd.DataFrame:
        """Rows ingested and alerts raised per wall-clock minute, for the last ``minutes`` minutes."""
        now = int(time.time() // 60)
        span = range(now - minutes + 1, now + 1)
        return pd.DataFrame({
            "minute": pd.to_datetime([m * 60 for m in span], unit="s"),
            "rows": [self.activity.get(m, [0, 0])[0] for m in span],
            "alerts": [self.activity.get(m, [0, 0])[1] for m in span],
        })

    def history_columns(self, frame):
        keep = ["timestamp", "entity", *self.signals, *self.carried]
        for s in self.signals:
            keep += [f"{s}__mean", f"{s}__std", f"{s}__lower", f"{s}__upper", f"{s}__score"]
        keep += ["interval_s", "anomaly_score", "is_anomaly", "reason"]
        return [c for c in keep if c in frame.columns]

    def _on_restart(self, reason: str):
        self.pipeline.reset_state()
        if reason != "loop":
            self.history.clear()
            self.metrics.reset()
            self.quarantine.clear()
            self._latest = None
        self.pipeline.emit_event("replay", f"data starts over ({reason})")

    def subscribe(self, callback: Callable[[pd.DataFrame], None]) -> Callable[[], None]:
        """``callback(enriched_chunk)`` after each chunk; returns an unsubscriber."""
        self._chunk_subscribers.append(callback)

        def unsubscribe():
            if callback in self._chunk_subscribers:
                self._chunk_subscribers.remove(callback)

        return unsubscribe

    @property
    def subscriber_count(self) -> int:
        return len(self._chunk_subscribers)

    def run_to_end(self, on_tick=None):
        """Replay synchronously to the end of the data."""
        self.replay.run_to_end(on_tick=on_tick)

    def report(self, path, title: str | None = None, **options):
        """Write the HTML report of the run so far to ``path`` and return the path.

        ``options`` are :class:`~sbg.report.ReportOptions` parameters. For the
        HTML as a string (a dashboard download, mid-run) use
        :func:`sbg.report.build_report`.
        """
        from .report import ReportOptions, write_report

        return write_report(self, path, title=title, options=ReportOptions.from_options(**options))

    def status(self) -> dict:
        return {
            "source": self.source_key,
            "files": [str(p) for p in self.paths],
            "baseline": str(self.baseline_path) if self.baseline_path else None,
            "metrics": self.metrics.as_dict(),
            "replay": self.replay.progress,
        }

    def close(self):
        self.replay.stop()
        if self.log is not None:
            self.log.close()
