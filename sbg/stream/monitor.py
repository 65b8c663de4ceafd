"""A monitor: sources, replay, pipeline, history, metrics and alert log in one object.

The monitor is the model every view takes (dashboard, report, CLI). One
monitor runs per data source; views subscribe to it and never own its state.

>>> from sbg.io.datasets import DATA_DIR
>>> m = Monitor([DATA_DIR / "machine_monitor.csv"], speed="max")
>>> m.run_to_end()
>>> m.metrics.reconciles, m.metrics.rows_in
(True, 10800)

With an alert log, the monitor commits the alert changes together with a
checkpoint of the run (the replay position and every carried state) every
``checkpoint_every`` seconds and whenever the replay pauses, stops or ends;
``Monitor(..., resume=True)`` continues from the last committed checkpoint
as if the run had never stopped. The design is in ``docs/reliability.md``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import param

from .. import __version__
from ..alerts.engine import Alert
from ..alerts.log import AlertLog
from ..config import Settings
from ..detect.detectors import STALE_AFTER, is_flag, stale_limit
from ..errors import ConfigError, SbgError, SourceError
from ..io.inputs import name_sources
from ..io.sources import OUTPUT_COLUMNS, Batch, Source, load_reference
from .metrics import Metrics
from .pipeline import build_pipeline
from .replay import Replay, auto_speed, parse_speed

__all__ = ["Monitor", "warm_up"]

_log = logging.getLogger(__name__)


def _firing_on(entities: np.ndarray, pairs: set, signal: str) -> np.ndarray:
    """Which of ``entities`` have an alert on ``signal`` among the ``(entity, signal)`` pairs."""
    on = [e for e, s in pairs if s == signal]
    return np.isin(entities, on) if on else np.zeros(len(entities), dtype=bool)


class Monitor:
    # One class of ~600 lines: it owns the run's state (replay position, pipeline state, alerts,
    # history, metrics) and its checkpoint, which must be written together in one transaction.
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
    speed, loop : replay options; ``speed='auto'`` picks one that suits the data's interval
        (:func:`~sbg.stream.replay.auto_speed`).
    resume : bool
        Continue from the checkpoint in ``alerts_db`` instead of starting over.
    checkpoint_every : float
        Wall seconds between commits of the alert log and its checkpoint.
    fan_out : sbg.scale.cluster.FanOut, optional
        Score the entities on Dask workers instead of in this process.
    hierarchy : path-like or sbg.io.hierarchy.Hierarchy, optional
        Each entity's site and rack: a mapping file (``entity,site,rack``) or a
        :class:`~sbg.io.hierarchy.Hierarchy`. Without one, data with a ``site``
        column (and ``rack`` or ``string``) is grouped by those columns.
    schema_options : passed to every :class:`~sbg.io.sources.Source`.
    """

    def __init__(self, paths, baseline=None, settings=None, alerts_db=None, speed="max", loop=False,
                 max_chunk_rows=None, quarantine_keep: int = 1000, resume: bool = False,
                 checkpoint_every: float = 0.25, fan_out=None, follow: bool = False, follow_wait: float = 0.0,
                 hierarchy=None, **schema_options):
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if not paths:
            raise SbgError("no data file given")
        if resume and fan_out is not None:
            raise SbgError("--resume runs in one process: the carried state of a Dask fan-out is not checkpointed")
        if resume and not alerts_db:
            raise SbgError("--resume needs --alerts-db: the checkpoint is kept in the alert log")
        if resume and not Path(alerts_db).exists():
            raise SbgError(f"{alerts_db}: no checkpoint to resume from (no such alert log)")
        if settings is None or isinstance(settings, (str, Path)):
            settings = Settings.from_yaml(settings) if settings else Settings()
        if speed != "auto":
            parse_speed(speed)
        self.settings = settings
        self.paths = [Path(p) for p in paths]
        self.follow = bool(follow)
        if follow:  # files still being written, read as they grow: as fast as lines arrive, with no end
            from ..io.follow import FollowSource

            self.sources = [FollowSource(p, wait=follow_wait, **schema_options) for p in self.paths]
            speed, loop = "max", False
            for src in self.sources:
                src.on_event(self._on_follow_event)
        else:
            self.sources = name_sources([Source(p, **schema_options) for p in self.paths])
            if speed == "auto":  # a speed that suits the data's own interval (see auto_speed)
                speed = auto_speed(self.sources)
        self.baseline_path = Path(baseline) if baseline else None
        self.reference = load_reference(baseline, **schema_options) if baseline else None
        signals, carried = [], []
        for s in self.sources:
            signals += [c for c in s.schema.signals if c not in signals]
            carried += [c for c in s.schema.carried if c not in carried and c not in signals]
        self.signals, self.carried = signals, carried
        self.hierarchy = _hierarchy(hierarchy, carried)
        self.source_key = "+".join(s.name for s in self.sources)
        self.metrics = Metrics()
        self.log = AlertLog(alerts_db) if alerts_db else None
        self._past_alerts = None  # alerts of a looped replay's earlier passes
        # The monitor writes the log itself: alert rows only ever go in with the checkpoint that covers them.
        self.fan_out = fan_out
        self.pipeline = build_pipeline(settings, signals, carried, self.sources[0].schema.entity, self.reference,
                                       source=self.source_key, metrics=self.metrics,
                                       battery=self.sources[0].schema.battery,
                                       factory=None if fan_out is None else fan_out.pipeline)
        self.engine = self.pipeline.engine
        self.history = settings.make_history()
        self.quarantine: deque = deque(maxlen=quarantine_keep)
        replay_opts = settings.replay_options()
        if max_chunk_rows:
            replay_opts["max_chunk_rows"] = max_chunk_rows
        self.replay = Replay(self.sources, speed=speed, loop=loop, **replay_opts)
        self.replay.on_batch(self._on_batch)
        self.replay.on_restart(self._on_restart)
        self.replay.on_fault(self._on_replay_fault)
        self.replay.on_idle(self._on_idle)
        self._behind_log = False  # chunks processed since the last commit
        self._count_failed = False
        self._count_lock = threading.Lock()
        self._chunk_subscribers: list[Callable[[pd.DataFrame], None]] = []
        self._latest: pd.DataFrame | None = None
        #: Time of the newest row of the last chunk fully processed this pass (see :meth:`data_state`).
        self._processed_until: pd.Timestamp | None = None
        #: wall-clock minute -> [rows ingested, alerts raised]
        self.activity: dict[int, list[int]] = {}
        self.started_at = pd.Timestamp.now(tz="UTC")
        self.engine.subscribe(self._count_alert)
        self.enriched = self.pipeline.connect(self.replay.stream.map(self._align))
        self.enriched.stream.sink(self._sink)
        self.checkpoint_every = float(checkpoint_every)
        self._unsaved: dict[str, Alert] = {}
        self._committed_at: float | None = None
        #: The replay position the run resumed from (``None`` for a fresh run).
        self.resumed_from: dict | None = None
        if self.log is not None:
            self.identity = self._identity(schema_options)
            self.engine.subscribe(lambda event, alert: self._unsaved.__setitem__(alert.id, alert))
            self.replay.param.watch(self._on_replay_state, "state")
            if resume:
                self._resume()

    @property
    def events(self):
        return self.pipeline.events

    @property
    def alerts(self) -> pd.DataFrame:
        """Alerts so far, newest first.

        A looped replay keeps the alerts of its earlier passes (the last
        :data:`PAST_ALERTS`), with a ``pass`` column saying which pass of the
        data raised each one.
        """
        table = self.engine.table()
        if not self.replay.loop:
            return table
        table = table.assign(**{"pass": self.replay.loops + 1})
        if self._past_alerts is None or self._past_alerts.empty:
            return table
        return pd.concat([table, self._past_alerts], ignore_index=True) if len(table) else self._past_alerts

    def _archive_alerts(self):
        """Before a looped replay starts over: keep this pass's alerts, those still firing ended where the data did.

        The next pass's alerts get ids of their own (the pass is part of the
        alert source), so the alert log keeps every pass too.
        """
        table = self.engine.table()
        finished = self.replay.loops  # the pass that just ended (loops was counted before the restart)
        if len(table):
            firing = table["state"] != "resolved"
            end = pd.Timestamp(self.metrics.sim_time) if self.metrics.sim_time is not None else pd.NaT
            table.loc[firing, "end"] = end
            table.loc[firing, "state"] = "resolved"
            table = table.assign(**{"pass": finished})
            past = table if self._past_alerts is None else pd.concat([table, self._past_alerts], ignore_index=True)
            self._past_alerts = past.head(PAST_ALERTS).reset_index(drop=True)
        self.engine.source = f"{self.source_key}|pass {finished + 1}"

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
        if batch.fault is not None:
            self.pipeline.fault("source", batch.fault)

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
            cols = ["timestamp", *[f"{s}__{kind}" for s in self.signals for kind in ("score", "quality")
                                   if f"{s}__{kind}" in enriched.columns]]
            last = enriched.groupby("entity", sort=False)[cols].last()
            self._latest = last if self._latest is None else last.combine_first(self._latest)
        except Exception as exc:
            self.pipeline.fault("health", exc)
        if self.hierarchy is not None and self.hierarchy.columns:
            try:
                self.hierarchy.learn(enriched)
            except Exception as exc:
                self.pipeline.fault("hierarchy", exc)
        try:
            self.history.append(enriched[self.history_columns(enriched)])
        except Exception as exc:
            self.pipeline.fault("history", exc)
        for cb in list(self._chunk_subscribers):
            try:
                cb(enriched)
            except Exception as exc:
                self.pipeline.fault("view", exc)
        if len(enriched):
            self._processed_until = enriched["timestamp"].max()
        self._behind_log = True
        if self.log is not None and (self._committed_at is None
                                     or time.monotonic() - self._committed_at >= self.checkpoint_every):
            self.commit()

    def _on_idle(self):
        """A followed source waits for lines: commit what the last chunks did now, not at the next chunk."""
        if self.log is not None and self._behind_log:
            self.commit()

    def health(self, stale_after: str = STALE_AFTER) -> pd.DataFrame:
        """State per entity and signal: 0 normal, 1 flagged or a warning alert firing (a limit forecast),
        2 critical alert firing, 3 no recent data, 4 a data-quality finding (a gap, a stuck sensor) and no
        anomaly.

        An entity is stale when its newest row is older than ``stale_after`` (or ten of its usual intervals,
        when longer) on the replay's clock: silence is shown as silence, never as normal.
        """
        if self._latest is None or self._latest.empty:
            return pd.DataFrame(columns=["entity", "signal", "state", "score", "last_seen"])
        latest = self._latest
        stale = (self._silence_reference()[0] - latest["timestamp"]) > self._stale_limits(stale_after)
        firing = [a for a in self.engine.alerts.values() if a.state == "firing"]
        critical = {(a.entity, a.signal) for a in firing if a.severity == "critical"}
        # A data-quality alert (a stuck sensor) keeps its own colour: the finding, not the severity, says it.
        quality_kind = {d.label for d in self.pipeline.detectors if d.kind == "quality"}
        warning = {(a.entity, a.signal) for a in firing if a.severity == "warning" and a.detector not in quality_kind}
        # Column by column, not row by row: a fleet of 500 batteries is asked for its grid every second.
        entities = latest.index.astype(str).to_numpy(dtype=object)
        n, k = len(entities), len(self.signals)
        stale_now = stale.to_numpy(dtype=bool)
        state = np.zeros((n, k), dtype=np.int64)
        score = np.full((n, k), np.nan)
        for j, s in enumerate(self.signals):
            sc = latest[f"{s}__score"].to_numpy(dtype=float) if f"{s}__score" in latest else np.full(n, np.nan)
            quality = (latest[f"{s}__quality"].to_numpy(dtype=float) if f"{s}__quality" in latest
                       else np.zeros(n))
            crit = _firing_on(entities, critical, s)
            warn = _firing_on(entities, warning, s)
            state[:, j] = np.select([stale_now, crit, is_flag(sc) | warn, is_flag(quality)], [3, 2, 1, 4], 0)
            score[:, j] = sc
        return pd.DataFrame({
            "entity": pd.Series(np.repeat(entities, k), dtype=object),
            "signal": pd.Series(np.tile(np.array(self.signals, dtype=object), n), dtype=object),
            "state": state.ravel(), "score": score.ravel(),
            "last_seen": np.repeat(latest["timestamp"].to_numpy(), k)})

    def health_scores(self) -> pd.DataFrame:
        """Per-battery health, 0-100, with its components (:meth:`sbg.battery.health.HealthScore.table`).

        Empty when the data is not battery telemetry (the score does not apply).
        """
        health = self.pipeline.health
        return health.table() if health is not None else pd.DataFrame(columns=["entity", "health"])

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
            keep += [f"{s}__mean", f"{s}__std", f"{s}__lower", f"{s}__upper", f"{s}__score", f"{s}__quality"]
        keep += ["interval_s", *OUTPUT_COLUMNS]
        return [c for c in keep if c in frame.columns]

    def _on_follow_event(self, event):
        """A followed file rotated, cut short, deleted or unreadable: in the event feed, errors counted."""
        if event.error:
            self.metrics.errors += 1
            self.metrics.last_error = event.message
        if event.kind != "opened" or len(self.pipeline.events) < 50:  # a glob of many files: not a flood
            self.pipeline.emit_event("source", event.message, "critical" if event.error else "info")

    def _on_replay_fault(self, exc: BaseException):
        # A data file gone, or unreadable, is the user's to fix and is said in one line; anything else
        # is a bug, logged with its traceback.
        if isinstance(exc, (OSError, SbgError)):
            self.source_failed(exc)
        else:
            self.pipeline.fault("replay", exc)

    def source_failed(self, exc: BaseException, doing: str = "the replay has stopped") -> str:
        """Report a data file that cannot be read (deleted, moved, unreadable) and return the message.

        The message names the files, never their folders: it is shown in
        served pages. It counts as an error (``metrics.errors``, the
        dashboard's banner), goes into the event feed, and is one line in
        the log, with the full path for the operator and no traceback.
        """
        if isinstance(exc, OSError) and exc.filename:
            name, reason = Path(exc.filename).name, exc.strerror or type(exc).__name__
        else:
            name = Path(exc.path).name if isinstance(exc, SourceError) else ", ".join(p.name for p in self.paths)
            reason = str(exc)
            for p in self.paths:
                for form in sorted({str(p.absolute()), str(p.resolve()), str(p)}, key=len, reverse=True):
                    reason = reason.replace(form, p.name)
            reason = reason.removeprefix(f"{name}: ")
        error = SourceError(name, f"{reason}; {doing}")
        self.metrics.record_error("source", error)
        message = f"cannot read the data: {error}"
        self.pipeline.emit_event("error", message, "critical")
        _log.error("%s (%s)", message, exc)
        return message

    def count_rows(self) -> int | None:
        """Rows in the data files (counted once), or ``None`` while they cannot be counted.

        A file that cannot be read is reported once (:meth:`source_failed`),
        not at every look, until the replay starts over.
        """
        with self._count_lock:  # a page may count aside, in a thread, while another looks
            if self.replay.rows_total is None and not self._count_failed:
                try:
                    self.replay.scan()
                except (OSError, SbgError) as exc:
                    self._count_failed = True
                    self.source_failed(exc, "its rows cannot be counted")
        return self.replay.rows_total

    def _on_restart(self, reason: str):
        self._count_failed = False
        self._processed_until = None
        if reason == "loop":
            self._archive_alerts()
        else:
            self._past_alerts = None
            self.engine.source = self.source_key
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

        ``options`` are :class:`~sbg.report.build.ReportOptions` parameters. For the
        HTML as a string (a dashboard download, mid-run) use
        :func:`sbg.report.build.build_report`.
        """
        from ..report.build import ReportOptions, write_report

        return write_report(self, path, title=title, options=ReportOptions.from_options(**options))

    def status(self) -> dict:
        """Metrics, replay, data state and health; with a hierarchy, ``groups``: the fleet rolled up by site and rack."""
        out = {
            "source": self.source_key,
            "files": [str(p) for p in self.paths],
            "baseline": str(self.baseline_path) if self.baseline_path else None,
            "metrics": self.metrics.as_dict(),
            "replay": self.replay.progress,
            "data": self.data_state(),
            "health": None if self.pipeline.health is None else self.pipeline.health.as_dict(),
        }
        if self.hierarchy is not None:
            from ..io.hierarchy import group_summary

            states, scores = self.entity_states()
            out["groups"] = group_summary(states, scores, self.hierarchy)
        return out

    def entity_states(self) -> tuple[pd.Series, pd.Series]:
        """Each entity's worst state now (by name, over its signals) and each battery's health score."""
        from ..io.hierarchy import worst_states

        states = worst_states(self.health())
        scores = self.health_scores()
        health = (pd.Series(scores["health"].to_numpy(dtype=float), index=scores["entity"].astype(str).to_numpy(dtype=object))
                  if len(scores) else pd.Series(dtype=float))
        return states, health

    def groups(self, level: str = "rack") -> pd.DataFrame | None:
        """The fleet rolled up per group (:func:`sbg.io.hierarchy.rollup`); ``None`` without a hierarchy."""
        if self.hierarchy is None:
            return None
        from ..io.hierarchy import rollup

        states, scores = self.entity_states()
        return rollup(states, scores, self.hierarchy, level=level)

    def _clock(self) -> pd.Timestamp:
        """The replay's clock, or the newest row's time once the data has ended (or before any tick)."""
        if self.replay.sim_time is None or self.replay.state == "finished":
            return self._latest["timestamp"].max()
        return pd.Timestamp(self.replay.sim_time)

    def _silence_reference(self) -> tuple[pd.Timestamp, float]:
        """The time silence is measured at, and how many seconds of data time the processing trails the replay.

        Rows the replay has handed out that the pipeline has not finished
        (the replay's ``emitted_until`` is past the last processed chunk) are
        not silence: the monitor is behind, not the source. Silence is then
        measured at the newest processed row; otherwise at the replay's clock.
        """
        clock = self._clock()
        emitted, done = self.replay.emitted_until, self._processed_until
        if emitted is None or (done is not None and done >= emitted):
            return clock, 0.0
        frontier = done if done is not None else self._latest["timestamp"].max()
        behind = (clock - frontier).total_seconds()
        return (frontier, behind) if behind > 0 else (clock, 0.0)

    def _stale_limits(self, stale_after: str) -> pd.Series:
        """How long each entity (of the latest rows) may be silent before it is stale (:func:`stale_limit`)."""
        usual = self.pipeline.features.usual_intervals()
        secs = stale_limit([usual.get(str(e), np.nan) for e in self._latest.index], stale_after)
        return pd.Series(pd.to_timedelta(secs, unit="s"), index=self._latest.index)

    def data_state(self, stale_after: str = STALE_AFTER) -> dict:
        """Whether data is arriving: ``no data``, ``live``, ``behind``, ``partly stale`` or ``stale``.

        Judged in data time. An entity whose newest row is more than
        ``stale_after`` (or ten of its usual intervals, when longer) older
        than the replay's clock is stale: the source
        has had nothing from it. ``stale`` means no entity has sent rows for
        that long, and a source with no rows yet has no data. Silence is
        reported as silence, never as a quiet "normal".

        A monitor whose processing trails the replay (rows handed out and not
        yet processed, as at high speed or with a Dask fan-out) is
        ``behind`` by ``behind_s`` seconds of data time, not stale: silence
        is then measured at the newest processed row, so an entity silent in
        the data still shows as stale beside it.
        """
        latest = self._latest
        if latest is None or latest.empty:
            return {"state": "no data", "entities": 0, "stale_entities": [], "stale_count": 0, "silent_s": None,
                    "behind_s": 0.0}
        newest = latest["timestamp"].max()
        now, behind = self._silence_reference()
        age = now - latest["timestamp"]
        stale = sorted(str(e) for e in age.index[age > self._stale_limits(stale_after)])
        state = ("behind" if behind else "live") if not stale else "stale" if len(stale) == len(latest) \
            else "partly stale"
        return {"state": state, "entities": int(len(latest)), "stale_entities": stale[:100],
                "stale_count": len(stale), "silent_s": max(0.0, (now - newest).total_seconds()), "behind_s": behind}

    def close(self):
        """Stop, commit and close the alert log and the followed files; a second call does nothing."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.replay.stop()
        if self.log is not None:
            if self._committed_at is not None:
                self.commit()
            self.log.close()
        for src in self.sources:
            if hasattr(src, "close"):  # a followed file is held open
                src.close()

    # ------------------------------------------------------------------ checkpoints

    def commit(self):
        """Write the alert changes since the last commit and a checkpoint of the run, in one transaction.

        Called only between chunks (from the sink once a chunk is fully
        processed, and when the replay pauses, stops or ends), so the replay
        position and every carried state describe the same row.
        """
        changed = dict(self._unsaved)
        # Peaks move while an alert fires, without an event.
        changed.update({a.id: a for a in self.engine.alerts.values() if a.state == "firing"})
        self.log.write(changed.values(), checkpoint=self._checkpoint())
        self._unsaved.clear()
        self._behind_log = False
        self._committed_at = time.monotonic()

    def _on_replay_state(self, event):
        # A run's first checkpoint is its start, so --resume after an early kill starts over cleanly.
        if event.new in ("finished", "stopped", "paused") or (event.new == "running" and self._committed_at is None):
            self.commit()

    def _identity(self, schema_options) -> dict:
        """What a checkpoint is valid for: the files as they are now, and everything that shapes the results."""
        config = {
            # Where alerts are sent does not shape them: a changed notify: section still resumes.
            "sbg": __version__, "settings": {k: v for k, v in self.settings.data.items() if k != "notify"},
            "schema_options": schema_options,
            "schemas": [s.schema.as_dict() for s in self.sources],
            **({"fan_out": True} if self.fan_out is not None else {}),  # its checkpoints lack the workers' state
            "baseline": None if self.baseline_path is None else _file_identity(self.baseline_path),
        }
        # Through JSON once, so it compares equal to what a checkpoint reads back.
        # A followed file grows and rotates: its position in the checkpoint says where it stood (by inode).
        files = [{"path": str(Path(p).resolve()), "follow": True} if self.follow else _file_identity(p)
                 for p in self.paths]
        return json.loads(json.dumps({"files": files, "config": config},
                                     sort_keys=True, default=str))

    def _checkpoint(self) -> dict:
        features, arrays = self.pipeline.features.state_dict()
        health = self.pipeline.health
        if health is not None:
            health_meta, health_arrays = health.state_dict()
            arrays = {**arrays, **{f"{_HEALTH_PREFIX}{k}": v for k, v in health_arrays.items()}}
        m = self.metrics
        state = {
            "engine": self.engine.state(), "features": features,
            "health": None if health is None else health_meta,
            "metrics": {**{k: getattr(m, k) for k in _COUNTERS},
                        "sim_time": None if m.sim_time is None else pd.Timestamp(m.sim_time).isoformat()},
        }
        blob = io.BytesIO()
        np.savez(blob, **arrays)
        return {"source": self.source_key, "identity": json.dumps(self.identity, sort_keys=True),
                "position": json.dumps(self.replay.position()), "state": json.dumps(state),
                "arrays": blob.getvalue()}

    def _resume(self):
        where = self.log.path
        row = self.log.checkpoint(self.source_key)
        if row is None:
            others = self.log.checkpoint_sources()
            if others:
                raise SbgError(f"{where}: has no checkpoint for {self.source_key}, only for {', '.join(others)}; "
                               "resume with the same files or run without --resume")
            raise SbgError(f"{where}: no checkpoint to resume from; run without --resume first")
        try:
            saved = json.loads(row["identity"])
            position = json.loads(row["position"])
            state = json.loads(row["state"])
            with np.load(io.BytesIO(row["arrays"]), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise SbgError(f"{where}: the checkpoint of {self.source_key} is damaged ({exc}); "
                           "run without --resume to start over") from None
        self._check_identity(saved)
        try:
            ours = {k: v for k, v in arrays.items() if not k.startswith(_HEALTH_PREFIX)}
            self.pipeline.features.load_state_dict(state["features"], ours)
            if self.pipeline.health is not None and state.get("health") is not None:
                self.pipeline.health.load_state_dict(state["health"], {
                    k[len(_HEALTH_PREFIX):]: v for k, v in arrays.items() if k.startswith(_HEALTH_PREFIX)})
            self.engine.restore(state["engine"])
            metrics = state["metrics"]
            with param.parameterized.batch_call_watchers(self.metrics):
                for k in _COUNTERS:
                    setattr(self.metrics, k, int(metrics[k]))
                self.metrics.sim_time = None if metrics["sim_time"] is None else pd.Timestamp(metrics["sim_time"])
            self.replay.restore(position)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise SbgError(f"{where}: the checkpoint of {self.source_key} is damaged ({type(exc).__name__}: "
                           f"{exc}); run without --resume to start over") from None
        self.resumed_from = position

    def _check_identity(self, saved):
        where = self.log.path
        now = self.identity
        if not isinstance(saved, dict) or saved.get("files") != now["files"]:
            before = saved.get("files") if isinstance(saved, dict) else None
            paths = [f.get("path") for f in before] if isinstance(before, list) and all(
                isinstance(f, dict) for f in before) else []
            if paths != [f["path"] for f in now["files"]]:
                raise SbgError(f"{where}: the checkpoint is for {', '.join(map(str, paths)) or 'other files'}, "
                               "not these files; resume with the same files or run without --resume")
            changed = next(f["path"] for f, g in zip(now["files"], before, strict=True) if f != g)
            raise SbgError(f"{changed}: changed since the checkpoint (size, modification time or content); "
                           "run without --resume to start over")
        if saved.get("config") != now["config"]:
            raise ConfigError(f"{where}: the settings, baseline or schema options differ from the checkpoint's; "
                              "resume with the same options or run without --resume")


#: Alerts of a looped replay's earlier passes kept in memory (the newest).
PAST_ALERTS = 5000
#: Prefix of the health score's arrays among a checkpoint's (the features' are numbered).
_HEALTH_PREFIX = "health."
#: Metrics counters a checkpoint carries over.
_COUNTERS = ("rows_in", "rows_ok", "rows_quarantined", "rows_skipped", "analyses", "errors", "entities",
             "alerts_total", "alerts_firing")
_HEAD_BYTES = 1 << 20


def _hierarchy(hierarchy, carried):
    """The monitor's hierarchy: the one given, a mapping file read, or the data's site/rack columns, or None."""
    from ..io.hierarchy import Hierarchy, hierarchy_columns, load_hierarchy

    if isinstance(hierarchy, Hierarchy):
        return hierarchy
    if hierarchy:
        return load_hierarchy(hierarchy)
    columns = hierarchy_columns(carried)
    if columns:
        return Hierarchy(columns=columns, source="columns " + ", ".join(columns.values()))
    return None


def _file_identity(path) -> dict:
    """Path, size, modification time and a hash of the first MiB of a file."""
    path = Path(path).resolve()
    st = path.stat()
    with open(path, "rb") as fh:
        head = hashlib.sha256(fh.read(_HEAD_BYTES)).hexdigest()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_sha256": head}


def warm_up() -> float:
    """Replays a tiny file through the whole flow once; returns the seconds it took.

    The first chunk of a replay loads the compiled kernels (numba's on-disk
    cache and its registries, ~0.5 s). Served, that happened on the event
    loop when someone pressed Start, which then answered nothing else; the
    server calls this at start-up instead.
    """
    import tempfile

    started = time.perf_counter()
    t = pd.date_range("2024-01-01", periods=40, freq="1s")
    frame = pd.DataFrame({"timestamp": np.tile(t, 2), "entity": np.repeat(["a", "b"], len(t)),
                          "voltage_v": 3.7 + 0.01 * np.arange(2 * len(t)) % 7, "current_a": 1.0})
    with tempfile.TemporaryDirectory(prefix="sbg-warm-") as tmp:
        path = Path(tmp) / "warm.csv"
        frame.sort_values("timestamp", kind="stable").to_csv(path, index=False)
        Monitor([path], speed="max").run_to_end()
    return time.perf_counter() - started
