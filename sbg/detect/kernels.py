"""Compiled per-entity streaming kernels with carried state.

Every kernel walks the rows of a chunk in arrival order and updates the state
of the row's entity, so the result for a row depends only on the rows before
it, never on where the chunk boundaries fell: chunk invariance holds to the
last bit, not just to float tolerance. State lives in numpy arrays indexed by
entity code, owned by the small Python classes here, which grow them when new
entities or longer windows appear.

The moment updates follow pandas' own rolling algorithms (Welford add/remove,
the consecutive-equal-values rule for zero variance, the EWM recursion), so
results match ``groupby(entity).rolling(...)`` to float tolerance.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["RollingMoments", "RollingQuantiles", "EWM", "EWSpread", "Lag", "RunLength",
           "Positions", "UsualInterval", "Likelihood", "JointReference", "LimitArming", "tail_probability"]

_RESYNC = 4096  # rows between exact recomputations of the window sums


@njit(cache=True, nogil=True)
def _combine_kernel(S, kinds, k, flag_at, per_signal, q_signal, best, top, nflag):
    # kinds: 0 an anomaly column, 1 a data-quality column, anything else (a forecast) neither
    n, m = S.shape
    for i in range(n):
        bi = -1
        bv = -1.0
        cnt = 0
        a = 0
        for j in range(m):
            v = S[i, j]
            c = j % k
            if kinds[j] == 0:
                if v > per_signal[i, c]:
                    per_signal[i, c] = v
                if v > bv:
                    bv = v
                    bi = a
                if v >= flag_at:
                    cnt += 1
                a += 1
            elif kinds[j] == 1 and v > q_signal[i, c]:
                q_signal[i, c] = v
        best[i] = bi
        top[i] = bv if bi >= 0 else 0.0
        nflag[i] = cnt


def combine_scores(S, kinds, k, flag_at):
    """One pass over a chunk's score matrix ``S`` (a column per detector and signal, ``k`` signals a detector).

    ``kinds`` is each column's kind: 0 anomaly, 1 data quality, 2 neither (a forecast: it only raises
    its alerts). Returns, per row, the highest anomaly score per signal, the
    highest data-quality score per signal, the index (among the anomaly columns) of the highest
    anomaly score (the first if tied, -1 without anomaly columns), that score, and how many anomaly
    columns reach ``flag_at``.

    >>> S = np.array([[0.2, 0.7, 0.6, 0.1, 0.9, 0.9], [0.0, 0.1, 0.9, 0.0, 0.0, 0.0]])
    >>> per, q, best, top, nflag = combine_scores(S, np.array([0, 0, 1, 1, 2, 2]), 2, 0.5)
    >>> per.tolist(), q.tolist(), best.tolist(), top.tolist(), nflag.tolist()
    ([[0.2, 0.7], [0.0, 0.1]], [[0.6, 0.1], [0.9, 0.0]], [1, 1], [0.7, 0.1], [1, 0])
    """
    n = S.shape[0]
    per_signal = np.zeros((n, k))
    q_signal = np.zeros((n, k))
    best = np.empty(n, dtype=np.int64)
    top = np.empty(n)
    nflag = np.empty(n, dtype=np.int64)
    if n and k:
        _combine_kernel(np.ascontiguousarray(S, dtype=np.float64), np.ascontiguousarray(kinds, dtype=np.int8),
                        int(k), float(flag_at), per_signal, q_signal, best, top, nflag)
    else:
        best[:], top[:], nflag[:] = -1, 0.0, 0
    return per_signal, q_signal, best, top, nflag


def _grow_state(obj, codes, fills: dict):
    """Give each per-entity array of ``obj`` named in ``fills`` a row for every entity code up to the largest
    in ``codes``; new rows take the name's fill value."""
    if len(codes):
        n = int(codes.max()) + 1
        for name, fill in fills.items():
            setattr(obj, name, _grow_rows(getattr(obj, name), n, fill))


def _grow_rows(arr, n, fill):
    if arr.shape[0] >= n:
        return arr
    new_n = max(n, 2 * arr.shape[0], 4)
    out = np.full((new_n,) + arr.shape[1:], fill, dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


@njit(cache=True, nogil=True)
def _moments_kernel(codes, ts, X, win_rows, win_ns, min_periods, prior, minmax, start,
                    buf_t, buf_x, lo, hi, nobs, mean, ssq, prev, same,
                    dqx, dqx_lo, dqx_hi, dqn, dqn_lo, dqn_hi,
                    out_mean, out_std, out_min, out_max):
    # Capacities are powers of two: "& mask" instead of "% cap" in the hot loop.
    mask = buf_t.shape[1] - 1
    n, k = X.shape
    limit = win_rows if prior else win_rows - 1
    for i in range(start, n):
        e = codes[i]
        t = ts[i]
        while lo[e] < hi[e]:
            if win_rows > 0:
                if hi[e] - lo[e] <= limit:
                    break
            elif buf_t[e, lo[e] & mask] > t - win_ns:
                break
            slot = lo[e] & mask
            for c in range(k):
                x = buf_x[e, slot, c]
                if x == x:
                    if nobs[e, c] == 1:
                        nobs[e, c] = 0
                        mean[e, c] = 0.0
                        ssq[e, c] = 0.0
                    else:
                        nobs[e, c] -= 1
                        d = x - mean[e, c]
                        mean[e, c] -= d / nobs[e, c]
                        ssq[e, c] -= d * (x - mean[e, c])
                if minmax:
                    while dqx_lo[e, c] < dqx_hi[e, c] and dqx[e, c, dqx_lo[e, c] & mask] <= lo[e]:
                        dqx_lo[e, c] += 1
                    while dqn_lo[e, c] < dqn_hi[e, c] and dqn[e, c, dqn_lo[e, c] & mask] <= lo[e]:
                        dqn_lo[e, c] += 1
            lo[e] += 1
        if prior:
            _moments_out(e, i, k, mask, min_periods, minmax, buf_x, nobs, mean, ssq, same,
                         dqx, dqx_lo, dqn, dqn_lo, out_mean, out_std, out_min, out_max)
        if hi[e] - lo[e] > mask:
            return i
        s = hi[e]
        slot = s & mask
        buf_t[e, slot] = t
        for c in range(k):
            x = X[i, c]
            buf_x[e, slot, c] = x
            if x == x:
                nobs[e, c] += 1
                d = x - mean[e, c]
                mean[e, c] += d / nobs[e, c]
                ssq[e, c] += d * (x - mean[e, c])
                if x == prev[e, c]:
                    same[e, c] += 1
                else:
                    same[e, c] = 1
                    prev[e, c] = x
                if minmax:
                    while dqx_lo[e, c] < dqx_hi[e, c] and buf_x[e, dqx[e, c, (dqx_hi[e, c] - 1) & mask] & mask, c] <= x:
                        dqx_hi[e, c] -= 1
                    dqx[e, c, dqx_hi[e, c] & mask] = s
                    dqx_hi[e, c] += 1
                    while dqn_lo[e, c] < dqn_hi[e, c] and buf_x[e, dqn[e, c, (dqn_hi[e, c] - 1) & mask] & mask, c] >= x:
                        dqn_hi[e, c] -= 1
                    dqn[e, c, dqn_hi[e, c] & mask] = s
                    dqn_hi[e, c] += 1
        hi[e] += 1
        if hi[e] % _RESYNC == 0:
            # Exact two-pass recomputation at fixed row counts stops drift
            # without depending on chunk boundaries.
            for c in range(k):
                cnt = 0
                tot = 0.0
                for q in range(lo[e], hi[e]):
                    x = buf_x[e, q & mask, c]
                    if x == x:
                        cnt += 1
                        tot += x
                if cnt > 0:
                    m = tot / cnt
                    acc = 0.0
                    for q in range(lo[e], hi[e]):
                        x = buf_x[e, q & mask, c]
                        if x == x:
                            acc += (x - m) * (x - m)
                    mean[e, c] = m
                    ssq[e, c] = acc
        if not prior:
            _moments_out(e, i, k, mask, min_periods, minmax, buf_x, nobs, mean, ssq, same,
                         dqx, dqx_lo, dqn, dqn_lo, out_mean, out_std, out_min, out_max)
    return n


@njit(cache=True, nogil=True, inline="always")
def _moments_out(e, i, k, mask, min_periods, minmax, buf_x, nobs, mean, ssq, same,
                 dqx, dqx_lo, dqn, dqn_lo, out_mean, out_std, out_min, out_max):
    for c in range(k):
        m = nobs[e, c]
        if m >= min_periods and m > 0:
            out_mean[i, c] = mean[e, c]
            if m >= 2:
                if same[e, c] >= m:
                    out_std[i, c] = 0.0
                else:
                    v = ssq[e, c] / (m - 1)
                    out_std[i, c] = np.sqrt(v) if v > 0 else 0.0
            if minmax:
                out_max[i, c] = buf_x[e, dqx[e, c, dqx_lo[e, c] & mask] & mask, c]
                out_min[i, c] = buf_x[e, dqn[e, c, dqn_lo[e, c] & mask] & mask, c]


class RollingMoments:
    """Rolling mean, std (ddof=1), min and max per entity over a row or time window.

    Parameters
    ----------
    ncols : int
        Number of value columns.
    window : int or pandas offset string
        ``120`` for the last 120 rows, ``'60s'`` for the last minute, ``(t-60s, t]``.
    min_periods : int
        Observations needed for a value (pandas' default: the window for row
        windows, 1 for time windows).
    prior : bool
        Describe the window *before* each row (the row itself excluded), as a
        detector's reference needs.
    minmax : bool
        Also track min and max (monotonic deques); otherwise they are NaN.
    """

    def __init__(self, ncols, window, min_periods=None, prior=False, minmax=True):
        self.k = int(ncols)
        self.minmax = bool(minmax)
        self.win_rows, self.win_ns = parse_window(window)
        if min_periods is None:
            min_periods = self.win_rows if self.win_rows else 1
        self.min_periods = int(min_periods)
        self.prior = bool(prior)
        cap = 64
        while cap < self.win_rows + 1:
            cap *= 2
        self._alloc(0, cap)

    def _alloc(self, entities, cap):
        k = self.k
        self.cap = cap
        self.buf_t = np.zeros((entities, cap), dtype=np.int64)
        self.buf_x = np.full((entities, cap, k), np.nan)
        self.lo = np.zeros(entities, dtype=np.int64)
        self.hi = np.zeros(entities, dtype=np.int64)
        self.nobs = np.zeros((entities, k), dtype=np.int64)
        self.mean = np.zeros((entities, k))
        self.ssq = np.zeros((entities, k))
        self.prev = np.full((entities, k), np.nan)
        self.same = np.zeros((entities, k), dtype=np.int64)
        self.dqx = np.zeros((entities, k, cap), dtype=np.int64)
        self.dqn = np.zeros((entities, k, cap), dtype=np.int64)
        self.dqx_lo = np.zeros((entities, k), dtype=np.int64)
        self.dqx_hi = np.zeros((entities, k), dtype=np.int64)
        self.dqn_lo = np.zeros((entities, k), dtype=np.int64)
        self.dqn_hi = np.zeros((entities, k), dtype=np.int64)

    _per_entity = ("buf_t", "buf_x", "lo", "hi", "nobs", "mean", "ssq", "prev", "same",
                   "dqx", "dqn", "dqx_lo", "dqx_hi", "dqn_lo", "dqn_hi")

    def _ensure_entities(self, n):
        if self.lo.shape[0] >= n:
            return
        for name in self._per_entity:
            fill = np.nan if name in ("buf_x", "prev") else 0
            setattr(self, name, _grow_rows(getattr(self, name), n, fill))

    def _grow_capacity(self):
        old = self.cap
        new = old * 2
        E = self.lo.shape[0]
        buf_t = np.zeros((E, new), dtype=np.int64)
        buf_x = np.full((E, new, self.k), np.nan)
        dqx = np.zeros((E, self.k, new), dtype=np.int64)
        dqn = np.zeros((E, self.k, new), dtype=np.int64)
        _relayout(self.lo, self.hi, self.buf_t, self.buf_x, buf_t, buf_x,
                  self.dqx, self.dqx_lo, self.dqx_hi, dqx, self.dqn, self.dqn_lo, self.dqn_hi, dqn)
        self.cap, self.buf_t, self.buf_x, self.dqx, self.dqn = new, buf_t, buf_x, dqx, dqn

    def update(self, codes, ts, X):
        """Return ``(mean, std, min, max)``, each shaped like ``X``."""
        X = np.ascontiguousarray(X, dtype=np.float64).reshape(len(codes), self.k)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        ts = np.ascontiguousarray(ts, dtype=np.int64)
        if len(codes):
            self._ensure_entities(int(codes.max()) + 1)
        outs = [np.full(X.shape, np.nan) for _ in range(4)]
        start = 0
        while start < len(codes):
            start = _moments_kernel(
                codes, ts, X, self.win_rows, self.win_ns, self.min_periods, self.prior, self.minmax, start,
                self.buf_t, self.buf_x, self.lo, self.hi, self.nobs, self.mean, self.ssq,
                self.prev, self.same, self.dqx, self.dqx_lo, self.dqx_hi,
                self.dqn, self.dqn_lo, self.dqn_hi, *outs,
            )
            if start < len(codes):
                self._grow_capacity()
        return tuple(outs)


@njit(cache=True, nogil=True)
def _relayout(lo, hi, buf_t, buf_x, nbuf_t, nbuf_x, dqx, dqx_lo, dqx_hi, ndqx, dqn, dqn_lo, dqn_hi, ndqn):
    cap = buf_t.shape[1]
    ncap = nbuf_t.shape[1]
    for e in range(lo.shape[0]):
        for s in range(lo[e], hi[e]):
            nbuf_t[e, s % ncap] = buf_t[e, s % cap]
            nbuf_x[e, s % ncap, :] = buf_x[e, s % cap, :]
        for c in range(dqx.shape[1]):
            for p in range(dqx_lo[e, c], dqx_hi[e, c]):
                ndqx[e, c, p % ncap] = dqx[e, c, p % cap]
            for p in range(dqn_lo[e, c], dqn_hi[e, c]):
                ndqn[e, c, p % ncap] = dqn[e, c, p % cap]


@njit(cache=True, nogil=True)
def _quantile_sorted(arr, m, q):
    pos = q * (m - 1)
    j = int(np.floor(pos))
    f = pos - j
    if j + 1 < m:
        return arr[j] + (arr[j + 1] - arr[j]) * f
    return arr[j]


@njit(cache=True, nogil=True)
def _quantiles_out(srt, cnt, e, i, k, min_periods, out_med, out_q1, out_q3):
    """Row ``i``'s median and quartiles from entity ``e``'s sorted window, once it holds ``min_periods`` values."""
    for c in range(k):
        m = cnt[e, c]
        if m >= min_periods and m > 0:
            out_med[i, c] = _quantile_sorted(srt[e, c], m, 0.5)
            out_q1[i, c] = _quantile_sorted(srt[e, c], m, 0.25)
            out_q3[i, c] = _quantile_sorted(srt[e, c], m, 0.75)


@njit(cache=True, nogil=True)
def _quantiles_kernel(codes, X, w, min_periods, prior, ring, lo, hi, srt, cnt, out_med, out_q1, out_q3):
    n, k = X.shape
    R = ring.shape[1]
    limit = w if prior else w - 1
    for i in range(n):
        e = codes[i]
        while hi[e] - lo[e] > limit:
            slot = lo[e] % R
            for c in range(k):
                x = ring[e, slot, c]
                if x == x:
                    m = cnt[e, c]
                    j = np.searchsorted(srt[e, c, :m], x)
                    for q in range(j, m - 1):
                        srt[e, c, q] = srt[e, c, q + 1]
                    cnt[e, c] = m - 1
            lo[e] += 1
        if prior:
            _quantiles_out(srt, cnt, e, i, k, min_periods, out_med, out_q1, out_q3)
        slot = hi[e] % R
        for c in range(k):
            x = X[i, c]
            ring[e, slot, c] = x
            if x == x:
                m = cnt[e, c]
                j = np.searchsorted(srt[e, c, :m], x)
                for q in range(m, j, -1):
                    srt[e, c, q] = srt[e, c, q - 1]
                srt[e, c, j] = x
                cnt[e, c] = m + 1
        hi[e] += 1
        if not prior:
            _quantiles_out(srt, cnt, e, i, k, min_periods, out_med, out_q1, out_q3)


class RollingQuantiles:
    """Rolling median and quartiles per entity over the last ``window`` rows."""

    def __init__(self, ncols, window: int, min_periods=None, prior=False):
        self.k = int(ncols)
        self.w = int(window)
        if self.w < 1:
            raise ValueError("window must be at least one row")
        self.min_periods = int(min_periods if min_periods is not None else self.w)
        self.prior = bool(prior)
        self.ring = np.full((0, self.w + 1, self.k), np.nan)
        self.lo = np.zeros(0, dtype=np.int64)
        self.hi = np.zeros(0, dtype=np.int64)
        self.srt = np.zeros((0, self.k, self.w + 1))
        self.cnt = np.zeros((0, self.k), dtype=np.int64)

    def update(self, codes, X):
        """Return ``(median, q25, q75)``, each shaped like ``X``."""
        X = np.ascontiguousarray(X, dtype=np.float64).reshape(len(codes), self.k)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        _grow_state(self, codes, {"ring": np.nan, "lo": 0, "hi": 0, "srt": 0.0, "cnt": 0})
        outs = [np.full(X.shape, np.nan) for _ in range(3)]
        _quantiles_kernel(codes, X, self.w, self.min_periods, self.prior, self.ring, self.lo,
                          self.hi, self.srt, self.cnt, *outs)
        return tuple(outs)


@njit(cache=True, nogil=True)
def _ewm_kernel(codes, X, alpha, min_periods, weighted, old_wt, nobs, started, out):
    n, k = X.shape
    f = 1.0 - alpha
    for i in range(n):
        e = codes[i]
        for c in range(k):
            x = X[i, c]
            obs = x == x
            if not started[e, c]:
                started[e, c] = True
                weighted[e, c] = x
                old_wt[e, c] = 1.0
                nobs[e, c] = 1 if obs else 0
            else:
                if obs:
                    nobs[e, c] += 1
                w = weighted[e, c]
                if w == w:
                    old_wt[e, c] *= f
                    if obs:
                        if w != x:
                            weighted[e, c] = (old_wt[e, c] * w + x) / (old_wt[e, c] + 1.0)
                        old_wt[e, c] += 1.0
                elif obs:
                    weighted[e, c] = x
            if nobs[e, c] >= min_periods:
                out[i, c] = weighted[e, c]


class EWM:
    """Exponentially weighted mean per entity, as pandas ``ewm(alpha=..., adjust=True)``."""

    def __init__(self, ncols, alpha: float, min_periods: int = 1):
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.k = int(ncols)
        self.alpha = float(alpha)
        self.min_periods = int(min_periods)
        self.weighted = np.full((0, self.k), np.nan)
        self.old_wt = np.zeros((0, self.k))
        self.nobs = np.zeros((0, self.k), dtype=np.int64)
        self.started = np.zeros((0, self.k), dtype=np.bool_)

    def update(self, codes, X):
        X = np.ascontiguousarray(X, dtype=np.float64).reshape(len(codes), self.k)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        _grow_state(self, codes, {"weighted": np.nan, "old_wt": 0.0, "nobs": 0, "started": False})
        out = np.full(X.shape, np.nan)
        _ewm_kernel(codes, X, self.alpha, self.min_periods, self.weighted, self.old_wt,
                    self.nobs, self.started, out)
        return out


@njit(cache=True, nogil=True)
def _lag_kernel(codes, ts, X, last_t, last_x, has_t, quantum, out_dt, out_prev, out_quantum):
    n, k = X.shape
    for i in range(n):
        e = codes[i]
        if has_t[e]:
            out_dt[i] = ts[i] - last_t[e]
        last_t[e] = ts[i]
        has_t[e] = True
        for c in range(k):
            p = last_x[e, c]
            out_prev[i, c] = p
            out_quantum[i, c] = quantum[e, c]
            x = X[i, c]
            if x == x:
                d = abs(x - p)
                if d > 0 and (d < quantum[e, c] or quantum[e, c] != quantum[e, c]):
                    quantum[e, c] = d
                last_x[e, c] = x


class Lag:
    """Previous timestamp gap, previous valid value and resolution per entity and column.

    The resolution is the smallest non-zero change seen before the row: the
    quantisation step of a logged signal, below which no change means anything.
    """

    def __init__(self, ncols):
        self.k = int(ncols)
        self.last_t = np.zeros(0, dtype=np.int64)
        self.has_t = np.zeros(0, dtype=np.bool_)
        self.last_x = np.full((0, self.k), np.nan)
        self.quantum = np.full((0, self.k), np.nan)

    def update(self, codes, ts, X):
        """Return ``(dt_ns, previous_values, resolution)``; ``dt_ns`` is -1 for an entity's first row."""
        X = np.ascontiguousarray(X, dtype=np.float64).reshape(len(codes), self.k)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        _grow_state(self, codes, {"last_t": 0, "has_t": False, "last_x": np.nan, "quantum": np.nan})
        dt = np.full(len(codes), -1, dtype=np.int64)
        prev = np.full(X.shape, np.nan)
        quantum = np.full(X.shape, np.nan)
        _lag_kernel(codes, np.ascontiguousarray(ts, dtype=np.int64), X, self.last_t, self.last_x,
                    self.has_t, self.quantum, dt, prev, quantum)
        return dt, prev, quantum


@njit(cache=True, nogil=True)
def _run_kernel(codes, X, tol, alpha, last, run, longest, sign, jitter, out_run, out_longest, out_jitter):
    n, k = X.shape
    for i in range(n):
        e = codes[i]
        for c in range(k):
            x = X[i, c]
            if x == x:
                if run[e, c] > 0 and abs(x - last[e, c]) <= tol:
                    run[e, c] += 1
                else:
                    if run[e, c] > 0:
                        s = 1 if x > last[e, c] else -1
                        if sign[e, c] != 0:
                            flip = 1.0 if s != sign[e, c] else 0.0
                            jitter[e, c] += alpha * (flip - jitter[e, c])
                        sign[e, c] = s
                    if run[e, c] > longest[e, c]:
                        longest[e, c] = run[e, c]
                    run[e, c] = 1
                    last[e, c] = x
            out_run[i, c] = run[e, c]
            out_longest[i, c] = longest[e, c]
            out_jitter[i, c] = jitter[e, c]


class RunLength:
    """Runs of equal values per entity: current length, longest finished run, and jitter.

    Jitter is an exponentially weighted share of changes that reverse the
    previous change's direction: about 2/3 for a noisy reading, near 0 for a
    smooth one (an integrated state of charge). It is not updated during a
    run, so it remembers how the signal behaved before it went flat.
    """

    def __init__(self, ncols, tol=0.0, alpha=0.02):
        self.k = int(ncols)
        self.tol = float(tol)
        self.alpha = float(alpha)
        self.last = np.full((0, self.k), np.nan)
        self.run = np.zeros((0, self.k), dtype=np.int64)
        self.longest = np.zeros((0, self.k), dtype=np.int64)
        self.sign = np.zeros((0, self.k), dtype=np.int64)
        self.jitter = np.zeros((0, self.k))

    def update(self, codes, X):
        X = np.ascontiguousarray(X, dtype=np.float64).reshape(len(codes), self.k)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        _grow_state(self, codes, {"last": np.nan, "run": 0, "longest": 0, "sign": 0, "jitter": 0.0})
        run = np.zeros(X.shape, dtype=np.int64)
        longest = np.zeros(X.shape, dtype=np.int64)
        jitter = np.zeros(X.shape)
        _run_kernel(codes, X, self.tol, self.alpha, self.last, self.run, self.longest, self.sign, self.jitter,
                    run, longest, jitter)
        return run, longest, jitter


@njit(cache=True, nogil=True)
def _ewvar_kernel(codes, X, alpha, env_alpha, min_periods, mean, var, lo, hi, nobs, out, out_lo, out_hi):
    n, k = X.shape
    for i in range(n):
        e = codes[i]
        for c in range(k):
            if nobs[e, c] >= min_periods:
                out[i, c] = np.sqrt(var[e, c])
                out_lo[i, c] = lo[e, c]
                out_hi[i, c] = hi[e, c]
            x = X[i, c]
            if x == x:
                if nobs[e, c] == 0:
                    mean[e, c] = x
                    var[e, c] = 0.0
                    lo[e, c] = x
                    hi[e, c] = x
                else:
                    d = x - mean[e, c]
                    mean[e, c] += alpha * d
                    var[e, c] = (1.0 - alpha) * (var[e, c] + alpha * d * d)
                    lo[e, c] = min(x, lo[e, c] + env_alpha * (mean[e, c] - lo[e, c]))
                    hi[e, c] = max(x, hi[e, c] - env_alpha * (hi[e, c] - mean[e, c]))
                nobs[e, c] += 1


class EWSpread:
    """Long-memory spread and envelope of the rows *before* each row, in constant space.

    Returns the exponentially weighted standard deviation (span ``span``) and
    a low/high envelope: the extremes seen, relaxing towards the weighted mean
    four times more slowly than the spread forgets. Used as a floor under
    short-window scales and as "the range this signal has been covering".
    """

    def __init__(self, ncols, span: int, min_periods: int = 2):
        self.k = int(ncols)
        self.alpha = 2.0 / (float(span) + 1.0)
        self.env_alpha = self.alpha / 8.0
        self.min_periods = int(min_periods)
        self.mean = np.zeros((0, self.k))
        self.var = np.zeros((0, self.k))
        self.lo = np.zeros((0, self.k))
        self.hi = np.zeros((0, self.k))
        self.nobs = np.zeros((0, self.k), dtype=np.int64)

    def update(self, codes, X):
        """Return ``(std, low envelope, high envelope)`` before each row."""
        X = np.ascontiguousarray(X, dtype=np.float64).reshape(len(codes), self.k)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        _grow_state(self, codes, {"mean": 0.0, "var": 0.0, "lo": 0.0, "hi": 0.0, "nobs": 0})
        outs = [np.full(X.shape, np.nan) for _ in range(3)]
        _ewvar_kernel(codes, X, self.alpha, self.env_alpha, self.min_periods, self.mean, self.var, self.lo,
                      self.hi, self.nobs, *outs)
        return tuple(outs)


@njit(cache=True, nogil=True)
def _position_kernel(codes, counts, out):
    for i in range(codes.shape[0]):
        e = codes[i]
        out[i] = counts[e]
        counts[e] += 1


class Positions:
    """Each row's index in its entity's stream (0 for an entity's first row)."""

    def __init__(self):
        self.counts = np.zeros(0, dtype=np.int64)

    def update(self, codes):
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        if len(codes):
            self.counts = _grow_rows(self.counts, int(codes.max()) + 1, 0)
        out = np.zeros(len(codes), dtype=np.int64)
        _position_kernel(codes, self.counts, out)
        return out


@njit(cache=True, nogil=True)
def _interval_kernel(codes, ts, eta, last_t, has_t, usual, out_dt, out_usual):
    for i in range(codes.shape[0]):
        e = codes[i]
        out_usual[i] = usual[e]
        if has_t[e]:
            dt = (ts[i] - last_t[e]) / 1e9
            out_dt[i] = dt
            if dt > 0:
                if usual[e] != usual[e]:
                    usual[e] = dt
                elif dt > usual[e]:
                    usual[e] *= 1.0 + eta
                elif dt < usual[e]:
                    usual[e] /= 1.0 + eta
        last_t[e] = ts[i]
        has_t[e] = True


class UsualInterval:
    """Seconds since the entity's previous row, and its usual sampling interval.

    The usual interval is a streaming median in log space: it moves by a
    factor ``1 + eta`` towards each new interval, so one long gap barely moves
    it, while a lasting change of sampling rate is followed within a few
    dozen rows.
    """

    def __init__(self, eta: float = 0.05):
        self.eta = float(eta)
        self.last_t = np.zeros(0, dtype=np.int64)
        self.has_t = np.zeros(0, dtype=np.bool_)
        self.usual = np.full(0, np.nan)

    def update(self, codes, ts):
        """Return ``(dt_seconds, usual_seconds_before_row)``; NaN where unknown."""
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        _grow_state(self, codes, {"last_t": 0, "has_t": False, "usual": np.nan})
        dt = np.full(len(codes), np.nan)
        usual = np.full(len(codes), np.nan)
        _interval_kernel(codes, np.ascontiguousarray(ts, dtype=np.int64), self.eta, self.last_t, self.has_t,
                         self.usual, dt, usual)
        return dt, usual


@njit(cache=True, nogil=True)
def distance_scores(X, center, std, std_long, quantum, floor_ratio, res_floor, threshold,
                    lo, hi, margin, use_range, isolated, co_threshold, warm):
    """Fused scoring shared by the z-score, robust and spike detectors.

    ``z = |x - center| / max(std, floor_ratio * std_long, res_floor * quantum)``
    scored ``z / (z + threshold)``; 0 where the reference is not yet known.
    With ``use_range``, rows inside ``[lo - margin*std_long, hi + margin*std_long]``
    stay below 0.5. With ``isolated``, a row where another column moved by
    ``co_threshold`` of its own recent ``std`` scores 0. Rows whose entity is
    not ``warm`` yet stay below 0.5.
    """
    n, k = X.shape
    out = np.zeros((n, k))
    moving = np.zeros(k, dtype=np.bool_)
    for i in range(n):
        n_moving = 0
        if isolated and k > 1:
            for c in range(k):
                moving[c] = False
                d = abs(X[i, c] - center[i, c])
                local = std[i, c]
                qf = quantum[i, c] * res_floor
                if local != local or (qf == qf and qf > local):
                    local = qf
                if local == local and local > 0 and d == d and d / local >= co_threshold:
                    moving[c] = True
                    n_moving += 1
        cold = not warm[i]
        for c in range(k):
            s = std[i, c]
            x = X[i, c]
            m = center[i, c]
            if s != s or x != x or m != m:
                continue
            if isolated and k > 1 and n_moving - (1 if moving[c] else 0) > 0:
                continue
            floor = floor_ratio * std_long[i, c]
            if floor != floor:
                floor = 0.0
            qf = quantum[i, c] * res_floor
            if qf == qf and qf > floor:
                floor = qf
            scale = s if s > floor else floor
            if scale <= 0:
                continue
            z = abs(x - m) / scale
            if z > 1e300:
                z = 1e300
            score = z / (z + threshold)
            if use_range:
                mg = margin * std_long[i, c]
                if mg != mg:
                    mg = 0.0
                if x <= hi[i, c] + mg and x >= lo[i, c] - mg and score > 0.49:
                    score = 0.49
            if cold and score > 0.49:
                score = 0.49
            out[i, c] = score
    return out


def parse_window(window):
    """``(rows, ns)`` for a window given as a row count or a pandas offset string.

    >>> parse_window(120)
    (120, 0)
    >>> parse_window("90s")
    (0, 90000000000)
    """
    import pandas as pd

    if isinstance(window, (int, np.integer)) or (isinstance(window, str) and window.strip().isdigit()):
        rows = int(window)
        if rows < 1:
            raise ValueError("a row window needs at least one row")
        return rows, 0
    try:
        ns = pd.Timedelta(window).value
    except (ValueError, TypeError):
        raise ValueError(f"window {window!r} is neither a row count nor a duration like '60s'") from None
    if ns <= 0:
        raise ValueError(f"window {window!r} must be positive")
    return 0, int(ns)


_HIST_LO, _HIST_STEP, _HIST_BINS = -6.0, 0.25, 112
#: Each bin's centre, as a surprise (not its log).
_BIN_CENTRES = 2.0 ** (_HIST_LO + (np.arange(_HIST_BINS) + 0.5) * _HIST_STEP)


@njit(cache=True, nogil=True, inline="always")
def _hist_bin(avg):
    if avg <= 0:
        return 0
    b = int((np.log2(avg) - _HIST_LO) / _HIST_STEP)
    return 0 if b < 0 else (_HIST_BINS - 1 if b >= _HIST_BINS else b)


@njit(cache=True, nogil=True)
def tail_probability(hist, x, discount, tail_share, tail_min, total=-1.0, top=_HIST_BINS - 1):
    """Probability of a surprise of at least ``x`` under the weighted histogram ``hist`` (log2 bins).

    The mass ``discount`` at the top (the largest past event) is left out.
    A surprise below the histogram's top ``tail_share`` of mass (at least
    ``tail_min``) is in its body and gets 1. In the lowest bin of the top
    the probability is read off the histogram; beyond its start ``x0`` it is
    extrapolated by a generalised Pareto tail (peaks over a threshold),
    ``q * (1 + xi * (x - x0) / sigma) ** (-1 / xi)``, whose scale and shape
    come from the mean and variance of the top mass's excess over ``x0``
    (method of moments, ``xi`` held in ``[0, 0.9]``): a signal whose big
    surprises come in all sizes has a heavy tail (``xi`` near 0.9, a power
    law), one that is never far from its usual error a light one (``xi``
    of 0, an exponential tail).
    """
    if total < 0:
        total = 0.0
        for j in range(_HIST_BINS):
            total += hist[j]
    total -= discount
    if total <= 0:
        return 1.0
    target = tail_share * total
    if target < tail_min:
        target = tail_min
    lx = np.log2(x) if x > 0 else _HIST_LO
    skip = discount
    mass = 0.0
    excess = 0.0
    excess2 = 0.0
    at_x = -1.0
    b0 = 0
    for j in range(top, -1, -1):
        m = hist[j]
        if skip > 0:
            s = skip if skip < m else m
            m -= s
            skip -= s
        lo = _HIST_LO + j * _HIST_STEP
        if mass >= target:
            break
        mass += m
        v = _BIN_CENTRES[j]
        excess += m * v
        excess2 += m * v * v
        b0 = j
        if lx >= lo and at_x < 0:
            at_x = mass
    x0 = _HIST_LO + b0 * _HIST_STEP
    if lx < x0:
        return 1.0  # in the body of the history, below its top: not a tail event at all
    if at_x >= 0 and lx < x0 + _HIST_STEP:
        return at_x / total if at_x > 0 else 1.0 / total
    if mass <= 0:
        return 1.0
    v0 = 2.0 ** x0
    mean_excess = excess / mass - v0
    var_excess = excess2 / mass - (excess / mass) ** 2
    floor = v0 * (2.0 ** (0.5 * _HIST_STEP) - 1.0)  # half a bin: the histogram's resolution
    if mean_excess < floor:
        mean_excess = floor
    if var_excess < floor * floor:
        var_excess = floor * floor
    xi = 0.5 * (1.0 - mean_excess * mean_excess / var_excess)
    xi = 0.0 if xi < 0.0 else (0.9 if xi > 0.9 else xi)
    sigma = mean_excess * (1.0 - xi)
    y = (2.0 ** lx - v0) / sigma
    if xi < 1e-6:
        return (mass / total) * np.exp(-y)
    return (mass / total) * (1.0 + xi * y) ** (-1.0 / xi)


@njit(cache=True, nogil=True)
def _likelihood_kernel(codes, X, quantum, a_level, b_trend, phi, span_scale, span_floor, span_dist, short, warmup,
                       floor_ratio, tail_share, restart, nobs, level, trend, dev, dev_slow, ring, hist, hist_w,
                       hist_sum, hist_top, last, run, out_p, out_raw):
    n, k = X.shape
    for i in range(n):
        e = codes[i]
        for c in range(k):
            x = X[i, c]
            out_p[i, c] = 1.0
            if x != x:
                continue
            cnt = nobs[e, c]
            if cnt == 0:
                level[e, c] = x
                last[e, c] = x
                nobs[e, c] = 1
                continue
            if x == last[e, c]:
                run[e, c] += 1
                if run[e, c] >= restart and dev_slow[e, c] > 0:
                    continue  # stuck: these rows teach nothing about the signal
            else:
                stuck = run[e, c] >= restart and dev_slow[e, c] > 0
                run[e, c] = 0
                last[e, c] = x
                if stuck:
                    # A signal that normally moves held one value for `restart` rows: it was stuck
                    # (a data-quality finding). Its return restarts the prediction; it is not news.
                    level[e, c] = x
                    trend[e, c] = 0.0
                    continue
            pred = level[e, c] + phi * trend[e, c]
            err = x - pred
            res = abs(err)
            scale = dev[e, c]
            fl = floor_ratio * dev_slow[e, c]
            if fl > scale:
                scale = fl
            q = quantum[i, c]
            if q == q and q > scale:
                scale = q
            a = 1.0 / cnt
            asc = a if a > 2.0 / (span_scale + 1.0) else 2.0 / (span_scale + 1.0)
            afl = a if a > 2.0 / (span_floor + 1.0) else 2.0 / (span_floor + 1.0)
            if cnt <= short or scale <= 0:
                # The usual error is not known yet: learn it, judge nothing.
                dev[e, c] += asc * (res - dev[e, c])
                dev_slow[e, c] += afl * (res - dev_slow[e, c])
                level[e, c] = pred + a_level * err
                trend[e, c] = phi * trend[e, c] + a_level * b_trend * err
                nobs[e, c] = cnt + 1
                continue
            raw = res / scale
            if raw > 1e6:
                raw = 1e6
            out_raw[i, c] = raw
            # The short average: the last `short` raw surprises.
            m_seen = cnt - short
            ring[e, (m_seen - 1) % short, c] = raw
            m = m_seen if m_seen < short else short
            acc = 0.0
            for j in range(m):
                acc += ring[e, j, c]
            avg = acc / m
            ad = 1.0 / m_seen
            if ad < 2.0 / (span_dist + 1.0):
                ad = 2.0 / (span_dist + 1.0)
            w = hist_w[e, c] / (1.0 - ad) if hist_w[e, c] > 0 else 1.0
            if cnt > warmup:
                # The largest past event (``short`` rows, as they would weigh now) is left out.
                out_p[i, c] = tail_probability(hist[e, c], avg, short * w, tail_share, 5.0 * w, hist_sum[e, c],
                                               hist_top[e, c])
            # Learn after scoring: the row is judged by what came before it. The
            # histogram's weights grow by 1 / (1 - ad) a row instead of decaying.
            if w > 1e200:
                for j in range(_HIST_BINS):
                    hist[e, c, j] /= w
                hist_sum[e, c] /= w
                w = 1.0
            hist_w[e, c] = w
            b = _hist_bin(avg)
            hist[e, c, b] += w
            hist_sum[e, c] += w
            if b > hist_top[e, c]:
                hist_top[e, c] = b
            dev[e, c] += asc * (res - dev[e, c])
            dev_slow[e, c] += afl * (res - dev_slow[e, c])
            level[e, c] = pred + a_level * err
            trend[e, c] = phi * trend[e, c] + a_level * b_trend * err
            nobs[e, c] = cnt + 1


class Likelihood:
    """How surprising each value is, as a tail probability against the signal's own surprises.

    Two stages per entity and column, in constant space:

    1. *Raw surprise*: ``|x - level| / scale``, where ``level`` is an
       exponentially weighted mean of recent values (span ``level_span``
       rows) and ``scale`` the weighted mean absolute error of that
       prediction (span ``scale_span``; every row so far while fewer),
       floored by ``floor_ratio`` times a ten times slower one (a quiet
       spell does not make normal activity news) and by the signal's
       resolution (a step of a quantised signal is one unit, never more).
       With ``short`` above 1, the mean of the last ``short`` raw surprises
       is judged instead of each row's own.
    2. *Tail probability*: the surprise is looked up in an exponentially
       weighted histogram of the signal's earlier surprises (log-spaced
       bins, span ``dist_span``), and beyond its top ``tail_share`` it is
       extrapolated by a power law fitted to that top (see
       :func:`tail_probability`). The largest past event is left out, so
       one earlier anomaly does not teach that anomalies are normal; a
       surprise the signal shows again and again (a cycler's load steps)
       is its normal.

    Rows before ``warmup`` valid values get probability 1. A signal that
    normally moves and holds one exact value for ``restart`` rows is stuck:
    its further repeats teach nothing, and when it moves again the
    prediction restarts from the new value (the stuck stretch is a
    data-quality finding, the return is not an anomaly).
    """

    def __init__(self, ncols, level_span=5.0, scale_span=500.0, floor_span=5000.0, dist_span=2000.0,
                 short=1, warmup=150, floor_ratio=0.5, tail_share=0.01, trend=0.1, damping=0.98, restart=30):
        self.k = int(ncols)
        self.a_level = 2.0 / (float(level_span) + 1.0)
        self.b_trend, self.phi = float(trend), float(damping)
        self.restart = int(restart)
        self.scale_span, self.floor_span, self.dist_span = float(scale_span), float(floor_span), float(dist_span)
        self.short, self.warmup = int(short), int(warmup)
        self.floor_ratio, self.tail_share = float(floor_ratio), float(tail_share)
        self.nobs = np.zeros((0, self.k), dtype=np.int64)
        for name in ("level", "trend", "dev", "dev_slow", "hist_w", "hist_sum", "last"):
            setattr(self, name, np.zeros((0, self.k)))
        self.run = np.zeros((0, self.k), dtype=np.int64)
        self.hist_top = np.zeros((0, self.k), dtype=np.int64)
        self.ring = np.zeros((0, self.short, self.k))
        self.hist = np.zeros((0, self.k, _HIST_BINS))

    def update(self, codes, X, quantum):
        """Return ``(tail probability, raw surprise)`` per row and column."""
        X = np.ascontiguousarray(X, dtype=np.float64).reshape(len(codes), self.k)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        _grow_state(self, codes, {"nobs": 0, "run": 0, "hist_top": 0, **dict.fromkeys(
            ("level", "trend", "dev", "dev_slow", "ring", "hist", "hist_w", "hist_sum", "last"), 0.0)})
        p = np.ones(X.shape)
        raw = np.zeros(X.shape)
        _likelihood_kernel(codes, X, np.ascontiguousarray(quantum, dtype=np.float64), self.a_level, self.b_trend,
                           self.phi, self.scale_span, self.floor_span, self.dist_span, self.short, self.warmup,
                           self.floor_ratio, self.tail_share, self.restart, self.nobs, self.level, self.trend,
                           self.dev, self.dev_slow, self.ring, self.hist, self.hist_w, self.hist_sum, self.hist_top,
                           self.last, self.run, p, raw)
        return p, raw


@njit(cache=True, nogil=True)
def _joint_kernel(codes, X, start, rows, count, ready, buf, center, scale, prec, clip2, smooth, a_smooth, rate,
                  thr2, post, over, off, out_d2, out_top, out_unfit, hold, streak, latched, out_latch):
    """Mahalanobis distance of each row from its entity's reference; returns the row that completes a reference.

    After scoring a row, the centre moves ``a_follow`` of the way towards it, with the row pulled in
    to the reference's ``clip2`` distance first (a Huber step): slow drift is followed, a sudden
    condition moves the centre only a little per row and stays flagged while it lasts.

    A condition held for ``hold`` rows in a row (``hold > 0``) is marked in ``out_latch`` (2 on the
    row it reaches ``hold``, 1 after it) until the distance falls back under the threshold.
    """
    n, k = X.shape
    z = np.zeros(k)
    for i in range(start, n):
        e = codes[i]
        if off[e]:
            continue
        if not ready[e]:
            for c in range(k):
                buf[e, count[e], c] = X[i, c]
            count[e] += 1
            if count[e] >= rows:
                return i
            continue
        best = 0.0
        top = 0
        for c in range(k):
            x = X[i, c]
            v = (x - center[e, c]) / scale[e, c] if x == x else 0.0
            if v > 1e6:
                v = 1e6
            elif v < -1e6:
                v = -1e6
            z[c] = v
            if abs(v) > best:
                best = abs(v)
                top = c
        d2 = 0.0
        for a in range(k):
            acc = 0.0
            for b in range(k):
                acc += prec[e, a, b] * z[b]
            d2 += z[a] * acc
        smooth[e] += a_smooth * (d2 - smooth[e])
        out_d2[i] = smooth[e]
        out_top[i] = top
        post[e] += 1
        if smooth[e] > thr2[e]:
            streak[e] += 1
            if hold > 0 and streak[e] >= hold and not latched[e]:
                latched[e] = True
                out_latch[i] = 2
            elif latched[e]:
                out_latch[i] = 1
            else:
                over[e] += 1  # a held condition is an operating point, not evidence against the reference
        else:
            streak[e] = 0
            latched[e] = False
        if post[e] % (2 * rows) == 0:
            if 4 * over[e] > 2 * rows:
                off[e] = True
                out_unfit[i] = True
                out_d2[i] = np.nan
                continue
            over[e] = 0
        if not latched[e]:
            w = 1.0 if d2 <= clip2[e] else np.sqrt(clip2[e] / d2)
            for c in range(k):
                center[e, c] += rate[e, c] * w * z[c] * scale[e, c]
    return -1


def _level_gain(B):
    """Per column of the reference rows ``B``: the gain with which a level that follows the signal predicts it.

    A column whose mean squared change over an eighth of the reference is more than twice its mean
    squared change from one row to the next has a level that wanders (a temperature, a pressure under
    slow control): it is modelled as a random walk seen through noise (the local level model), and
    the variogram ``V(h) = h * q * s2 + 2 * s2`` between those two lags gives its signal-to-noise
    ratio ``q``, hence the steady-state Kalman gain ``(sqrt(q^2 + 4q) - q) / 2`` of the exponentially
    weighted level that predicts it best. Other columns (noise around a fixed level) get 0.

    >>> rng = np.random.default_rng(0)
    >>> walk = np.cumsum(rng.normal(0, 0.3, 400)) + rng.normal(0, 1, 400)
    >>> gain = _level_gain(np.c_[rng.normal(0, 1, 400), walk])
    >>> float(gain[0]), 0.1 < float(gain[1]) < 0.5
    (0.0, True)
    """
    med = np.nanmedian(B, axis=0)
    B = np.where(np.isfinite(B), B, np.where(np.isfinite(med), med, 0.0))
    lag = max(2, len(B) // 8)
    if len(B) <= lag:
        return np.zeros(B.shape[1])
    v1 = np.mean(np.diff(B, axis=0) ** 2, axis=0)
    vh = np.mean((B[lag:] - B[:-lag]) ** 2, axis=0)
    walk = np.maximum(vh - v1, 0.0) / (lag - 1)
    noise = np.maximum((v1 - walk) / 2, 1e-12)
    q = np.where(vh > 2 * v1, walk / noise, 0.0)
    return (np.sqrt(q * q + 4 * q) - q) / 2


class JointReference:
    """Per entity: a robust reference of the joint state of its signals, and each row's distance from it.

    The first ``rows`` rows of an entity are its reference. From them the
    kernel learns, once, a robust centre and scale per signal (median and
    MAD) and the covariance of the standardised signals (re-estimated on the
    90 % of rows closest to the centre, then shrunk ``shrink`` of the way
    towards its diagonal). Every later row gets its squared Mahalanobis
    distance, smoothed over a few rows (``smooth_span``).

    Calibration is out of sample and forward in time, as the detector will
    be used: a model fitted on the first half of the reference scores the
    second half, and the smoothed distances there fix a scaled chi-square
    (Satterthwaite: matching mean and variance). So the wander of a healthy
    process within the reference is part of "normal".

    With ``follow_span``, the centre then follows the process slowly (see
    :func:`_joint_kernel`). With ``hold``, a condition that lasts ``hold``
    rows in a row is marked as held until it clears.

    Self-check: the rows after the reference are counted in blocks of
    ``2 * rows``; if more than a quarter of a block lies beyond the flag
    threshold (``tail``), the reference does not describe the process (it
    cycles between operating points, or the run started in a fault). The
    entity's scoring stops there, and that row is reported as ``unfit``.
    """

    def __init__(self, ncols, rows=400, smooth_span=5.0, shrink=0.1, follow_span=0.0, tail=1e-5, hold=0):
        self.k = int(ncols)
        self.hold = int(hold)
        self.streak = np.zeros(0, dtype=np.int64)
        self.latched = np.zeros(0, dtype=np.bool_)
        self.rows = int(rows)
        self.a_smooth = 2.0 / (float(smooth_span) + 1.0)
        self.a_follow = 2.0 / (float(follow_span) + 1.0) if follow_span else 0.0
        self.rate = np.zeros((0, self.k))
        self.shrink = float(shrink)
        self.tail = float(tail)
        self.count = np.zeros(0, dtype=np.int64)
        self.post = np.zeros(0, dtype=np.int64)
        self.over = np.zeros(0, dtype=np.int64)
        self.off = np.zeros(0, dtype=np.bool_)
        self.thr2 = np.full(0, np.inf)
        self.ready = np.zeros(0, dtype=np.bool_)
        self.buf = np.zeros((0, self.rows, self.k))
        self.center = np.zeros((0, self.k))
        self.scale = np.ones((0, self.k))
        self.prec = np.zeros((0, self.k, self.k))
        self.clip2 = np.zeros(0)
        self.smooth = np.zeros(0)
        self.g = np.ones(0)
        self.h = np.ones(0)

    def update(self, codes, X):
        """Return ``(smoothed d², top signal index, unfit, held)`` per row; d² is NaN during the reference.

        ``held`` is 2 on the row where a condition has lasted ``hold`` rows, 1 on the rows after it
        while the condition lasts, and 0 elsewhere.
        """
        X = np.ascontiguousarray(X, dtype=np.float64).reshape(len(codes), self.k)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        _grow_state(self, codes, {"count": 0, "post": 0, "over": 0, "off": False, "thr2": np.inf, "ready": False,
                                  "buf": 0.0, "center": 0.0, "scale": 1.0, "prec": 0.0, "clip2": 0.0, "smooth": 0.0,
                                  "g": 1.0, "h": 1.0, "streak": 0, "latched": False,
                                  "rate": self.a_follow})
        held = np.zeros(len(codes), dtype=np.int8)
        d2 = np.full(len(codes), np.nan)
        top = np.zeros(len(codes), dtype=np.int64)
        unfit = np.zeros(len(codes), dtype=np.bool_)
        start = 0
        while start < len(codes):
            i = _joint_kernel(codes, X, start, self.rows, self.count, self.ready, self.buf, self.center,
                              self.scale, self.prec, self.clip2, self.smooth, self.a_smooth, self.rate,
                              self.thr2, self.post, self.over, self.off, d2, top, unfit,
                              self.hold, self.streak, self.latched, held)
            if i < 0:
                break
            self._fit(int(codes[i]))
            start = i + 1
        return d2, top, unfit, held

    def _model(self, B):
        """Robust centre, scale and precision matrix of the rows ``B``; NaN cells take the column median."""
        k = self.k
        med = np.nanmedian(B, axis=0) if np.isfinite(B).any() else np.zeros(k)
        med = np.where(np.isfinite(med), med, 0.0)
        B = np.where(np.isfinite(B), B, med)
        mad = 1.4826 * np.median(np.abs(B - med), axis=0)
        steps = np.zeros(k)
        for c in range(k):
            moves = np.abs(np.diff(B[:, c]))
            moves = moves[moves > 0]
            steps[c] = moves.min() if moves.size else 0.0
        scale = np.maximum.reduce([mad, 0.1 * B.std(axis=0), steps, 1e-9 + 1e-9 * np.abs(med)])
        Z = (B - med) / scale
        keep = np.ones(len(Z), dtype=bool)
        for _ in range(3):
            mu = Z[keep].mean(axis=0)
            S = np.cov(Z[keep] - mu, rowvar=False).reshape(k, k)
            S = (1 - self.shrink) * S + self.shrink * np.diag(np.diag(S)) + 1e-6 * np.eye(k)
            P = np.linalg.inv(S)
            D = Z - mu
            d2 = np.einsum("ij,jk,ik->i", D, P, D)
            keep = d2 <= np.quantile(d2, 0.9)
        return med + mu * scale, scale, P

    def _smoothed(self, d2):
        sm = np.empty(len(d2))
        acc = float(np.median(d2))
        for j, v in enumerate(d2):
            acc += self.a_smooth * (v - acc)
            sm[j] = acc
        return sm

    def _distances(self, B, center, scale, P):
        Z = (np.where(np.isfinite(B), B, center) - center) / scale
        return np.einsum("ij,jk,ik->i", Z, P, Z)

    def _fit(self, e):
        B = self.buf[e].copy()
        gain = _level_gain(B)
        R, level = _innovations(B, gain)
        half = len(R) // 2
        sm = self._smoothed(self._distances(R[half:], *self._model(R[:half])))
        m, v = float(sm.mean()), max(float(sm.var()), 1e-12)
        self.g[e], self.h[e] = v / (2 * m), max(2 * m * m / v, 0.5)
        from scipy.stats import chi2

        self.thr2[e] = self.g[e] * chi2.isf(self.tail, self.h[e])
        center, scale, P = self._model(R)
        self.clip2[e] = float(np.quantile(self._distances(R, center, scale, P), 0.99))
        self.center[e], self.scale[e], self.prec[e] = center + level, scale, P
        self.rate[e] = np.where(gain > 0, gain, self.a_follow)
        self.smooth[e] = m
        self.ready[e] = True
        self.buf[e] = 0.0


def _innovations(B, gain):
    """``B`` with each column of positive ``gain`` replaced by its one-step prediction errors, and the last levels."""
    R = B.copy()
    level = np.zeros(B.shape[1])
    for c in np.flatnonzero(gain > 0):
        x = B[:, c]
        ok = np.isfinite(x)
        if not ok.any():
            continue
        lvl = float(x[ok][0])
        for t in range(len(x)):
            if ok[t]:
                R[t, c] = x[t] - lvl
                lvl += gain[c] * R[t, c]
        level[c] = lvl
    return R, level


class LimitArming:
    """Whether each entity's limits are armed: a limit counts only once the signal has been inside it.

    State per entity and column: 0 unseen, 1 armed, 2 breached from its
    first value (a likely configuration mismatch, reported once). A column
    in state 2 arms when a value comes inside the limits.
    """

    def __init__(self, ncols):
        self.k = int(ncols)
        self.armed = np.zeros((0, self.k), dtype=np.int64)

    def update(self, codes, X, low, high):
        """Return ``(armed before each row, first-value mismatch)`` per row and column."""
        X = np.ascontiguousarray(X, dtype=np.float64).reshape(len(codes), self.k)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        if len(codes):
            self.armed = _grow_rows(self.armed, int(codes.max()) + 1, 0)
        mismatch = np.zeros(X.shape, dtype=np.bool_)
        armed = np.zeros(X.shape, dtype=np.int64)
        _arm_rows(codes, X, np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64), self.armed,
                  armed, mismatch)
        return armed == 1, mismatch


@njit(cache=True, nogil=True)
def _arm_rows(codes, X, low, high, state, out_armed, out_mismatch):
    n, k = X.shape
    for i in range(n):
        e = codes[i]
        for c in range(k):
            x = X[i, c]
            s = state[e, c]
            if x == x and s != 1:
                inside = not (x < low[c] or x > high[c])
                if inside:
                    s = 1
                elif s == 0:
                    s = 2
                    out_mismatch[i, c] = True
                state[e, c] = s
            out_armed[i, c] = s


@njit(cache=True, nogil=True)
def _fit_check_kernel(codes, X, start, rows, count, state, buf, offset, out_state, out_offset, out_decided):
    """Collect each entity's first ``rows`` rows; return the row that completes them (-1 when none does)."""
    n, k = X.shape
    for i in range(start, n):
        e = codes[i]
        if count[e] < rows:
            for c in range(k):
                buf[e, count[e], c] = X[i, c]
            count[e] += 1
            if count[e] == rows:
                return i
        for c in range(k):
            out_state[i, c] = state[e, c]
            out_offset[i, c] = offset[e, c]
    return -1


class ReferenceFit:
    """Whether a known-good reference describes each entity's run, signal by signal.

    The first ``rows`` rows of an entity are compared, per signal, with the
    reference (``median``, ``low``/``high``: its 0.1-99.9 % range,
    ``bulk_low``/``bulk_high``: its 5-95 % range, ``scale``: its robust
    spread). State 0 while learning; then 1 when at least half of those rows
    lie inside the reference's range and their median inside its bulk (it
    fits); 2 when not, but the run's spread is within a factor ``spread_ratio`` of the
    reference's (another operating point: judge shape and spread, with the
    reference re-centred by ``offset`` onto the run's median); 3 when
    neither holds (the reference does not describe the signal: it is not
    judged). The row that decides is reported (``decided``).
    """

    def __init__(self, ncols, rows, spread_ratio=4.0):
        self.k = int(ncols)
        self.rows = int(rows)
        self.spread_ratio = float(spread_ratio)
        self.count = np.zeros(0, dtype=np.int64)
        self.state = np.zeros((0, self.k), dtype=np.int64)
        self.offset = np.zeros((0, self.k))
        self.buf = np.zeros((0, self.rows, self.k))

    def update(self, codes, X, reference):
        """Return ``(state, offset, decided)`` per row and signal, as known before the row.

        ``reference`` holds, per signal, ``(median, low, high, scale, bulk_low, bulk_high)``; it is
        the detector's, given on each call, so the carried state is the entities' alone.
        """
        X = np.ascontiguousarray(X, dtype=np.float64).reshape(len(codes), self.k)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        _grow_state(self, codes, {"count": 0, "state": 0, "offset": 0.0, "buf": 0.0})
        state = np.zeros(X.shape, dtype=np.int64)
        offset = np.zeros(X.shape)
        decided = np.zeros(X.shape, dtype=np.bool_)
        start = 0
        while start < len(codes):
            i = _fit_check_kernel(codes, X, start, self.rows, self.count, self.state, self.buf, self.offset,
                                  state, offset, decided)
            if i < 0:
                break
            e = int(codes[i])
            self._decide(e, *(np.asarray(r, dtype=np.float64) for r in reference))
            state[i], offset[i] = self.state[e], self.offset[e]
            decided[i] = self.state[e] >= 2
            start = i + 1
        return state, offset, decided

    def _decide(self, e, median, low, high, ref_scale, bulk_low, bulk_high):
        B = self.buf[e]
        for c in range(self.k):
            v = B[:, c]
            v = v[np.isfinite(v)]
            if not np.isfinite(median[c]) or len(v) < 2:
                self.state[e, c] = 3 if not np.isfinite(median[c]) else 1
                continue
            inside = np.mean((v >= low[c]) & (v <= high[c]))
            q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
            if inside >= 0.5 and bulk_low[c] <= med <= bulk_high[c]:
                self.state[e, c] = 1
                continue
            spread = max((q3 - q1) / 1.349, 1e-12)
            ratio = spread / max(ref_scale[c], 1e-12)
            if 1.0 / self.spread_ratio <= ratio <= self.spread_ratio:
                self.state[e, c] = 2
                self.offset[e, c] = med - median[c]
            else:
                self.state[e, c] = 3
        self.buf[e] = 0.0
