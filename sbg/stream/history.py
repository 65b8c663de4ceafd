"""Retained full-resolution history of a run: signals, stats, scores and flags.

The history keeps whole chunks in a deque and drops the oldest when the
retained row count passes ``max_rows``; the dashboard and the report read
from it. Memory is therefore bounded by ``max_rows`` times the row width.

>>> import pandas as pd
>>> h = History(max_rows=3)
>>> for i in range(5):
...     h.append(pd.DataFrame({"x": [i]}))
>>> h.frame()["x"].tolist(), h.rows_dropped
([2, 3, 4], 2)
"""

from __future__ import annotations

import threading
from collections import deque

import pandas as pd
import param

__all__ = ["History"]


class History(param.Parameterized):
    """Bounded store of enriched chunks."""

    max_rows = param.Integer(default=500_000, bounds=(1, None),
                             doc="Rows retained; older rows are dropped whole-chunk first, then trimmed.")

    def __init__(self, **params):
        super().__init__(**params)
        self._chunks: deque[pd.DataFrame] = deque()
        self._rows = 0
        self.rows_dropped = 0
        self._lock = threading.Lock()
        self._frame_cache = None

    def __len__(self):
        return self._rows

    def append(self, chunk: pd.DataFrame):
        if len(chunk) == 0:
            return
        with self._lock:
            self._chunks.append(chunk)
            self._rows += len(chunk)
            while self._rows - len(self._chunks[0]) >= self.max_rows:
                self._rows -= len(self._chunks[0])
                self.rows_dropped += len(self._chunks.popleft())
            if self._rows > self.max_rows:
                extra = self._rows - self.max_rows
                self._chunks[0] = self._chunks[0].iloc[extra:]
                self._rows -= extra
                self.rows_dropped += extra
            self._frame_cache = None

    def clear(self):
        with self._lock:
            self._chunks.clear()
            self._rows = 0
            self.rows_dropped = 0
            self._frame_cache = None

    def frame(self, columns=None) -> pd.DataFrame:
        """The retained rows as one frame (cached until the next append)."""
        with self._lock:
            if self._frame_cache is None:
                chunks = list(self._chunks)
                self._frame_cache = (pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame())
            df = self._frame_cache
        return df if columns is None else df[[c for c in columns if c in df.columns]]

    def tail(self, n: int) -> pd.DataFrame:
        """The newest ``n`` rows, without concatenating the whole history."""
        with self._lock:
            parts, got = [], 0
            for chunk in reversed(self._chunks):
                parts.append(chunk)
                got += len(chunk)
                if got >= n:
                    break
        if not parts:
            return pd.DataFrame()
        return pd.concat(parts[::-1], ignore_index=True).iloc[-n:]
