"""What a signal usually does at this time of day (or of the week): the routine memory behind the surprise detector.

Server metrics, meters and plants have a daily routine: a backup at 04:00,
a shift change at 16:00, a load that starts every morning. Each of these is
a surprise to a prediction from the last few rows, every day, at the same
time. :class:`DailyMemory` keeps, per entity and signal and per slot of the
day (``slot_ns`` long, 30 minutes by default), the two largest daily maxima
of the surprise seen in that slot on earlier days, each fading with the
days since (time constant ``memory_days``). A surprise no larger than
``ratio`` times the second of them (taken over the slot and its two
neighbours, so a routine that drifts by a few minutes still counts) has
been seen at this time of day on at least two earlier days: it is the
series' routine, not news. One earlier anomaly at this time is not enough.

The period is a day by default; with ``period_ns`` of a week the slots are
of the week (Monday 09:00 is not Sunday 09:00), for a routine that keeps
to weekdays or to one day a week: a "day" above is then a week.

Time of day is read in the data's own clock (UTC for zone-aware
timestamps). Nothing is remembered before a signal's first full period, so
a run shorter than a period, or a fault in its first periods, is judged as
before. State: four arrays of ``slots`` numbers per entity and signal,
whatever the length of the run.

>>> import numpy as np
>>> day = 86_400 * 10**9
>>> ts = np.array([3 * day // 24 + d * day for d in range(4)], dtype=np.int64)  # 03:00 on four days
>>> raw = np.array([[9.0], [8.0], [10.0], [30.0]])   # the surprises there
>>> mem = DailyMemory(1)   # no routine until two earlier days show one: then the lesser, faded
>>> mem.update(np.zeros(4, dtype=np.int64), ts, raw)[:, 0].round(2).tolist()
[0.0, 0.0, 6.76, 6.01]
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels import _grow_state

__all__ = ["DailyMemory"]

#: The day of a slot that holds nothing yet.
_NO_DAY = np.iinfo(np.int64).min // 2
_DAY_NS = 86_400 * 10**9


@njit(cache=True, nogil=True, inline="always")
def _faded(value, day_of, day, memory_days):
    if day_of == _NO_DAY or value <= 0.0:
        return 0.0
    return value * np.exp(-(day - day_of) / memory_days)


@njit(cache=True, nogil=True, inline="always")
def _top_two(a, b, v):
    """The two largest of ``a >= b`` and ``v``, largest first."""
    if v > a:
        return v, a
    if v > b:
        return a, v
    return a, b


@njit(cache=True, nogil=True)
def _daily_kernel(codes, ts, raw, period_ns, slot_ns, nslots, memory_days, best, best_day, second, second_day, cur,
                  cur_day, out):
    # A "day" here is one period (a day, or a week): memory_days counts periods.
    n, k = raw.shape
    for i in range(n):
        e = codes[i]
        t = ts[i]
        day = t // period_ns
        s = (t - day * period_ns) // slot_ns
        for c in range(k):
            r = raw[i, c]
            if not r > 0.0:
                continue
            # The routine here: for the slot and its neighbours, the second largest of the earlier days'
            # maxima (the folded best two, and the slot's last day when it is not today's), faded.
            routine = 0.0
            for d in range(-1, 2):
                j = s + d
                own_day = day  # the day of the same time as now, in slot j's terms
                if j < 0:
                    j += nslots
                    own_day = day - 1
                elif j >= nslots:
                    j -= nslots
                    own_day = day + 1
                a = _faded(best[e, c, j], best_day[e, c, j], day, memory_days)
                b = _faded(second[e, c, j], second_day[e, c, j], day, memory_days)
                if cur_day[e, c, j] < own_day:
                    a, b = _top_two(a, b, _faded(cur[e, c, j], cur_day[e, c, j], day, memory_days))
                if b > routine:
                    routine = b
            out[i, c] = routine
            # Today's maximum of this slot; a finished day's is folded into the best two first.
            if cur_day[e, c, s] != day:
                if cur_day[e, c, s] != _NO_DAY:
                    # Both kept maxima are faded to the finished day and stamped with it.
                    done_day = cur_day[e, c, s]
                    a = _faded(best[e, c, s], best_day[e, c, s], done_day, memory_days)
                    b = _faded(second[e, c, s], second_day[e, c, s], done_day, memory_days)
                    best[e, c, s], second[e, c, s] = _top_two(a, b, cur[e, c, s])
                    best_day[e, c, s] = second_day[e, c, s] = done_day
                cur[e, c, s] = 0.0
                cur_day[e, c, s] = day
            if r > cur[e, c, s]:
                cur[e, c, s] = r


class DailyMemory:
    """The surprise a signal shows at each time of day, remembered over days (see the module docstring).

    Parameters
    ----------
    ncols : int
        Signals (columns of the surprise matrix :meth:`update` takes).
    slot_ns : int
        Length of a slot of the period, in nanoseconds (a divisor of a day is best).
    memory_days : float
        Time constant, in days, over which a remembered maximum fades.
    period_ns : int
        The routine's period, in nanoseconds: a day (the default), or a week.
    """

    def __init__(self, ncols, slot_ns: int = 30 * 60 * 10**9, memory_days: float = 7.0, period_ns: int = _DAY_NS):
        self.k = int(ncols)
        self.period_ns = max(int(period_ns), 1)
        self.slot_ns = max(min(int(slot_ns), self.period_ns), 1)
        self.nslots = -(-self.period_ns // self.slot_ns)
        self.memory_days = float(memory_days)
        shape = (0, self.k, self.nslots)
        self.best, self.second, self.cur = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.best_day = np.full(shape, _NO_DAY, dtype=np.int64)
        self.second_day = np.full(shape, _NO_DAY, dtype=np.int64)
        self.cur_day = np.full(shape, _NO_DAY, dtype=np.int64)

    def update(self, codes, ts, raw):
        """The routine surprise at each row's time of day, per column (0 where none is known yet);
        then each row's surprise (``raw``, NaN or 0 where none) is remembered."""
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        raw = np.ascontiguousarray(raw, dtype=np.float64).reshape(len(codes), self.k)
        _grow_state(self, codes, {"best": 0.0, "second": 0.0, "cur": 0.0, "best_day": _NO_DAY,
                                  "second_day": _NO_DAY, "cur_day": _NO_DAY})
        out = np.zeros(raw.shape)
        _daily_kernel(codes, np.ascontiguousarray(ts, dtype=np.int64), raw, self.period_ns, self.slot_ns,
                      self.nslots, self.memory_days * _DAY_NS / self.period_ns, self.best, self.best_day, self.second, self.second_day, self.cur,
                      self.cur_day, out)
        return out
