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

__all__ = ["EntityIndex", "RollingMoments", "RollingQuantiles", "EWM", "EWSpread", "Lag", "RunLength",
           "Positions", "UsualInterval"]

_RESYNC = 4096  # rows between exact recomputations of the window sums


class EntityIndex:
    """Stable integer codes for entity labels, shared by every step of a pipeline."""

    def __init__(self):
        self.codes_of: dict = {}
        self.labels: list = []
        self._cache_key = None
        self._cache = None

    def __len__(self):
        return len(self.labels)

    def codes(self, entities) -> np.ndarray:
        arr = np.asarray(entities, dtype=object)
        key = (id(entities), len(arr))
        if self._cache_key == key and self._cache is not None and self._cache_src is entities:
            return self._cache
        if len(arr) == 0:
            return np.zeros(0, dtype=np.int64)
        first = arr[0]
        if (arr == first).all():
            out = np.full(len(arr), self._code(first), dtype=np.int64)
        else:
            import pandas as pd

            local, uniques = pd.factorize(arr)
            table = np.array([self._code(u) for u in uniques], dtype=np.int64)
            out = table[local]
        self._cache_key, self._cache, self._cache_src = key, out, entities
        return out

    def _code(self, label):
        code = self.codes_of.get(label)
        if code is None:
            code = self.codes_of[label] = len(self.labels)
            self.labels.append(label)
        return code


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
            for c in range(k):
                m = cnt[e, c]
                if m >= min_periods and m > 0:
                    out_med[i, c] = _quantile_sorted(srt[e, c], m, 0.5)
                    out_q1[i, c] = _quantile_sorted(srt[e, c], m, 0.25)
                    out_q3[i, c] = _quantile_sorted(srt[e, c], m, 0.75)
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
            for c in range(k):
                m = cnt[e, c]
                if m >= min_periods and m > 0:
                    out_med[i, c] = _quantile_sorted(srt[e, c], m, 0.5)
                    out_q1[i, c] = _quantile_sorted(srt[e, c], m, 0.25)
                    out_q3[i, c] = _quantile_sorted(srt[e, c], m, 0.75)


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
        if len(codes):
            n = int(codes.max()) + 1
            self.ring = _grow_rows(self.ring, n, np.nan)
            self.lo = _grow_rows(self.lo, n, 0)
            self.hi = _grow_rows(self.hi, n, 0)
            self.srt = _grow_rows(self.srt, n, 0.0)
            self.cnt = _grow_rows(self.cnt, n, 0)
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
        if len(codes):
            n = int(codes.max()) + 1
            self.weighted = _grow_rows(self.weighted, n, np.nan)
            self.old_wt = _grow_rows(self.old_wt, n, 0.0)
            self.nobs = _grow_rows(self.nobs, n, 0)
            self.started = _grow_rows(self.started, n, False)
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
        if len(codes):
            n = int(codes.max()) + 1
            self.last_t = _grow_rows(self.last_t, n, 0)
            self.has_t = _grow_rows(self.has_t, n, False)
            self.last_x = _grow_rows(self.last_x, n, np.nan)
            self.quantum = _grow_rows(self.quantum, n, np.nan)
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
        if len(codes):
            n = int(codes.max()) + 1
            self.last = _grow_rows(self.last, n, np.nan)
            self.run = _grow_rows(self.run, n, 0)
            self.longest = _grow_rows(self.longest, n, 0)
            self.sign = _grow_rows(self.sign, n, 0)
            self.jitter = _grow_rows(self.jitter, n, 0.0)
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
        if len(codes):
            n = int(codes.max()) + 1
            for name in ("mean", "var", "lo", "hi"):
                setattr(self, name, _grow_rows(getattr(self, name), n, 0.0))
            self.nobs = _grow_rows(self.nobs, n, 0)
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
        if len(codes):
            n = int(codes.max()) + 1
            self.last_t = _grow_rows(self.last_t, n, 0)
            self.has_t = _grow_rows(self.has_t, n, False)
            self.usual = _grow_rows(self.usual, n, np.nan)
        dt = np.full(len(codes), np.nan)
        usual = np.full(len(codes), np.nan)
        _interval_kernel(codes, np.ascontiguousarray(ts, dtype=np.int64), self.eta, self.last_t, self.has_t,
                         self.usual, dt, usual)
        return dt, usual


@njit(cache=True, nogil=True)
def distance_scores(X, center, std, std_long, quantum, floor_ratio, res_floor, threshold,
                    lo, hi, margin, use_range, isolated, co_threshold, seen, warmup):
    """Fused scoring shared by the z-score, robust and spike detectors.

    ``z = |x - center| / max(std, floor_ratio * std_long, res_floor * quantum)``
    scored ``z / (z + threshold)``; 0 where the reference is not yet known.
    With ``use_range``, rows inside ``[lo - margin*std_long, hi + margin*std_long]``
    stay below 0.5. With ``isolated``, a row where another column moved by
    ``co_threshold`` of its own recent ``std`` scores 0. Rows whose entity has
    seen fewer than ``warmup`` rows stay below 0.5.
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
        cold = seen[i] < warmup
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
