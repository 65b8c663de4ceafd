"""A bounded reorder window: rows a little out of time order are sorted before detection.

Real logs go back in time a little near a clock change (a daylight-saving
repeat) and with buffered multi-channel loggers. With ``--reorder 30s`` the
readers accept a row up to 30 s older than its entity's newest row so far
(an older one is quarantined, as every row going back in time is without the
window), and :class:`Reorder` holds each row back until its entity's data
has moved 30 s past it, then hands it on in time order.

The rule is per row, in arrival order, so the output does not depend on the
chunking: row ``r`` of entity ``e`` leaves at the first row ``k`` at or after
it where the newest time of ``e`` so far reaches ``t_r + window``; rows
leaving together are ordered by time, then by arrival. The rows still held
are part of a checkpoint (:meth:`Reorder.state`), and leave when the data
ends (:meth:`Reorder.flush`).

>>> import pandas as pd
>>> r = Reorder(pd.Timedelta("2s").value)
>>> t = pd.to_datetime(["2024-01-01 00:00:00", "2024-01-01 00:00:02", "2024-01-01 00:00:01",
...                     "2024-01-01 00:00:05"])
>>> out = r.push(pd.DataFrame({"timestamp": t, "entity": "a", "v": [0.0, 2.0, 1.0, 5.0]}))
>>> out["v"].tolist(), r.held_rows
([0.0, 1.0, 2.0], 1)
>>> r.flush()["v"].tolist()
[5.0]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["Reorder"]


class Reorder:
    """Hold rows back by ``window_ns`` of their entity's data time, and release them sorted."""

    def __init__(self, window_ns: int):
        self.window = int(window_ns)
        self.newest: dict = {}  # entity -> newest timestamp seen (ns)
        self.seq = 0  # rows pushed so far: each row's arrival number
        self.held: pd.DataFrame | None = None  # rows waiting, with their arrival number in _seq

    @property
    def held_rows(self) -> int:
        return 0 if self.held is None else len(self.held)

    def push(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows ``frame`` (in arrival order) releases, with those held from before, in time order."""
        n = len(frame)
        frame = frame.reset_index(drop=True).assign(_seq=np.arange(self.seq, self.seq + n, dtype="int64"))
        self.seq += n
        held = self.held if self.held is not None else frame.iloc[:0]
        ts_new = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
        ent_new = frame["entity"].to_numpy(dtype=object)
        # Each new row's entity-newest time after it arrives.
        newest_after = np.empty(n, dtype="int64")
        rows_of: dict = {}
        for i in range(n):
            e = ent_new[i]
            t = ts_new[i]
            m = self.newest.get(e)
            m = t if m is None or t > m else m
            self.newest[e] = m
            newest_after[i] = m
            rows_of.setdefault(e, []).append(i)
        # Where each candidate (held first, then new) leaves: a position in this frame, or n (still held).
        cand = pd.concat([held, frame], ignore_index=True) if len(held) else frame
        ts = cand["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
        ent = cand["entity"].to_numpy(dtype=object)
        own = np.concatenate([np.full(len(held), -1, dtype="int64"), np.arange(n, dtype="int64")])
        leaves = np.full(len(cand), n, dtype="int64")
        for e in pd.unique(ent):
            mine = np.flatnonzero(ent == e)
            positions = np.asarray(rows_of.get(e, []), dtype="int64")
            if not len(positions):
                continue
            reach = newest_after[positions]  # non-decreasing
            first = np.searchsorted(positions, own[mine], side="left")
            due = np.searchsorted(reach, ts[mine] + self.window, side="left")
            j = np.maximum(first, due)
            ok = j < len(positions)
            leaves[mine[ok]] = positions[j[ok]]
        out = cand.assign(_leaves=leaves)
        gone = out["_leaves"].to_numpy() < n
        self.held = out.loc[~gone].drop(columns="_leaves").reset_index(drop=True)
        released = out.loc[gone].sort_values(["_leaves", "timestamp", "_seq"], kind="stable")
        return released.drop(columns=["_leaves", "_seq"]).reset_index(drop=True)

    def flush(self) -> pd.DataFrame | None:
        """Every row still held, in time order (the data has ended); ``None`` if none."""
        if not self.held_rows:
            return None
        out = self.held.sort_values(["timestamp", "_seq"], kind="stable").drop(columns="_seq")
        self.held = None
        return out.reset_index(drop=True)

    def reset(self):
        self.__init__(self.window)

    def state(self) -> dict:
        """JSON-ready: the entities' newest times, the arrival count, and the rows held (column by column)."""
        held = None
        if self.held_rows:
            h = self.held
            held = {c: (h[c].to_numpy(dtype="datetime64[ns]").view("int64").tolist() if c == "timestamp"
                        else [None if isinstance(v, float) and np.isnan(v) else v for v in h[c].tolist()])
                    for c in h.columns}
        return {"newest": [[e, int(t)] for e, t in self.newest.items()], "seq": self.seq, "held": held,
                "columns": None if self.held is None else list(self.held.columns)}

    def load_state(self, state: dict, like: pd.DataFrame | None = None):
        """Continue from :meth:`state`; ``like`` gives the columns' types (a frame of the same source)."""
        self.newest = {e: int(t) for e, t in state["newest"]}
        self.seq = int(state["seq"])
        held = state.get("held")
        if not held:
            self.held = None
            return
        frame = pd.DataFrame({c: held[c] for c in state["columns"]})
        frame["timestamp"] = pd.to_datetime(np.asarray(frame["timestamp"], dtype="int64"))
        frame["entity"] = pd.Series(frame["entity"].tolist(), dtype=object)
        frame["_seq"] = frame["_seq"].astype("int64")
        if like is not None:
            for c in like.columns:
                if c in frame and c not in ("timestamp", "entity"):
                    frame[c] = frame[c].astype(like[c].dtype) if like[c].dtype != object else frame[c].astype(object)
        for c in frame.columns:
            if c not in ("timestamp", "entity", "_seq") and frame[c].dtype != object and (like is None or c not in like):
                frame[c] = pd.to_numeric(frame[c], errors="coerce")
        self.held = frame
