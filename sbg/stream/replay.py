"""Time-faithful replay of one or more sources on a simulated clock.

The simulated clock runs at ``speed`` times wall time from the first row's
timestamp. On every tick, all rows whose timestamps are due go out as one
chunk on :attr:`Replay.stream` (a streamz ``Stream``). ``speed="max"`` emits
``max_chunk_rows`` rows at a time as fast as the consumer takes them.

Several sources are merged by timestamp. The replay runs as an asyncio task
on the current loop (Jupyter's kernel loop, or the Tornado loop under
``panel serve``), or synchronously with :meth:`Replay.run_to_end`.

>>> import pathlib, tempfile
>>> p = pathlib.Path(tempfile.mkdtemp()) / "r.csv"
>>> _ = p.write_text("time,v\\n" + "".join(f"2024-01-01T00:00:{i:02d},{i}\\n" for i in range(10)))
>>> from sbg.io.sources import Source
>>> r = Replay([Source(p)], speed="max", max_chunk_rows=4)
>>> sizes = []
>>> _ = r.stream.sink(lambda df: sizes.append(len(df)))
>>> r.run_to_end(); sizes, r.state, r.percent
([4, 4, 2], 'finished', 100.0)
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import param
from streamz import Stream

from ..io.sources import Batch, Source
from .reorder import Reorder

__all__ = ["Replay", "parse_speed", "auto_speed", "speed_label", "speed_options", "SPEEDS"]

SPEEDS = ("1x", "10x", "100x", "1000x", "max")

#: ``speed="auto"`` replays about this many of the data's timestamps per wall second.
AUTO_STEPS_PER_SECOND = 100
#: Bytes of a file :func:`auto_speed` reads to find its interval (some thousands of rows).
PEEK_BYTES = 256 * 1024


def parse_speed(speed) -> float:
    """``'max'`` or a positive factor (``10``, ``'10x'``) as a float; ``inf`` for max.

    ``'auto'`` is not a speed but a request for one: :func:`auto_speed` turns it into one.

    >>> parse_speed("100x"), parse_speed("max")
    (100.0, inf)
    """
    if isinstance(speed, str):
        text = speed.strip().lower()
        if text == "max":
            return float("inf")
        text = text.rstrip("x")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"speed must be a positive number, 'max' or 'auto', not {speed!r}") from None
    else:
        value = float(speed)
    if not value > 0:
        raise ValueError(f"speed must be positive, not {speed!r}")
    return value


def auto_speed(sources, steps_per_second: float = AUTO_STEPS_PER_SECOND) -> str:
    """The power-of-ten speed that replays about ``steps_per_second`` of the data's timestamps a second.

    A 1 Hz log replays at 100x, as before; a 5-minute logger at 10000x (33 of its rows a second, where
    100x showed one row every 3 s); an hourly one at 1e6x. The interval is the median step between
    the distinct timestamps of each source's first block (the rows of several entities stamped alike
    are one step), the smallest over the sources. The block is read by a second reader of the file,
    with its schema and a small block (:data:`PEEK_BYTES`): the source itself is not touched, and a
    large file costs no more than its first rows. A source with fewer than two timestamps, or one that
    is followed as it grows, says nothing: 100x.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "slow.csv"
    >>> _ = p.write_text("time,v\\n" + "".join(f"2024-01-01T{i // 12:02d}:{i % 12 * 5:02d}:00,{i}\\n" for i in range(48)))
    >>> from sbg.io.sources import Source
    >>> auto_speed([Source(p)])
    '10000x'
    """
    steps = []
    for source in sources:
        if getattr(source, "follows", False):
            continue
        batches = Source(source.path, block_bytes=PEEK_BYTES, schema=source.schema).batches()
        try:
            batch = next(batches, None)
        finally:
            batches.close()
        if batch is None or len(batch.frame) < 2:
            continue
        stamps = np.unique(batch.frame["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64"))
        if len(stamps) > 1:
            steps.append(float(np.median(np.diff(stamps))) / 1e9)
    if not steps:
        return "100x"
    factor = 10.0 ** round(np.log10(max(min(steps) * steps_per_second, 1e-12)))
    return speed_label(min(max(factor, 1.0), 1e6))


def speed_options(current) -> list[str]:
    """The speeds a page offers: :data:`SPEEDS`, with ``current`` in its place when it is another.

    >>> speed_options("10000x"), speed_options("30")
    (['1x', '10x', '100x', '1000x', '10000x', 'max'], ['1x', '10x', '30x', '100x', '1000x', 'max'])
    """
    label = speed_label(current)
    if label in SPEEDS:
        return list(SPEEDS)
    factors = [parse_speed(s) for s in SPEEDS]
    at = int(np.searchsorted(factors, parse_speed(label)))
    return [*SPEEDS[:at], label, *SPEEDS[at:]]


def speed_label(speed) -> str:
    """A speed as the page writes it: ``'max'`` or a factor with an ``x``, a power of ten from 10^5 up short.

    >>> speed_label(30), speed_label("10000x"), speed_label("1000000x"), speed_label("max")
    ('30x', '10000x', '1e6x', 'max')
    """
    value = parse_speed(speed)
    if value == float("inf"):
        return "max"
    exponent = np.log10(value)
    if value >= 1e5 and exponent == int(exponent):
        return f"1e{int(exponent)}x"
    return f"{value:g}x"


class _Cursor:
    """Read position in one source: the current validated batch and an offset into it.

    ``taken`` counts the validated rows handed out since the start and
    ``batches`` the batches read: together they are the cursor's position,
    which :meth:`restart` can return to.
    """

    def __init__(self, source: Source, on_batch: Callable[[Batch], None]):
        self.source = source
        self.on_batch = on_batch
        self.restart()

    def restart(self, rows: int = 0, batches: int = 0):
        """Go back to the start, or on to ``rows`` taken after ``batches`` read (those are not reported again)."""
        self._it = self.source.batches()
        self.frame = None
        self.ts = None
        self.pos = 0
        self.done = False
        self.taken = 0
        self.batches = 0
        self._skip = int(rows)
        self._quiet = int(batches)

    def fill(self, need: int):
        """Make sure at least ``need`` unread rows are buffered (or the source is exhausted)."""
        while not self.done and (self._skip or self.frame is None or len(self.frame) - self.pos < need):
            try:
                batch = next(self._it)
            except StopIteration:
                self.done = True
                break
            if batch is None:  # a followed source with nothing new yet
                break
            self.batches += 1
            if self.batches > self._quiet:
                self.on_batch(batch)
            rest = None if self.frame is None else self.frame.iloc[self.pos:]
            frame = batch.frame if rest is None or len(rest) == 0 else pd.concat([rest, batch.frame], ignore_index=True)
            self.frame = frame.reset_index(drop=True)
            self.ts = self.frame["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
            self.pos = min(self._skip, len(self.frame))
            self.taken += self.pos
            self._skip -= self.pos

    @property
    def position(self) -> dict:
        """Rows taken and batches read, counting those a restart has yet to pass over again.

        A followed source adds where it stands in its files (``follow``).
        """
        out = {"rows": self.taken + self._skip, "batches": max(self.batches, self._quiet)}
        if hasattr(self.source, "position"):
            out["follow"] = self.source.position(self.taken + self._skip)
        return out

    def restore(self, position: dict):
        """Continue from :attr:`position` (the source's own position first, for a followed source)."""
        if "follow" in position and hasattr(self.source, "restore"):
            self.source.restore(position["follow"])
            self.restart(rows=position["follow"]["skip"], batches=position["follow"]["quiet"])
        else:
            self.restart(rows=int(position["rows"]), batches=int(position["batches"]))

    @property
    def remaining(self) -> int:
        return 0 if self.frame is None else len(self.frame) - self.pos

    def head_ts(self):
        return None if self.remaining == 0 else int(self.ts[self.pos])

    def take_until(self, t_ns: int, limit: int):
        """Rows due at ``t_ns`` (at most ``limit``), advancing the cursor."""
        if self.remaining == 0:
            return None
        end = self.pos + int(np.searchsorted(self.ts[self.pos:], t_ns, side="right"))
        # Unsorted input: a row older than the clock is due at once, so never stall on one.
        end = min(max(end, self.pos), self.pos + limit)
        if end == self.pos:
            return None
        out = self.frame.iloc[self.pos:end]
        self.taken += end - self.pos
        self.pos = end
        return out


class Replay(param.Parameterized):
    # One class of ~400 lines: the clock, the transport controls, the cursors and the position are one
    # state machine (a seek or a restore moves all of them at once).
    """Replay sources as chunks on a simulated clock, with transport controls."""

    speed = param.Parameter(default="max", doc="Speed factor over wall time, or 'max'.")
    loop = param.Boolean(default=False, doc="Start again from the beginning when the data ends.")
    tick = param.Number(default=0.1, bounds=(0.005, 5), doc="Wall seconds between clock ticks.")
    max_chunk_rows = param.Integer(default=1000, bounds=(1, None), doc="Largest chunk emitted at once.")
    state = param.Selector(default="idle", objects=["idle", "running", "paused", "stopped", "finished"],
                           doc="Transport state.")
    rows_emitted = param.Integer(default=0, doc="Validated rows emitted this run.")
    rows_total = param.Integer(default=None, allow_None=True, doc="Data rows in all sources, when known.")
    sim_time = param.Date(default=None, allow_None=True, doc="Current simulated time.")
    loops = param.Integer(default=0, doc="Times the data has been looped.")

    def __init__(self, sources: list[Source], **params):
        super().__init__(**params)
        parse_speed(self.speed)
        self.sources = list(sources)
        self.stream = Stream(stream_name="replay")
        self.rows_read = 0
        self.rows_quarantined = 0
        self._batch_callbacks: list[Callable[[Batch], None]] = []
        self._restart_callbacks: list[Callable[[str], None]] = []
        self._fault_callbacks: list[Callable[[BaseException], None]] = []
        self._idle_callbacks: list[Callable[[], None]] = []
        self._emitted_wall: float | None = None
        self._cursors = [_Cursor(s, self._on_batch) for s in self.sources]
        window = max((getattr(getattr(s, "schema", None), "reorder_ns", 0) for s in self.sources), default=0)
        #: The reorder window's buffer (``--reorder``): rows wait in it until their entity's time has moved on.
        self.reorder = Reorder(window) if window else None
        self._task = None
        self._loop = None  # the event loop the replay task runs on (its home)
        self._clock = None
        self._wall = None
        self._skip_until = None
        self.rows_skipped = 0
        self.first_ts = None
        self.last_ts = None
        #: Time of the newest row handed to :attr:`stream` this pass (``None`` before any): whoever
        #: processes the rows can tell how far behind the replay it is.
        self.emitted_until: pd.Timestamp | None = None
        #: Whether the last step emitted nothing (a followed source waiting for lines).
        self.idle = False

    def on_batch(self, callback: Callable[[Batch], None]):
        """``callback(batch)`` when a source batch is read (for quarantine and counts)."""
        self._batch_callbacks.append(callback)

    def on_restart(self, callback: Callable[[str], None]):
        """``callback(reason)`` before the data starts over (``'reset'``, ``'loop'`` or ``'seek'``)."""
        self._restart_callbacks.append(callback)

    def on_fault(self, callback: Callable[[BaseException], None]):
        """``callback(exc)`` when the background replay task fails; the replay is then stopped."""
        self._fault_callbacks.append(callback)

    def on_idle(self, callback: Callable[[], None]):
        """``callback()`` when a step of a followed source found no new rows (time to flush, say)."""
        self._idle_callbacks.append(callback)

    def _on_batch(self, batch: Batch):
        self.rows_read += batch.rows_in
        self.rows_quarantined += batch.rows_quarantined
        for cb in self._batch_callbacks:
            cb(batch)

    def scan(self):
        """Count rows and find the time span of the data (a fast pass; cached)."""
        if self.rows_total is None and not self.follows:
            self.rows_total = sum(s.count_rows() for s in self.sources)
        return self.rows_total

    @property
    def follows(self) -> bool:
        """Whether a source is followed as it grows (the replay then has no end)."""
        return any(getattr(s, "follows", False) for s in self.sources)

    @property
    def percent(self) -> float:
        total = self.rows_total
        if not total:
            return 100.0 if self.state == "finished" else 0.0
        done = self.rows_emitted + self.rows_skipped + self.rows_quarantined
        if self.state == "finished":
            done = total
        return round(min(100.0, 100.0 * done / total), 2)

    @property
    def progress(self) -> dict:
        return {
            "state": self.state, "rows_emitted": self.rows_emitted, "rows_read": self.rows_read,
            "rows_total": self.rows_total, "percent": self.percent,
            "sim_time": None if self.sim_time is None else str(pd.Timestamp(self.sim_time)),
            "speed": str(self.speed), "loops": self.loops, "rows_skipped": self.rows_skipped,
        }

    def position(self) -> dict:
        """Where the replay stands, JSON-ready; :meth:`restore` returns a fresh replay of the same sources to it.

        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.csv"
        >>> _ = p.write_text("time,v\\n" + "".join(f"2024-01-01T00:00:{i:02d},{i}\\n" for i in range(10)))
        >>> first = Replay([Source(p)], max_chunk_rows=4)
        >>> _ = first.stream.sink(lambda df: first.stop() if df["v"].iat[-1] >= 3 else None)
        >>> first.run_to_end()
        >>> again = Replay([Source(p)], max_chunk_rows=4)
        >>> again.restore(first.position())
        >>> _ = again.stream.sink(lambda df: print(df["v"].tolist()))
        >>> again.run_to_end()
        [4.0, 5.0, 6.0, 7.0]
        [8.0, 9.0]
        """
        return {
            "sources": [c.position for c in self._cursors],
            "rows_emitted": self.rows_emitted, "rows_read": self.rows_read,
            "rows_quarantined": self.rows_quarantined, "rows_skipped": self.rows_skipped, "loops": self.loops,
            "skip_until": self._skip_until,
            "sim_time": None if self.sim_time is None else pd.Timestamp(self.sim_time).isoformat(),
            "finished": self.state == "finished",
            **({"reorder": self.reorder.state()} if self.reorder is not None else {}),
        }

    def restore(self, position: dict):
        """Continue from a :meth:`position` of a replay of the same sources (same files, same options).

        The sources are read again up to the position (nothing is emitted,
        and batches already counted there are not reported again), so the
        next chunk starts at the first row the earlier replay had not handed out.
        """
        if len(position["sources"]) != len(self._cursors):
            raise ValueError(f"the position has {len(position['sources'])} sources, this replay {len(self._cursors)}")
        self._cancel()
        for c, p in zip(self._cursors, position["sources"], strict=True):
            c.restore(p)
        self.rows_emitted = int(position["rows_emitted"])
        self.rows_read = int(position["rows_read"])
        self.rows_quarantined = int(position["rows_quarantined"])
        self.rows_skipped = int(position["rows_skipped"])
        self.loops = int(position["loops"])
        skip = position["skip_until"]
        self._skip_until = None if skip is None else int(skip)
        self.sim_time = None if position["sim_time"] is None else pd.Timestamp(position["sim_time"])
        if self.reorder is not None:
            self.reorder.load_state(position["reorder"])
        self._clock = None
        self.state = "idle"

    def _restart_sources(self, reason):
        for cb in self._restart_callbacks:
            cb(reason)
        if self.reorder is not None:
            self.reorder.reset()
        for c in self._cursors:
            c.restart()
        self.rows_read = 0
        self.rows_quarantined = 0
        self.rows_emitted = 0
        self.emitted_until = None
        self._clock = None

    def _next_chunk(self, until_ns: int | None):
        """The next chunk due at ``until_ns`` (``None``: the next ``max_chunk_rows`` rows)."""
        limit = self.max_chunk_rows
        for c in self._cursors:
            c.fill(limit)
        live = [c for c in self._cursors if c.remaining]
        if not live:
            return None
        if until_ns is None:
            if len(live) == 1:
                c = live[0]
                until_ns = int(c.ts[min(c.pos + limit, len(c.ts)) - 1])
            else:
                until_ns = min(int(c.ts[min(c.pos + limit, len(c.ts)) - 1]) for c in live)
        parts = [p for c in live if (p := c.take_until(until_ns, limit)) is not None]
        if not parts:
            return pd.DataFrame()
        if len(parts) == 1:
            return parts[0].reset_index(drop=True)
        merged = pd.concat(parts, ignore_index=True)
        return merged.sort_values("timestamp", kind="stable").reset_index(drop=True)

    def _exhausted(self):
        return all(c.done and c.remaining == 0 for c in self._cursors)

    def _emit(self, chunk: pd.DataFrame) -> bool:
        """Hand ``chunk`` (less the rows a seek skips, less those the reorder window holds) to :attr:`stream`.

        ``False`` if no row was left.
        """
        if self.reorder is not None:
            chunk = self.reorder.push(chunk)
        return self._hand(chunk)

    def _hand(self, chunk: pd.DataFrame) -> bool:
        if self._skip_until is not None:
            ts = chunk["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
            keep = ts >= self._skip_until
            self.rows_skipped += int((~keep).sum())
            chunk = chunk[keep].reset_index(drop=True)
            if keep.any():
                self._skip_until = None
        if len(chunk) == 0:
            return False
        self.rows_emitted += len(chunk)
        # Before the clock moves: anyone looking from here on sees these rows handed out.
        self.emitted_until = pd.Timestamp(chunk["timestamp"].max())
        self.sim_time = pd.Timestamp(chunk["timestamp"].iat[-1])
        self.stream.emit(chunk)
        return True

    def step(self, now: float | None = None) -> bool:
        """Advance the clock to wall time ``now`` and emit what is due; ``False`` once finished."""
        speed = parse_speed(self.speed)
        now = time.monotonic() if now is None else now
        if speed == float("inf"):
            chunk = self._next_chunk(None)
        else:
            if self._clock is None:
                for c in self._cursors:
                    c.fill(1)
                heads = [h for c in self._cursors if (h := c.head_ts()) is not None]
                if not heads:
                    return self._finish_or_loop()
                start = min(heads) if self._skip_until is None else max(min(heads), self._skip_until)
                self._clock = start
                self._wall = now
            self._clock += int((now - self._wall) * speed * 1e9)
            self._wall = now
            chunk = self._next_chunk(self._clock)
            if chunk is not None and len(chunk):
                # Emit everything due, even past max_chunk_rows, in one chunk per tick.
                more = [chunk]
                while (nxt := self._next_chunk(self._clock)) is not None and len(nxt):
                    more.append(nxt)
                chunk = pd.concat(more, ignore_index=True) if len(more) > 1 else chunk
        emitted = chunk is not None and len(chunk) > 0 and self._emit(chunk)
        self.idle = not emitted
        if self.follows:
            # A followed source is live: while no line comes, its clock runs with the wall clock from the
            # newest row (as a replay at 1x would), so a logger that went quiet shows as stale.
            if emitted:
                self._emitted_wall = now
            elif self.emitted_until is not None and self._emitted_wall is not None:
                self.sim_time = self.emitted_until + pd.Timedelta(seconds=now - self._emitted_wall)
            if self.idle:
                for cb in self._idle_callbacks:
                    cb()
        if not emitted and speed != float("inf"):
            # Nothing was due: the clock moves on alone. (With rows, ``_emit`` moved it to the newest,
            # so the clock is never seen ahead of rows it has not handed out.)
            self.sim_time = pd.Timestamp(self._clock)
        if chunk is None:
            return self._finish_or_loop()
        return True

    def _finish_or_loop(self) -> bool:
        if not self._exhausted():
            return True
        if self.reorder is not None and self.reorder.held_rows:  # the data has ended: the window lets go
            self._hand(self.reorder.flush())
            return True
        if self.loop:
            self.loops += 1
            self._restart_sources("loop")
            return True
        self.state = "finished"
        return False

    def run_to_end(self, on_tick: Callable[[], None] | None = None):
        """Run synchronously until the data ends (or ``stop()``/``pause()`` is called from a callback)."""
        self.scan()
        self.state = "running"
        speed = parse_speed(self.speed)
        while self.state == "running":
            if not self.step():
                break
            if on_tick is not None:
                on_tick()
            if speed != float("inf") or self.idle:  # a followed source with nothing new: wait a tick
                time.sleep(self.tick)

    async def _run(self):
        try:
            while self.state == "running":
                if not self.step():
                    break
                # Speed may change while running: read it every tick.
                await asyncio.sleep(0 if parse_speed(self.speed) == float("inf") and not self.idle else self.tick)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - a task's exception would otherwise vanish
            # The readers quarantine a block they fail on; reaching here is a bug.
            # Stop visibly (counted and in the event feed) rather than hang as "running".
            self.state = "stopped"
            for cb in self._fault_callbacks:
                cb(exc)

    def start(self):
        """Start (or restart after stop/finish) as a task on the running event loop."""
        if self.state == "running":
            return
        if self.state in ("stopped", "finished"):
            self._restart_sources("reset")
        self.state = "running"
        self._wall = time.monotonic()
        self._launch()

    def _launch(self):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        home = self._loop
        if home is not None and home is not loop and home.is_running():
            # Called from another thread's loop (in JupyterLab, a widget callback on a kernel subshell):
            # the replay keeps to the loop it was started on, where its views read it between chunks.
            home.call_soon_threadsafe(self._create_task, home)
        elif loop is not None:  # else driven synchronously, by run_to_end() or step()
            self._loop = loop
            self._create_task(loop)

    def _create_task(self, loop):
        if self.state != "running" or (self._task is not None and not self._task.done()):
            return  # paused again, or already running, before this got its turn
        # A fresh context: started from a browser session, the task must not keep
        # that session's document (it belongs to the whole server).
        self._task = loop.create_task(self._run(), context=contextvars.Context())

    def pause(self):
        if self.state == "running":
            self.state = "paused"
            self._cancel()

    def resume(self):
        if self.state == "paused":
            self.state = "running"
            self._wall = time.monotonic()
            self._launch()

    def stop(self):
        if self.state in ("running", "paused"):
            self.state = "stopped"
            self._cancel()

    def reset(self):
        """Stop and rewind to the start, forgetting all state."""
        self._cancel()
        self._restart_sources("reset")
        self.rows_skipped = 0
        self.loops = 0
        self.sim_time = None
        self.state = "idle"

    def seek(self, to):
        """Start over from a time (``Timestamp`` or string) or a fraction ``0..1`` of the time span."""
        if isinstance(to, (int, float)) and not isinstance(to, bool):
            if not 0 <= to <= 1:
                raise ValueError("a seek fraction must be between 0 and 1")
            first, last = self.time_span()
            target = int(first + (last - first) * float(to))
        else:
            target = pd.Timestamp(to).value
        was = self.state
        self._cancel()
        self._restart_sources("seek")
        self.rows_skipped = 0
        self._skip_until = target
        if was == "running":
            self.state = "idle"
            self.start()
        else:
            self.state = "paused" if was in ("running", "paused") else "idle"

    def time_span(self):
        """``(first_ns, last_ns)`` of the data (reads the first and last rows of each source)."""
        if self.first_ts is None:
            spans = [source.time_span() for source in self.sources]
            self.first_ts = min(first for first, _ in spans)
            self.last_ts = max(last for _, last in spans)
        return self.first_ts, self.last_ts

    def _cancel(self):
        task, self._task = self._task, None
        if task is None or task.done():
            return
        try:
            same = asyncio.get_running_loop() is task.get_loop()
        except RuntimeError:
            same = False
        if same:
            task.cancel()
        elif not task.get_loop().is_closed():
            task.get_loop().call_soon_threadsafe(task.cancel)  # a task is cancelled on its own loop
