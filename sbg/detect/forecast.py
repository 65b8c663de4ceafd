"""Time-to-limit forecasts: a robust trend per entity and signal, and a warning before the limit is reached.

:class:`Forecast` fits a Theil–Sen trend (:class:`~sbg.detect.trend.TrendBins`)
over a sliding time window to every signal that has a limit, the very
limits :class:`~sbg.detect.detectors.Limits` applies (the battery preset,
``limits:``, and its arming), and extrapolates it: the predicted time to
cross is ``(limit - level) / slope`` while the trend heads for the limit
and away from the signal's long-run level. Sen's confidence interval for
the slope gives the band. The row scores 0.5
when even the band's slow edge crosses within ``horizon``:

    score = horizon / (horizon + time to cross at the slow edge)

so a slope not significantly heading for the limit (noise, a flat signal)
scores 0, and a crossing predicted twice the horizon away scores 1/3. Once
the value is beyond its limit the forecast is silent: that is the limits
detector's alarm.

>>> import numpy as np, pandas as pd
>>> from sbg.detect.detectors import Limits
>>> t = pd.date_range("2024-01-01", periods=3600, freq="s")
>>> ramp = pd.DataFrame({"timestamp": t, "entity": "cell", "temp": 25 + np.arange(3600) / 120})  # +0.5 °C/min
>>> fc = Forecast(limits=Limits(limits={"temp": [None, 60]}), horizon="30min")
>>> score = fc.score(ramp)["temp"]
>>> str(t[int(np.argmax(score.to_numpy() >= 0.5))].time())  # the warning: 30 min before 60 °C (at 01:10)
'00:40:01'
>>> p = fc.projection("cell", "temp")
>>> round(p["minutes_to_cross"], 1), p["limit"]
(10.0, 60.0)
"""

from __future__ import annotations

import re
from statistics import NormalDist

import numpy as np
import pandas as pd
import param

from .detectors import FLAG_AT, Detector, Limits, check_duration
from .trend import TrendBins

__all__ = ["Forecast", "time_to"]


class Forecast(Detector):
    """Predicted time to cross a limit: a warning with a lead time, before the limits detector fires.

    Per entity and signal with a limit, a Theil–Sen line is fitted to the
    means of ``bins`` time slots covering the last ``window``; the row is
    flagged when the slow edge of the slope's ``confidence`` interval
    reaches the limit within ``horizon``. The limits are those of the
    pipeline's ``limits`` detector (read from its result on the same chunk,
    so one setting serves both); standalone, those of the ``limits``
    argument (a :class:`~sbg.detect.detectors.Limits`, default: its presets).
    """

    label = "forecast"
    #: A prediction, not a finding: it raises its warning alert (rule limit_forecast) and draws its projection,
    #: and sets neither ``is_anomaly`` nor ``quality``.
    kind = "forecast"
    window = param.String(default="10min", doc=(
        "Sliding time window the trend is fitted on (a duration). A local linear trend over the recent "
        "past, as in the sliding-window trend tests of hydrology and climate series (Mann-Kendall with "
        "Sen's slope); long enough to average a load cycle's wobble, short enough to follow a fault's ramp."))
    horizon = param.String(default="15min", doc=(
        "Warn when the limit is predicted within this time (a duration): the time-to-threshold alarm of "
        "condition monitoring (ISO 13381-1 prognostics: predicted time to reach an alarm limit). Keep it "
        "near the window: a straight line extrapolated far beyond the span it was fitted on is a guess."))
    skip = param.String(default=r"^(soc|state_of_charge)(_pct|_percent)?$|^(cell_?)?volt(age)?(_v)?$", doc=(
        "Regular expression on signal names that get a projection on the plots but no warning: signals a "
        "controller drives towards a set point inside their limits every cycle. A state of charge is charged "
        "to its set point and discharged to the BMS cut-off, a cell voltage follows it; a straight line through "
        "either reaches the limit every cycle (on the bundled fleet, 21 false warnings in 6 hours). Empty: warn "
        "on every signal with a limit (SOC to 15 % on a pack without a cut-off above it)."))
    memory = param.String(default="2h", doc=(
        "Time constant of the signal's long-run level (an exponentially weighted mean over time): the trend "
        "must head away from it, as a fault drives a signal away from where it usually is. A cell cooling "
        "back towards ambient after a fault is returning to normal, not heading for its low limit (a straight "
        "line through the start of an exponential return overshoots). Ten windows or more."))
    bins = param.Integer(default=24, bounds=(4, 64), doc=(
        "Time slots the window is cut into; their means are the points of the fit, so irregular sampling "
        "counts by time, not by rows (binned Theil-Sen: bins^2/2 pairwise slopes each time a slot closes)."))
    min_bins = param.Integer(default=12, bounds=(3, 64), doc=(
        "Slots with data needed before a trend is given: half the window by default, and enough for "
        "Sen's interval to exist at the default confidence."))
    confidence = param.Number(default=0.999, bounds=(0.5, 0.99999), doc=(
        "One-sided confidence of the slope's interval whose slow edge must reach the limit: Sen's (1968) "
        "distribution-free interval for the Theil (1950) slope, from the null variance of Kendall's S "
        "(the Mann-Kendall trend test); a trend not significant at this level never warns. About three "
        "standard errors (the usual alarm line), because neighbouring slots of a real signal are not "
        "independent, so the nominal level overstates the confidence."))

    def __init__(self, limits: Limits | None = None, **params):
        super().__init__(**params)
        self.check()
        #: Limits used where no limits detector ran on the chunk (standalone use).
        self.limits = limits if limits is not None else Limits()
        #: The input's entity column (set from the schema, as for the limits detector).
        self.entity_column = None
        self.battery_data = False
        self._features = None
        self._key = None
        self._bounds: dict = {}
        self._said: dict = {}

    def check(self):
        """Refuse bad durations, a bad ``skip`` pattern and more ``min_bins`` than ``bins`` when the settings load."""
        for name in ("window", "horizon", "memory"):
            check_duration(name, getattr(self, name), "15min or 2h")
        try:
            re.compile(self.skip)
        except re.error as exc:
            raise ValueError(f"skip is not a regular expression: {exc}") from None
        if self.min_bins > self.bins:
            raise ValueError(f"min_bins ({self.min_bins}) cannot exceed bins ({self.bins})")

    def reset(self):
        super().reset()
        self._features = None
        self._said = {}

    def _limits_on(self, chunk, features):
        """``(low, high, armed)``: each signal's limits (inf where none) and whether they are armed, per row.

        The limits detector's own result on this chunk when it ran; else the ``limits`` argument's.
        """
        seen = {_bounds_of(key[1]): armed for key, (armed, _) in features.computed(chunk, "limit_arming").items()}
        seen = {b: a for b, a in seen.items() if len(b[0]) == len(chunk.signals)}
        if seen:
            (low, high), armed = next(iter(seen.items()))
            return np.array(low), np.array(high), armed
        self.limits.entity_column, self.limits.battery_data = self.entity_column, self.battery_data
        self.limits.scores(chunk, features)  # arms its limits in the shared features, as a pipeline would
        bounds = [self.limits.bounds_for(s, chunk.signals) for s in chunk.signals]
        low = tuple(-np.inf if lo is None else float(lo) for lo, _ in bounds)
        high = tuple(np.inf if hi is None else float(hi) for _, hi in bounds)
        armed = {_bounds_of(key[1]): armed for key, (armed, _) in features.computed(chunk, "limit_arming").items()}
        return np.array(low), np.array(high), armed[(low, high)]

    def scores(self, chunk, features):
        n, k = chunk.X.shape
        out = np.zeros((n, k))
        self._said = {}
        if n == 0 or k == 0:
            return out
        low, high, armed = self._limits_on(chunk, features)
        active = np.isfinite(low) | np.isfinite(high)
        self._features = features
        self._bounds = {s: (low[j], high[j]) for j, s in enumerate(chunk.signals)}
        if not active.any():
            return out
        z = NormalDist().inv_cdf(self.confidence)
        window_ns = pd.Timedelta(self.window).value
        memory_ns = pd.Timedelta(self.memory).value
        key = self._key = ("trend", window_ns, self.bins, self.min_bins, z, memory_ns)
        level, slope, slope_lo, slope_hi, long_level = features._get(
            chunk, key, lambda: TrendBins(k, window_ns, self.bins, self.min_bins, z, memory_ns),
            lambda st: st.update(chunk.codes, chunk.ts, chunk.X, active))
        horizon = pd.Timedelta(self.horizon).total_seconds()
        x = chunk.X
        with np.errstate(invalid="ignore", divide="ignore"):
            # Heading for a limit, away from the signal's long-run level.
            up = (slope > 0) & np.isfinite(high) & (level > long_level)
            down = (slope < 0) & np.isfinite(low) & (level < long_level)
            dist = np.maximum(np.where(up, high - level, level - low), 0.0)
            slow = np.where(up, slope_lo, -slope_hi)
            t_slow = time_to(dist, slow)
            score = horizon / (horizon + t_slow)
            inside = ~((x > high) | (x < low))
        ok = (up | down) & armed & inside & np.isfinite(x) & np.isfinite(score)
        out[ok] = score[ok]
        state = features.state(key)
        _, last = np.unique(chunk.codes[::-1], return_index=True)
        rows = n - 1 - last
        # The plots draw what the forecast says on every signal with a limit; skipped signals do not warn.
        state.fit_score[chunk.codes[rows]] = out[rows]
        if self.skip:
            pattern = re.compile(self.skip)
            out[:, [bool(pattern.search(s)) for s in chunk.signals]] = 0.0
        self._remember(chunk, out, level, slope, slope_lo, slope_hi, up, low, high)
        return out

    def _remember(self, chunk, out, level, slope, slope_lo, slope_hi, up, low, high):
        """Keep the predicted crossing of each flagged value, for the alert message (:meth:`describe`)."""
        for i, j in zip(*np.nonzero(out >= FLAG_AT), strict=True):
            key = (chunk.signals[j], float(chunk.X[i, j]))
            if key in self._said and self._said[key][0] >= out[i, j]:
                continue
            limit = high[j] if up[i, j] else low[j]
            self._said[key] = (out[i, j], *_crossing(level[i, j], slope[i, j], slope_lo[i, j], slope_hi[i, j],
                                                    limit))

    def describe(self, signal, value):
        said = self._said.get((signal, float(value)))
        if said is None:  # the scores ran elsewhere (a Dask worker): the limit is all that is known here
            lo, hi = self._bounds.get(signal, (-np.inf, np.inf))
            return f"{signal} = {value:.6g}, heading for its limit [{lo:g}, {hi:g}]"
        _, limit, minutes, early, late = said
        band = "" if f"{early:.0f}" == _minutes(late) == f"{minutes:.0f}" else f" ({early:.0f}-{_minutes(late)} min)"
        return f"{signal} = {value:.6g}, predicted to cross {limit:g} in {minutes:.0f} min{band}"

    def projection(self, entity, signal) -> dict | None:
        """The current forecast of one entity and signal, for plotting; None when there is none.

        Keys: ``time`` (of the entity's latest row), ``level``; ``slope``,
        ``slope_low``, ``slope_high`` (per second, the band); ``limit`` (the one
        the trend heads for, or NaN), ``minutes_to_cross`` (central),
        ``minutes_early`` and ``minutes_late`` (the band's edges: inf when that
        edge never reaches the limit); ``score`` (the detector's, on the
        latest row: 0.5 or more while the warning is on).
        """
        features = self._features
        if features is None or self._key is None or signal not in self._bounds:
            return None
        state = features.state(self._key)
        code = features.index.codes_of.get(entity)
        if code is None:
            code = next((c for c, e in enumerate(features.index.labels) if str(e) == str(entity)), None)
        if state is None or code is None:
            return None
        fit = state.fit_of(code, features.signals.index(signal))
        if fit is None or not np.isfinite(fit["level"]):
            return None
        low, high = self._bounds[signal]
        slope = fit["slope"]
        limit = high if slope > 0 and np.isfinite(high) else low if slope < 0 and np.isfinite(low) else np.nan
        limit, minutes, early, late = _crossing(fit["level"], slope, fit["slope_low"], fit["slope_high"], limit)
        return {"time": pd.Timestamp(fit["time_ns"]), "level": fit["level"], "slope": slope,
                "slope_low": fit["slope_low"], "slope_high": fit["slope_high"], "limit": limit,
                "minutes_to_cross": minutes, "minutes_early": early, "minutes_late": late, "score": fit["score"]}


def _bounds_of(text):
    """``(lows, highs)`` from the limits detector's state key, ``"low:high;low:high..."`` (one pair a signal)."""
    pairs = [p.split(":") for p in text.split(";")] if text else []
    return tuple(float(lo) for lo, _ in pairs), tuple(float(hi) for _, hi in pairs)


def time_to(dist, speed):
    """Seconds until a trend moving at ``speed`` towards a limit ``dist`` away reaches it (inf: never).

    >>> time_to(np.array([10.0, 10.0, 0.0]), np.array([2.0, -1.0, 1.0])).tolist()
    [5.0, inf, 0.0]
    """
    dist, speed = np.broadcast_arrays(np.asarray(dist, dtype=float), np.asarray(speed, dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(speed > 0, dist / speed, np.inf) + 0.0


def _crossing(level, slope, slope_lo, slope_hi, limit):
    """``(limit, minutes, early, late)``: minutes until the trend, and the band's fast and slow edges, reach ``limit``."""
    if not np.isfinite(limit) or not np.isfinite(level) or slope == 0:
        return float(limit), np.inf, np.inf, np.inf
    dist = max(limit - level, 0.0) if slope > 0 else max(level - limit, 0.0)
    fast, slow = (slope_hi, slope_lo) if slope > 0 else (-slope_lo, -slope_hi)
    minutes = time_to(dist, [abs(slope), fast, slow]) / 60.0
    return (float(limit), *(float(m) for m in minutes))


def _minutes(m):
    return "never" if not np.isfinite(m) else f"{m:.0f}"
