"""A robust trend per entity and signal over a sliding time window: the kernel behind the forecast detector.

:class:`TrendBins` cuts time into fixed slots (``window / bins`` long,
aligned on the epoch, so where a chunk ends never matters) and keeps, per
entity and signal, the sum of values and of times of the rows in each of
the last ``bins`` slots: a ring of ``3 * bins`` numbers whatever the
sampling rate. Each time a slot closes it fits a Theil–Sen line through the
closed slots' means (the median of the slopes between every pair of slots)
with Sen's distribution-free confidence interval for the slope, and again
over the recent half of the window: the band spans both intervals, so a
trend must still hold lately to count, and one that has significantly sped
up from the older half to the recent one is taken at its recent pace. It
also keeps the signal's long-run level (an exponentially weighted mean over
time). After every row it gives the level
now: Theil's intercept (the median of ``mean - slope * time``) over the
recent slots and the open one. Slots, not rows, are the points of the fit,
so irregular sampling and bursts count by time, and the medians shrug off a
spike, a noise burst or a stuck stretch in up to about 29 % of the slots.

>>> import numpy as np
>>> t = (np.arange(600) * 10**9).astype(np.int64)
>>> x = (20.0 + 0.01 * np.arange(600)).reshape(-1, 1)     # +0.01 per second
>>> trend = TrendBins(1, window_ns=600 * 10**9, bins=12, min_bins=6, z=2.33)
>>> level, slope, lo, hi, long_level = trend.update(np.zeros(600, dtype=np.int64), t, x, np.array([True]))
>>> round(float(level[-1, 0]), 6), round(float(slope[-1, 0]), 6), bool(lo[-1, 0] > 0)
(25.99, 0.01, True)
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels import _grow_state

__all__ = ["TrendBins"]

#: The slot id of a slot that holds nothing.
_EMPTY = np.iinfo(np.int64).min // 2


@njit(cache=True, nogil=True, inline="always")
def _pair_slopes(tt, yy, m, slopes):
    """The slopes between every pair of the ``m`` points, into ``slopes``; returns how many."""
    npairs = 0
    for p in range(m):
        for q in range(p + 1, m):
            slopes[npairs] = (yy[q] - yy[p]) / (tt[q] - tt[p])
            npairs += 1
    return npairs


@njit(cache=True, nogil=True, inline="always")
def _sen_ranks(m, npairs, z):
    """Sen (1968): the ranks of the slope interval's ends among the ``npairs`` pair slopes of ``m`` points,
    from the null variance of Kendall's S, m(m-1)(2m+5)/18 (with z > 0, below and above the median's)."""
    spread = z * np.sqrt(m * (m - 1.0) * (2.0 * m + 5.0) / 18.0)
    return int(np.floor((npairs - spread) / 2.0)) - 1, int(np.ceil((npairs + spread) / 2.0))


@njit(cache=True, nogil=True)
def _sen_slope(tt, yy, m, z, slopes, work):
    """Theil-Sen slope through ``m`` points and Sen's interval for it: ``(slope, low, high)``."""
    npairs = _pair_slopes(tt, yy, m, slopes)
    half = npairs // 2
    lo_rank, hi_rank = _sen_ranks(m, npairs, z)
    # One partition of all the pairs serves the four order statistics; each is then selected in its side.
    low, high = work[5], work[6]
    pivot, nl, ng = _partition(slopes, npairs, low, high)
    upper = _in_sides(low, nl, high, ng, npairs, pivot, half, work)
    slope = upper if npairs % 2 == 1 else 0.5 * (_in_sides(low, nl, high, ng, npairs, pivot, half - 1, work) + upper)
    lo = -np.inf if lo_rank < 0 else _in_sides(low, nl, high, ng, npairs, pivot, lo_rank, work)
    hi = np.inf if hi_rank >= npairs else _in_sides(low, nl, high, ng, npairs, pivot, hi_rank, work)
    return slope, lo, hi


@njit(cache=True, nogil=True, inline="always")
def _partition(src, n, low, high):
    """``src[:n]`` split around a median of three: the values below it into ``low``, above it into ``high``.

    Returns ``(pivot, below, above)``. Each value is stored on both sides and only its own side's index
    moves: no branch per value. The pivot is one of the values, so each side is shorter than ``n``.
    """
    x0, x1, x2 = src[0], src[n // 2], src[n - 1]
    pivot = max(min(x0, x1), min(max(x0, x1), x2))
    nl = 0
    ng = 0
    for i in range(n):
        v = src[i]
        low[nl] = v
        high[ng] = v
        nl += v < pivot
        ng += v > pivot
    return pivot, nl, ng


@njit(cache=True, nogil=True, inline="always")
def _in_sides(low, nl, high, ng, n, pivot, r, work):
    """The ``r``-th smallest of values partitioned into ``low`` (``nl`` below ``pivot``), the pivot's ties
    and ``high`` (``ng`` above it)."""
    if r < nl:
        return _order_stat(low, nl, r, work)
    if r < n - ng:
        return pivot
    return _order_stat(high, ng, r - (n - ng), work)


@njit(cache=True, nogil=True)
def _sen_end(tt, yy, m, z, slopes, work, upper):
    """One end of Sen's interval for the slope through ``m`` points: the upper when ``upper``, else the lower."""
    npairs = _pair_slopes(tt, yy, m, slopes)
    lo_rank, hi_rank = _sen_ranks(m, npairs, z)
    if upper:
        return np.inf if hi_rank >= npairs else _order_stat(slopes, npairs, hi_rank, work)
    return -np.inf if lo_rank < 0 else _order_stat(slopes, npairs, lo_rank, work)


@njit(cache=True, nogil=True)
def _order_stat(a, n, r, work):
    """The ``r``-th smallest of ``a[:n]`` (0-based); ``a`` is left as it was.

    Quickselect with a three-way partition around a median of three without a branch per value
    (:func:`_partition`), into rows 0 to 4 of ``work`` (each ``n`` long); the last few values are put
    in order by insertion. On noisy slopes a branch per value is a coin flip the processor mispredicts
    half the time: with Hoare's partition the trend kernel took 2.7 s on benchmarks/run.py's 2M rows;
    with this, and one partition shared by the four order statistics of a fit (:func:`_sen_slope`),
    1.31 s, for the same results.

    >>> a, work = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 2.0]), np.empty((5, 6))
    >>> [_order_stat(a, 6, r, work) for r in range(6)], a.tolist()
    ([1.0, 2.0, 2.0, 3.0, 4.0, 5.0], [5.0, 1.0, 4.0, 2.0, 3.0, 2.0])
    >>> b = np.random.default_rng(0).normal(size=253)
    >>> all(_order_stat(b, 253, r, np.empty((5, 253))) == np.sort(b)[r] for r in (0, 60, 126, 200, 252))
    True
    """
    src = a
    side = 0
    while True:
        if n <= 8:
            # Few left: a selection by insertion into order.
            buf = work[4]
            for i in range(n):
                v = src[i]
                j = i
                while j > 0 and buf[j - 1] > v:
                    buf[j] = buf[j - 1]
                    j -= 1
                buf[j] = v
            return buf[r]
        low, high = work[2 * side], work[2 * side + 1]
        pivot, nl, ng = _partition(src, n, low, high)
        if r < nl:
            src, n = low, nl
        elif r < n - ng:
            return pivot
        else:
            r -= n - ng
            src, n = high, ng
        side = 1 - side


@njit(cache=True, nogil=True, inline="always")
def _kth(S, q, v, k):
    """The ``k``-th smallest (0-based) of the sorted ``S[:q]`` with ``v`` added."""
    lower = S[k - 1] if k >= 1 else -np.inf
    upper = S[k] if k < q else np.inf
    return min(max(v, lower), upper)


@njit(cache=True, nogil=True)
def _median_with(S, q, v, with_v):
    """The median of the sorted ``S[:q]``, with ``v`` added when ``with_v`` (NaN when empty).

    >>> S = np.array([1.0, 3.0, 7.0, 0.0])
    >>> _median_with(S, 3, 5.0, True), _median_with(S, 3, 0.0, False), _median_with(S, 0, 2.0, True)
    (4.0, 3.0, 2.0)
    """
    m = q + 1 if with_v else q
    if m == 0:
        return np.nan
    if not with_v:
        return S[m // 2] if m % 2 == 1 else 0.5 * (S[m // 2 - 1] + S[m // 2])
    if m % 2 == 1:
        return _kth(S, q, v, m // 2)
    return 0.5 * (_kth(S, q, v, m // 2 - 1) + _kth(S, q, v, m // 2))


@njit(cache=True, nogil=True, inline="always")
def _gather(ids, ts, ys, ns, b, nbins, secs, into, tt, yy, ages):
    """The slots of the window that hold data: mean time (seconds before now), mean value and age."""
    m = 0
    for s in range(nbins):
        age = b - ids[s]
        if 0 <= age < nbins and ns[s] > 0:
            tt[m] = (ids[s] - b) * secs + ts[s] / ns[s] - into
            yy[m] = ys[s] / ns[s]
            ages[m] = age
            m += 1
    return m


@njit(cache=True, nogil=True)
def _trend_kernel(codes, ts, X, active, slot_ns, nbins, min_bins, z, memory_s, slot_id, slot_t, slot_y, slot_n,
                  fit_t, fit_slot, fit_level, fit_slope, fit_lo, fit_hi, fit_recent, fit_bins,
                  long_level, long_t, rec_c, rec_q, out_level, out_slope, out_lo, out_hi, out_long):
    n, k = X.shape
    tt = np.empty(nbins)
    yy = np.empty(nbins)
    ages = np.empty(nbins, dtype=np.int64)
    ct = np.empty(nbins)
    cy = np.empty(nbins)
    slopes = np.empty(nbins * (nbins - 1) // 2)
    work = np.empty((7, nbins * (nbins - 1) // 2))
    secs = slot_ns * 1e-9
    recent = nbins // 2
    for i in range(n):
        e = codes[i]
        t = ts[i]
        b = t // slot_ns
        ring = b % nbins
        into = (t - b * slot_ns) * 1e-9
        for c in range(k):
            if not active[c]:
                continue
            x = X[i, c]
            if x == x:
                if slot_id[e, c, ring] != b:
                    slot_id[e, c, ring] = b
                    slot_t[e, c, ring] = 0.0
                    slot_y[e, c, ring] = 0.0
                    slot_n[e, c, ring] = 0.0
                slot_n[e, c, ring] += 1.0
                slot_y[e, c, ring] += x
                slot_t[e, c, ring] += into
                # The long-run level: an exponentially weighted mean with time constant memory_s.
                if long_level[e, c] != long_level[e, c]:
                    long_level[e, c] = x
                else:
                    keep = np.exp(-(t - long_t[e, c]) * 1e-9 / memory_s)
                    long_level[e, c] = keep * long_level[e, c] + (1.0 - keep) * x
                long_t[e, c] = t
            out_long[i, c] = long_level[e, c]
            fit_t[e, c] = t
            closed = fit_slot[e, c] != b
            # The slots are gathered only for a new fit (once a slot) or for the level of a significant
            # trend: a steady signal costs a few sums a row.
            m = -1
            if closed:
                m = _gather(slot_id[e, c], slot_t[e, c], slot_y[e, c], slot_n[e, c], b, nbins, secs, into,
                            tt, yy, ages)
                fit_bins[e, c] = m
                # A slot has closed: fit the slope anew on the closed slots (the open one only moves the level).
                fit_slot[e, c] = b
                mc = 0
                for j in range(m):
                    if ages[j] > 0:
                        ct[mc] = tt[j]
                        cy[mc] = yy[j]
                        mc += 1
                if mc < min_bins or mc < 3:
                    fit_slope[e, c] = fit_lo[e, c] = fit_hi[e, c] = fit_recent[e, c] = np.nan
                else:
                    slope, lo, hi = _sen_slope(ct, cy, mc, z, slopes, work)
                    # The trend must still hold over the recent half of the window: the band spans both
                    # intervals, so a ramp that has stopped is not projected.
                    mr = 0
                    for j in range(m):
                        if 0 < ages[j] <= recent:
                            ct[mr] = tt[j]
                            cy[mr] = yy[j]
                            mr += 1
                    r_slope, r_lo, r_hi = (np.nan, -np.inf, np.inf)
                    if mr >= 3:
                        r_slope, r_lo, r_hi = _sen_slope(ct, cy, mr, z, slopes, work)
                        mo = 0
                        for j in range(m):
                            if ages[j] > recent:
                                ct[mo] = tt[j]
                                cy[mo] = yy[j]
                                mo += 1
                        if mo >= 3 and r_slope != 0 and r_slope == r_slope:
                            # A significant speed-up (the intervals of the two halves apart): the trend now is
                            # the recent half's, so a runaway is met at its present pace (its acceleration is
                            # not extrapolated). Only the older interval's end on the recent slope's side counts.
                            o_end = _sen_end(ct, cy, mo, z, slopes, work, r_slope > 0)
                            if (0 < r_slope and r_lo > o_end) or (r_slope < 0 and r_hi < o_end):
                                slope, lo, hi = r_slope, r_lo, r_hi
                    fit_slope[e, c] = slope
                    fit_lo[e, c] = min(lo, r_lo)
                    fit_hi[e, c] = max(hi, r_hi)
                    fit_recent[e, c] = r_slope
                # The closed recent slots' terms of the level (see below), in order, until the next fit.
                rs = fit_recent[e, c] if fit_recent[e, c] == fit_recent[e, c] else fit_slope[e, c]
                q = 0
                if rs == rs:
                    for j in range(m):
                        if 0 < ages[j] <= recent:
                            rec_c[e, c, q] = yy[j] - rs * (tt[j] + into)
                            q += 1
                    rec_c[e, c, :q].sort()
                rec_q[e, c] = q
            slope = fit_slope[e, c]
            level = np.nan
            # Only a trend whose band excludes 0 can score (a flat slow edge never reaches a limit) or be drawn.
            if slope == slope and (fit_lo[e, c] > 0 or fit_hi[e, c] < 0):
                # The level now: Theil's intercept, the median over the recent slots and the open one of
                # y - slope * t along the recent slope where known (an accelerating trend is met where it is
                # now). The closed slots' terms were sorted at the fit; only the open slot's moves.
                rs = fit_recent[e, c] if fit_recent[e, c] == fit_recent[e, c] else slope
                opened = slot_id[e, c, ring] == b and slot_n[e, c, ring] > 0
                v = slot_y[e, c, ring] / slot_n[e, c, ring] - rs * slot_t[e, c, ring] / slot_n[e, c, ring] \
                    if opened else np.nan
                level = _median_with(rec_c[e, c], rec_q[e, c], v, opened) + rs * into
            fit_level[e, c] = level
            out_level[i, c] = level
            out_slope[i, c] = slope
            out_lo[i, c] = fit_lo[e, c]
            out_hi[i, c] = fit_hi[e, c]


class TrendBins:
    """Theil–Sen trend with Sen's interval over the last ``window_ns`` of each entity and signal.

    Parameters
    ----------
    ncols : int
        Signals (columns of the matrix :meth:`update` takes).
    window_ns : int
        Length of the sliding window, in nanoseconds of data time.
    bins : int
        Time slots the window is cut into: the points of the fit.
    min_bins : int
        Slots with data needed before a trend is given.
    z : float
        Standard normal quantile of the one-sided confidence of the slope's interval.

    State per entity: three ``(signals, bins)`` arrays (slot id, sum of
    times, sum of values) and a count, and the last fit (for
    :meth:`fit_of`); nothing grows with the length of the run.
    """

    def __init__(self, ncols, window_ns: int, bins: int = 16, min_bins: int = 8, z: float = 2.33,
                 memory_ns: int = 0):
        self.k = int(ncols)
        self.bins = int(bins)
        self.slot_ns = max(int(window_ns) // self.bins, 1)
        self.min_bins = int(min_bins)
        self.z = float(z)
        self.memory_s = max(int(memory_ns) or 10 * int(window_ns), 1) * 1e-9
        self.slot_id = np.full((0, self.k, self.bins), _EMPTY, dtype=np.int64)
        self.slot_t = np.zeros((0, self.k, self.bins))
        self.slot_y = np.zeros((0, self.k, self.bins))
        self.slot_n = np.zeros((0, self.k, self.bins))
        self.fit_t = np.zeros((0, self.k), dtype=np.int64)
        self.fit_slot = np.full((0, self.k), _EMPTY, dtype=np.int64)
        self.fit_recent = np.full((0, self.k), np.nan)
        self.long_level = np.full((0, self.k), np.nan)
        self.long_t = np.zeros((0, self.k), dtype=np.int64)
        self.fit_level = np.full((0, self.k), np.nan)
        self.fit_slope = np.full((0, self.k), np.nan)
        self.fit_lo = np.full((0, self.k), np.nan)
        self.fit_hi = np.full((0, self.k), np.nan)
        self.fit_bins = np.zeros((0, self.k), dtype=np.int64)
        #: The closed recent slots' terms of the level, sorted at each fit, and how many there are.
        self.rec_c = np.zeros((0, self.k, self.bins))
        self.rec_q = np.zeros((0, self.k), dtype=np.int64)
        #: The forecast's score on each entity's latest row (set by the detector, read by the plots).
        self.fit_score = np.zeros((0, self.k))

    def update(self, codes, ts, X, active):
        """``(level, slope, slope_low, slope_high, long_level)`` after each row; NaN where no trend yet.

        Slopes are per second. ``long_level`` is the signal's long-run level, an exponentially weighted
        mean with time constant ``memory_ns`` (default ten windows).

        Only the columns where ``active`` is true are fitted (the others stay NaN).
        """
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        X = np.ascontiguousarray(X, dtype=np.float64).reshape(len(codes), self.k)
        _grow_state(self, codes, {"slot_id": _EMPTY, "slot_t": 0.0, "slot_y": 0.0, "slot_n": 0.0, "fit_t": 0,
                                  "fit_slot": _EMPTY, "fit_recent": np.nan,
                                  "long_level": np.nan, "long_t": 0,
                                  "fit_level": np.nan, "fit_slope": np.nan, "fit_lo": np.nan, "fit_hi": np.nan,
                                  "fit_bins": 0, "fit_score": 0.0, "rec_c": 0.0, "rec_q": 0})
        out = [np.full(X.shape, np.nan) for _ in range(5)]
        _trend_kernel(codes, np.ascontiguousarray(ts, dtype=np.int64), X, np.asarray(active, dtype=np.bool_),
                      self.slot_ns, self.bins, self.min_bins, self.z, self.memory_s, self.slot_id, self.slot_t,
                      self.slot_y, self.slot_n, self.fit_t, self.fit_slot, self.fit_level, self.fit_slope,
                      self.fit_lo, self.fit_hi, self.fit_recent, self.fit_bins, self.long_level,
                      self.long_t, self.rec_c, self.rec_q, *out)
        return tuple(out)

    def fit_of(self, code: int, column: int) -> dict | None:
        """The latest fit of one entity (by code) and column: time (ns), level, slopes, slots, score; or None."""
        if code >= self.fit_t.shape[0] or column >= self.k:
            return None
        return {"time_ns": int(self.fit_t[code, column]), "level": float(self.fit_level[code, column]),
                "slope": float(self.fit_slope[code, column]), "slope_low": float(self.fit_lo[code, column]),
                "slope_high": float(self.fit_hi[code, column]),
                "long_level": float(self.long_level[code, column]), "bins": int(self.fit_bins[code, column]),
                "score": float(self.fit_score[code, column])}
