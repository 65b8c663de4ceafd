"""The analysis pipeline: stats, detectors and alerts over chunks.

:class:`Pipeline` is one object with two faces. ``process(frame)`` runs a
chunk through every step and returns the enriched frame; ``connect(stream)``
builds the same steps as a streamz DataFrame graph whose edges are streaming
DataFrames. Both use the same step objects, so batch (``sbg detect``) and
streaming give identical results.

Every step is guarded: an exception is counted in the metrics, recorded as an
event, and replaced by the step's neutral output (NaN statistics, zero
scores), so one bad chunk never stops the stream.

Enriched columns
----------------
``{signal}__mean/__std/__min/__max/__ewm``
    Rolling statistics (:class:`~sbg.detect.features.Stats`).
``{signal}__score``
    Highest anomaly-detector score on the signal.
``{signal}__quality``
    Highest data-quality score on the signal (a gap counts for every signal).
``interval_s``
    Seconds since the entity's previous row (NaN for its first).
``anomaly_score``, ``is_anomaly``, ``reason``
    Behavioural anomalies: the highest score of the anomaly detectors,
    whether it reaches 0.5, and the ``detector:signal`` pairs that flagged,
    highest first.
``quality``
    Data-quality findings on the row (``gap``, ``flatline:signal``,
    ``limits_mismatch:signal``, ``joint_unfit``, ``joint_held``, ``baseline_recentred:signal``),
    ``;``-separated, empty for none. They never
    set ``is_anomaly``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import numpy as np
import pandas as pd
import param

from ..alerts.engine import AlertEngine
from ..alerts.log import AlertLog
from ..battery.health import HealthScore
from ..detect.detectors import FLAG_AT, Detector, default_detectors, is_flag
from ..detect.features import Features, Stats
from ..detect.kernels import combine_scores
from ..io.sources import OUTPUT_COLUMNS
from .metrics import Metrics

_log = logging.getLogger("sbg")

__all__ = ["Pipeline", "OUTPUT_COLUMNS"]



class Pipeline(param.Parameterized):
    """Stats, detectors and alert rules over chunks with fixed signals."""

    signals = param.List(default=[], item_type=str, doc="Signal columns analysed.")
    carried = param.List(default=[], item_type=str, doc="Status columns kept but not analysed.")

    def __init__(self, stats: Stats | None = None, detectors: list[Detector] | None = None,
                 engine: AlertEngine | None = None, metrics: Metrics | None = None,
                 log: AlertLog | None = None, health: HealthScore | None = None, **params):
        super().__init__(**params)
        #: Per-battery health score (:mod:`sbg.battery.health`), advanced on every scored chunk; None: not kept.
        self.health = health
        self.features = Features(self.signals)
        stats_params = {} if stats is None else {k: v for k, v in stats.param.values().items()
                                                  if k not in ("name", "signals")}
        self.stats = Stats(features=self.features, signals=list(self.signals), **stats_params)
        self.detectors = list(detectors) if detectors is not None else default_detectors()
        self.engine = engine or AlertEngine()
        self.metrics = metrics or Metrics()
        self.log = log
        self.events: deque = deque(maxlen=500)
        self._event_subscribers: list[Callable] = []
        self.engine.subscribe(self._on_alert)
        for det in self.detectors:
            self.engine.describers[det.label] = det.describe
            self.engine.value_columns[det.label] = det.value_column

    def reset_state(self):
        """Forget all carried state (new run, loop or seek); keeps settings and subscribers."""
        self.features = Features(self.signals)
        self.stats.features = self.features
        for d in self.detectors:
            d.reset()
        self.engine.reset()
        if self.health is not None:
            self.health.reset()

    def subscribe_events(self, callback: Callable) -> Callable:
        """``callback(event_dict)`` for alert changes, quarantined rows and errors."""
        self._event_subscribers.append(callback)
        return lambda: self._event_subscribers.remove(callback) if callback in self._event_subscribers else None

    def emit_event(self, kind: str, message: str, severity: str = "info", **extra):
        """Put an event in the feed: ``time`` is the wall clock, ``sim_time`` the data's own time then.

        ``sim_time`` is the time in the data the event is about (an alert's
        start or end), or else the newest row's time, or ``None`` before any.
        """
        sim = extra.pop("sim_time", None)
        if sim is None and self.metrics.sim_time is not None:
            sim = self.metrics.sim_time
        event = {"time": pd.Timestamp.now().isoformat(timespec="seconds"),
                 "sim_time": None if sim is None else pd.Timestamp(sim).isoformat(timespec="seconds"),
                 "kind": kind, "severity": severity, "message": message, **extra}
        self.events.append(event)
        for cb in list(self._event_subscribers):
            try:
                cb(event)
            except Exception as exc:  # a broken viewer must not stop the pipeline
                self.metrics.record_error("event subscriber", exc)

    def _on_alert(self, event, alert):
        sev = alert.severity if event != "resolved" else "info"
        when = alert.end if event == "resolved" and alert.end is not None else alert.start
        self.emit_event("alert", f"{event}: {alert.entity} {alert.message}", sev, alert_id=alert.id, sim_time=when,
                        state=alert.state)

    def fault(self, where: str, exc: BaseException):
        """Count an exception caught in ``where`` and put it in the event feed (the run goes on)."""
        self.metrics.record_error(where, exc)
        _log.error("%s failed (the run goes on)", where, exc_info=exc)
        self.emit_event("error", f"{where} failed: {type(exc).__name__}: {exc}", "critical")

    def _guard(self, where, fn, fallback):
        try:
            return fn()
        except Exception as exc:
            self.fault(where, exc)
            return fallback()

    @property
    def pairs(self):
        return [(d.label, s) for d in self.detectors if d.enabled for s in self.signals]

    def output_columns(self):
        cols = ["timestamp", "entity", *self.signals, *self.carried, *self.stats.columns()]
        cols += [f"{s}__score" for s in self.signals]
        cols += [f"{s}__quality" for s in self.signals]
        return cols + ["interval_s", *OUTPUT_COLUMNS]

    def example(self) -> pd.DataFrame:
        """An empty frame with the enriched columns and dtypes."""
        return self.process(self.empty_input(), count=False)

    def empty_input(self) -> pd.DataFrame:
        data = {"timestamp": pd.Series([], dtype="datetime64[ns]"), "entity": pd.Series([], dtype=object)}
        data.update({s: pd.Series([], dtype="float64") for s in self.signals})
        data.update({c: pd.Series([], dtype=object) for c in self.carried})
        return pd.DataFrame(data)

    def process(self, frame: pd.DataFrame, count: bool = True, stats: bool = True) -> pd.DataFrame:
        """Run one validated chunk through stats, detectors and alert rules.

        ``stats=False`` leaves out the rolling-statistics columns (batch scoring
        does not write them); scores, flags and alerts are the same either way.
        """
        chunk = self._guard("features", lambda: self.features.chunk(frame), lambda: None)
        if chunk is None:  # nothing can be analysed: the rows go on with neutral output, counted
            return self._neutral(frame, count, stats)
        result, S = self.score(frame, chunk, stats)
        if len(frame) and count:
            self.account(result, S, chunk)
        return result

    def score(self, frame: pd.DataFrame, chunk, stats: bool = True) -> tuple[pd.DataFrame, np.ndarray]:
        """The enriched frame of one chunk and its score matrix (a column per :attr:`pairs`), no alerts.

        This is the part of :meth:`process` that carries per-entity state; a
        Dask fan-out runs it on the workers and :meth:`account` on the client.
        """
        n = len(frame)
        k = len(self.signals)

        def nan_stats():
            return {c: np.full(n, np.nan) for c in self.stats.columns()}

        if not stats:
            stat_cols = {}
        elif n:
            stat_cols = self._guard("stats", lambda: self.stats.compute(chunk), nan_stats)
        else:
            stat_cols = nan_stats()
        active = [d for d in self.detectors if d.enabled]
        D = len(active)
        S = np.zeros((n, D * k))
        for j, det in enumerate(active):
            if n == 0:
                continue

            def run(det=det):
                s = np.asarray(det.scores(chunk, self.features), dtype=float)
                if s.shape != (n, k):
                    raise ValueError(f"returned scores of shape {s.shape}, expected {(n, k)}")
                return s

            block = self._guard(f"detector {det.label}", run, lambda: np.zeros((n, k)))
            # NaN scores count as 0; fmax/fmin do it without temporaries.
            np.fmin(np.fmax(block, 0.0), 1.0, out=S[:, j * k:(j + 1) * k])
        out = dict(stat_cols)
        codes = np.repeat([_KIND_CODES.get(d.kind, 2) for d in active], k).astype(np.int8) if D else np.zeros(0, np.int8)
        kinds = codes == 0  # the anomaly columns: they make is_anomaly, anomaly_score and reason
        per_signal, q_signal, best, top, nflag = combine_scores(S, codes, k, FLAG_AT)
        for j, s in enumerate(self.signals):
            out[f"{s}__score"] = per_signal[:, j]
        pairs = self.pairs
        names = np.array([f"{d}:{s}" for (d, s), a in zip(pairs, kinds, strict=True) if a] + [""], dtype=object)
        flagged = is_flag(top)
        reason = np.where(flagged, names[best], "")
        for i in np.flatnonzero(nflag > 1):
            row = S[i, kinds]
            cols = np.flatnonzero(is_flag(row))
            cols = cols[np.argsort(-row[cols], kind="stable")]
            reason[i] = ";".join(names[cols])
        out["quality"] = self._quality(S, kinds, active, n, k)
        for j, s in enumerate(self.signals):
            out[f"{s}__quality"] = q_signal[:, j]
        out["interval_s"] = (self._guard("intervals", lambda: self.features.intervals(chunk)[0],
                                         lambda: np.full(n, np.nan)) if n else np.zeros(0))
        out["anomaly_score"] = top
        quality = out.pop("quality")
        return _enriched(frame, out, flagged, reason, quality), S

    def _quality(self, S, kinds, active, n, k) -> np.ndarray:
        """The ``quality`` column: every data-quality finding on each row, ``;``-separated."""
        quality = np.full(n, "", dtype=object)
        found = []
        for j, det in enumerate(active):
            if det.kind != "quality":
                continue
            hit = is_flag(S[:, j * k:(j + 1) * k])
            if det.per_row:
                found.append((hit.any(axis=1), det.label))
            else:
                found += [(hit[:, c], f"{det.label}:{s}") for c, s in enumerate(self.signals)]
        for det in active:
            for rows, name, per_row in det.findings():
                if len(rows) != n or not rows.any():
                    continue
                if per_row:
                    found.append((rows.any(axis=1), name))
                else:
                    found += [(rows[:, c], f"{name}:{s}") for c, s in enumerate(self.signals)]
        for rows, name in found:
            for i in np.flatnonzero(rows):
                quality[i] = f"{quality[i]};{name}" if quality[i] else name
        return quality

    def account(self, result: pd.DataFrame, S: np.ndarray, chunk):
        """Advance the alert rules over a scored chunk and count it in the metrics."""
        self._guard("alerts", lambda: self._alerts(result, self.pairs, S, chunk), lambda: None)
        if self.health is not None:  # here, on the client, so a Dask fan-out keeps it too
            self._guard("health score", lambda: self.health.update(result), lambda: None)
        self._guard("quality events", lambda: self._finding_events(result), lambda: None)
        self.metrics.analyses += 1
        self.metrics.entities = len(self.features.index)
        self.metrics.sim_time = pd.Timestamp(chunk.ts[-1])

    def _finding_events(self, result):
        """An event for each finding a detector reports once (see :meth:`~sbg.detect.detectors.Detector.findings`)."""
        # By name, not by the detectors' last call: in a Dask fan-out they ran on the workers.
        names = {name: det for det in self.detectors if det.enabled for name in det.finding_names}
        if not names:
            return
        quality = result["quality"].to_numpy(dtype=object)
        for i in np.flatnonzero(quality != ""):
            for found in quality[i].split(";"):
                name, _, signal = found.partition(":")
                if name in names:
                    entity = str(result["entity"].iloc[i])
                    self.emit_event("quality", f"{entity}: {names[name].explain(name, entity, signal)}", "warning",
                                    entity=entity, signal=signal, finding=name)

    def _neutral(self, frame: pd.DataFrame, count: bool, stats: bool) -> pd.DataFrame:
        """``frame`` with the enriched columns of a chunk that could not be analysed: NaN, zero, unflagged."""
        n = len(frame)
        out = {c: np.full(n, np.nan) for c in self.stats.columns()} if stats else {}
        out.update({f"{s}__score": np.zeros(n) for s in self.signals})
        out.update({f"{s}__quality": np.zeros(n) for s in self.signals})
        out["interval_s"] = np.full(n, np.nan)
        out["anomaly_score"] = np.zeros(n)
        if n and count:
            self.metrics.analyses += 1
        blank = np.full(n, "", dtype=object)
        return _enriched(frame, out, np.zeros(n, dtype=bool), blank, blank.copy())

    def _alerts(self, frame, pairs, S, chunk):
        positions = self.features.rows_seen(chunk)
        events = self.engine.update(frame, pairs, S, chunk.codes, positions, self.features.index.labels)
        if events:
            firing = sum(1 for a in self.engine.alerts.values() if a.state == "firing")
            with param.parameterized.batch_call_watchers(self.metrics):
                self.metrics.alerts_total = len(self.engine.alerts)
                self.metrics.alerts_firing = firing
        if self.log is not None:
            changed = {a.id: a for _, a in events}
            # Peaks move while an alert fires; write those too so the log is current.
            changed.update({a.id: a for a in self.engine.alerts.values() if a.state == "firing"})
            if changed:
                self.log.write(changed.values())

    def connect(self, stream):
        """Wire the steps as a streamz DataFrame graph fed by ``stream``.

        Returns the streaming DataFrame of enriched chunks; add sinks with
        ``.stream.sink(...)``.
        """
        from streamz.dataframe import DataFrame as StreamingDataFrame

        sdf = StreamingDataFrame(stream, example=self.empty_input())
        return sdf.map_partitions(self.process, sdf, example=self.example())

    def run_frame(self, frame: pd.DataFrame, chunk_rows: int = 65536) -> pd.DataFrame:
        """Process a whole frame in chunks of ``chunk_rows`` (batch use)."""
        parts = [self.process(frame.iloc[i:i + chunk_rows]) for i in range(0, len(frame), chunk_rows)]
        return pd.concat(parts, ignore_index=True) if parts else self.example()


def _enriched(frame: pd.DataFrame, floats: dict, flagged, reason, quality) -> pd.DataFrame:
    """``frame`` followed by the float columns ``floats`` and then ``is_anomaly``, ``reason``, ``quality``.

    The float columns are laid out as one 2-D block: building a frame from
    ~40 separate arrays per chunk costs more than the detectors' arithmetic.
    """
    n = len(frame)
    block = np.empty((len(floats), n))
    for i, values in enumerate(floats.values()):
        block[i] = values
    flags = pd.DataFrame({"is_anomaly": np.asarray(flagged, dtype=bool),
                          "reason": pd.Series(reason, dtype=object, copy=False),
                          "quality": pd.Series(quality, dtype=object, copy=False)}, copy=False)
    return pd.concat([frame.reset_index(drop=True), pd.DataFrame(block.T, columns=list(floats), copy=False), flags],
                     axis=1)


#: Detector kinds as :func:`~sbg.detect.kernels.combine_scores` counts them; any other kind (``forecast``)
#: only raises its own alerts.
_KIND_CODES = {"anomaly": 0, "quality": 1}


def build_pipeline(settings, signals, carried=(), entity_column: str | None = None, reference=None, source: str = "",
                   factory=None, battery: bool = False, **kwargs) -> Pipeline:
    """The one way a pipeline is built from settings: the monitor, ``sbg detect`` and the Dask workers use it.

    ``factory`` is the pipeline class (or a :class:`~sbg.scale.cluster.FanOut`'s
    ``pipeline``); ``kwargs`` (``metrics``, ``log``...) go to it. The alert engine
    gets the settings' rules and ``source`` for its alert ids. ``battery``: the input said
    itself that it is battery data (:attr:`sbg.io.sources.Schema.battery`).
    """
    engine = AlertEngine(settings.make_rules(), source=source)
    kwargs.setdefault("metrics", Metrics())
    health = settings.make_health()
    return (factory or Pipeline)(stats=settings.make_stats(), detectors=settings.make_detectors(reference, entity_column, battery),
                                 engine=engine, signals=list(signals), carried=list(carried),
                                 health=health if health.applies_to(signals, entity_column, battery) else None,
                                 **kwargs)
