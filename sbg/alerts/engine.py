"""Alert rules and the per-(rule, entity) state machine that turns detector scores into alerts.

A :class:`Rule` says which detector flags on which signals raise an alert, at
what severity, and how long the condition must hold. The :class:`AlertEngine`
runs a state machine per (rule, entity)::

    normal --(flag)--> pending --(held pending_rows / pending_for)--> firing
    firing --(clear_rows rows, or clear_for of data time, without a flag)--> resolved
    resolved --(fires again within dedup)--> firing, same alert reopened

Alert ids hash the source, rule, entity and start time, so replaying the same
data gives the same ids (the alert log, :mod:`sbg.alerts.log`, upserts on them).

>>> rule = Rule(name="hot", detectors=["limits"], pending_rows=2, clear_rows=2)
>>> rule.matches("limits", "temperature_c"), rule.matches("zscore", "temperature_c")
(True, False)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import param

from ..detect.detectors import check_duration, keep_usable

__all__ = ["Rule", "Alert", "AlertEngine", "ALERT_COLUMNS", "alerts_frame", "default_rules", "SEVERITIES"]

SEVERITIES = ("info", "warning", "critical")


class Rule(param.Parameterized):
    """Maps detector flags on some signals to alerts of one severity."""

    name = param.String(default="rule", doc="Unique rule name, used in alert ids.")
    title = param.String(default="", doc="Human title used in alert messages.")
    detectors = param.List(default=[], item_type=str, doc="Detector labels that count; empty for all.")
    signals = param.String(default="", doc="Regular expression on signal names; empty for all.")
    severity = param.Selector(default="warning", objects=list(SEVERITIES), doc="Severity of the alert.")
    min_score = param.Number(default=0.5, bounds=(0, 1), doc="Score at which a row meets the condition.")
    pending_rows = param.Integer(default=1, bounds=(1, None), doc="Consecutive flagged rows before firing.")
    pending_for = param.String(default="0s", doc="Duration the condition must hold before firing.")
    clear_rows = param.Integer(default=10, bounds=(1, None), doc="Consecutive clear rows that resolve an alert.")
    clear_for = param.String(default="", doc=(
        "Data time without a flag that resolves an alert, if sooner than clear_rows (a duration; empty: rows "
        "only). The default rules clear after 30 rows or 30 s: the same at 1 Hz, and an hourly logger's alert "
        "does not wait 30 hours."))
    dedup = param.String(default="5min", doc="A re-fire within this time of resolution reopens the same alert.")

    def __init__(self, **params):
        super().__init__(**params)
        if not self.title:
            self.title = self.name.replace("_", " ")
        self._re = re.compile(self.signals) if self.signals else None
        self._durations()
        # Typed into the page: a value that is not a duration is refused there, as a settings file is.
        self.param.watch(self._on_duration, ["pending_for", "dedup", "clear_for"])

    def _durations(self):
        """Check the durations and keep them in nanoseconds (``pending_ns``, ``dedup_ns``, ``clear_ns``)."""
        check_duration("pending_for", self.pending_for, "5min", zero=True)
        check_duration("dedup", self.dedup, "5min", zero=True)
        if self.clear_for:
            check_duration("clear_for", self.clear_for, "30s")
        self.pending_ns = pd.Timedelta(self.pending_for).value
        self.dedup_ns = pd.Timedelta(self.dedup).value
        self.clear_ns = pd.Timedelta(self.clear_for).value if self.clear_for else 0

    def _on_duration(self, *events):
        if not keep_usable(self, events, self._durations, f"rule {self.name}"):
            self._durations()  # the values kept, in nanoseconds again

    def matches(self, detector: str, signal: str) -> bool:
        if self.detectors and detector not in self.detectors:
            return False
        return self._re is None or bool(self._re.search(signal))


def default_rules() -> list[Rule]:
    """The documented default rules (see README)."""
    return [
        Rule(name="limit_breach", title="limit breached", detectors=["limits"], severity="critical",
             pending_rows=3, clear_rows=30, clear_for="30s"),
        Rule(name="anomaly", title="unusual behaviour", detectors=["surprise"], severity="warning",
             clear_rows=30, clear_for="30s"),
        Rule(name="condition", title="abnormal condition", detectors=["joint"], severity="warning",
             pending_rows=10, pending_for="5min", clear_rows=30, clear_for="30s"),
        Rule(name="outlier", title="outlier", detectors=["zscore", "robust"], severity="warning",
             clear_rows=30, clear_for="30s"),
        Rule(name="spike", title="spike", detectors=["spike"], severity="warning", clear_rows=30, clear_for="30s"),
        Rule(name="stuck_sensor", title="stuck sensor", detectors=["flatline"], severity="warning",
             clear_rows=5, clear_for="5s"),
        Rule(name="data_gap", title="data gap", detectors=["gap"], severity="warning", clear_rows=1),
        Rule(name="limit_forecast", title="limit ahead", detectors=["forecast"], severity="warning",
             pending_rows=3, clear_rows=30, clear_for="30s"),
        Rule(name="baseline_drift", title="drift from baseline", detectors=["baseline"], severity="warning",
             pending_rows=10, clear_rows=60, clear_for="60s"),
    ]


@dataclass
class Alert:
    """One alert: what fired, where, when, and how bad it got."""

    id: str
    rule: str
    entity: str
    signal: str
    detector: str
    severity: str
    start: pd.Timestamp
    end: pd.Timestamp | None
    peak: float
    peak_score: float
    peak_time: pd.Timestamp
    message: str
    state: str = "firing"
    source: str = ""
    reopened: int = 0

    def as_record(self) -> dict:
        rec = asdict(self)
        for key in ("start", "end", "peak_time"):
            rec[key] = None if rec[key] is None else pd.Timestamp(rec[key]).isoformat()
        rec["peak"] = None if rec["peak"] is None or not np.isfinite(rec["peak"]) else float(rec["peak"])
        rec["peak_score"] = float(rec["peak_score"])
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> Alert:
        """The alert :meth:`as_record` describes (timestamps parsed, a null peak as NaN).

        >>> a = Alert("x", "r", "e", "v", "limits", "warning", pd.Timestamp("2024-01-01"), None, 1.5, 0.7,
        ...           pd.Timestamp("2024-01-01"), "m")
        >>> Alert.from_record(a.as_record()) == a
        True
        """
        rec = {f: rec[f] for f in ALERT_COLUMNS}
        for key in ("start", "end", "peak_time"):
            rec[key] = None if rec[key] is None else pd.Timestamp(rec[key])
        rec["peak"] = float("nan") if rec["peak"] is None else float(rec["peak"])
        rec["peak_score"] = float(rec["peak_score"])
        rec["reopened"] = int(rec["reopened"])
        return cls(**rec)


#: :attr:`_Track.last_true_ts` while unknown: later than any row, so no data time has passed since it.
_UNKNOWN_TS = 2**62


def _clear_row(track, rows, ts, pos0, upto, clear_rows, clear_ns):
    """The row that resolves ``track``'s firing alert among its entity's clear rows of this chunk before
    position ``upto``: the ``clear_rows``-th after the last flag, or the first ``clear_ns`` of data time after
    it (when set), whichever comes first; None when neither is in this chunk.

    ``rows`` are the entity's rows of the chunk, at positions ``pos0, pos0 + 1, ...``.
    """
    lo = max(track.last_true_pos + 1, pos0)
    if upto <= lo:
        return None
    quiet = rows[lo - pos0:upto - pos0]
    i = track.last_true_pos + clear_rows - lo  # the clear_rows-th quiet row, counted from this chunk's first
    if clear_ns:
        late = np.flatnonzero(ts[quiet] - track.last_true_ts >= clear_ns)
        if len(late):
            i = min(i, int(late[0]))
    return quiet[i] if 0 <= i < len(quiet) else None


@dataclass
class _Track:
    """State of one (rule, entity) machine."""

    run_len: int = 0
    run_start_ts: int = 0
    last_true_pos: int = -(10**18)
    #: Time (ns) of the last flagged row; far in the future while unknown, so that ``clear_for`` waits.
    last_true_ts: int = _UNKNOWN_TS
    alert: Alert | None = None
    last_resolved: Alert | None = None
    last_end_ns: int = 0


class AlertEngine:
    """Evaluates rules on scored chunks and keeps one state machine per (rule, entity).

    Parameters
    ----------
    rules : list of Rule
    source : str
        Name of the data source; part of every alert id.
    """

    def __init__(self, rules=None, source: str = ""):
        self.rules = list(rules) if rules is not None else default_rules()
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique: {names}")
        self.source = source
        self.tracks: dict[str, dict[str, _Track]] = {}
        self.alerts: dict[str, Alert] = {}
        self._subscribers: list[Callable] = []
        self._pairs_cache = None
        #: detector label -> (signal, value) -> words; the pipeline fills it in.
        self.describers: dict[str, Callable] = {}
        #: detector label -> signal -> column holding the value an alert reports.
        self.value_columns: dict[str, Callable] = {}

    def subscribe(self, callback: Callable) -> Callable:
        """Call ``callback(event, alert)`` on ``fired``, ``reopened`` and ``resolved``; returns an unsubscriber."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.state == "firing"]

    def reset(self):
        self.tracks.clear()
        self.alerts.clear()

    def state(self) -> dict:
        """Everything the state machines carry, JSON-ready: the alerts and each (rule, entity) track.

        :meth:`restore` of this state continues exactly as this engine would.
        """
        def ref(alert):
            return None if alert is None else alert.id

        tracks = [[rule, label, int(t.run_len), int(t.run_start_ts), int(t.last_true_pos), ref(t.alert),
                   ref(t.last_resolved), int(t.last_end_ns), int(t.last_true_ts)]
                  for rule, per_entity in self.tracks.items() for label, t in per_entity.items()]
        return {"alerts": [a.as_record() for a in self.alerts.values()], "tracks": tracks}

    def restore(self, state: dict):
        """Replace all carried state with a :meth:`state` (alert objects shared between tracks as before).

        >>> engine = AlertEngine([Rule(name="r")])
        >>> engine.restore({"alerts": [], "tracks": [["r", "a", 2, 10, 5, None, None, 0, 7]]})
        >>> engine.tracks["r"]["a"].run_len, engine.state() == {"alerts": [], "tracks": [["r", "a", 2, 10, 5, None, None, 0, 7]]}
        (2, True)

        A state written before ``last_true_ts`` was kept (eight items a track) restores with it unknown.
        """
        alerts = {}
        for rec in state["alerts"]:
            alert = Alert.from_record(rec)
            alerts[alert.id] = alert
        rules = {r.name for r in self.rules}
        tracks: dict[str, dict[str, _Track]] = {}
        for rule, label, run_len, run_start_ts, last_true_pos, alert_id, resolved_id, last_end_ns, *rest in \
                state["tracks"]:
            if rule not in rules:
                raise ValueError(f"the state names rule {rule!r}, which these settings do not have")
            tracks.setdefault(rule, {})[label] = _Track(
                run_len=int(run_len), run_start_ts=int(run_start_ts), last_true_pos=int(last_true_pos),
                alert=None if alert_id is None else alerts[alert_id],
                last_resolved=None if resolved_id is None else alerts[resolved_id], last_end_ns=int(last_end_ns),
                last_true_ts=int(rest[0]) if rest else _UNKNOWN_TS)
        self.tracks.clear()
        self.tracks.update(tracks)
        self.alerts.clear()
        self.alerts.update(alerts)

    def _rule_pairs(self, pairs):
        if self._pairs_cache is None or self._pairs_cache[0] != pairs:
            per_rule = {r.name: np.array([i for i, (d, s) in enumerate(pairs) if r.matches(d, s)], dtype=int)
                        for r in self.rules}
            self._pairs_cache = (pairs, per_rule)
        return self._pairs_cache[1]

    def update(self, frame: pd.DataFrame, pairs, S: np.ndarray, codes, positions, labels) -> list[tuple[str, Alert]]:
        """Advance every state machine over one scored chunk.

        ``pairs`` names the ``(detector, signal)`` of each column of the score
        matrix ``S``; ``positions`` is each row's index in its entity's stream.
        Returns the ``(event, alert)`` list, also sent to subscribers.
        """
        events: list = []
        if len(frame) == 0:
            return events
        ts = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
        per_rule = self._rule_pairs(pairs)
        values = {}
        groups = None
        for rule in self.rules:
            cols = per_rule[rule.name]
            if len(cols) == 0:
                continue
            sub = S[:, cols]
            best_score = sub.max(axis=1)
            cond = best_score >= rule.min_score
            tracks = self.tracks.setdefault(rule.name, {})
            if not cond.any() and not tracks:
                continue
            # Which pair scored highest matters only on flagged rows.
            best = np.zeros(len(sub), dtype=np.intp)
            best[cond] = sub[cond].argmax(axis=1)
            if groups is None:
                order = np.argsort(codes, kind="stable")
                sorted_codes = codes[order]
                bounds = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1, len(order)]
                groups = {int(sorted_codes[lo]): order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)}
            flagged_codes = set(np.unique(codes[cond]).tolist())
            for code, rows in groups.items():
                label = labels[code]
                track = tracks.get(label)
                if track is None:
                    if code not in flagged_codes:
                        continue
                    track = tracks[label] = _Track()
                elif code not in flagged_codes and track.alert is None:
                    continue
                self._advance(rule, label, track, rows, cond, best, best_score, cols, pairs, frame, ts,
                              positions, events, values)
        # Events in arrival order of the rows that caused them, as a row-at-a-time run would see them.
        events.sort(key=lambda e: e[0])
        events = [(ev, alert) for _, ev, alert in events]
        for event, alert in events:
            for cb in list(self._subscribers):
                cb(event, alert)
        return events

    def _value(self, frame, values, det, sig, i):
        column = self.value_columns[det](sig) if det in self.value_columns else sig
        if column not in values:
            values[column] = frame[column].to_numpy(dtype="float64") if column in frame.columns else None
        col = values[column]
        return float("nan") if col is None else float(col[i])

    def _advance(self, rule, label, track, rows, cond, best, best_score, cols, pairs, frame, ts, positions,
                 events, values):
        """Walk the runs of flagged rows of one entity (not its rows one by one)."""
        pos = positions[rows]
        pos0 = pos[0]
        true_rows = rows[cond[rows]]
        clear_rows, clear_ns, pending_rows, pending_ns = rule.clear_rows, rule.clear_ns, rule.pending_rows, rule.pending_ns
        if len(true_rows):
            tpos = positions[true_rows]
            breaks = np.flatnonzero(np.diff(tpos) != 1) + 1
            for run in np.split(np.arange(len(true_rows)), breaks):
                first = true_rows[run[0]]
                p = tpos[run[0]]
                if p != track.last_true_pos + 1:
                    if track.alert is not None:
                        clear_row = _clear_row(track, rows, ts, pos0, p, clear_rows, clear_ns)
                        if clear_row is not None:
                            self._resolve(track, int(ts[clear_row]), events, clear_row)
                    track.run_len = 0
                    track.run_start_ts = int(ts[first])
                run_rows = true_rows[run]
                start = 0
                if track.alert is None:
                    lengths = track.run_len + np.arange(1, len(run) + 1)
                    ok = (lengths >= pending_rows) & (ts[run_rows] - track.run_start_ts >= pending_ns)
                    if ok.any():
                        start = int(np.argmax(ok))
                        i = run_rows[start]
                        det, sig = pairs[cols[best[i]]]
                        self._fire(rule, label, track, det, sig, self._value(frame, values, det, sig, i),
                                   float(best_score[i]), int(ts[i]), events, i)
                    else:
                        start = len(run)
                if track.alert is not None and start < len(run):
                    tail = run_rows[start:]
                    i = tail[int(np.argmax(best_score[tail]))]
                    score = float(best_score[i])
                    a = track.alert
                    if score > a.peak_score:
                        det, sig = pairs[cols[best[i]]]
                        a.peak, a.peak_score, a.peak_time = self._value(frame, values, det, sig, i), score, pd.Timestamp(int(ts[i]))
                        a.signal, a.detector = sig, det
                        a.message = self._message(rule, a)
                track.run_len += len(run)
                track.last_true_pos = tpos[run[-1]]
                track.last_true_ts = int(ts[run_rows[-1]])
        if track.alert is not None:
            clear_row = _clear_row(track, rows, ts, pos0, pos[-1] + 1, clear_rows, clear_ns)
            if clear_row is not None:
                self._resolve(track, int(ts[clear_row]), events, clear_row)

    def _message(self, rule, a: Alert) -> str:
        what = self.describers.get(a.detector)
        if what is not None and np.isfinite(a.peak):
            detail = what(a.signal, a.peak)
        else:
            detail = f"{a.signal} = {'n/a' if not np.isfinite(a.peak) else f'{a.peak:.6g}'}"
        return f"{rule.title}: {detail} ({a.detector}, score {a.peak_score:.2f})"

    def _fire(self, rule, label, track, det, sig, value, score, now_ns, events, row):
        start_ns = track.run_start_ts
        prev = track.last_resolved
        if prev is not None and start_ns - track.last_end_ns <= rule.dedup_ns:
            prev.state, prev.end = "firing", None
            prev.reopened += 1
            track.alert = prev
            track.last_resolved = None
            if score > prev.peak_score:
                prev.peak, prev.peak_score, prev.peak_time = value, score, pd.Timestamp(now_ns)
                prev.signal, prev.detector = sig, det
                prev.message = self._message(rule, prev)
            events.append((row, "reopened", prev))
            return
        ident = hashlib.sha1(f"{self.source}|{rule.name}|{label}|{start_ns}".encode()).hexdigest()[:16]
        alert = Alert(
            id=ident, rule=rule.name, entity=str(label), signal=sig, detector=det, severity=rule.severity,
            start=pd.Timestamp(start_ns), end=None, peak=value, peak_score=score,
            peak_time=pd.Timestamp(now_ns), message="", source=self.source,
        )
        alert.message = self._message(rule, alert)
        track.alert = alert
        self.alerts[ident] = alert
        events.append((row, "fired", alert))

    def _resolve(self, track, end_ns, events, row):
        a = track.alert
        a.state, a.end = "resolved", pd.Timestamp(end_ns)
        track.alert = None
        track.last_resolved = a
        track.last_end_ns = end_ns
        events.append((row, "resolved", a))

    def table(self) -> pd.DataFrame:
        """All alerts so far, newest first."""
        return alerts_frame([a.as_record() for a in self.alerts.values()])


#: The fields of an alert record, in the order the alert log stores them.
ALERT_COLUMNS = ["id", "rule", "entity", "signal", "detector", "severity", "start", "end", "peak", "peak_score",
                 "peak_time", "message", "state", "source", "reopened"]


def alerts_frame(records) -> pd.DataFrame:
    """Alert records as a frame, newest first, with ``kind``: whether the detector that raised
    each alert finds anomalies in the process (``anomaly``) or problems in the data (``quality``)."""
    from ..detect.detectors import detector_classes

    df = pd.DataFrame(list(records), columns=ALERT_COLUMNS)
    for col in ("start", "end", "peak_time"):
        df[col] = pd.to_datetime(df[col])
    kinds = {label: cls.kind for label, cls in detector_classes().items()}
    df["kind"] = pd.Series([kinds.get(d, "anomaly") for d in df["detector"]], index=df.index, dtype=object)
    return df.sort_values(["start", "id"], ascending=False, kind="stable").reset_index(drop=True)


