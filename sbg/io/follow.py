"""Follow CSV files that are still being written, like ``tail -F``.

A :class:`FollowSource` stands where a :class:`~sbg.io.sources.Source`
stands in a replay, over one file or a glob of them, with no end:

* only whole lines are read: a half-written last line waits for its newline
  (a quoted field that runs past it waits for its record to close);
* a file replaced under its name (rotation) is read to its end, then the new
  file is read from its start; a file cut short (``copytruncate``) is read
  again from its start; a deleted file is read to its end and dropped;
* with a glob, files that appear later are picked up; each must have the
  first file's header, or it is not followed (an event says why);
* a file that cannot be read, or is not a regular file, is an event and a
  counted error, and is tried again at every poll; the others carry on.
  Binary garbage is quarantined row by row like any unreadable row.

Where it has got to (:meth:`FollowSource.position`) is byte offsets per
file (device and inode, so a file renamed by rotation while sbg was down is
found again), plus the blocks read but not yet analysed, which
:meth:`FollowSource.restore` reads again exactly: a restarted monitor
analyses no row twice and skips none.
"""

from __future__ import annotations

import csv
import glob as globlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SourceError
from .sources import MAX_LINE_BYTES, Batch, Source, infer_schema, with_schema

__all__ = ["FollowSource", "FollowEvent"]

#: Events kept for the event feed (the newest).
EVENTS_KEPT = 200


@dataclass
class FollowEvent:
    """Something that happened to a followed file: ``kind`` is a word, ``message`` one line naming the file."""

    kind: str  # opened, rotated, truncated, deleted, unreadable, readable, rejected
    path: str
    message: str
    error: bool = False
    at: float = field(default_factory=time.time)


@dataclass
class _Tail:
    """One followed file: its parser, identity and how far it has been read."""

    path: Path
    source: Source | None
    dev: int
    ino: int
    fh: object | None
    offset: int = 0  # bytes consumed, the header included
    line: int = 1  # number of the next line
    rejected: bool = False


@dataclass
class _Read:
    """A block read and handed out: enough to read it again after a restart."""

    rows_end: int  # validated rows handed out by the source up to the end of this block
    rows: int
    batches: int
    path: str
    dev: int
    ino: int
    start: int
    end: int
    line: int


class FollowSource:
    # One class of ~350 lines: discovery, reading, rotation and the byte-offset position share the
    # per-file state (_Tail) and must change together for a restart to analyse every row once.
    """A file or a glob of CSV files followed as they grow (see the module's doc).

    Parameters
    ----------
    spec : path-like or str
        A file, or a glob (``logs/*.csv``).
    max_lines : int
        Most lines read from one file at a time (one batch).
    wait : float
        Seconds to wait for a first matching file with a header and a data
        row, from which the schema is read; 0 fails at once.
    **schema_options
        Passed to :func:`~sbg.io.sources.infer_schema` for the first file.
    """

    def __init__(self, spec, *, max_lines: int = 1000, wait: float = 0.0, block_bytes: int = 4 << 20,
                 **schema_options):
        self.spec = str(spec)
        self.is_glob = globlib.has_magic(self.spec)
        self.max_lines = int(max_lines)
        self.block_bytes = int(block_bytes)
        self.events: deque[FollowEvent] = deque(maxlen=EVENTS_KEPT)
        self.errors = 0
        self._listeners: list = []
        first = self._first_file(wait)
        if first.name.lower().endswith((".gz", ".parquet", ".pq")):
            raise SourceError(first, "cannot follow a compressed or Parquet file: only plain CSV grows line by line")
        self.schema = infer_schema(first, **schema_options)
        if self.schema.newline != "\n":
            raise SourceError(first, "cannot follow a file whose lines end in CR alone")
        with open(first, "rb") as fh:
            self._header = self._fields(fh.readline(MAX_LINE_BYTES))
        self.path = first
        self.tails: dict[str, _Tail] = {}
        self._log: deque[_Read] = deque(maxlen=4096)
        self._handed = 0
        self._restore: dict | None = None
        self._problems: dict[str, str] = {}
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    # ------------------------------------------------------------------ what a replay asks of a source

    #: A replay of this source has no end (see :attr:`sbg.stream.replay.Replay.follows`).
    follows = True

    @property
    def name(self) -> str:
        return self.schema.name

    def count_rows(self) -> None:
        """Unknown: a followed file has no end."""
        return None

    def time_span(self):
        """``(first_ns, last_ns)`` of the rows read so far."""
        if self.first_ts is None:
            raise SourceError(self.spec, "no rows read yet")
        return self.first_ts, self.last_ts

    def on_event(self, callback) -> None:
        """``callback(event)`` for every :class:`FollowEvent` (from the thread that reads)."""
        self._listeners.append(callback)

    def batches(self):
        """Validated batches as lines arrive, for ever; ``None`` when there is nothing new yet."""
        self._close_all()
        self.tails = {}
        self._log.clear()
        self._handed = 0
        pending = self._reopen(self._restore) if self._restore else []
        self._restore = None
        for read in pending:
            yield from self._again(read)
        while True:
            got = False
            for batch in self.poll():
                got = True
                yield batch
            if not got:
                yield None

    # ------------------------------------------------------------------ position and restart

    def position(self, taken: int) -> dict:
        """Where this source stands once ``taken`` of its validated rows have been analysed, JSON-ready.

        ``skip`` and ``quiet`` are what the replay's cursor passes over again
        after :meth:`restore`: rows already analysed, and batches already counted.
        """
        if self._restore is not None:  # restored and not read since: still where the checkpoint said
            return self._restore
        while self._log and self._log[0].rows_end <= taken:
            self._log.popleft()
        pending = list(self._log)
        start = pending[0].rows_end - pending[0].rows if pending else taken
        return {
            "spec": self.spec,
            "files": {key: {"dev": t.dev, "ino": t.ino, "offset": t.offset, "line": t.line}
                      for key, t in self.tails.items() if not t.rejected},
            "pending": [[r.path, r.dev, r.ino, r.start, r.end, r.line, r.batches] for r in pending],
            "skip": int(taken - start), "quiet": int(sum(r.batches for r in pending)),
        }

    def restore(self, position: dict) -> None:
        """Continue from a :meth:`position` at the next :meth:`batches`."""
        if position.get("spec") != self.spec:
            raise ValueError(f"the position is for {position.get('spec')!r}, not {self.spec!r}")
        self._restore = position

    def _reopen(self, position) -> list[_Read]:
        for key, st in position["files"].items():
            path = Path(key)
            fh, where = self._find(path, st["dev"], st["ino"])
            if fh is None:
                self._event("changed", path, f"{path}: not found as it was at the checkpoint; read from its start",
                            error=True)
                continue
            tail = _Tail(where, self._parser(where), st["dev"], st["ino"], fh, st["offset"], st["line"])
            self.tails[str(where)] = tail
            if os.fstat(fh.fileno()).st_size < tail.offset:
                self._truncated(tail)
        return [_Read(0, 0, int(b), p, int(d), int(i), int(a), int(e), int(ln))
                for p, d, i, a, e, ln, b in position["pending"]]

    def _find(self, path: Path, dev: int, ino: int):
        """An open file with this device and inode: at ``path``, or renamed beside it by a rotation."""
        candidates = [path]
        try:
            candidates += [Path(e.path) for e in os.scandir(path.parent) if e.is_file() and Path(e.path) != path]
        except OSError:
            pass
        for cand in candidates:
            try:
                st = os.stat(cand)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (dev, ino):
                try:
                    return open(cand, "rb"), cand  # noqa: SIM115  (held open while followed)
                except OSError:
                    return None, cand
        return None, path

    def _again(self, read: _Read):
        """Read a block handed out before the restart once more, exactly as then."""
        tail = next((t for t in self.tails.values() if (t.dev, t.ino) == (read.dev, read.ino)), None)
        if tail is None:
            self._event("changed", Path(read.path), f"{read.path}: lines {read.line}+ read before the restart are "
                        "no longer there", error=True)
            return
        tail.fh.seek(read.start)
        block = tail.fh.read(read.end - read.start)
        yield from self._hand_out(tail, block, read.start, read.line)

    # ------------------------------------------------------------------ reading

    def poll(self) -> list[Batch]:
        """Everything new since the last poll, as validated batches (at most ``max_lines`` rows each)."""
        self._discover()
        out: list[Batch] = []
        for key in list(self.tails):
            tail = self.tails[key]
            if tail.rejected:
                continue
            try:
                out += self._check(tail)
            except OSError as exc:
                self._problem(tail.path, "unreadable", f"{tail.path}: cannot read: {exc.strerror or exc}")
        return out

    def _matching(self) -> list[Path]:
        if not self.is_glob:
            return [Path(self.spec)]
        return [Path(p) for p in sorted(globlib.glob(self.spec))]

    def _first_file(self, wait: float) -> Path:
        deadline = time.monotonic() + wait
        while True:
            for path in self._matching():
                try:
                    with open(path, "rb") as fh:
                        head = fh.read(1 << 16)
                except OSError:
                    continue
                if head.count(b"\n") >= 2:  # a header and a whole data row
                    return path
            if time.monotonic() >= deadline:
                what = "no file matches" if not self._matching() else "no file has a header and a data row yet in"
                raise SourceError(self.spec, f"{what} {self.spec}" if self.is_glob else
                                  ("no such file" if not Path(self.spec).exists()
                                   else "no header and whole data row yet"))
            time.sleep(0.2)

    def _discover(self):
        for path in self._matching():
            key = str(path)
            if key in self.tails:
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._problem(path, "unreadable", f"{path}: cannot read: {exc.strerror or exc}")
                continue
            if not os.path.isfile(path):
                self._problem(path, "unreadable", f"{path}: not a regular file")
                continue
            try:
                fh = open(path, "rb")  # noqa: SIM115  (held open while followed)
            except OSError as exc:
                self._problem(path, "unreadable", f"{path}: cannot read: {exc.strerror or exc}")
                continue
            self._solved(path)
            self.tails[key] = _Tail(path, self._parser(path), st.st_dev, st.st_ino, fh)
            self._event("opened", path, f"{path}: following")

    def _parser(self, path: Path) -> Source:
        label = None if path == self.path else with_schema(self.schema, path=str(path)).name
        return Source(path, schema=with_schema(self.schema, path=str(path), label=label))

    def _check(self, tail: _Tail) -> list[Batch]:
        """New batches of one file, after looking for rotation, truncation and deletion."""
        try:
            st = os.stat(tail.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != (tail.dev, tail.ino):
            out = self._drain(tail)
            tail.fh.close()
            del self.tails[str(tail.path)]
            if st is None:  # counted: a logger's file should not vanish (rotation renames it)
                self._event("deleted", tail.path, f"{tail.path}: deleted; read to its end", error=True)
            else:
                self._event("rotated", tail.path, f"{tail.path}: replaced (rotated); the old file was read to its "
                            "end, the new one is read from its start")
            return out
        if os.fstat(tail.fh.fileno()).st_size < tail.offset:
            self._truncated(tail)
        return self._read(tail)

    def _truncated(self, tail: _Tail):
        self._event("truncated", tail.path, f"{tail.path}: cut short (truncated); read again from its start")
        tail.offset, tail.line = 0, 1
        tail.source = self._parser(tail.path)

    def _drain(self, tail: _Tail) -> list[Batch]:
        """The rest of a file that will not grow again, its last line even without a newline."""
        out = []
        while more := self._read(tail):
            out += more
        tail.fh.seek(tail.offset)
        rest = tail.fh.read()
        if rest.strip() and not tail.rejected:
            out += list(self._hand_out(tail, rest + b"\n", tail.offset, tail.line, size=len(rest)))
        return out

    def _read(self, tail: _Tail) -> list[Batch]:
        tail.fh.seek(tail.offset)
        data = tail.fh.read(self.block_bytes)
        if len(data) == self.block_bytes and b"\n" not in data:  # one line longer than a block
            tail.fh.seek(tail.offset)
            data = tail.fh.read(MAX_LINE_BYTES + 1)
        if tail.offset == 0:
            if b"\n" not in data:
                return []
            if not self._header_ok(tail, data[:data.index(b"\n")]):
                return []
            cut = data.index(b"\n") + 1
            tail.offset, tail.line, data = cut, 2, data[cut:]
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) > MAX_LINE_BYTES:  # a line that will never end: quarantined as the reader does
                return list(self._hand_out(tail, data + b"\n", tail.offset, tail.line, size=len(data)))
            return []
        block = data[:cut]
        lines = 0
        end = 0
        while lines < self.max_lines:
            nl = block.find(b"\n", end)
            if nl < 0:
                break
            end, lines = nl + 1, lines + 1
        block = block[:end]
        block = block[:tail.source.whole_records(block)]
        if not block:
            return []
        return list(self._hand_out(tail, block, tail.offset, tail.line))

    def _hand_out(self, tail: _Tail, block: bytes, start: int, line: int, size: int | None = None):
        size = len(block) if size is None else size
        batches = list(tail.source.parse(block, line))
        rows = sum(len(b.frame) for b in batches)
        if start == tail.offset:  # not a block read again after a restart
            tail.offset = start + size
            tail.line = line + block.count(b"\n")
        self._handed += rows
        self._log.append(_Read(self._handed, rows, len(batches), str(tail.path), tail.dev, tail.ino,
                               start, start + size, line))
        for b in batches:
            if len(b.frame):
                ts = b.frame["timestamp"]
                lo, hi = int(ts.min().value), int(ts.max().value)
                self.first_ts = lo if self.first_ts is None else min(self.first_ts, lo)
                self.last_ts = hi if self.last_ts is None else max(self.last_ts, hi)
        yield from batches

    def _fields(self, header: bytes) -> tuple[str, ...]:
        text = header.decode(self.schema.encoding, errors="replace").lstrip("\ufeff").rstrip("\r\n")
        return tuple(f.strip() for f in next(csv.reader([text], delimiter=self.schema.delimiter), []))

    def _header_ok(self, tail: _Tail, header: bytes) -> bool:
        fields = self._fields(header)
        if fields == self._header:
            return True
        tail.rejected = True
        self._event("rejected", tail.path, f"{tail.path}:1: its columns differ from {self.path.name}'s "
                    f"({', '.join(fields[:6])}{'...' if len(fields) > 6 else ''}); not followed", error=True)
        return False

    # ------------------------------------------------------------------ events

    def _event(self, kind: str, path, message: str, error: bool = False):
        event = FollowEvent(kind, str(path), message, error)
        self.events.append(event)
        if error:
            self.errors += 1
        for cb in list(self._listeners):
            try:
                cb(event)
            except Exception:  # noqa: BLE001, S110  (a listener's failure must not stop the reading)
                pass

    def _problem(self, path, kind: str, message: str):
        """An error event the first time a file has this problem; none while it lasts."""
        key = str(path)
        if self._problems.get(key) != message:
            self._problems[key] = message
            self._event(kind, path, message, error=True)

    def _solved(self, path):
        if self._problems.pop(str(path), None) is not None:
            self._event("readable", path, f"{path}: readable again")

    def _close_all(self):
        for tail in self.tails.values():
            if tail.fh is not None:
                tail.fh.close()

    def close(self):
        """Close the files; :meth:`position` still says where they stood."""
        self._close_all()
