"""Rolling statistics per entity and signal, with state carried across chunks.

:class:`Features` is the shared, stateful feature store a pipeline feeds each
chunk to once: rolling moments, quantiles, lags and run lengths are computed
by compiled kernels (see ``sbg.detect.kernels``) and cached per chunk, so several
detectors asking for the same window pay for it once.

:class:`Stats` is the pipeline step that adds ``{signal}__mean``, ``__std``,
``__min``, ``__max``, ``__ewm`` and the display band ``__lower``/``__upper``
(mean ± ``band_k`` std) columns. Its results equal pandas'
``groupby(entity).rolling(window)`` on the whole frame, for any chunking.

>>> import pandas as pd
>>> df = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=4, freq="s"),
...                    "entity": ["a"] * 4, "v": [1.0, 2.0, 3.0, 4.0]})
>>> Stats(signals=["v"], window=2).process(df)["v__mean"].tolist()
[nan, 1.5, 2.5, 3.5]
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import param

from ..io.entities import EntityIndex
from .kernels import (
    EWM,
    EWSpread,
    JointReference,
    Lag,
    Likelihood,
    LimitArming,
    Positions,
    ReferenceFit,
    RollingMoments,
    RollingQuantiles,
    RunLength,
    UsualInterval,
    parse_window,
)
from .seasonal import DailyMemory
from .trend import TrendBins

__all__ = ["Chunk", "Features", "Stats", "STAT_SUFFIXES"]

STAT_SUFFIXES = ("mean", "std", "min", "max", "ewm", "lower", "upper")


class Chunk:
    """A pipeline chunk as arrays: entity codes, int64 ns times, signal matrix."""

    __slots__ = ("frame", "codes", "ts", "X", "signals", "_cache")

    def __init__(self, frame: pd.DataFrame, signals, index: EntityIndex):
        self.frame = frame
        self.signals = tuple(signals)
        self.codes = index.codes(frame["entity"].to_numpy(dtype=object))
        self.ts = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
        if self.signals:
            self.X = np.column_stack([frame[s].to_numpy(dtype="float64", na_value=np.nan) for s in self.signals])
        else:
            self.X = np.zeros((len(frame), 0))
        self._cache = {}

    def __len__(self):
        return len(self.ts)


#: The only classes carried state may name: the kernels that hold a pipeline's state between chunks.
KERNELS = {cls.__name__: cls for cls in (
    RollingMoments, RollingQuantiles, EWM, EWSpread, Lag, RunLength, Positions, UsualInterval,
    Likelihood, JointReference, LimitArming, ReferenceFit, TrendBins, DailyMemory)}
_SCALARS = (bool, int, float, str, type(None))


class Features:
    """Stateful rolling features over a fixed set of signals, computed once per chunk.

    Parameters
    ----------
    signals : sequence of str
        Column order of the signal matrix.
    """

    def __init__(self, signals):
        self.signals = tuple(signals)
        self.k = len(self.signals)
        self.index = EntityIndex()
        self._state = {}
        self._chunk_id = 0
        self._chunk = None

    def chunk(self, frame: pd.DataFrame) -> Chunk:
        """Wrap a frame; each feature is then computed at most once for it."""
        self._chunk = Chunk(frame, self.signals, self.index)
        return self._chunk

    # ------------------------------------------------------------------ carried state

    def state(self, key):
        """The kernel carrying state under ``key`` (a detector's own, e.g. its reference), or None."""
        return self._state.get(key)

    def put_state(self, key, kernel):
        """Carry ``kernel`` under ``key`` from now on."""
        self._state[key] = kernel

    def nbytes(self) -> int:
        """Bytes of carried state: every numeric array of every kernel (memory accounting)."""
        total = 0
        for value in self._state.values():
            for obj in value if isinstance(value, tuple) else (value,):
                total += sum(v.nbytes for v in vars(obj).values() if isinstance(v, np.ndarray))
        return total

    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Everything carried from chunk to chunk: ``(meta, arrays)``, JSON-safe metadata and numeric arrays.

        Every attribute of every kernel is saved; one that is neither a
        numeric array nor a plain scalar is refused, so no state can be left
        out unnoticed. :meth:`load_state_dict` restores it.

        >>> import json
        >>> f = Features(["v"])
        >>> c = f.chunk(pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=3, freq="s"),
        ...                          "entity": ["a", "b", "a"], "v": [1.0, 2.0, 3.0]}))
        >>> f.rows_seen(c).tolist()
        [0, 0, 1]
        >>> meta, arrays = f.state_dict()
        >>> g = Features(["v"])
        >>> g.load_state_dict(json.loads(json.dumps(meta)), arrays)
        >>> g.rows_seen(g.chunk(pd.DataFrame({"timestamp": [pd.Timestamp("2024-01-02")], "entity": ["a"],
        ...                                   "v": [4.0]}))).tolist()
        [2]
        """
        kernels, arrays = [], {}
        for i, (key, value) in enumerate(self._state.items()):
            parts = []
            for j, obj in enumerate(value if isinstance(value, tuple) else (value,)):
                kind = type(obj).__name__
                if KERNELS.get(kind) is not type(obj):
                    raise TypeError(f"cannot save a {kind}")
                scalars = {}
                for attr, v in vars(obj).items():
                    if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
                        arrays[f"{i}.{j}.{attr}"] = v
                    elif isinstance(v, _SCALARS):
                        scalars[attr] = v
                    else:
                        raise TypeError(f"cannot save {kind}.{attr}, a {type(v).__name__}")
                parts.append({"kind": kind, "scalars": scalars})
            kernels.append({"key": list(key), "tuple": isinstance(value, tuple), "parts": parts})
        return {"labels": list(self.index.labels), "kernels": kernels}, arrays

    def load_state_dict(self, meta: dict, arrays: dict[str, np.ndarray]):
        """Replace the carried state with what :meth:`state_dict` saved.

        The input is treated as untrusted: only the kernel classes in
        :data:`KERNELS` can be named, values are plain scalars or numeric
        arrays (never pickles), and every array of a kernel must have one row
        per entity slot (at most twice the entities). Raises ``ValueError``.
        """
        labels = meta["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) \
                or len(set(labels)) != len(labels):
            raise ValueError("entity labels must be distinct text")
        state = {}
        for i, entry in enumerate(meta["kernels"]):
            key = tuple(entry["key"])
            if not all(isinstance(x, _SCALARS) for x in key):
                raise ValueError(f"bad state key {key!r}")
            objs = [self._load_kernel(key, part, f"{i}.{j}.", arrays, len(labels))
                    for j, part in enumerate(entry["parts"])]
            state[key] = tuple(objs) if entry["tuple"] else objs[0]
        self.index.restore(labels)
        self._state.clear()
        self._state.update(state)

    def _load_kernel(self, key, part, prefix, arrays, entities):
        cls = KERNELS.get(part.get("kind"))
        if cls is None:
            raise ValueError(f"unknown kernel {part.get('kind')!r}")
        obj = cls.__new__(cls)
        values = dict(part["scalars"])
        values.update({name[len(prefix):]: arr for name, arr in arrays.items() if name.startswith(prefix)})
        rows = set()
        for attr, v in values.items():
            if not attr.isidentifier() or attr.startswith("__"):
                raise ValueError(f"bad attribute name {attr!r}")
            if isinstance(v, np.ndarray):
                if v.dtype.kind not in "biuf" or v.ndim == 0:
                    raise ValueError(f"{part['kind']}.{attr}: not a numeric array")
                rows.add(v.shape[0])
                v = np.require(v, requirements=["C", "W", "O"])
            elif not isinstance(v, _SCALARS):
                raise ValueError(f"{part['kind']}.{attr}: not a scalar")
            vars(obj)[attr] = v
        if len(rows) > 1 or (rows and rows.pop() > max(4, 2 * entities)) or vars(obj).get("k", self.k) != self.k:
            raise ValueError(f"{part['kind']} {key}: arrays do not match the entities and signals")
        return obj

    def computed(self, chunk, name) -> dict:
        """What the steps before have computed on ``chunk`` under keys named ``name``: ``{key: result}``.

        A detector reads another's result this way instead of computing its own
        (the forecast reads the limits detector's, so both judge by the same limits).
        """
        return {key: value for key, value in chunk._cache.items() if key[0] == name}

    def _get(self, chunk, key, make, run):
        if key not in chunk._cache:
            state = self._state.get(key)
            if state is None:
                state = self._state[key] = make()
            chunk._cache[key] = run(state)
        return chunk._cache[key]

    def moments(self, chunk, window, min_periods=None, prior=False, minmax=True):
        """``(mean, std, min, max)`` over ``window`` for each row (min and max NaN unless ``minmax``)."""
        key = ("moments", str(window), min_periods, prior, minmax)
        return self._get(chunk, key, lambda: RollingMoments(self.k, window, min_periods, prior, minmax),
                         lambda s: s.update(chunk.codes, chunk.ts, chunk.X))

    def quantiles(self, chunk, window: int, min_periods=None, prior=False):
        """``(median, q25, q75)`` over the last ``window`` rows."""
        key = ("quantiles", int(window), min_periods, prior)
        return self._get(chunk, key, lambda: RollingQuantiles(self.k, window, min_periods, prior),
                         lambda s: s.update(chunk.codes, chunk.X))

    def ewm(self, chunk, alpha, min_periods=1):
        key = ("ewm", float(alpha), min_periods)
        return self._get(chunk, key, lambda: EWM(self.k, alpha, min_periods),
                         lambda s: s.update(chunk.codes, chunk.X))

    def spread(self, chunk, span, min_periods=2, diff=False):
        """``(spread, low envelope, high envelope)`` of the values (or first differences) before each row."""
        key = ("spread", int(span), min_periods, diff)

        def run(state):
            return state.update(chunk.codes, self.diff(chunk) if diff else chunk.X)

        return self._get(chunk, key, lambda: EWSpread(self.k, span, min_periods), run)

    def daily(self, chunk, raw, slot, memory, source, period="1D"):
        """The routine surprise at each row's time of the ``period`` (a day or a week; :class:`DailyMemory`),
        fed the surprises ``raw`` of the state ``source`` names (0 where no routine is known)."""
        slot_ns, period_ns = pd.Timedelta(slot).value, pd.Timedelta(period).value
        memory_days = pd.Timedelta(memory) / pd.Timedelta("1D")
        key = ("daily", slot_ns, memory_days, period_ns, *source)
        return self._get(chunk, key, lambda: DailyMemory(self.k, slot_ns, memory_days, period_ns),
                         lambda s: s.update(chunk.codes, chunk.ts, raw))

    def lag(self, chunk):
        """``(dt_ns, previous valid value, resolution)`` per row."""
        return self._get(chunk, ("lag",), lambda: Lag(self.k), lambda s: s.update(chunk.codes, chunk.ts, chunk.X))

    def diff(self, chunk):
        """First difference against the entity's previous valid value."""
        if ("diff",) not in chunk._cache:
            _, prev, _ = self.lag(chunk)
            chunk._cache[("diff",)] = chunk.X - prev
        return chunk._cache[("diff",)]

    def diff_moments(self, chunk, window, min_periods=None, prior=True):
        """Rolling mean and std of the first difference (min and max not tracked)."""
        key = ("diff_moments", str(window), min_periods, prior)

        def run(state):
            return state.update(chunk.codes, chunk.ts, self.diff(chunk))

        return self._get(chunk, key, lambda: RollingMoments(self.k, window, min_periods, prior, minmax=False), run)

    def intervals(self, chunk, eta=0.05):
        """``(dt_seconds, usual_interval_seconds)`` per row (see :class:`~sbg.detect.kernels.UsualInterval`)."""
        return self._get(chunk, ("intervals", float(eta)), lambda: UsualInterval(eta),
                         lambda s: s.update(chunk.codes, chunk.ts))

    def usual_intervals(self, eta=0.05) -> dict[str, float]:
        """Each entity's usual sampling interval in seconds, by label, as :meth:`intervals` last saw it (NaN
        before its second row)."""
        state = self._state.get(("intervals", float(eta)))
        usual = state.usual if state is not None else np.zeros(0)
        return {str(label): float(usual[i]) if i < len(usual) else np.nan
                for i, label in enumerate(self.index.labels)}

    def runs(self, chunk, tol=0.0):
        """``(current run length, longest finished run, jitter)`` of equal values."""
        key = ("runs", float(tol))
        return self._get(chunk, key, lambda: RunLength(self.k, tol), lambda s: s.update(chunk.codes, chunk.X))

    def rows_seen(self, chunk):
        """How many rows each row's entity had before it (its position in the entity's stream)."""
        return self._get(chunk, ("rows_seen",), Positions, lambda s: s.update(chunk.codes))


class Stats(param.Parameterized):
    """Rolling mean, std, min, max and EWM per entity and signal.

    The window is a row count (``120``) or a duration (``'60s'``, ``'10min'``).
    """

    signals = param.List(default=[], item_type=str, doc="Signal columns to describe (set by the pipeline).")
    window = param.Parameter(default=120, doc="Rolling window: a row count such as 120, or a duration such as '60s'.")
    min_periods = param.Integer(default=2, bounds=(1, None), doc="Observations needed before a statistic is given.")
    ewm_alpha = param.Number(default=0.05, bounds=(0.0, 1.0), inclusive_bounds=(False, True),
                             doc="Smoothing factor of the exponentially weighted mean.")
    band_k = param.Number(default=3.0, bounds=(0.0, None),
                          doc="Half-width of the displayed band, mean +/- band_k * std, in standard deviations.")

    def __init__(self, features: Features | None = None, **params):
        super().__init__(**params)
        parse_window(self.window)
        self.features = features or Features(self.signals)
        self.signals = list(self.signals)

    def columns(self):
        return [f"{s}__{suffix}" for s in self.signals for suffix in STAT_SUFFIXES]

    def compute(self, chunk: Chunk) -> dict:
        """Stats for a chunk as a dict of column name to array."""
        rows, _ = parse_window(self.window)
        min_periods = min(self.min_periods, rows) if rows else self.min_periods
        mean, std, mn, mx = self.features.moments(chunk, self.window, min_periods)
        ewm = self.features.ewm(chunk, self.ewm_alpha)
        out = {}
        for j, s in enumerate(self.signals):
            out[f"{s}__mean"] = mean[:, j]
            out[f"{s}__std"] = std[:, j]
            out[f"{s}__min"] = mn[:, j]
            out[f"{s}__max"] = mx[:, j]
            out[f"{s}__ewm"] = ewm[:, j]
            out[f"{s}__lower"] = mean[:, j] - self.band_k * std[:, j]
            out[f"{s}__upper"] = mean[:, j] + self.band_k * std[:, j]
        return out

    def process(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame with the statistic columns added (standalone use)."""
        chunk = self.features.chunk(frame)
        return frame.assign(**self.compute(chunk))
