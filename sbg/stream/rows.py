"""Rows pushed one at a time (a socket, a message queue), emitted downstream as DataFrame chunks."""

from __future__ import annotations

from operator import itemgetter

import numpy as np
import pandas as pd
from streamz import Stream

from ..io.sources import MAX_RAW_CHARS, QuarantinedRow, _short

__all__ = ["RowSource"]


class RowSource(Stream):
    """A streamz source for rows pushed one at a time, emitted as DataFrame chunks.

    Live feeds (a socket, a message queue) deliver one row at a time; the
    pipeline is far faster on chunks. ``emit(row)`` appends the row and
    sends a chunk downstream every ``n`` rows, or ``timeout`` seconds after
    the first row of a chunk arrived (on the event loop). A row is a tuple
    ``(timestamp, entity, *signal values)``; the timestamp is int64
    nanoseconds or anything ``pandas.Timestamp`` accepts. A row whose
    values are not numbers is quarantined, never dropped silently.

    >>> src = RowSource(["v"], n=2)
    >>> _ = src.sink(lambda df: print(len(df), list(df.columns)))
    >>> src.emit((0, "a", 1.0)); src.emit((10**9, "a", 2.0))
    2 ['timestamp', 'entity', 'v']
    """

    def __init__(self, signals, n: int = 1000, timeout: float | None = None, **kwargs):
        if timeout is not None:
            kwargs["ensure_io_loop"] = True
        super().__init__(**kwargs)
        self.signals = list(signals)
        self.n = int(n)
        self.timeout = timeout
        self.rows_in = 0
        self.quarantined: list[QuarantinedRow] = []
        self._rows: list = []
        self._timer = None

    def emit(self, row, asynchronous=False, metadata=None):
        rows = self._rows
        rows.append(row)
        if len(rows) >= self.n:
            self.flush()
        elif self.timeout is not None and self._timer is None:
            self._timer = self.loop.call_later(self.timeout, self.flush)

    def flush(self):
        """Send the buffered rows downstream now."""
        if self._timer is not None:
            self.loop.remove_timeout(self._timer)
            self._timer = None
        rows, self._rows = self._rows, []
        if not rows:
            return None
        self.rows_in += len(rows)
        width = 2 + len(self.signals)
        if set(map(len, rows)) != {width}:
            raise ValueError(f"every row must have {width} fields: timestamp, entity, {', '.join(self.signals)}")
        # Column by column with itemgetter: zip(*rows) is several times slower on long buffers.
        cols = [list(map(itemgetter(j), rows)) for j in range(width)]
        t = cols[0]
        if isinstance(t[0], (int, np.integer)):
            ts = np.asarray(t, dtype="int64").view("datetime64[ns]")
        else:
            ts = pd.to_datetime(pd.Series(t)).astype("datetime64[ns]").to_numpy()
        # An explicit object Series: pandas would otherwise convert ids to its string dtype per chunk.
        data = {"timestamp": ts, "entity": pd.Series(np.asarray(cols[1], dtype=object), dtype=object)}
        bad = np.zeros(len(rows), dtype=bool)
        for j, name in enumerate(self.signals):
            try:
                arr = np.asarray(cols[2 + j], dtype="float64")
            except (TypeError, ValueError):
                arr = pd.to_numeric(pd.Series(cols[2 + j], dtype=object), errors="coerce").to_numpy(dtype="float64")
                given = pd.Series(cols[2 + j], dtype=object).notna().to_numpy()
                bad |= np.isnan(arr) & given
            bad |= np.isinf(arr)
            data[name] = arr
        frame = pd.DataFrame(data)
        if bad.any():
            start = self.rows_in - len(rows)
            for i in np.flatnonzero(bad):
                self.quarantined.append(QuarantinedRow("rows", start + int(i) + 1, _short(repr(rows[i]), MAX_RAW_CHARS),
                                                       "a signal value is not a finite number"))
            frame = frame[~bad].reset_index(drop=True)
        self._emit(frame)
        return None
