"""Anomaly detectors: plain objects that score pandas chunks.

A detector knows nothing of streams, Panel or clocks. Given a chunk it returns,
for every row and signal, a score in ``[0, 1]``; a score of at least ``0.5``
is a flag. All detectors share one convention: a statistic ``z`` compared
with a threshold ``t`` scores ``z / (z + t)``, so the flag is exactly
``z >= t`` and the score still ranks how far past the line a value is.

Every detector carries its state between chunks (through
:class:`~sbg.detect.features.Features`), so scores do not depend on how the input was
chunked.

The defaults are meant for data sbg has never seen: windows are counted in
rows, not seconds, so they adapt to any sampling rate; scales have a floor
taken from the signal's longer history, so a quiet spell followed by normal
activity is not an anomaly; and each detector needs a warm-up before it
speaks.

>>> import numpy as np, pandas as pd
>>> t = pd.date_range("2024-01-01", periods=2000, freq="s")
>>> v = np.sin(np.arange(2000) / 20) + np.random.default_rng(0).normal(0, 0.01, 2000)
>>> v[1800] += 5
>>> df = pd.DataFrame({"timestamp": t, "entity": "a", "v": v})
>>> flags = is_flag(Spike().score(df)["v"])
>>> np.flatnonzero(flags).tolist()  # the jump up and the jump back
[1800, 1801]
"""

from __future__ import annotations

import functools
import logging
import re

import numpy as np
import pandas as pd
import param

from .features import Chunk, Features
from .kernels import JointReference, Likelihood, LimitArming, ReferenceFit, distance_scores

_log = logging.getLogger(__name__)

__all__ = [
    "Detector",
    "Limits",
    "Surprise",
    "Joint",
    "ZScore",
    "Robust",
    "Spike",
    "Flatline",
    "Gap",
    "Baseline",
    "default_detectors",
    "detector_classes",
    "BATTERY_LIMITS",
    "SAFETY_LIMITS",
    "battery_schema",
    "for_schema",
    "tail_score",
    "FLAG_AT",
    "UNDER_FLAG",
    "is_flag",
    "STALE_AFTER",
    "STALE_INTERVALS",
    "keep_usable",
    "stale_limit",
]

#: The one cut-off of sbg: a score (anomaly or data-quality) at or above it flags its row.
#: Pipeline, alerts, plots, status grid and report all ask :func:`is_flag`.
FLAG_AT = 0.5
#: An entity is stale when its newest row is this much older (in data time) than the newest row seen, or
#: :data:`STALE_INTERVALS` of its usual sampling interval when that is longer (a 5-minute logger is not
#: stale between its rows): the one owner of that rule (health grid, live status, report; :func:`stale_limit`).
STALE_AFTER = "60s"
#: Usual intervals of silence that make an entity stale: as long as the gap detector's default gap.
STALE_INTERVALS = 10


def stale_limit(usual_s, stale_after: str = STALE_AFTER):
    """Seconds of silence after which an entity is stale, from its usual interval(s) in seconds (NaN unknown).

    >>> stale_limit(np.array([1.0, 300.0, np.nan])).tolist()
    [60.0, 3000.0, 60.0]
    """
    floor = pd.Timedelta(stale_after).total_seconds()
    return np.fmax(np.nan_to_num(np.asarray(usual_s, dtype=float) * STALE_INTERVALS, nan=0.0), floor)


#: The highest score a detector gives a row it has decided not to flag (kept visible, under the cut-off).
UNDER_FLAG = 0.49


def is_flag(score):
    """Whether scores flag their rows: ``score >= FLAG_AT``, elementwise for arrays.

    >>> is_flag(np.array([0.2, 0.5, 0.9])).tolist()
    [False, True, True]
    """
    return np.asarray(score) >= FLAG_AT if not np.isscalar(score) else bool(score >= FLAG_AT)

#: Cell limits of the battery preset, by signal name (NMC/graphite cells).
BATTERY_LIMITS = {
    r"^(cell_?)?temp(erature)?(_c|_degc)?$": (5.0, 50.0),
    r"^(soc|state_of_charge)(_pct|_percent)?$": (15.0, 95.0),
    r"^(cell_?)?volt(age)?(_v)?$": (2.5, 4.25),
}

#: Limits whose names carry their unit and substance, applied whenever such a signal is present.
SAFETY_LIMITS = {
    r"(^|_)co_ppm$": (None, 35.0),  # a common carbon-monoxide alarm level
}

#: Signal names that say "battery" on their own: a state of charge, or a cell quantity with its unit.
_BATTERY_MARKERS = (r"^(soc|state_of_charge)(_pct|_percent)?$", r"^cell_?(volt(age)?|temp(erature)?)",
                    r"^volt(age)?_v$", r"^temp(erature)?_(c|degc)$", r"^current_a$")


def battery_schema(signals, entity: str | None = None) -> bool:
    """Whether a set of signal names is unambiguously battery telemetry (see :func:`_battery_schema`)."""
    return _battery_schema(tuple(signals), None if entity is None else str(entity))


@functools.lru_cache(maxsize=256)
def _battery_schema(signals: tuple, entity: str | None) -> bool:
    """Whether a set of signal names is unambiguously battery telemetry.

    It is when the entity column names a battery (``battery_id``,
    ``cell_id``, ``pack``, ``bms_id``), when a state of charge is among the
    signals, or when at least three are unit-suffixed battery quantities
    (``voltage_v``, ``current_a``, ``temperature_c``, ``cell_...``). A motor
    rig's ``Voltage``, ``Current`` and ``Temperature`` are not.

    >>> battery_schema(["voltage_v", "current_a", "temperature_c", "soc_pct"])
    True
    >>> battery_schema(["Voltage", "Current", "Temperature", "Pressure"])
    False
    """
    names = [s.lower() for s in signals]
    if entity and re.search(r"^(battery|batt|cell|pack|bms|module)(_?(id|no|name))?$", str(entity).lower()):
        return True
    if any(re.search(_BATTERY_MARKERS[0], s) for s in names):
        return True
    return sum(any(re.search(m, s) for m in _BATTERY_MARKERS[1:]) for s in names) >= 3


def keep_usable(obj: param.Parameterized, events, check, who: str) -> bool:
    """After ``events`` changed settings of ``obj``, run ``check()``; when it refuses them (ValueError), put
    the old values back without notifying anyone and log why. Returns whether the new values were kept.

    Settings typed into the page are judged as a settings file is, and the widget shows the value kept.
    """
    try:
        check()
    except ValueError as exc:
        with param.parameterized.discard_events(obj):
            obj.param.update(**{e.name: e.old for e in events})
        _log.warning("%s: %s; kept %s", who, exc, ", ".join(f"{e.name}={e.old!r}" for e in events))
        return False
    return True


def check_duration(name: str, value, example: str, zero: bool = False) -> None:
    """Refuse ``value`` unless it is a positive duration (or zero, with ``zero``), as settings load.

    >>> check_duration("window", "10min", "15min"); check_duration("warmup", "0s", "25min", zero=True)
    >>> check_duration("window", "soon", "15min")
    Traceback (most recent call last):
    ValueError: window must be a positive duration such as 15min, not 'soon'
    """
    try:
        span = pd.Timedelta(value)
        ok = span >= pd.Timedelta(0) if zero else span > pd.Timedelta(0)
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a {'' if zero else 'positive '}duration such as {example}, not {value!r}")


#: The range of the surprise detector's flag level from its false-alarm budget. Never stricter than one row
#: in 10^8 (fast data); never more often than one row in 10^2.5, about 300, a day of 5-minute rows: data
#: of 5 minutes or finer keep their whole budget, coarser data are not flagged more often per row than
#: that (measured between 2 and 3 decades on two real slow corpora, docs/detection.md).
MIN_DECADES, MAX_DECADES = 2.5, 8.0


def tail_score(p, decades):
    """Map a tail probability to ``[0, 1]`` on a log scale: ``p = 10**-decades`` scores 0.5.

    A score ``s`` means a tail probability of ``10**(-2 * decades * s)``;
    with the default 5 decades, 0.5 is one in 100,000 and 1.0 is one in
    10**10 or rarer.

    >>> tail_score(np.array([1.0, 1e-5, 1e-10, 0.0]), 5.0).tolist()
    [0.0, 0.5, 1.0, 1.0]
    """
    p = np.clip(np.nan_to_num(np.asarray(p, dtype=float), nan=1.0), 1e-300, 1.0)
    return np.minimum(-np.log10(p) / (2.0 * decades), 1.0) + 0.0


def ratio_score(z, threshold):
    """Map a non-negative statistic to ``[0, 1)`` so that ``z >= threshold`` scores ``>= 0.5``.

    >>> ratio_score(np.array([0.0, 3.0, 9.0]), 3.0).tolist()
    [0.0, 0.5, 0.75]
    """
    # fmax turns NaN into 0 and fmin caps infinity, with no temporaries.
    z = np.fmin(np.fmax(np.abs(z), 0.0), 1e300)
    return z / (z + threshold)


class Detector(param.Parameterized):
    """Base class: ``scores(chunk, features)`` returns an ``(n, k)`` array in ``[0, 1]``."""

    enabled = param.Boolean(default=True, doc="Run this detector.")
    label = "detector"
    #: ``"anomaly"``: the process behaves unusually (sets ``is_anomaly``);
    #: ``"quality"``: the data is unusual (sets ``quality``, never ``is_anomaly``);
    #: ``"forecast"``: a prediction (raises its alerts only, sets neither).
    kind = "anomaly"
    #: A quality finding that concerns the whole row (a gap), not one signal.
    per_row = False
    #: Names of the one-off findings :meth:`findings` reports.
    finding_names: tuple = ()

    def __init__(self, **params):
        super().__init__(**params)
        # Text typed into a settings widget (a duration, a pattern) is checked as a settings file is: a
        # value the detector cannot use is refused, and the widget shows the value kept.
        texts = [n for n, p in self.param.objects("existing").items()
                 if n != "name" and type(p) in (param.String, param.Parameter)]
        if texts:
            self.param.watch(self._keep_usable, texts)

    def check(self):
        """Refuse settings only the whole object can judge (durations, patterns, limits) when they load."""

    def _keep_usable(self, *events):
        keep_usable(self, events, self.check, self.label)

    def findings(self) -> list:
        """Data-quality findings of the last :meth:`scores` call beyond the scores themselves:
        ``(rows x signals bool array, name, per_row)`` triples (a limit breached from a signal's first
        value, a reference that does not fit)."""
        return []

    def explain(self, name: str, entity: str, signal: str) -> str:
        """Words for the event that reports a finding of :meth:`findings`."""
        return f"{signal}: {name}"

    __abstract = True

    def scores(self, chunk: Chunk, features: Features) -> np.ndarray:
        raise NotImplementedError

    def value_column(self, signal: str) -> str:
        """The column whose value an alert from this detector reports."""
        return signal

    def describe(self, signal: str, value: float) -> str:
        """Words for an alert message about ``value`` (from :meth:`value_column`)."""
        return f"{signal} = {value:.6g}"

    def score(self, frame: pd.DataFrame, signals=None) -> pd.DataFrame:
        """Score a frame with ``timestamp`` and ``entity`` columns (standalone use).

        State carries over between calls, so feeding a series in pieces gives
        the same scores as feeding it whole.
        """
        if signals is None:
            signals = [c for c in frame.columns if c not in ("timestamp", "entity")
                       and pd.api.types.is_numeric_dtype(frame[c])]
        features = getattr(self, "_standalone", None)
        if features is None or features.signals != tuple(signals):
            features = self._standalone = Features(signals)
        chunk = features.chunk(frame)
        return pd.DataFrame(self.scores(chunk, features), columns=list(signals), index=frame.index)

    def reset(self):
        self._standalone = None


class Limits(Detector):
    """Static lower and upper limits per signal.

    ``limits`` maps a signal to ``[low, high]`` (either may be null). The
    ``preset`` adds domain limits: ``battery`` applies :data:`BATTERY_LIMITS`
    to signals named like cell temperature, state of charge and cell voltage;
    ``auto`` does so only when the signal names are unambiguously battery
    telemetry (:func:`battery_schema`); ``none`` never. Limits whose names
    carry substance and unit (:data:`SAFETY_LIMITS`, CO in ppm) apply unless
    the preset is ``none``.

    A limit counts for an entity only once its signal has been inside it. A
    signal that starts outside is reported once, on that first row, as a
    likely configuration mismatch (a ``limits_mismatch`` data-quality
    finding), not as an alarm on every row.
    """

    label = "limits"
    finding_names = ("limits_mismatch",)
    limits = param.Dict(default={}, doc="Signal name to [low, high]; null for no bound.")
    preset = param.Selector(default="auto", objects=["auto", "battery", "none"],
                            doc="Domain limits by signal name: battery always, only for unambiguous "
                                "battery schemas (auto), or none.")

    def check(self):
        """Each limit is ``[low, high]`` of numbers or nulls, low below high (checked when the settings load)."""
        for signal, pair in self.limits.items():
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"limits.{signal} must be [low, high] (null for no bound), not {pair!r}")
            for v in pair:
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    raise ValueError(f"limits.{signal}: {v!r} is not a number")
            low, high = pair
            if low is not None and high is not None and low >= high:
                raise ValueError(f"limits.{signal}: low {low:g} is not below high {high:g}")

    def __init__(self, **params):
        super().__init__(**params)
        self.mismatch = None
        #: The input's entity column, if any (set from the schema): part of what makes a schema "battery".
        self.entity_column = None
        #: The input said itself it is battery data (a cycler file, a BDF header): set from the schema.
        self.battery_data = False

    def findings(self):
        return [] if self.mismatch is None else [(self.mismatch, "limits_mismatch", False)]

    def explain(self, name, entity, signal):
        low, high = self.bounds_for(signal, None)
        span = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        return (f"{signal} starts outside its limits {span}; they are held back until it comes inside them "
                "(likely configuration mismatch: are these the right limits for this data?)")

    def describe(self, signal, value):
        low, high = self.bounds_for(signal)
        span = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        return f"{signal} = {value:.6g}, outside {span}"

    def bounds_for(self, signal, signals=None):
        if signal in self.limits:
            low, high = self.limits[signal]
            return low, high
        if self.preset == "none":
            return None, None
        battery = self.preset == "battery" or (self.preset == "auto" and (
            self.battery_data or battery_schema(signals or [signal], getattr(self, "entity_column", None))))
        presets = ({**BATTERY_LIMITS, **SAFETY_LIMITS} if battery else SAFETY_LIMITS)
        for pattern, bounds in presets.items():
            if re.search(pattern, signal.lower()):
                return bounds
        return None, None

    def scores(self, chunk, features):
        out = np.zeros(chunk.X.shape)
        bounds = [self.bounds_for(s, chunk.signals) for s in chunk.signals]
        low = np.array([-np.inf if lo is None else lo for lo, _ in bounds])
        high = np.array([np.inf if hi is None else hi for _, hi in bounds])
        key = ("limit_arming", ";".join(f"{float(lo)!r}:{float(hi)!r}" for lo, hi in zip(low, high, strict=True)))
        armed, self.mismatch = features._get(chunk, key, lambda: LimitArming(features.k),
                                             lambda st: st.update(chunk.codes, chunk.X, low, high))
        for j, (lo, hi) in enumerate(bounds):
            if lo is None and hi is None:
                continue
            x = chunk.X[:, j]
            scale = 0.05 * max(abs(v) for v in (lo, hi) if v is not None)
            if lo is not None and hi is not None:
                scale = max(0.05 * (hi - lo), 1e-12)
            with np.errstate(invalid="ignore"):
                above = x > hi if hi is not None else np.zeros(len(x), dtype=bool)
                below = x < lo if lo is not None else np.zeros(len(x), dtype=bool)
            rows = np.flatnonzero((above | below) & armed[:, j])  # usually none: score only those
            if len(rows):
                xo = x[rows]
                excess = np.where(above[rows], xo - (hi if hi is not None else 0.0),
                                  (lo if lo is not None else 0.0) - xo)
                out[rows, j] = 0.5 + 0.5 * (1 - np.exp(-excess / max(scale, 1e-12)))
        return out


class Surprise(Detector):
    """How unusual each value is against the signal's own history (a calibrated outlier detector).

    Each value is compared with a short-memory prediction (a weighted mean
    of the last few rows); the error, in units of the signal's usual error,
    is its surprise. The surprise is then judged against the distribution of
    the signal's own earlier surprises, with a power-law tail fitted to the
    largest of them (:class:`~sbg.detect.kernels.Likelihood`): the score is that
    tail probability on a log scale (:func:`tail_score`). So one threshold
    means the same on a noisy power meter, a quantised temperature and a
    bursty counter, at any sampling rate, and a surprise a signal shows
    again and again (a cycler's load steps) is its normal. The prediction
    follows a new level within a few rows, so a level shift or a change of
    variance is flagged when it happens, not for ever after; slow drifts and
    smooth daily cycles stay predictable.
    """

    label = "surprise"
    false_alarm_every = param.String(default="1D", doc=(
        "A false-alarm budget in data time (a duration), for the entity as a whole: a healthy entity's rows "
        "are flagged about once per this much of its data, whatever its sampling interval and however many "
        "signals it has. The flag level is the tail probability interval / (false_alarm_every x signals), "
        "at most one row in about 300: 10^-4.9 for one signal at 1 s, 10^-2.5 at 5 min and coarser (a "
        "per-row level would flag a 5-minute series 300 times less often per day than a 1 Hz one)."))
    decades = param.Number(default=None, allow_None=True, bounds=(0.5, 50), doc=(
        "Flag when the surprise has a tail probability of at most 10^-decades, on every row whatever the "
        "sampling interval; unset (the default): from false_alarm_every and the signal's usual interval."))
    short = param.Integer(default=1, bounds=(1, 256),
                          doc="Rows whose mean surprise is judged (1: every row on its own).")
    level_span = param.Number(default=5.0, bounds=(1, None), doc="Span, in rows, of the prediction's level.")
    trend = param.Number(default=0.1, bounds=(0, 1),
                         doc="How fast the prediction learns a trend, relative to its level (0: no trend; "
                             "a damped trend lets ramps such as a state of charge under load stay predictable).")
    scale_span = param.Number(default=500.0, bounds=(2, None),
                              doc="Span, in rows, of the usual prediction error (all rows so far while fewer).")
    history_span = param.Number(default=5000.0, bounds=(10, None),
                                doc="Span, in rows, of the history of surprises a new one is judged against "
                                    "(all rows so far while fewer).")
    tail_share = param.Number(default=0.01, bounds=(0.001, 0.5),
                              doc="Share of the history's largest surprises the power-law tail is fitted to.")
    floor_ratio = param.Number(default=0.5, bounds=(0, None),
                               doc="Usual error floor, as a fraction of the long-run error (10x scale_span).")
    warmup = param.Integer(default=500, bounds=(0, None),
                           doc="Valid values of a signal before it can be flagged: enough for the top "
                               "tail_share of its surprises to hold five of them (5 / tail_share).")
    isolated_only = param.Boolean(default=True,
                                  doc="Leave out surprises shared by two or more signals of the entity on the "
                                      "same row: a change of operating point (a load step moves current and "
                                      "voltage together), which the joint detector judges.")
    shared_tail = param.Number(default=1e-3, bounds=(0, 1),
                               doc="Tail probability under which a signal counts as moving with the others.")
    daily = param.Boolean(default=False, doc=(
        "Leave out a surprise no larger than daily_ratio times one the signal showed at the same time of day "
        "(within daily_slot either side) on at least two earlier days: a daily routine such as a 04:00 "
        "backup or a morning start-up, not news. Needs days of data; a shorter run is judged as without it."))
    daily_period = param.String(default="1D", doc=(
        "The routine's period (a duration): 1D, the same time of day; 7D, the same time of the same weekday, "
        "for a routine that keeps to weekdays or to one day a week (two earlier weeks must show it)."))
    daily_slot = param.String(default="30min", doc="Slot of the period the routine is kept in (a duration).")
    daily_ratio = param.Number(default=2.0, bounds=(0, None),
                               doc="How much larger than the routine a surprise at that time must be.")
    daily_memory = param.String(default=None, allow_None=True, doc=(
        "Time over which a remembered routine fades (a duration); unset: seven periods (7 days for a "
        "daily routine, 7 weeks for a weekly one)."))

    def check(self):
        """Refuse a false-alarm budget that is not a positive duration when the settings load."""
        check_duration("false_alarm_every", self.false_alarm_every, "10D or 12h")
        check_duration("daily_period", self.daily_period, "1D or 7D")
        check_duration("daily_slot", self.daily_slot, "30min")
        if self.daily_memory is not None:
            check_duration("daily_memory", self.daily_memory, "7D")

    def describe(self, signal, value):
        return f"{signal} = {value:.6g}, unusual for this signal"

    def flag_decades(self, chunk, features):
        """The flag level per row, as decades of tail probability (``decades`` when set).

        From the false-alarm budget: ``log10(false_alarm_every x signals / usual interval)`` (each row
        is one chance of a false flag per signal judged), between 2.5 and 8 decades, and never inside
        the share of surprises the histogram reads directly (``-log10(tail_share)``, 2 by default): that
        would flag the signal's ordinary bulk, not its tail. Before an entity's interval is known (its
        first row) the strict end, 8.
        """
        if self.decades is not None:
            return np.full(len(chunk.codes), float(self.decades))
        _, usual = features.intervals(chunk)
        # The budget is the entity's, shared by its signals: each judged row is one chance per signal.
        budget = pd.Timedelta(self.false_alarm_every).total_seconds() * max(chunk.X.shape[1], 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            decades = np.log10(budget / usual)
        floor = max(MIN_DECADES, -np.log10(self.tail_share))
        return np.clip(np.nan_to_num(decades, nan=MAX_DECADES, posinf=MAX_DECADES), floor, MAX_DECADES)

    def tail_key(self) -> tuple:
        """The key of the surprise state these settings read (two detectors with the same settings share it)."""
        return ("likelihood", self.level_span, self.trend, self.scale_span, self.history_span, self.short,
                self.warmup, self.floor_ratio, self.tail_share)

    def tail(self, chunk, features):
        """``(tail probability, raw surprise)`` per row and signal."""
        _, _, quantum = features.lag(chunk)
        key = self.tail_key()
        return features._get(chunk, key, lambda: Likelihood(
            features.k, self.level_span, self.scale_span, 10 * self.scale_span, self.history_span, self.short,
            self.warmup, self.floor_ratio, self.tail_share, self.trend),
            lambda st: st.update(chunk.codes, chunk.X, quantum))

    def scores(self, chunk, features):
        p, raw = self.tail(chunk, features)
        score = tail_score(p, self.flag_decades(chunk, features)[:, None])
        if self.isolated_only and p.shape[1] > 1:
            shared = (p < self.shared_tail).sum(axis=1) >= 2
            score[shared] = np.minimum(score[shared], UNDER_FLAG)
        if self.daily:
            memory = self.daily_memory or 7 * pd.Timedelta(self.daily_period)
            routine = features.daily(chunk, raw, self.daily_slot, memory, self.tail_key(), self.daily_period)
            usual = (routine > 0) & (raw <= self.daily_ratio * routine)
            score[usual] = np.minimum(score[usual], UNDER_FLAG)
        return score


class Joint(Detector):
    """A condition: the joint state of an entity's signals is far from its reference.

    Per entity with two or more signals, the first rows (``rows_per_signal``
    per signal, at least ``min_rows``) are the reference: a robust centre,
    scale and covariance of the signals (see
    :class:`~sbg.detect.kernels.JointReference`). Every later row is scored by its
    smoothed squared Mahalanobis distance from it, turned into a tail
    probability against the same distance on the reference itself, on the
    same log scale as :class:`Surprise`. The flag lasts while the condition
    does (a closed valve, a raised plateau) and releases within a few rows
    of the return. The score is put on the signal that departs most.

    The event is the change, not the new level: a condition that has lasted
    as long as the reference itself (``hold``, in reference lengths) has
    been seen for as long as "normal" was, so its rows stop being flagged;
    the row where that happens carries the finding ``joint_held``, and the
    detector speaks again once the state has come back within reach of the
    reference and leaves it anew.
    """

    label = "joint"
    finding_names = ("joint_unfit", "joint_held")
    decades = param.Number(default=5.0, bounds=(0.5, 50),
                           doc="Flag when the distance has a tail probability of at most 10^-decades.")
    rows_per_signal = param.Integer(default=50, bounds=(5, None),
                                    doc="Reference rows per signal: enough to estimate their covariance.")
    min_rows = param.Integer(default=400, bounds=(10, None), doc="Fewest reference rows.")
    smooth_span = param.Number(default=5.0, bounds=(1, None), doc="Span, in rows, of the distance's smoothing.")
    shrink = param.Number(default=0.1, bounds=(0, 1),
                          doc="Shrinkage of the covariance towards its diagonal (stability with few rows).")
    applies = param.Selector(default="auto", objects=["auto", "always"],
                             doc="auto: not for battery schemas (cells cycle between operating points by "
                                 "design, so no start-of-run reference describes them).")
    follow = param.Number(default=3.0, bounds=(0, None),
                          doc="Span of the centre's slow following of the process, in reference lengths "
                              "(0: the centre stays where the reference put it).")
    hold = param.Number(default=1.0, bounds=(0, None),
                        doc="After a condition has lasted this many reference lengths, its rows are no longer "
                            "flagged (finding joint_held) until it clears (0: flag for as long as it lasts).")

    def __init__(self, **params):
        super().__init__(**params)
        self.mismatch = self.held = None
        self.entity_column = None
        self.battery_data = False

    def describe(self, signal, value):
        return f"{signal} = {value:.6g}, joint state away from the reference"

    def findings(self):
        out = [] if self.mismatch is None else [(self.mismatch, "joint_unfit", True)]
        return out if self.held is None else [*out, (self.held, "joint_held", True)]

    def explain(self, name, entity, signal):
        if name == "joint_held":
            return ("the joint state has been away from the reference for as long as the reference itself: "
                    "the change was flagged, and this state is now taken as the current operating point "
                    "until it comes back")
        return ("the joint state left the reference learned at the start of the run for more than a quarter "
                "of the time: the start does not describe this process (it moves between operating points), "
                "so the joint detector stops judging this entity")

    def reference_rows(self, k):
        return max(self.min_rows, self.rows_per_signal * k)

    def scores(self, chunk, features):
        n, k = chunk.X.shape
        out = np.zeros((n, k))
        self.mismatch = self.held = None
        if k < 2 or n == 0 or (self.applies == "auto" and (
                self.battery_data or battery_schema(chunk.signals, self.entity_column))):
            return out
        rows = self.reference_rows(k)
        key = ("joint", rows, self.smooth_span, self.shrink, self.follow, self.decades, self.hold)
        d2, top, unfit, held = features._get(chunk, key, lambda: JointReference(
            k, rows, self.smooth_span, self.shrink, self.follow * rows, 10.0 ** -self.decades,
            int(round(self.hold * rows))),
            lambda st: st.update(chunk.codes, chunk.X))
        state = features.state(key)
        if unfit.any():  # reported as a data-quality finding on the row where the check failed
            self.mismatch = np.zeros((n, k), dtype=bool)
            self.mismatch[unfit, 0] = True
        if (held == 2).any():
            self.held = np.zeros((n, k), dtype=bool)
            self.held[held == 2, top[held == 2]] = True
        ok = np.isfinite(d2) & (held == 0)
        if ok.any():
            from scipy.stats import chi2

            g, h = state.g[chunk.codes[ok]], state.h[chunk.codes[ok]]
            p = np.ones(n)
            p[ok] = chi2.sf(d2[ok] / g, h)
            out[np.arange(n), top] = tail_score(p, self.decades)
        return out


class _Windowed(Detector):
    """Shared knobs of the detectors that compare a row with its recent past."""

    __abstract = True
    window = param.Integer(default=120, bounds=(3, None), doc="Rows of recent history a row is compared with.")
    min_periods = param.Integer(default=30, bounds=(2, None), doc="Rows needed before the detector speaks.")
    threshold = param.Number(default=5.0, bounds=(0, None), inclusive_bounds=(False, True),
                             doc="Statistic at which a row is flagged.")
    floor_span = param.Integer(default=3600, bounds=(3, None),
                               doc="Span, in rows, of the long-memory spread that floors the scale.")
    warmup = param.Parameter(default="25min", doc=(
        "Data an entity needs before it can be flagged, so that the long-run spread and range have seen "
        "normal operation (a load cycle or two): a duration, counted in rows at the entity's usual sampling "
        "interval and at least min_periods rows (25 min: 1,500 rows at 1 Hz, 30 rows at 5 min, where the "
        "confirming surprise needs its own 500 values anyway), or a number of rows."))
    floor_ratio = param.Number(default=1.0, bounds=(0, None),
                               doc="Scale floor as a fraction of the longer history's spread; "
                                   "stops a quiet spell from making normal activity look anomalous.")
    resolution_floor = param.Number(default=2.0, bounds=(0, None),
                                    doc="Scale floor in steps of the signal's resolution (smallest change "
                                        "seen): a change of a step or two is never news.")
    confirm = param.Number(default=1e-3, bounds=(0, 1),
                           doc="Flag only values whose surprise, judged against the signal's own history "
                               "(the surprise detector's tail probability), is at most this; 0 to judge "
                               "by the threshold alone.")

    def check(self):
        """Refuse a warm-up that is neither a number of rows nor a duration when the settings load."""
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, str)):
            raise ValueError(f"warmup must be rows (a number) or a duration such as 25min, not {self.warmup!r}")
        if isinstance(self.warmup, int):
            if self.warmup < 0:
                raise ValueError(f"warmup must be 0 rows or more, not {self.warmup}")
            return
        check_duration("warmup", self.warmup, "25min (or a number of rows)", zero=True)

    def warm(self, chunk, features) -> np.ndarray:
        """Whether each row's entity is past the warm-up (:attr:`warmup`)."""
        seen = features.rows_seen(chunk)
        if isinstance(self.warmup, int):
            return seen >= self.warmup
        _, usual = features.intervals(chunk)
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.ceil(pd.Timedelta(self.warmup).total_seconds() / usual)
        # Before the interval is known (an entity's first row) nobody is warm.
        return seen >= np.fmax(np.nan_to_num(need, nan=np.inf), self.min_periods)

    def _distance(self, chunk, features, X, center, std, std_long, lo=None, hi=None, margin=0.0,
                  isolated=False, co_threshold=0.0):
        _, _, quantum = features.lag(chunk)
        use_range = lo is not None
        if not use_range:
            lo = hi = X
        scores = distance_scores(X, center, std, std_long, quantum, self.floor_ratio, self.resolution_floor,
                                 self.threshold, lo, hi, margin, use_range, isolated, co_threshold,
                                 self.warm(chunk, features))
        if self.confirm > 0:
            p, _ = _CALIBRATION.tail(chunk, features)
            np.minimum(scores, np.where(p > self.confirm, UNDER_FLAG, 1.0), out=scores)
        return scores


class ZScore(_Windowed):
    """Distance from the rolling mean of the previous ``window`` rows, in rolling standard deviations.

    With ``beyond_range``, a row must also lie outside the range the signal has
    been covering (a slowly relaxing envelope of its extremes) by
    ``range_margin`` long-run spreads: a bursty load that returns to levels it
    reached an hour ago is not an outlier, however quiet the last minutes were.
    """

    label = "zscore"
    threshold = param.Number(default=6.0, bounds=(0, None), inclusive_bounds=(False, True),
                             doc="Standard deviations at which a row is flagged.")
    beyond_range = param.Boolean(default=True, doc="Also require a value outside the range covered so far.")
    range_margin = param.Number(default=2.0, bounds=(0, None), doc="Margin beyond the range, in long-run spreads.")

    def scores(self, chunk, features):
        mean, std, _, _ = features.moments(chunk, self.window, self.min_periods, prior=True, minmax=False)
        std_long, lo, hi = features.spread(chunk, self.floor_span, self.min_periods)
        if not self.beyond_range:
            lo = hi = None
        return self._distance(chunk, features, chunk.X, mean, std, std_long, lo, hi, self.range_margin)


class Robust(_Windowed):
    """Distance from the rolling median in robust spreads (IQR / 1.349); outliers in the window do not mask new ones."""

    label = "robust"
    enabled = param.Boolean(default=False, doc="Run this detector (off by default: it costs more than the z-score).")
    threshold = param.Number(default=7.0, bounds=(0, None), inclusive_bounds=(False, True),
                             doc="Robust standard deviations at which a row is flagged.")

    def scores(self, chunk, features):
        med, q1, q3 = features.quantiles(chunk, self.window, self.min_periods, prior=True)
        std_long, _, _ = features.spread(chunk, self.floor_span, self.min_periods)
        return self._distance(chunk, features, chunk.X, med, (q3 - q1) / 1.349, std_long)


class Spike(_Windowed):
    """A jump between consecutive rows far larger than recent jumps.

    With ``isolated_only``, a jump that coincides with a jump in another signal
    of the same entity (a load step moves current and voltage together) is
    taken as a change of regime, not a glitch.
    """

    label = "spike"
    threshold = param.Number(default=8.0, bounds=(0, None), inclusive_bounds=(False, True),
                             doc="Jump size, in recent jump spreads, at which a row is flagged.")
    isolated_only = param.Boolean(default=True, doc="Ignore jumps shared with another signal of the entity.")
    co_threshold = param.Number(default=3.0, bounds=(0, None), doc="Jump size that counts as shared.")

    def scores(self, chunk, features):
        d = features.diff(chunk)
        _, std, _, _ = features.diff_moments(chunk, self.window, self.min_periods, prior=True)
        std_long, _, _ = features.spread(chunk, self.floor_span, self.min_periods, diff=True)
        # Evidence of a shared move uses the recent scale alone (inside the
        # kernel): a long-run floor would hide the small co-moves of a load step.
        return self._distance(chunk, features, d, np.zeros_like(d), std, std_long,
                              isolated=self.isolated_only, co_threshold=self.co_threshold)


class Flatline(Detector):
    """A stuck sensor: a reading that normally jitters repeats the same value.

    A run of equal values is flagged once it is ``min_run`` rows long and
    ``ratio`` times longer than any earlier run of the signal, but only for
    a signal whose changes, before the run, kept reversing direction (jitter
    at least ``min_jitter``): noise is what a live sensor shows and a stuck
    one loses. A smooth signal, such as an integrated state of charge that
    stays put while a battery rests, is flat for good reason.
    """

    label = "flatline"
    kind = "quality"
    min_run = param.Integer(default=120, bounds=(2, None), doc="Shortest run of equal values that can be flagged.")
    ratio = param.Number(default=3.0, bounds=(1, None), doc="How much longer than any earlier run a flagged run must be.")
    min_jitter = param.Number(default=0.3, bounds=(0, 1),
                              doc="Share of direction reversals among earlier changes for the signal to count as noisy.")
    warmup = param.Integer(default=600, bounds=(0, None), doc="Rows of an entity before it can be flagged.")

    def describe(self, signal, value):
        return f"{signal} repeats {value:.6g}"

    def scores(self, chunk, features):
        run, longest, jitter = features.runs(chunk)
        need = np.maximum(self.min_run, self.ratio * longest)
        # Count repeats, not rows: a single value is no run at all.
        score = ratio_score(run - 1.0, need - 1.0)
        quiet = (jitter < self.min_jitter) | (features.rows_seen(chunk) < self.warmup)[:, None]
        return np.where(quiet, np.minimum(score, UNDER_FLAG), score)


class Gap(Detector):
    """Missing data: a gap before a row far longer than the entity's usual sampling interval.

    The usual interval is a streaming median of the intervals before the row,
    so it follows the sampling rate of whatever data arrives.
    """

    label = "gap"
    kind = "quality"
    per_row = True
    factor = param.Number(default=10.0, bounds=(1, None), inclusive_bounds=(False, True),
                          doc="Gap, in usual intervals, at which a row is flagged.")
    min_gap = param.String(default="0s", doc="Gaps shorter than this are never flagged (a duration).")
    min_periods = param.Integer(default=10, bounds=(2, None), doc="Rows of an entity before the detector speaks.")

    def check(self):
        """Refuse a ``min_gap`` that is not a duration when the settings load, not at every chunk."""
        try:
            pd.Timedelta(self.min_gap)
        except ValueError:
            raise ValueError(f"min_gap must be a duration such as 30s or 5min, not {self.min_gap!r}") from None

    def value_column(self, signal):
        return "interval_s"

    def describe(self, signal, value):
        return f"{value:,.0f} s without data"

    def scores(self, chunk, features):
        secs, usual = features.intervals(chunk)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = secs / np.maximum(usual, 1e-9)
        ratio = np.nan_to_num(ratio, nan=0.0, posinf=0.0)
        ratio[features.rows_seen(chunk) < self.min_periods] = 0.0
        ratio[secs < pd.Timedelta(self.min_gap).total_seconds()] = 0.0
        # Score the excess over the usual interval: a row on time scores 0.
        col = ratio_score(np.maximum(ratio - 1.0, 0.0), self.factor - 1.0)
        # A gap is a property of the row, not of one signal: every signal shares it.
        return np.repeat(col[:, None], chunk.X.shape[1], axis=1)


class Baseline(Detector):
    """Departure from a known-good reference, per signal.

    Each value is mapped to its quantile in the reference distribution. A row
    is flagged when it lies beyond the reference's 0.1-99.9 % range by
    ``threshold`` robust spreads, or when the mean quantile of the last ``window`` rows has moved
    ``shift`` away from one half (the whole distribution has shifted), or the
    mean distance from the median quantile has grown to ``spread``.

    A reference recorded on another day may describe another operating
    point. So the first ``check_rows`` rows of each entity are checked
    against it first, signal by signal (:class:`~sbg.detect.kernels.ReferenceFit`,
    no flags meanwhile): where most of them lie outside the reference's
    range but their spread is like the reference's, the reference is
    re-centred on the run and judges the spread of its values only; where the spread
    differs too, the signal is not judged. Either way the row that decides
    carries a ``baseline_recentred:signal`` or ``baseline_unfit:signal``
    data-quality finding, and an event says what was found.
    """

    label = "baseline"
    finding_names = ("baseline_recentred", "baseline_unfit")
    check_rows = param.Integer(default=200, bounds=(2, None),
                               doc="Rows of each entity checked against the reference before it judges them.")
    window = param.Integer(default=600, bounds=(10, None), doc="Rows over which a distribution shift is judged.")
    threshold = param.Number(default=3.0, bounds=(0, None), inclusive_bounds=(False, True),
                             doc="Robust spreads beyond the reference's 0.1-99.9 % range at which a single row is flagged.")
    shift = param.Number(default=0.3, bounds=(0.0, 0.5), inclusive_bounds=(False, False),
                         doc="Least move of the window's mean quantile away from 0.5 that flags a shift; "
                             "raised per signal to halfway between the largest move within the reference "
                             "itself and 0.5, so slowly wandering signals are judged by their own standard.")
    spread = param.Number(default=0.8, bounds=(0.5, 1.0), inclusive_bounds=(False, False),
                          doc="Least mean of |2u-1| over the window that flags a widening (0.5 for no change); "
                              "calibrated on the reference like shift.")

    def describe(self, signal, value):
        return f"{signal} = {value:.6g}, away from the baseline"

    def findings(self):
        if self.mismatch is None:
            return []
        return [(self.mismatch[0], "baseline_recentred", False), (self.mismatch[1], "baseline_unfit", False)]

    def explain(self, name, entity, signal):
        if name == "baseline_recentred":
            return (f"{signal} runs at another level than in the baseline, with a similar spread: the baseline is "
                    "re-centred on this run and judges its shape and spread only")
        return (f"{signal} differs from the baseline in level and spread: the baseline does not describe it, "
                "so it is not judged against it")

    def __init__(self, reference: pd.DataFrame | None = None, **params):
        super().__init__(**params)
        self.reference = None
        self.mismatch = None
        if reference is not None:
            self.set_reference(reference)

    def set_reference(self, reference: pd.DataFrame):
        """Learn the reference distribution of every numeric column."""
        probs = np.linspace(0, 1, 1001)
        self.reference = {}
        for col in reference.columns:
            if col in ("timestamp", "entity") or not pd.api.types.is_numeric_dtype(reference[col]):
                continue
            vals = reference[col].to_numpy(dtype=float)
            vals = vals[np.isfinite(vals)]
            if len(vals) < 10:
                continue
            grid = np.quantile(vals, probs)
            lo, q1, q3, hi = np.quantile(vals, [0.001, 0.25, 0.75, 0.999])
            scale = max((q3 - q1) / 1.349, np.std(vals) * 0.1, 1e-12)
            # How far the windowed statistics wander within known-good data.
            u = pd.Series(np.interp(vals, grid, probs))
            w = max(2, min(self.window, len(vals) // 4))
            m_ref = float(np.nanmax(np.abs(u.rolling(w).mean() - 0.5))) if len(vals) > w else 0.0
            s_ref = float(np.nanmax((2 * u - 1).abs().rolling(w).mean())) if len(vals) > w else 0.5
            shift = max(self.shift, (m_ref + 0.5) / 2)
            spread = max(self.spread, (s_ref + 1.0) / 2)
            bulk = tuple(float(q) for q in np.quantile(vals, [0.05, 0.95]))
            self.reference[col] = (grid, probs, (float(lo), float(hi)), float(scale), shift, spread,
                                   float(np.median(vals)), bulk)

    def _fit(self, chunk, features):
        """``(state, offset, decided)`` of the reference for each row and signal (see :class:`ReferenceFit`)."""
        refs = [self.reference.get(s) for s in chunk.signals]
        ref = ([r[6] if r else np.nan for r in refs], [r[2][0] if r else np.nan for r in refs],
               [r[2][1] if r else np.nan for r in refs], [r[3] if r else np.nan for r in refs],
               [r[7][0] if r else np.nan for r in refs], [r[7][1] if r else np.nan for r in refs])
        return features._get(chunk, ("reference_fit", self.check_rows),
                             lambda: ReferenceFit(features.k, self.check_rows),
                             lambda st: st.update(chunk.codes, chunk.X, ref))

    def scores(self, chunk, features):
        out = np.zeros(chunk.X.shape)
        self.mismatch = None
        if not self.reference:
            return out
        cols = [j for j, s in enumerate(chunk.signals) if s in self.reference]
        if not cols:
            return out
        fit, offset, decided = self._fit(chunk, features)
        if decided.any():
            self.mismatch = (decided & (fit == 2), decided & (fit == 3))
        X = chunk.X - offset
        U = np.full(chunk.X.shape, np.nan)
        shift_t = np.full(chunk.X.shape[1], 0.5)
        spread_t = np.full(chunk.X.shape[1], 0.5)
        for j in cols:
            grid, probs, (lo, hi), scale, shift_j, spread_j, _, _ = self.reference[chunk.signals[j]]
            shift_t[j], spread_t[j] = shift_j, spread_j - 0.5
            x = X[:, j]
            u = np.interp(x, grid, probs, left=0.0, right=1.0)
            U[:, j] = np.where(np.isnan(x), np.nan, u)
            with np.errstate(invalid="ignore"):
                z = np.maximum(np.maximum(lo - x, x - hi), 0.0) / scale
            out[:, j] = ratio_score(z, self.threshold)
        judged = (fit == 1) | (fit == 2)
        U[~judged] = np.nan
        key = ("baseline_u", self.window)
        state = features.state(key)
        if state is None:
            from .kernels import RollingMoments

            state = (RollingMoments(features.k, self.window, self.window // 2),
                     RollingMoments(features.k, self.window, self.window // 2))
            features.put_state(key, state)
        mean_u, _, _, _ = state[0].update(chunk.codes, chunk.ts, U)
        mean_w, _, _, _ = state[1].update(chunk.codes, chunk.ts, np.abs(2 * U - 1))
        shift = np.nan_to_num(np.abs(mean_u - 0.5))
        widen = np.nan_to_num(np.maximum(mean_w - 0.5, 0))
        # Re-centred on another operating point, a signal is judged by the spread of its values only.
        level = ratio_score(shift, shift_t)
        out[fit == 2] = 0.0
        level[fit == 2] = 0.0
        out = np.maximum(out, level)
        out = np.maximum(out, ratio_score(widen, spread_t))
        out[~judged] = 0.0
        return out


#: The calibration the fixed-threshold detectors consult (``confirm``): a default surprise detector.
_CALIBRATION = Surprise()


def detector_classes() -> dict[str, type[Detector]]:
    """Every concrete detector, by label."""
    return {cls.label: cls for cls in param.concrete_descendents(Detector).values()
            if not cls.__name__.startswith("_")}


def for_schema(detectors, entity_column: str | None, battery: bool = False):
    """Tell the detectors that read the schema (battery or not) which entity column the input has, and
    whether the input said itself that it is battery data (``battery``: a cycler file, a BDF header)."""
    for det in detectors:
        if hasattr(det, "entity_column"):
            det.entity_column = entity_column
            det.battery_data = battery
    return detectors


def default_detectors(reference: pd.DataFrame | None = None) -> list[Detector]:
    """The default detector set; ``Baseline`` joins when a reference is given.

    """
    from .forecast import Forecast  # its own module, which imports this one

    dets = [Limits(), Surprise(), Joint(), ZScore(), Robust(), Spike(), Flatline(), Gap(), Forecast()]
    if reference is not None:
        dets.append(Baseline(reference))
    return dets
