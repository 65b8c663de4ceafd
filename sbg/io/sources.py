"""Chunked readers, schema inference, validation and quarantine.

A :class:`Source` reads one CSV, CSV.gz or Parquet file in blocks, never
whole, and yields :class:`Batch` objects: a clean, typed frame plus the rows
it quarantined. The frame always has the columns ``timestamp`` (naive
datetime64, UTC for zoned input), ``entity`` (string), then the signal
columns (float64), then carried status columns (text, not analysed).

Contracts
---------
* ``rows_in == rows_ok + rows_quarantined`` after every batch.
* A quarantined row keeps its source line number, raw text and a reason; the
  stream goes on.
* Validation is chunk-invariant: the result does not depend on
  ``block_bytes``, because the order and duplicate checks carry their state.
* A file that cannot be read at all raises :class:`~sbg.errors.SourceError`
  naming the file (and the line and column when there is one).

>>> import io, pathlib, tempfile
>>> p = pathlib.Path(tempfile.mkdtemp()) / "tiny.csv"
>>> _ = p.write_text("time,id,v\\n2024-01-01T00:00:00,a,1.5\\n2024-01-01T00:00:01,a,x\\n")
>>> src = Source(p)
>>> src.schema.signals, src.schema.entity
(('v',), 'id')
>>> batches = list(src.batches())
>>> sum(len(b.frame) for b in batches), [q.reason for b in batches for q in b.quarantined]
(1, ["column 3 'v': 'x' is not a number"])
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import os
import re
import stat
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from numba import njit

from ..errors import ConfigError, SbgError, SourceError
from . import bdf as _bdf
from .entities import EntityIndex

# pyarrow cancels a long read when SIGINT or SIGTERM arrives while a Python handler is set. sbg's
# stops (Bokeh's SIGTERM handler, sbg watch's) act between two chunks, and a read cancelled in the
# middle was quarantined as a block the reader failed on. A stop waits for the block (4 MB at most).
pa.lib.enable_signal_handlers(False)

__all__ = [
    "load_reference",
    "Schema",
    "Source",
    "Batch",
    "QuarantinedRow",
    "infer_schema",
    "check_regular_file",
    "DEFAULT_CLOCK_DATE",
    "MAX_LINE_BYTES",
    "MAX_SIGNALS",
    "signal_limit",
]

#: Date given to ``HH:MM:SS``-only timestamps unless ``date=`` says otherwise.
DEFAULT_CLOCK_DATE = "1970-01-01"
#: Longest physical line accepted; a longer one is quarantined unread.
MAX_LINE_BYTES = 10 * 1024 * 1024
#: The columns sbg adds to every row it scores; an input may not have columns of these names.
OUTPUT_COLUMNS = ("anomaly_score", "is_anomaly", "reason", "quality")
#: Raw text kept per quarantined row.
MAX_RAW_CHARS = 2000
#: Most signal columns analysed in one file unless ``max_signals=`` (``--max-signals``) or the
#: ``SBG_MAX_SIGNALS`` environment variable says otherwise: every signal carries statistics and
#: detector state per entity, and a file past this is refused at its header rather than scored
#: for minutes in gigabytes.
MAX_SIGNALS = 1000

_TIME_NAMES = (
    "timestamp", "datetime", "date_time", "time_stamp", "time", "ts", "date",
    "epoch", "unix_time", "time_s", "test_time", "t",
)
_ENTITY_NAMES = (
    "entity", "battery_id", "cell_id", "device_id", "unit_id", "asset_id", "sensor_id",
    "machine_id", "meter_id", "node_id", "pack_id", "id", "battery", "cell", "device",
    "unit", "asset", "machine", "meter", "node", "host", "site", "pack",
)
#: binary cycler files, read whole through their libraries (:mod:`sbg.io.cyclers`)
_CYCLER_SUFFIXES = (".mpr", ".nda", ".ndax")
_CLOCK_RE = re.compile(r"^\s*\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?\s*$")
_NULLS = ("", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "null", "NULL", "None", "-nan", "#N/A")
_SAMPLE_BYTES = 256 * 1024
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_SAMPLE_ROWS = 1000

# The csv module refuses fields over 128 KiB; a field may be as long as a line.
if csv.field_size_limit() < MAX_LINE_BYTES:
    csv.field_size_limit(MAX_LINE_BYTES)


@dataclass(frozen=True)
class QuarantinedRow:
    """A rejected input row: where it was, what it said, why it was refused."""

    source: str
    line: int
    raw: str
    reason: str

    def as_dict(self):
        return {"source": self.source, "line": self.line, "raw": self.raw, "reason": self.reason}

    @property
    def kind(self) -> str:
        """The reason without this row's own values, to group rows by.

        >>> QuarantinedRow("f.csv", 7, "x,abc", "column 2 'v': 'abc' is not a number").kind
        "column 2 'v': not a number"
        >>> QuarantinedRow("f.csv", 9, "", "timestamp goes backwards for entity 'a' (t1 after t2)").kind
        "timestamp goes backwards for entity 'a'"
        """
        head, sep, rest = self.reason.partition(": ")
        if self.reason.startswith("column") and sep:
            rest = _QUOTED.sub("", rest).strip()
            return f"{head}: {rest.removeprefix('is ').split(' (')[0]}"
        return self.reason.split(" (")[0]


@dataclass(frozen=True)
class Schema:
    """What each column of a file means. Every field can be forced by an option."""

    path: str
    columns: tuple[str, ...]
    time: str
    time_kind: str  # "datetime" | "epoch_s" | "epoch_ms" | "seconds" | "clock"
    entity: str | None
    signals: tuple[str, ...]
    carried: tuple[str, ...] = ()
    delimiter: str = ","
    encoding: str = "utf-8"
    date: str = DEFAULT_CLOCK_DATE
    time_format: str | None = None
    newline: str = "\n"  # "\r" for files whose lines end in CR alone
    #: the name when not the file's own: set by :func:`sbg.io.inputs.name_sources` for
    #: files read together whose file names collide (``valve1/0``, ``valve2/0``)
    label: str | None = None
    #: rows up to this many ns older than their entity's newest row are accepted, to be sorted
    #: (``--reorder``, :mod:`sbg.stream.reorder`); 0: any row going back in time is quarantined
    reorder_ns: int = 0
    #: ``(canonical column, what it was made from)``: a cycler file's or a BDF header's mapping
    mapping: tuple[tuple[str, str], ...] = ()
    #: the library that read a binary cycler file (:mod:`sbg.io.cyclers`); None for text and Parquet
    reader: str | None = None

    @property
    def battery(self) -> bool:
        """Whether the file says itself that it is battery data: a cycler file or a BDF header was mapped."""
        return bool(self.mapping)

    @property
    def name(self) -> str:
        """Short source name: the file name without its suffixes (or the ``label`` given).

        A wide file's rows all take this name as their entity.
        """
        if self.label is not None:
            return self.label
        name = Path(self.path).name
        for suffix in (".gz", ".csv", ".parquet", ".pq", ".tsv", ".txt", ".bdf", ".mpr", ".nda", ".ndax"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
        return name

    def describe(self) -> str:
        lines = [
            f"file:      {self.path}",
            f"time:      {self.time!r} ({_TIME_KIND_TEXT[self.time_kind]}"
            + (f", date {self.date}" if self.time_kind in ("clock", "seconds") else "")
            + ")",
            f"entity:    {self.entity!r}" if self.entity else f"entity:    none (wide format; entity is {self.name!r})",
            f"signals:   {', '.join(self.signals)}",
            f"carried:   {', '.join(self.carried) or 'none'} (kept, not analysed)",
        ]
        if self.reader is not None:
            lines.append(f"reader:    {self.reader}, whole file in memory")
        else:
            lines.append(f"delimiter: {self.delimiter!r}   encoding: {self.encoding}"
                         + ("   line ends: CR" if self.newline == "\r" else ""))
        if self.mapping:
            width = max(len(c) for c, _ in self.mapping)
            lines.append("mapping:   " + "\n           ".join(f"{c:<{width}} <- {src}" for c, src in self.mapping))
        return "\n".join(lines)

    def as_dict(self):
        return {
            "path": self.path, "columns": list(self.columns), "time": self.time,
            "time_kind": self.time_kind, "entity": self.entity, "signals": list(self.signals),
            "carried": list(self.carried), "delimiter": self.delimiter,
            "encoding": self.encoding, "date": self.date,
            "line_ends": "CR" if self.newline == "\r" else "LF or CRLF",
            **({"reorder": str(pd.Timedelta(self.reorder_ns))} if self.reorder_ns else {}),
            **({"mapping": dict(self.mapping)} if self.mapping else {}),
            **({"reader": self.reader} if self.reader else {}),
        }


_TIME_KIND_TEXT = {
    "datetime": "date and time",
    "epoch_s": "epoch seconds",
    "epoch_ms": "epoch milliseconds",
    "seconds": "seconds since the start date",
    "clock": "HH:MM:SS without a date",
}


@dataclass
class Batch:
    """One block of a source after validation."""

    frame: pd.DataFrame
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    rows_in: int = 0
    source: str = ""
    #: an unexpected exception the reader caught in this block; its rows are quarantined
    fault: BaseException | None = None

    @property
    def rows_ok(self) -> int:
        return len(self.frame)

    @property
    def rows_quarantined(self) -> int:
        return len(self.quarantined)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


class _CarriageReturns(io.RawIOBase):
    """A file with CR-only line ends (classic Mac, Excel's "CSV (Macintosh)") read as LF.

    One byte for one byte, so offsets and line numbers stay those of the file.
    """

    def __init__(self, fh):
        self._fh = fh

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self._fh.read(len(buffer)).replace(b"\r", b"\n")
        buffer[: len(data)] = data
        return len(data)

    def close(self):
        self._fh.close()
        super().close()


def _open_binary(path: Path, newline: str = "\n"):
    fh = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    if newline == "\r":
        return io.BufferedReader(_CarriageReturns(fh), buffer_size=1 << 20)
    return fh


def _sniff_delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _decode_error(path, data: bytes, err: UnicodeDecodeError, first_line=1, delimiter=",", encoding="utf-8"):
    before = data[: err.start]
    line = first_line + before.count(b"\n")
    line_start = before.rfind(b"\n") + 1
    column = before[line_start:].count(delimiter.encode()) + 1
    utf8 = codecs.lookup(encoding).name == "utf-8"
    advice = ("re-save the file as UTF-8 or pass --encoding (for example latin-1)" if utf8
              else "pass the file's own --encoding")
    return SourceError(
        path, f"not valid {'UTF-8' if utf8 else encoding} (byte 0x{data[err.start]:02x}); {advice}",
        line=line, column=column,
    )


def _looks_utf16(line: bytes) -> bool:
    """NUL at every other byte: UTF-16 text without its byte order mark."""
    head = line[:64]
    return len(head) >= 4 and (head[0::2].count(0) == len(head[0::2]) or head[1::2].count(0) == len(head[1::2]))


_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def check_regular_file(path) -> None:
    """Refuse ``path`` if it is there but neither a regular file nor a directory.

    Reading a named pipe, a socket or a device blocks until a writer comes,
    or for ever (a pipe whose writer never closes, ``/dev/zero``): sbg refuses
    it at once with a :class:`SourceError` naming the path and what it is
    (exit 3). A missing path is left to the caller ("no such file").
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")
        raise SourceError(path, f"not a regular file: {kind}")


def _read_sample(path: Path, encoding: str, delimiter: str | None):
    """The header and the first data lines of a text file, decoded, and the file's line end.

    Returns ``(header, lines, newline, too_long)``: ``lines`` holds whole
    physical lines (``\\n`` removed, ``\\r`` kept) from the first
    ``_SAMPLE_BYTES``; a line over :data:`MAX_LINE_BYTES` is skipped, never
    read into memory, and ``too_long`` is the number of the first such line.
    """
    if not path.exists():
        raise SourceError(path, "no such file")
    if path.is_dir():
        raise SourceError(path, "is a directory, not a file")
    check_regular_file(path)
    try:
        with _open_binary(path) as fh:
            head = fh.read(1 << 16)
        first = head.split(b"\n", 1)[0]
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (b"\x00" in first and _looks_utf16(first)):
            raise SourceError(path, "is UTF-16 encoded; re-save it as UTF-8", line=1)
        # A CR inside the first line, not just before its LF: the file's lines end in CR alone.
        newline = "\r" if b"\r" in first.rstrip(b"\r") else "\n"
        if b"\x00" in head.split(newline.encode(), 1)[0]:
            raise SourceError(path, "header contains NUL bytes; is this a binary file?", line=1)
        lines = []
        too_long = None
        with _open_binary(path, newline) as fh:
            header = fh.readline(MAX_LINE_BYTES + 1)
            if len(header) > MAX_LINE_BYTES and not header.endswith(b"\n"):
                raise SourceError(path, "header line longer than 10 MB", line=1)
            size, line_no = 0, 1
            while size < _SAMPLE_BYTES and (line := fh.readline(MAX_LINE_BYTES + 1)):
                line_no += 1
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    while (more := fh.readline(1 << 20)) and not more.endswith(b"\n"):
                        pass  # skip the rest of the monster line
                    too_long = too_long or line_no
                    continue
                size += len(line)
                lines.append((line_no, line.removesuffix(b"\n")))
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(path, f"cannot read: {exc}") from None
    header = header.removeprefix(codecs.BOM_UTF8).rstrip(b"\r\n")
    if not header.strip() and not any(raw.strip() for _, raw in lines) and too_long is None:
        raise SourceError(path, "is empty")
    delimiter = delimiter or _sniff_delimiter(header.decode("latin-1"))
    decoded = []
    for line_no, raw in [(1, header), *lines]:
        try:
            decoded.append(raw.decode(encoding))
        except UnicodeDecodeError as err:
            raise _decode_error(path, raw, err, line_no, delimiter, encoding) from None
    return decoded[0], decoded[1:], newline, too_long


def signal_limit(max_signals: int | None = None, environ=None) -> int:
    """The most signal columns a file may have: ``max_signals``, else ``SBG_MAX_SIGNALS``, else :data:`MAX_SIGNALS`.

    >>> signal_limit(), signal_limit(20), signal_limit(environ={"SBG_MAX_SIGNALS": "5000"})
    (1000, 20, 5000)
    >>> signal_limit(environ={"SBG_MAX_SIGNALS": "lots"})
    Traceback (most recent call last):
    ...
    sbg.errors.ConfigError: SBG_MAX_SIGNALS must be a whole number of 1 or more, not 'lots'
    """
    if max_signals is None:
        text = (os.environ if environ is None else environ).get("SBG_MAX_SIGNALS", "").strip()
        if not text:
            return MAX_SIGNALS
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"SBG_MAX_SIGNALS must be a whole number of 1 or more, not {text!r}")
        return int(text)
    if isinstance(max_signals, bool) or not isinstance(max_signals, int) or max_signals < 1:
        raise SbgError(f"--max-signals must be a whole number of 1 or more, not {max_signals!r}")
    return max_signals


def infer_schema(
    path,
    *,
    time: str | None = None,
    entity: str | None | bool = None,
    signals: Sequence[str] | None = None,
    date: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    time_format: str | None = None,
    max_signals: int | None = None,
    reorder: str | None = None,
) -> Schema:
    """Infer the schema of a file from its header and first rows.

    Parameters
    ----------
    path : path-like
        CSV, CSV.gz or Parquet file.
    time, entity, signals : optional
        Force a column's role. ``entity=False`` forces wide format.
    date : str, optional
        Date for ``HH:MM:SS``-only or relative-seconds timestamps
        (default :data:`DEFAULT_CLOCK_DATE`).
    max_signals : int, optional
        Refuse a file with more signal columns than this (default: :func:`signal_limit`).
    """
    path = Path(path)
    _check_options(encoding, delimiter, date, time_format)
    limit = signal_limit(max_signals)
    if path.suffix.lower() in _CYCLER_SUFFIXES:
        return _cycler_schema(path, time, entity, signals, limit, reorder)
    newline, too_long = "\n", None
    if path.suffix.lower() in (".parquet", ".pq"):
        header, rows = _parquet_sample(path)
        delimiter = ","
    else:
        header_text, lines, newline, too_long = _read_sample(path, encoding, delimiter)
        delimiter = delimiter or _sniff_delimiter(header_text)
        try:
            header = next(csv.reader([header_text], delimiter=delimiter), [])
        except csv.Error as exc:
            raise SourceError(path, f"cannot read the header: {exc}", line=1) from None
        rows = _sample_rows(lines, delimiter, len(header))
    header = [h.strip() for h in header]
    if not any(header):
        raise SourceError(path, "has an empty header line", line=1)
    mapping = ()
    if time is None and not signals and (bdf := _bdf.match(header)) is not None:
        # A Battery Data Format header: its columns take sbg's canonical names (sbg.io.bdf).
        mapping = tuple((canon, name) for name, canon in bdf.items())
        header = [bdf.get(h, h) for h in header]
        time = "timestamp"
        entity = False if entity is None else entity
        signals = [h for h in header if h in _bdf.SIGNALS]
    dupes = sorted(h for h, n in Counter(header).items() if n > 1)
    if dupes:
        raise SourceError(path, f"duplicate column names in the header: {', '.join(map(repr, dupes))}", line=1)
    taken = [(i + 1, h) for i, h in enumerate(header) if h in OUTPUT_COLUMNS]
    if taken:  # the pipeline adds these columns: the file's own would be overwritten, or scored as signals
        where = ", ".join(f"column {i} {h!r}" for i, h in taken)
        raise SourceError(path, f"{where}: sbg writes a column of that name to its output (is this a file sbg "
                          "wrote? score the original instead); rename the column to read this file", line=1,
                          column=taken[0][0])
    if not rows:
        if too_long is not None:
            raise SourceError(path, "has no data row shorter than 10 MB to infer the schema from "
                              f"(line {too_long} is longer)", line=too_long)
        raise SourceError(path, "has a header but no data rows")
    ncol = len(header)
    good = [r for r in rows if len(r) == ncol]
    if not good:
        raise SourceError(path, f"no row in the first {len(rows)} has the {ncol} fields of the header", line=2)
    sample = {h: [r[i].strip() for r in good] for i, h in enumerate(header)}

    for name, what in ((time, "time"), (entity if isinstance(entity, str) else None, "entity")):
        if name is not None and name not in header:
            raise SourceError(path, f"no column named {name!r} (asked for as the {what} column); columns are {', '.join(header)}")
    for name in signals or ():
        if name not in header:
            raise SourceError(path, f"no column named {name!r} (asked for as a signal); columns are {', '.join(header)}")

    time_col, kind = _infer_time(path, header, sample, time, time_format)
    if entity is False:
        entity_col = None
    elif isinstance(entity, str):
        entity_col = entity
    else:
        entity_col = _infer_entity(header, sample, exclude={time_col, *(signals or ())})
    rest = [h for h in header if h not in (time_col, entity_col)]
    if signals:
        sigs = tuple(dict.fromkeys(signals))
        for name in sigs:
            if name in (time_col, entity_col):
                role = "time" if name == time_col else "entity"
                raise SourceError(path, f"column {name!r} is the {role} column; it cannot also be a signal")
    else:
        sigs = tuple(h for h in rest if _numeric_share(sample[h]) >= 0.5)
    if not sigs:
        raise SourceError(path, "no numeric signal column found; columns are " + ", ".join(header))
    if len(sigs) > limit:
        raise SourceError(path, f"{len(sigs):,} signal columns (of {ncol:,} columns); sbg analyses at most "
                          f"{limit:,} per file: choose some with --signals, or raise the limit with "
                          "--max-signals or SBG_MAX_SIGNALS", line=1)
    carried = tuple(h for h in rest if h not in sigs)
    for reserved in ("timestamp", "entity"):
        role = {"timestamp": time_col, "entity": entity_col}[reserved]
        if reserved in header and role != reserved:
            raise SourceError(
                path,
                f"column {reserved!r} would clash with sbg's own {reserved!r}; "
                f"pass --{'time' if reserved == 'timestamp' else 'entity'} {reserved} to use it",
            )
    return Schema(
        path=str(path), columns=tuple(header), time=time_col, time_kind=kind, entity=entity_col,
        signals=sigs, carried=carried, delimiter=delimiter, encoding=encoding,
        date=date or DEFAULT_CLOCK_DATE, time_format=time_format, newline=newline,
        reorder_ns=reorder_window(reorder), mapping=mapping,
    )


def _cycler_schema(path: Path, time, entity, signals, limit: int, reorder) -> Schema:
    """The schema of a binary cycler file: the canonical columns its reader makes (:mod:`sbg.io.cyclers`)."""
    from .cyclers import CARRIED, SIGNALS, read_cycler

    if time not in (None, "timestamp") or isinstance(entity, str):
        raise SourceError(path, "a cycler file's columns are fixed (timestamp, voltage_v, current_a, ...): "
                                "--time and --entity do not apply; its entity is the file's name")
    read = read_cycler(path)
    columns = tuple(read.frame.columns)
    present = tuple(c for c in columns if c in SIGNALS)
    if signals:
        unknown = [s for s in signals if s not in present]
        if unknown:
            raise SourceError(path, f"no signal named {', '.join(map(repr, unknown))}; "
                                    f"this file has {', '.join(present)}")
        present = tuple(dict.fromkeys(signals))
    if len(present) > limit:
        raise SourceError(path, f"{len(present)} signal columns; sbg analyses at most {limit} per file")
    carried = tuple(c for c in columns if c in CARRIED or (c in SIGNALS and c not in present))
    return Schema(path=str(path), columns=columns, time="timestamp", time_kind="datetime", entity=None,
                  signals=present, carried=carried, reorder_ns=reorder_window(reorder),
                  mapping=read.mapping, reader=read.reader)


def reorder_window(text) -> int:
    """A reorder window (``"30s"``, ``"2min"``) in ns; ``None`` or ``"0"`` is off.

    >>> reorder_window("30s"), reorder_window(None)
    (30000000000, 0)
    """
    if text in (None, "", 0, "0"):
        return 0
    try:
        ns = pd.Timedelta(text).value
    except (ValueError, TypeError):
        raise SbgError(f"--reorder: {text!r} is not a duration (e.g. 30s, 2min)") from None
    if ns < 0:
        raise SbgError(f"--reorder: {text!r} is negative")
    return int(ns)


def _sample_rows(lines: list[str], delimiter: str, ncol: int) -> list[list[str]]:
    """The fields of the sample's records, cut into records as :class:`Source` cuts them."""
    rows = []
    spans, _ = _records(lines, delimiter, ncol)
    for first, last, unbalanced in spans:
        if unbalanced:
            continue
        try:
            row = next(csv.reader(["\n".join(lines[first:last + 1]).rstrip("\r")], delimiter=delimiter), [])
        except csv.Error:
            continue
        if row:
            rows.append(row)
        if len(rows) >= _SAMPLE_ROWS:
            break
    return rows


def _check_options(encoding, delimiter, date, time_format):
    """Reject option values that cannot work with any file (a usage error)."""
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise SbgError(f"unknown encoding {encoding!r} (try utf-8 or latin-1)") from None
    if codec.startswith(("utf-16", "utf-32")):
        # Lines are found by their newline byte, which these encodings spread over several bytes.
        raise SbgError(f"encoding {encoding!r} is not supported; re-save the file as UTF-8")
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise SbgError(f"the delimiter must be one character other than a quote or newline, not {delimiter!r}")
    if date is not None:
        try:
            pd.Timestamp(date)
        except ValueError:
            raise SbgError(f"date {date!r} is not a date (YYYY-MM-DD)") from None
    if time_format is not None:
        try:
            pd.to_datetime(pd.Series(["1970-01-01"]), format=time_format, errors="coerce")
        except ValueError as exc:
            raise SbgError(f"bad time format {time_format!r}: {exc}") from None


def _parquet_sample(path: Path):
    import pyarrow.parquet as pq

    if not path.exists():
        raise SourceError(path, "no such file")
    check_regular_file(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for bad files
        raise SourceError(path, f"not a readable Parquet file: {exc}") from None
    header = list(pf.schema_arrow.names)
    if pf.metadata.num_rows == 0:
        raise SourceError(path, "has a schema but no data rows")
    first = next(pf.iter_batches(batch_size=_SAMPLE_ROWS)).to_pandas()
    rows = [["" if pd.isna(v) else str(v) for v in row] for row in first.itertuples(index=False)]
    return header, rows


def _numeric_share(values) -> float:
    present = [v for v in values if v not in _NULLS]
    if not present:
        return 0.0
    return sum(_is_number(v) for v in present) / len(present)


def _time_kind_of(values, named: bool):
    present = [v for v in values if v not in _NULLS]
    if not present:
        return None
    # A named column may hold some bad rows (they get quarantined); an
    # unnamed one must look like time almost everywhere to be chosen.
    share = 0.5 if named else 0.9
    if sum(bool(_CLOCK_RE.match(v)) for v in present) >= share * len(present):
        return "clock"
    # inf, nan or 1e400 cannot be a time: they are no evidence of a numeric time column.
    nums = np.array([x for x in (float(v) for v in present if _is_number(v)) if np.isfinite(x)])
    if len(nums) >= share * len(present):
        if not named:
            return None
        med = float(np.median(np.abs(nums)))
        if med >= 1e11:
            return "epoch_ms"
        if med >= 1e8:
            return "epoch_s"
        return "seconds"
    parsed = pd.to_datetime(pd.Series(present), errors="coerce", format="ISO8601", utc=True)
    if parsed.notna().mean() < share:
        parsed = pd.to_datetime(pd.Series(present), errors="coerce", format="mixed", utc=True)
    if parsed.notna().mean() >= share:
        return "datetime"
    return None


def _infer_time(path, header, sample, forced, time_format):
    if forced is not None:
        kind = _time_kind_of(sample[forced], named=True)
        if time_format:
            kind = "datetime"
        if kind is None:
            raise SourceError(path, f"column {forced!r} does not hold timestamps (e.g. {sample[forced][0]!r})")
        return forced, kind
    by_norm = {_norm(h): h for h in header}
    named = [by_norm[n] for n in _TIME_NAMES if n in by_norm]
    named += [h for h in header if h not in named and re.search(r"time|date", _norm(h))]
    for h in named:
        kind = _time_kind_of(sample[h], named=True)
        if kind:
            return h, kind
    for h in header:
        if h in named or _numeric_share(sample[h]) > 0.5:
            continue
        kind = _time_kind_of(sample[h], named=False)
        if kind:
            return h, kind
    raise SourceError(
        path,
        "no usable timestamp column (looked for timestamp/time/datetime/date and for "
        "date-like values); pass --time COLUMN",
    )


def _infer_entity(header, sample, exclude):
    by_norm = {_norm(h): h for h in header if h not in exclude}
    candidates = [by_norm[n] for n in _ENTITY_NAMES if n in by_norm]
    candidates += [h for n, h in by_norm.items() if n.endswith("_id") and h not in candidates]
    unrepeated = None  # the first id column whose ids the sample does not yet repeat
    for h in candidates:
        values = [v for v in sample[h] if v not in _NULLS]
        if not values:
            continue
        numeric = [v for v in values if _is_number(v)]
        if numeric and any(not float(v).is_integer() for v in numeric):
            continue  # a measured quantity, not an id
        if len(set(values)) <= max(1, len(values) // 2):
            # A fleet of hundreds logs each battery once per timestamp, so a sample may hold each
            # battery_id once while its site repeats: the site is a group of entities, not the entity.
            if unrepeated is not None and _norm(h) in _GROUP_NAMES and len(values) == len(sample[unrepeated]):
                return unrepeated
            return h
        if unrepeated is None and not numeric and len(values) == len(sample[h]):
            unrepeated = h
    return None


#: Columns that name a group of entities (sbg.io.hierarchy), never preferred over a finer id column.
_GROUP_NAMES = ("site", "rack", "string", "pack")


class _Unbalanced(Exception):
    """An open quote met a line that is a record of its own, or ran past the size limit."""


class _Continuation:
    """Physical lines from ``start`` on, fed one by one to ``csv.reader``.

    Refuses (raising :class:`_Unbalanced`) to hand over a line without quotes
    that has the header's field count, or to go past :data:`MAX_LINE_BYTES`.
    """

    def __init__(self, lines, start, delimiter, ncol):
        self.lines, self.start, self.at = lines, start, start - 1
        self.delimiter, self.ncol = delimiter, ncol
        self.size = 0
        self.ran_out = False

    def __iter__(self):
        return self

    def __next__(self):
        self.at += 1
        if self.at >= len(self.lines):
            self.ran_out = True
            raise StopIteration
        line = self.lines[self.at]
        self.size += len(line) + 1
        if self.at > self.start and (
            self.size > MAX_LINE_BYTES or ('"' not in line and line.count(self.delimiter) == self.ncol - 1)
        ):
            raise _Unbalanced
        return line + "\n"


def _single_line_records(lines: list[str], start: int, delimiter: str, spans: list) -> int:
    """Append to ``spans`` the lines from ``start`` on that are records of their own.

    One ``csv.reader`` reads the run, the common case; returns the index of
    the first line that opens a quote it does not close, or is malformed.
    """
    reader = csv.reader(itertools.islice(lines, start, None), delimiter=delimiter, strict=True)
    i = start
    try:
        for _ in reader:
            if reader.line_num != i - start + 1:
                break  # that record ran over several lines
            spans.append((i, i, False))
            i += 1
    except csv.Error:
        pass
    return i


def _records(lines: list[str], delimiter: str, ncol: int, final: bool = True):
    """Group physical lines into CSV records.

    A record is one line, unless a field opens a quote that does not close on
    that line. It then runs on to the line where the quote closes, provided
    the record is well-formed (strict CSV), stays under
    :data:`MAX_LINE_BYTES` and swallows no line that is a record of its own
    (no quotes, the header's field count). Otherwise the opening line alone
    is a record, marked unbalanced, and reading resumes at the next line: a
    stray quote costs its own row, never the rows after it.

    Returns ``(spans, resolved)``: ``spans`` lists ``(first, last, unbalanced)``
    line indexes; with ``final`` false, a record still open at the last line
    is left out and ``resolved`` is the index of its first line.

    >>> _records(['1,"a', 'b",2', '3,"c', '4,d', '5,e"f'], ",", 2)
    ([(0, 1, False), (2, 2, True), (3, 3, False), (4, 4, False)], 5)
    """
    spans = []
    i, n = 0, len(lines)
    while (i := _single_line_records(lines, i, delimiter, spans)) < n:
        if '"' not in lines[i]:
            spans.append((i, i, False))
            i += 1
            continue
        feed = _Continuation(lines, i, delimiter, ncol)
        try:
            next(csv.reader(feed, delimiter=delimiter, strict=True))
        except csv.Error:
            if feed.at == i and not feed.ran_out:  # malformed within its own line: read leniently later
                spans.append((i, i, False))
                i += 1
                continue
            if feed.ran_out and not final:
                return spans, i
        except _Unbalanced:
            pass
        else:
            spans.append((i, feed.at, False))
            i = feed.at + 1
            continue
        spans.append((i, i, True))
        i += 1
    return spans, n


class _Validator:
    """Turns raw or typed rows into a clean frame, carrying order/duplicate state."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.source = schema.path
        self._entities = EntityIndex()
        self._last_ts = np.zeros(0, dtype="int64")
        self._has_last = np.zeros(0, dtype=bool)
        self._last_hashes: dict[int, set[int]] = {}
        self.day_offset = 0
        self.last_clock: int | None = None
        self._date_ns = pd.Timestamp(schema.date).value
        self._col_index = {c: i + 1 for i, c in enumerate(schema.columns)}

    def reset(self):
        self.__init__(self.schema)

    def _times(self, col: pd.Series, bad: np.ndarray, reasons: dict):
        """Return int64 ns timestamps; mark unparsable rows in ``bad``."""
        kind = self.schema.time_kind
        name = self.schema.time
        cidx = self._col_index[name]
        num = None
        dated = None  # rows read as dates, in the nanosecond range or not
        if pd.api.types.is_datetime64_any_dtype(col):
            if getattr(col.dt, "tz", None) is not None:
                col = col.dt.tz_convert("UTC").dt.tz_localize(None)
            ns, nat = _ns_or_nat(col)
            dated = col.notna().to_numpy()
        elif kind in ("epoch_s", "epoch_ms", "seconds") or pd.api.types.is_numeric_dtype(col):
            num = pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64")
            scale = 1e6 if kind == "epoch_ms" else 1e9
            with np.errstate(invalid="ignore", over="ignore"):
                nat = ~np.isfinite(num) | (np.abs(num * scale) > 9.2e18)
                ns = np.where(nat, 0, np.round(num * scale)).astype("int64")
                # Past 2**53 ns a float64 product is off by up to 128 ns (1700000001501 ms
                # would become ...21.500999936): such values carry at most microseconds.
                coarse = ~nat & (np.abs(num * scale) > 2.0**53)
                if coarse.any():
                    ns[coarse] = np.round(num[coarse] * (scale / 1000)).astype("int64") * 1000
            if kind == "seconds":
                with np.errstate(invalid="ignore", over="ignore"):
                    nat |= np.abs(num * scale + self._date_ns) > 9.2e18
                ns = np.where(nat, 0, ns + self._date_ns)
        elif kind == "clock":
            ns, nat = self._clock(col)
        else:
            fmt = self.schema.time_format or "ISO8601"
            parsed = pd.to_datetime(col, errors="coerce", format=fmt, utc=True)
            ns, nat = _ns_or_nat(parsed.dt.tz_localize(None))
            dated = parsed.notna().to_numpy(copy=True)
            retry = nat & col.notna().to_numpy()
            if retry.any() and self.schema.time_format is None:
                # Combined as ns: the two passes may parse to different units.
                again = pd.to_datetime(col[retry], errors="coerce", format="mixed", utc=True)
                ns[retry], nat[retry] = _ns_or_nat(again.dt.tz_localize(None))
                dated[retry] |= again.notna().to_numpy()
        newly = nat & ~bad
        if newly.any():
            raw = col.astype("string").to_numpy(dtype=object, na_value="")
            for i in np.flatnonzero(newly):
                text = raw[i]
                if text != "" and num is not None and not np.isnan(num[i]):
                    # A number out of range: typed blocks hold only the float, so show that.
                    text = repr(float(num[i]))
                reasons[i] = (
                    f"column {cidx} {name!r}: missing timestamp" if text == ""
                    # A real date (year 9999, 1677) that int64 nanoseconds cannot hold.
                    else f"column {cidx} {name!r}: timestamp {_short(text)!r} outside the supported range "
                         f"({_TIME_RANGE})" if dated is not None and dated[i]
                    else f"column {cidx} {name!r}: unparsable timestamp {_short(text)!r}"
                )
            bad |= newly
        return ns

    def _clock(self, col: pd.Series):
        """``HH:MM:SS`` to ns on the configured date, rolling over at midnight."""
        if isinstance(col.dtype, pd.ArrowDtype) and pa.types.is_time(col.dtype.pyarrow_dtype):
            tod = col.array._pa_array.cast(pa.time64("ns")).cast(pa.int64())
            tod = pd.Series(tod.to_pandas(), index=col.index).astype("float64")
        else:
            text = col.astype("string").str.strip()
            # HH:MM, as the typed (pyarrow) path reads it; to_timedelta wants the seconds.
            text = text.where(~text.str.fullmatch(r"\d{1,2}:\d{2}").fillna(False), text + ":00")
            td = pd.to_timedelta(text, errors="coerce")
            # pandas may return timedelta64[us]; the view below needs nanoseconds.
            tod = pd.Series(td.to_numpy().astype("timedelta64[ns]").view("int64").astype("float64"), index=col.index)
            tod[td.isna().to_numpy()] = np.nan
        tod = tod.to_numpy()
        nat = ~np.isfinite(tod) | (tod < 0) | (tod >= 86400e9)
        tod_i = np.where(nat, 0, tod).astype("int64")
        # A jump back of more than 12 h is the next day, not disorder.
        valid_idx = np.flatnonzero(~nat)
        day = np.zeros(len(tod_i), dtype="int64")
        if len(valid_idx):
            seq = tod_i[valid_idx]
            prev = np.concatenate([[self.last_clock if self.last_clock is not None else seq[0]], seq[:-1]])
            roll = (prev - seq) > 12 * 3600 * 10**9
            days = self.day_offset + np.cumsum(roll)
            day[valid_idx] = days
            self.day_offset = int(days[-1])
            self.last_clock = int(seq[-1])
        ns = self._date_ns + day * 86400 * 10**9 + tod_i
        return ns, nat

    def validate(self, frame: pd.DataFrame, lines: np.ndarray, raw_of, prior: list[QuarantinedRow]) -> Batch:
        """Validate a parsed block.

        ``frame`` has the file's columns, either typed or as text; ``lines``
        gives each row's source line; ``raw_of(i)`` returns row ``i``'s raw text.
        """
        s = self.schema
        n = len(frame)
        bad = np.zeros(n, dtype=bool)
        reasons: dict[int, str] = {}
        ts = self._times(frame[s.time], bad, reasons)

        if s.entity is not None:
            ent = frame[s.entity].astype("string").str.strip()
            missing = ent.isna().to_numpy() | (ent == "").fillna(True).to_numpy()
            newly = missing & ~bad
            for i in np.flatnonzero(newly):
                reasons[i] = f"column {self._col_index[s.entity]} {s.entity!r}: missing entity id"
            bad |= newly
            entity = ent.fillna("").to_numpy(dtype=object)
        else:
            entity = np.full(n, s.name, dtype=object)

        values = {}
        for name in s.signals:
            col = frame[name]
            cidx = self._col_index[name]
            if pd.api.types.is_float_dtype(col) or pd.api.types.is_integer_dtype(col) or pd.api.types.is_bool_dtype(col):
                arr = col.to_numpy(dtype="float64", na_value=np.nan)
            else:
                text = col.astype("string").str.strip()
                num = pd.to_numeric(text.where(~text.isin(_NULLS)), errors="coerce")
                arr = num.to_numpy(dtype="float64", na_value=np.nan)
                notnum = np.isnan(arr) & text.notna().to_numpy() & ~text.isin(_NULLS).to_numpy()
                for i in np.flatnonzero(notnum & ~bad):
                    reasons[i] = f"column {cidx} {name!r}: {_short(text.iloc[i])!r} is not a number"
                bad |= notnum
            inf = np.isinf(arr)
            for i in np.flatnonzero(inf & ~bad):
                reasons[i] = f"column {cidx} {name!r}: infinite value"
            bad |= inf
            values[name] = arr

        ok = np.flatnonzero(~bad)
        ts_ok = ts[ok]
        ent_ok = entity[ok]
        order_bad, dup_of = self._order_and_duplicates(ts_ok, ent_ok, frame, values, ok)
        for j in np.flatnonzero(order_bad):
            i = ok[j]
            reasons[i] = (
                f"timestamp goes backwards for entity {_short(str(ent_ok[j]))!r}"
                f" ({pd.Timestamp(ts_ok[j])} after {pd.Timestamp(self._max_before[j])}"
                + (f", more than the reorder window {pd.Timedelta(s.reorder_ns)}" if s.reorder_ns else "") + ")"
            )
        for j in np.flatnonzero(dup_of):
            reasons[ok[j]] = "exact duplicate of an earlier row"
        keep = ok[~(order_bad | dup_of)]

        quarantined = list(prior)
        for i in sorted(reasons):
            quarantined.append(QuarantinedRow(self.source, int(lines[i]), raw_of(i), reasons[i]))
        quarantined.sort(key=lambda q: q.line)

        out = {"timestamp": ts[keep].view("datetime64[ns]"), "entity": pd.Series(entity[keep], dtype=object)}
        for name in s.signals:
            out[name] = values[name][keep]
        for name in s.carried:
            out[name] = frame[name].astype("string").to_numpy(dtype=object, na_value="")[keep]
        clean = pd.DataFrame(out)
        for name in s.carried:  # same dtype whether or not the block kept any row
            clean[name] = clean[name].astype(object)
        return Batch(frame=clean, quarantined=quarantined, rows_in=n + len(prior), source=self.source)

    def _order_and_duplicates(self, ts, ent, frame, values, ok):
        """Flag rows going back in time per entity, and exact repeats of an earlier row.

        A repeat has the same entity and timestamp as the row it repeats, so
        only rows tying the entity's newest timestamp are hashed: the common
        case costs one pass of a compiled kernel.
        """
        n = len(ts)
        dup = np.zeros(n, dtype=bool)
        if n == 0:
            self._max_before = np.zeros(0, dtype="int64")
            return np.zeros(0, dtype=bool), dup
        codes = self._entities.codes(ent)
        size = len(self._entities)
        if self._last_ts.shape[0] < size:
            grow = size - self._last_ts.shape[0]
            self._last_ts = np.concatenate([self._last_ts, np.zeros(grow, dtype="int64")])
            self._has_last = np.concatenate([self._has_last, np.zeros(grow, dtype=bool)])
        carried_ts = self._last_ts.copy()
        carried_has = self._has_last.copy()
        back = np.zeros(n, dtype=bool)
        tie = np.zeros(n, dtype=bool)
        max_before = np.zeros(n, dtype="int64")
        _order_kernel(codes, ts, self._last_ts, self._has_last, back, tie, max_before, self.schema.reorder_ns)
        self._max_before = max_before

        def row_hashes(idx):
            parts = [pd.Series(ts[idx]), pd.Series(ent[idx], dtype=object)]
            parts += [pd.Series(values[c][ok][idx]) for c in self.schema.signals]
            parts += [frame[c].iloc[ok[idx]].reset_index(drop=True).astype("string") for c in self.schema.carried]
            table = pd.concat(parts, axis=1, ignore_index=True)
            return pd.util.hash_pandas_object(table, index=False).to_numpy()

        ties = np.flatnonzero(tie)
        if len(ties):
            wanted = set(zip(codes[ties].tolist(), ts[ties].tolist(), strict=True))
            maybe = np.flatnonzero(np.isin(ts, ts[ties]) & ~back)
            involved = np.array([i for i in maybe if (codes[i], ts[i]) in wanted], dtype=int)
            seen: dict = {}
            for i, h in zip(involved.tolist(), row_hashes(involved).tolist(), strict=True):
                key = (int(codes[i]), int(ts[i]))
                if key not in seen:
                    c = key[0]
                    seen[key] = set(self._last_hashes.get(c, ())) if carried_has[c] and carried_ts[c] == key[1] else set()
                if h in seen[key]:
                    dup[i] = True
                else:
                    seen[key].add(h)
        # Remember the hashes of each entity's newest rows for the next block.
        accepted = ~back & ~dup
        present = np.unique(codes[accepted])
        at_max = np.flatnonzero(accepted & (ts == self._last_ts[codes]))
        hashes = row_hashes(at_max) if len(at_max) else np.zeros(0, dtype="uint64")
        fresh = {int(c): set() for c in present}
        for c, h in zip(codes[at_max].tolist(), hashes.tolist(), strict=True):
            fresh[c].add(h)
        for c, hs in fresh.items():
            if carried_has[c] and carried_ts[c] == self._last_ts[c]:
                hs |= self._last_hashes.get(c, set())
            self._last_hashes[c] = hs
        return back, dup


@njit(cache=True, nogil=True)
def _order_kernel(codes, ts, last_ts, has_last, back, tie, max_before, slack):
    """Per entity, flag rows older than the newest so far by more than ``slack`` ns (0: older at all)."""
    for i in range(codes.shape[0]):
        e = codes[i]
        t = ts[i]
        if has_last[e]:
            m = last_ts[e]
            max_before[i] = m
            if t < m - slack:
                back[i] = True
                continue
            if t == m:
                tie[i] = True
            if t < m:
                continue  # within the reorder window: accepted, the newest stays
        else:
            max_before[i] = t
        last_ts[e] = t
        has_last[e] = True


#: The timestamps int64 nanoseconds hold (``pd.Timestamp.min`` to ``pd.Timestamp.max``), by day.
_TIME_RANGE = "1677-09-21 to 2262-04-11"


def _ns_or_nat(values: pd.Series):
    """Naive datetimes of any resolution as int64 ns, and their NaT mask.

    pandas may parse to ``datetime64[us]`` or coarser; a value outside the
    nanosecond range (``pd.Timestamp.min`` to ``pd.Timestamp.max``, 1677-09-21
    to 2262-04-11) becomes NaT, not an error.
    """
    arr = values.to_numpy()
    if arr.dtype != np.dtype("datetime64[ns]"):
        if arr.dtype.kind != "M" or np.datetime_data(arr.dtype)[0] not in ("s", "ms", "us"):
            arr = arr.astype("datetime64[us]")  # objects, days: a unit that holds every year
        unit, count = np.datetime_data(arr.dtype)
        limit = (2**63 - 1) // ({"s": 10**9, "ms": 10**6, "us": 10**3}[unit] * count)  # ticks within ±max ns
        ticks = arr.view("int64")
        arr = np.where((ticks > limit) | (ticks < -limit), np.datetime64("NaT"), arr).astype("datetime64[ns]")
    return arr.view("int64").copy(), np.isnat(arr)


def _bare_cr(block: bytes) -> bool:
    """A CR not ending a CRLF: pyarrow would take it for a line end, the csv module refuses it."""
    if b"\r" not in block:  # a memchr, far cheaper than counting, for the usual LF file
        return False
    return block.count(b"\r") != block.count(b"\r\n")


def _short(text: str, limit: int = 60) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _raw_text(data: bytes, encoding: str) -> str:
    text = data.decode(encoding, errors="replace").rstrip("\r\n")
    if len(text) > MAX_RAW_CHARS:
        text = text[:MAX_RAW_CHARS] + f"… ({len(data)} bytes)"
    return text


def _raw_str(text: str, encoding: str) -> str:
    """:func:`_raw_text` for an already decoded row: the same text whichever parser read it."""
    text = text.rstrip("\r\n")
    if len(text) > MAX_RAW_CHARS:
        text = text[:MAX_RAW_CHARS] + f"… ({len(text.encode(encoding, errors='replace'))} bytes)"
    return text


class _LineMap:
    """Row index to source line number and raw bytes for a block, computed on first use."""

    def __init__(self, block: bytes, first_line: int):
        self.block = block
        self.first_line = first_line
        self._rows = None

    def _build(self):
        arr = np.frombuffer(self.block, dtype=np.uint8)
        nl = np.flatnonzero(arr == 10)
        starts = np.concatenate([[0], nl[:-1] + 1])
        ends = nl.copy()
        has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
        ends[has_cr] -= 1
        nonblank = np.flatnonzero(ends > starts)
        self._rows = (self.first_line + nonblank, starts[nonblank], ends[nonblank])

    def rows_expected(self, n: int) -> bool:
        # Data rows are the non-empty lines; without blank lines that is every line.
        if self.block.count(b"\n") == n:
            return True
        if self._rows is None:
            self._build()
        return len(self._rows[0]) == n

    def __getitem__(self, i):
        if self._rows is None:
            self._build()
        return self._rows[0][i]

    def raw(self, i) -> bytes:
        if self._rows is None:
            self._build()
        return self.block[self._rows[1][i]: self._rows[2][i]]


class Source:
    # One class of ~450 lines: reading blocks, cutting whole records and validating them share the
    # file's schema and validator state; the CSV, Parquet and cycler paths differ only in how bytes come in.
    """A file read in blocks, validated row by row, never loaded whole.

    Parameters
    ----------
    path : path-like
        A ``.csv``, ``.csv.gz`` or ``.parquet`` file; or a cycler file (``.mpr``,
        ``.nda``, ``.ndax``), which its library reads whole (:mod:`sbg.io.cyclers`).
    block_bytes : int
        Bytes read per block (rows per block for Parquet is derived from it).
    **schema_options
        Passed to :func:`infer_schema` (``time``, ``entity``, ``signals``, ``date``...).
    """

    def __init__(self, path, *, block_bytes: int = 4 << 20, schema: Schema | None = None, **schema_options):
        self.path = Path(path)
        self.schema = schema or infer_schema(self.path, **schema_options)
        self.block_bytes = int(block_bytes)
        if self.block_bytes < 1:  # read(0) would end the stream at once, silently
            raise ValueError(f"block_bytes must be at least 1, not {block_bytes!r}")
        self.is_parquet = self.path.suffix.lower() in (".parquet", ".pq")
        #: a binary cycler file, read whole by its library, then validated in blocks like Parquet
        self.is_cycler = self.path.suffix.lower() in _CYCLER_SUFFIXES
        self._validator = _Validator(self.schema)
        self._total_rows: int | None = None

    @property
    def name(self) -> str:
        return self.schema.name

    def count_rows(self) -> int:
        """Number of data records, counted by a fast pass over the file (cached)."""
        if self._total_rows is None:
            if self.is_cycler:
                from .cyclers import read_cycler

                self._total_rows = len(read_cycler(self.path).frame)
            elif self.is_parquet:
                import pyarrow.parquet as pq

                self._total_rows = pq.ParquetFile(self.path).metadata.num_rows
            else:
                count = 0
                tail = b""
                blank = 0
                with _open_binary(self.path, self.schema.newline) as fh:
                    while chunk := self._read(fh, 1 << 22, None):
                        count += chunk.count(b"\n")
                        # Blank lines ("\n\n" or "\n\r\n", overlapping), ending in this chunk.
                        k = min(len(tail), 2)
                        arr = np.frombuffer(tail[len(tail) - k:] + chunk, dtype=np.uint8)
                        nl = arr == 10
                        blank += int((nl[1:] & nl[:-1])[max(k - 1, 0):].sum())
                        blank += int((nl[2:] & (arr[1:-1] == 13) & nl[:-2])[max(k - 2, 0):].sum())
                        tail = (tail + chunk)[-65536:]
                if tail and not tail.endswith(b"\n"):
                    count += 1
                self._total_rows = max(count - 1 - blank, 0)
                lines = [ln for ln in tail.split(b"\n") if ln.strip()]
                if len(tail) == 65536 and lines:
                    lines.pop(0)  # may be cut
                self._last_line = lines[-1] if lines else b""
                self._tail_lines = lines[-100:]
        return self._total_rows

    def time_span(self):
        """``(first_ns, last_ns)`` from the first and last data rows (approximate for unsorted files)."""
        if self.is_cycler:
            from .cyclers import read_cycler

            col = read_cycler(self.path).frame["timestamp"]
            heads, tails = col.head(100), col.tail(100)
        elif self.is_parquet:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(self.path)
            col = pf.read(columns=[self.schema.time]).column(0).to_pandas()
            heads, tails = col.head(100), col.tail(100)
        else:
            self.count_rows()
            head_lines = []
            with _open_binary(self.path, self.schema.newline) as fh:
                fh.readline(MAX_LINE_BYTES)
                while len(head_lines) < 100 and (line := fh.readline(MAX_LINE_BYTES)):
                    head_lines.append(line)
            heads, tails = self._time_fields(head_lines), self._time_fields(getattr(self, "_tail_lines", []))
        # The first and last rows with a valid timestamp: a quarantined row at either end does not count.
        ends = []
        for values, pick in ((heads, 0), (tails, -1)):
            bad = np.zeros(len(values), dtype=bool)
            ns = _Validator(self.schema)._times(pd.Series(values).reset_index(drop=True), bad, {})
            if bad.all():
                raise SourceError(self.path, "cannot read the time span (no valid timestamp near the start or end)")
            ends.append(int(ns[~bad][pick]))
        return ends[0], ends[1]

    def _time_fields(self, lines):
        """The time field of each of ``lines`` that splits into the header's fields."""
        idx = list(self.schema.columns).index(self.schema.time)
        fields = []
        for line in lines:
            text = line.decode(self.schema.encoding, errors="replace").rstrip("\r\n")
            try:
                parts = next(csv.reader([text], delimiter=self.schema.delimiter), [])
            except csv.Error:
                continue
            if len(parts) == len(self.schema.columns):
                fields.append(parts[idx].strip())
        return pd.Series(fields, dtype="string")

    def batches(self) -> Iterator[Batch]:
        """Yield validated batches from the start of the file."""
        self._validator.reset()
        if self.is_cycler:
            yield from self._cycler_batches()
        elif self.is_parquet:
            yield from self._parquet_batches()
        else:
            yield from self._csv_batches()

    def _cycler_batches(self):
        """A cycler file's canonical frame (read whole by its library), validated in blocks of rows.

        A row's "line" is its record number in the file, from 1.
        """
        from .cyclers import read_cycler

        whole = read_cycler(self.path).frame
        if tuple(whole.columns) != self.schema.columns:
            raise SourceError(self.path, "changed since its schema was read: its columns differ")
        rows = max(1024, self.block_bytes // 64)
        yield from self._frame_batches(whole.iloc[i:i + rows].reset_index(drop=True)
                                       for i in range(0, len(whole), rows))

    def _parquet_batches(self):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        rows = max(1024, self.block_bytes // 64)
        cols = list(self.schema.columns)
        yield from self._frame_batches(rb.to_pandas() for rb in pf.iter_batches(batch_size=rows, columns=cols))

    def _frame_batches(self, frames):
        """Validated batches of typed frames holding the schema's columns, rows numbered from 1."""
        row0 = 1
        for frame in frames:
            lines = np.arange(row0, row0 + len(frame))
            row0 += len(frame)

            def raw_of(i, frame=frame):
                return _short(",".join("" if pd.isna(v) else str(v) for v in frame.iloc[i]), MAX_RAW_CHARS)

            try:
                batch = self._validator.validate(frame, lines, raw_of, [])
            except SbgError:
                raise
            except Exception as exc:  # noqa: BLE001 - as in _guarded_parse
                batch = self._unreadable(exc, [(int(line), raw_of(i)) for i, line in enumerate(lines)])
            yield batch

    def _read(self, fh, size, line_no):
        """``fh.read(size)``, with a truncated or corrupt file (e.g. gzip) as a SourceError."""
        try:
            return fh.read(size)
        except (OSError, EOFError, zlib.error) as exc:
            where = "" if line_no is None else f" after line {line_no - 1}"
            raise SourceError(self.path, f"cannot read{where}: {exc}", line=line_no) from None

    def _csv_batches(self):
        s = self.schema
        with _open_binary(self.path, s.newline) as fh:
            header = fh.readline(MAX_LINE_BYTES + 1)
            line_no = 2  # the next line to be read
            if len(header) > MAX_LINE_BYTES:
                raise SourceError(self.path, "header line longer than 10 MB", line=1)
            pending = b""
            eof = False
            while not eof:
                # Read at least as much as is pending, so a long line costs linear time.
                data = self._read(fh, max(self.block_bytes, len(pending)), line_no)
                if not data:
                    eof = True
                    block = pending
                    if block and not block.endswith(b"\n"):
                        block += b"\n"
                    pending = b""
                else:
                    buf = pending + data
                    cut = buf.rfind(b"\n") + 1
                    if cut == 0:
                        if len(buf) > MAX_LINE_BYTES:
                            yield self._oversized(fh, buf, line_no)
                            line_no += 1
                            pending = b""
                            continue
                        pending = buf
                        continue
                    block, pending = buf[:cut], buf[cut:]
                    if b'"' in block:
                        # A quoted field may run past the cut: keep its record for the next read.
                        keep = self._whole_records(block)
                        block, pending = block[:keep], block[keep:] + pending
                if not block:
                    continue
                for batch in self._parse_lines(block, line_no):
                    if batch.rows_in:
                        yield batch
                line_no += block.count(b"\n")
        del s

    def parse(self, block: bytes, first_line: int) -> Iterator[Batch]:
        """Validated batches of ``block``, whole lines of this file starting at line ``first_line``.

        For readers that get the file's bytes another way (a followed file,
        :mod:`sbg.io.follow`); the validator's order and duplicate checks carry
        on from the previous call, as they do between the blocks of :meth:`batches`.
        """
        for batch in self._parse_lines(block, first_line):
            if batch.rows_in:
                yield batch

    def whole_records(self, block: bytes) -> int:
        """Bytes of ``block`` (whole lines) that hold whole records: a quoted field may close only later."""
        return self._whole_records(block) if b'"' in block else len(block)

    def _whole_records(self, block: bytes) -> int:
        """Bytes of ``block`` (whole lines) up to a record that may close only after it."""
        physical = block.split(b"\n")[:-1]
        _, resolved = _records([p.decode("latin-1") for p in physical], self.schema.delimiter,
                               len(self.schema.columns), final=False)
        return sum(len(p) + 1 for p in physical[:resolved])

    def _parse_lines(self, block: bytes, first_line: int):
        """Parse a block of whole lines, quarantining unread any line over the size limit.

        Such a line is usually caught while reading (:meth:`_oversized`), but a large
        block can hold it whole; quarantining it here too keeps chunk invariance.
        """
        if len(block) <= MAX_LINE_BYTES:
            yield self._guarded_parse(block, first_line)
            return
        arr = np.frombuffer(block, dtype=np.uint8)
        nl = np.flatnonzero(arr == 10)
        starts = np.concatenate([[0], nl[:-1] + 1])
        pos, line = 0, first_line
        for i in np.flatnonzero(nl - starts > MAX_LINE_BYTES):
            a, b = int(starts[i]), int(nl[i]) + 1
            if a > pos:
                yield self._guarded_parse(block[pos:a], line)
            yield self._too_long(block[a:a + MAX_RAW_CHARS], first_line + int(i))
            pos, line = b, first_line + int(i) + 1
        if pos < len(block):
            yield self._guarded_parse(block[pos:], line)

    def _guarded_parse(self, block: bytes, first_line: int) -> Batch:
        """:meth:`_parse_block`, with a reader failure costing this block, not the run.

        An unexpected exception (a reader bug, not a refusal of the file) puts
        every line of the block in quarantine with the error as the reason, and
        rides on the batch as ``fault`` for the caller to count and show.
        """
        try:
            return self._parse_block(block, first_line)
        except SbgError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported on the batch, with every row accounted for
            lines = block.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            enc = self.schema.encoding
            return self._unreadable(exc, [(first_line + i, _raw_text(raw.rstrip(b"\r"), enc))
                                          for i, raw in enumerate(lines) if raw.strip(b"\r")])

    def _unreadable(self, exc: BaseException, rows) -> Batch:
        """A batch quarantining ``rows`` (line, raw text) because the reader failed on them."""
        reason = f"not read: the reader failed on this block ({type(exc).__name__}: {_short(str(exc), 200)})"
        prior = [QuarantinedRow(self.schema.path, line, raw, reason) for line, raw in rows]
        return Batch(frame=self._empty_batch().frame, quarantined=prior, rows_in=len(prior),
                     source=self.schema.path, fault=exc)

    def _empty_batch(self) -> Batch:
        return self._validator.validate(self._empty(), np.array([], dtype=int), None, [])

    def _oversized(self, fh, buf, line_no):
        while True:  # skip to the end of the monster line
            more = fh.readline(1 << 20)
            if not more or more.endswith(b"\n"):
                break
        return self._too_long(buf[:MAX_RAW_CHARS], line_no)

    def _too_long(self, head: bytes, line_no):
        q = QuarantinedRow(self.schema.path, line_no, _raw_text(head, self.schema.encoding),
                           f"line longer than {MAX_LINE_BYTES // (1024 * 1024)} MB")
        return Batch(frame=self._empty_batch().frame, quarantined=[q], rows_in=1, source=self.schema.path)

    def _empty(self):
        return pd.DataFrame({c: pd.Series([], dtype="string") for c in self.schema.columns})

    def _parse_block(self, block: bytes, first_line: int) -> Batch:
        s = self.schema
        plain = b'"' not in block and s.encoding.lower().replace("-", "") in (
            "utf8", "ascii", "latin1", "iso88591", "cp1252")
        if plain and 0 not in block and not _bare_cr(block):
            # Fast path: a clean block parses in one typed pyarrow call, which
            # itself refuses rows with the wrong field count; line numbers are
            # only worked out if a row has to be quarantined.
            try:
                frame = self._arrow_parse(block, typed=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                frame = None
            if frame is not None:
                lines = _LineMap(block, first_line)
                if lines.rows_expected(len(frame)):
                    return self._validator.validate(frame, lines, lambda i: _raw_text(lines.raw(i), s.encoding), [])
        return self._parse_checked(block, first_line)

    def _parse_checked(self, block: bytes, first_line: int) -> Batch:
        """Per-line analysis: field counts and NUL bytes found with numpy, then pyarrow."""
        s = self.schema
        arr = np.frombuffer(block, dtype=np.uint8)
        nl = np.flatnonzero(arr == 10)
        starts = np.concatenate([[0], nl[:-1] + 1])
        ends = nl.copy()
        has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
        ends[has_cr] -= 1
        nonblank = ends > starts
        line_numbers = first_line + np.arange(len(nl))
        if (b'"' in block or _bare_cr(block)
                or s.encoding.lower().replace("-", "") not in ("utf8", "ascii", "latin1", "iso88591", "cp1252")):
            return self._parse_slow(block, first_line)
        delim = ord(s.delimiter)
        cum = np.concatenate([[0], np.cumsum(arr == delim)])
        nfields = cum[ends] - cum[starts] + 1
        expected = len(s.columns)
        wrong = nonblank & (nfields != expected)
        has_nul = np.zeros(len(nl), dtype=bool)
        if 0 in block:
            nul_cum = np.concatenate([[0], np.cumsum(arr == 0)])
            has_nul = (nul_cum[ends] - nul_cum[starts]) > 0
        prior = []
        for i in np.flatnonzero(wrong | (has_nul & nonblank)):
            raw = _raw_text(block[starts[i]: ends[i]], s.encoding)
            reason = ("contains NUL bytes" if has_nul[i]
                      else f"expected {expected} fields, found {nfields[i]}")
            prior.append(QuarantinedRow(s.path, int(line_numbers[i]), raw, reason))
        good = nonblank & ~wrong & ~has_nul
        if not good.any():
            return self._validator.validate(self._empty(), np.array([], dtype=int), None, prior)
        if good.sum() == nonblank.sum():
            text = block
        else:
            text = b"\n".join(block[a:b] for a, b in zip(starts[good], ends[good], strict=True)) + b"\n"
        rows_lines = line_numbers[good]
        rstarts, rends = starts[good], ends[good]

        def raw_of(i):
            return _raw_text(block[rstarts[i]: rends[i]], s.encoding)

        try:
            frame = self._arrow_parse(text, typed=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            try:
                frame = self._arrow_parse(text, typed=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return self._parse_slow(block, first_line)
        if len(frame) != len(rows_lines):
            return self._parse_slow(block, first_line)
        return self._validator.validate(frame, rows_lines, raw_of, prior)

    def _arrow_parse(self, text: bytes, typed: bool) -> pd.DataFrame:
        s = self.schema
        types = {c: pa.string() for c in s.columns}
        if typed:
            for c in s.signals:
                types[c] = pa.float64()
            if s.time_kind == "datetime" and s.time_format is None:
                types[s.time] = pa.timestamp("ns")
            elif s.time_kind == "clock":
                types[s.time] = pa.time32("s")
            elif s.time_kind in ("epoch_s", "epoch_ms", "seconds"):
                types[s.time] = pa.float64()
        table = pacsv.read_csv(
            io.BytesIO(text),
            read_options=pacsv.ReadOptions(column_names=list(s.columns), encoding=s.encoding, use_threads=True),
            parse_options=pacsv.ParseOptions(delimiter=s.delimiter, quote_char=False, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                column_types=types, null_values=list(_NULLS), strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
        if typed and s.time_kind == "clock":
            return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_time(t) else None)
        return table.to_pandas()

    def _parse_slow(self, block: bytes, first_line: int) -> Batch:
        """Record-by-record parsing for quoted fields, odd encodings and broken bytes."""
        s = self.schema
        physical = block.split(b"\n")
        if physical and physical[-1] == b"":
            physical.pop()
        # Quotes, delimiters and newlines are ASCII bytes in every encoding sbg reads,
        # so records are found on latin-1 text (one character per byte), then decoded.
        spans, _ = _records([p.decode("latin-1") for p in physical], s.delimiter, len(s.columns))
        prior, records, lines, raws = [], [], [], []
        expected = len(s.columns)
        for first, last, unbalanced in spans:
            raw = b"\n".join(physical[first:last + 1])
            line_no = first_line + first
            if not raw.strip(b"\r"):
                continue
            try:
                text = raw.decode(s.encoding).rstrip("\r")
            except UnicodeDecodeError as err:
                column = raw[: err.start].count(s.delimiter.encode()) + 1
                prior.append(QuarantinedRow(s.path, line_no, _raw_text(raw, s.encoding),
                                            f"column {column}: not valid {s.encoding} (byte 0x{raw[err.start]:02x})"))
                continue
            try:
                row = next(csv.reader([text], delimiter=s.delimiter))
            except csv.Error as exc:
                row, error = None, exc
            if unbalanced and row is not None:
                # Read leniently, the open quote runs to the end of the line: the last field opened it.
                name = f" {s.columns[len(row) - 1]!r}" if len(row) <= expected else ""
                prior.append(QuarantinedRow(s.path, line_no, _raw_str(text, s.encoding),
                                            f"column {len(row)}{name}: unbalanced quote (a quoted field never closes)"))
            elif "\x00" in text:
                prior.append(QuarantinedRow(s.path, line_no, _raw_str(text, s.encoding), "contains NUL bytes"))
            elif row is None:
                # As the quote-free parser sees such a line: fields counted by delimiter first.
                found = text.count(s.delimiter) + 1
                reason = (f"expected {expected} fields, found {found}" if found != expected
                          else "carriage return inside an unquoted field" if "new-line" in str(error)
                          else f"malformed CSV: {error}")
                prior.append(QuarantinedRow(s.path, line_no, _raw_str(text, s.encoding), reason))
            elif len(row) != expected:
                prior.append(QuarantinedRow(s.path, line_no, _raw_str(text, s.encoding),
                                            f"expected {expected} fields, found {len(row)}"))
            else:
                records.append(row)
                lines.append(line_no)
                raws.append(text)
        frame = pd.DataFrame(records, columns=list(s.columns), dtype="string") if records else self._empty()
        frame = frame.replace({c: {v: pd.NA for v in _NULLS} for c in s.columns})
        return self._validator.validate(
            frame, np.asarray(lines, dtype=int), lambda i: _raw_str(raws[i], s.encoding), prior
        )


def load_reference(path, **schema_options) -> pd.DataFrame:
    """Read a whole baseline file (validated) into one frame."""
    src = Source(path, **schema_options)
    parts = [b.frame for b in src.batches()]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if frame.empty:
        raise SbgError(f"{path}: baseline has no valid rows")
    return frame


def with_schema(schema: Schema, **changes) -> Schema:
    """A copy of ``schema`` with some fields changed."""
    return replace(schema, **changes)
