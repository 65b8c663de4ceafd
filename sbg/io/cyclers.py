"""Battery cycler files read through the field's own libraries, mapped onto sbg's columns.

=================  ==============  ==========================================
format             suffix          library (``pip install 'sbg[cyclers]'``)
=================  ==============  ==========================================
BioLogic EC-Lab    ``.mpr``        galvani (``galvani.BioLogic.MPRfile``)
Neware BTS         ``.nda/.ndax``  NewareNDA (``NewareNDA.read``)
=================  ==============  ==========================================

Each file becomes one frame with sbg's canonical columns, in this order:

* ``timestamp``: absolute time. BioLogic: the file's start time (the date and
  time of its LOG module) plus ``time/s``; a file without a LOG module has only
  its start date, so time counts from midnight of that day. Neware: the
  ``Timestamp`` the cycler wrote with every record (UTC when NewareNDA gives
  it zoned, newer files; the cycler's local clock when it gives it naive,
  older ``.nda`` files).
* ``voltage_v`` (V), ``current_a`` (A, converted from mA), ``temperature_c``
  (°C) when the file has it: the signals sbg analyses.
* ``cycle`` and ``step``: carried, not analysed (counters, not measurements:
  a detector would flag every new step as a level shift). ``step`` counts
  steps, one more each time a new step begins (BDF's *Step Count*).
  Neware files also carry ``record``, the cycler's record number: older
  ``.nda`` files stamp records to the whole second, and rows sharing a second
  are told apart by it (not taken for repeats).

Current keeps the cycler's sign, and both libraries give it the BDF way:
positive charges the cell, negative discharges it (BioLogic: positive is
anodic current at the working electrode, that is charge for a cell wired
with its positive electrode as working electrode, the usual set-up).

The libraries read a file whole into memory, so sbg does too; the frame is
then validated in blocks by :class:`~sbg.io.sources.Source`, as CSV is. A
file the library cannot read (corrupt, truncated, an unknown version) is a
:class:`~sbg.errors.SourceError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SourceError

__all__ = ["CYCLER_SUFFIXES", "CyclerFile", "is_cycler_file", "read_cycler"]

#: File suffixes read by this module, and the format each names.
CYCLER_SUFFIXES = {".mpr": "BioLogic EC-Lab .mpr", ".nda": "Neware .nda", ".ndax": "Neware .ndax"}
#: Canonical column order; a file has those of them it can fill.
CANONICAL = ("timestamp", "voltage_v", "current_a", "temperature_c", "soc_pct", "cycle", "step", "record")
SIGNALS = ("voltage_v", "current_a", "temperature_c", "soc_pct")
CARRIED = ("cycle", "step", "record")
_INSTALL = "pip install 'sbg[cyclers]'"


@dataclass(frozen=True)
class CyclerFile:
    """A cycler file read whole: its canonical frame and how each column was made."""

    path: str
    frame: pd.DataFrame
    #: ``(canonical name, what it was made from)`` for each column of ``frame``
    mapping: tuple[tuple[str, str], ...]
    #: the library and version that read it, e.g. ``"galvani 0.5.0 (BioLogic EC-Lab .mpr)"``
    reader: str


def is_cycler_file(path) -> bool:
    """True for a name ending in a cycler suffix (``.mpr``, ``.nda``, ``.ndax``)."""
    return Path(path).suffix.lower() in CYCLER_SUFFIXES


_cache: dict = {}


def read_cycler(path) -> CyclerFile:
    """Read ``path`` into canonical columns (cached while the file is unchanged).

    Raises :class:`~sbg.errors.SourceError` for a missing, unreadable or
    corrupt file, or when the library the format needs is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(path, "no such file")
    if path.is_dir():
        raise SourceError(path, "is a directory, not a file")
    from .sources import check_regular_file

    check_regular_file(path)
    st = path.stat()
    if st.st_size == 0:
        raise SourceError(path, "is empty")
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _cache:
        return _cache[key]
    suffix = path.suffix.lower()
    result = _read_mpr(path) if suffix == ".mpr" else _read_neware(path)
    if result.frame.empty:
        raise SourceError(path, "holds no data records")
    _cache.clear()  # one file kept: Source infers the schema, then reads the batches
    _cache[key] = result
    return result


def _library(module: str, package: str, path: Path, what: str):
    try:
        return __import__(module), metadata.version(package)
    except ImportError:
        raise SourceError(path, f"reading {what} files needs the {package} package: {_INSTALL}") from None


@contextlib.contextmanager
def _quiet_library():
    """The libraries call ``inplace=True`` methods that pandas 3.1 deprecates: not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The inplace keyword")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def _unreadable(path: Path, what: str, reader: str, exc: BaseException) -> SourceError:
    text = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    if len(text) > 200:
        text = text[:199] + "…"
    return SourceError(path, f"cannot read as a {what} file ({reader}): {type(exc).__name__}: {text}; "
                             "is it truncated or corrupt?")


def _step_count(ids: np.ndarray) -> np.ndarray:
    """1, then one more each time the step id changes."""
    ids = np.asarray(ids)
    if not len(ids):
        return np.zeros(0, dtype="int64")
    return 1 + np.concatenate([[0], np.cumsum(ids[1:] != ids[:-1])]).astype("int64")


def _read_mpr(path: Path) -> CyclerFile:
    what = CYCLER_SUFFIXES[".mpr"]
    _, version = _library("galvani", "galvani", path, what)
    reader = f"galvani {version}"
    from galvani import BioLogic

    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise SourceError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        with _quiet_library(), fh:
            mpr = BioLogic.MPRfile(fh)
            data = pd.DataFrame(mpr.data)
    except Exception as exc:  # noqa: BLE001 - galvani raises OSError, ValueError, AssertionError, NotImplementedError...
        raise _unreadable(path, what, reader, exc) from None
    if "time/s" not in data:
        raise SourceError(path, f"{what} file has no time/s column (columns: {', '.join(map(str, data.columns))})")
    start = getattr(mpr, "timestamp", None)
    if start is not None:
        origin, time_note = pd.Timestamp(start), "the file's start time (LOG module) + time/s"
    else:
        origin, time_note = pd.Timestamp(mpr.startdate), "the file's start date (00:00, no start time in the file) + time/s"
    seconds = data["time/s"].to_numpy(dtype="float64")
    out = {"timestamp": origin.as_unit("ns") + pd.to_timedelta(np.round(seconds * 1e9).astype("int64"), unit="ns")}
    mapping = [("timestamp", time_note)]
    volt = next((c for c in ("Ecell/V", "Ewe/V", "<Ewe>/V", "<Ewe/V>") if c in data), None)
    if volt is None:
        raise SourceError(path, f"{what} file has no voltage column (Ecell/V or Ewe/V); "
                                f"columns: {', '.join(map(str, data.columns))}")
    out["voltage_v"] = data[volt].to_numpy(dtype="float64")
    mapping.append(("voltage_v", volt))
    cur = next((c for c in ("I/mA", "<I>/mA") if c in data), None)
    if cur is not None:
        out["current_a"] = data[cur].to_numpy(dtype="float64") / 1000.0
        mapping.append(("current_a", f"{cur} / 1000 (sign as recorded: positive charges)"))
    temp = next((c for c in data.columns if str(c).startswith("Temperature/")), None)
    if temp is not None:
        out["temperature_c"] = data[temp].to_numpy(dtype="float64")
        mapping.append(("temperature_c", temp))
    if "cycle number" in data:
        out["cycle"] = data["cycle number"].to_numpy(dtype="float64").round().astype("int64")
        mapping.append(("cycle", "cycle number"))
    elif "half cycle" in data:
        out["cycle"] = data["half cycle"].to_numpy(dtype="int64") // 2
        mapping.append(("cycle", "half cycle // 2"))
    if "Ns" in data:
        out["step"] = _step_count(data["Ns"].to_numpy())
        mapping.append(("step", "Ns, counted: one more at each change"))
    return CyclerFile(str(path), pd.DataFrame(out), tuple(mapping), f"{reader} ({what})")


def _read_neware(path: Path) -> CyclerFile:
    what = CYCLER_SUFFIXES[path.suffix.lower()]
    neware, version = _library("NewareNDA", "NewareNDA", path, what)
    reader = f"NewareNDA {version}"
    # NewareNDA picks the format by the suffix as written: give it a lower-case one.
    name = os.fspath(path)
    if path.suffix != path.suffix.lower():
        raise SourceError(path, f"rename the file to end in {path.suffix.lower()} (NewareNDA reads only that)")
    try:
        with _quiet_library():
            data = neware.read(name, log_level="CRITICAL")
    except Exception as exc:  # noqa: BLE001 - struct.error, ValueError, EOFError, zipfile.BadZipFile...
        raise _unreadable(path, what, reader, exc) from None
    missing = [c for c in ("Timestamp", "Voltage", "Current(mA)") if c not in data]
    if missing:
        raise SourceError(path, f"{what} file read without the column(s) {', '.join(missing)}")
    ts = pd.Series(data["Timestamp"])
    if not pd.api.types.is_datetime64_any_dtype(ts):
        ts = pd.to_datetime(ts, errors="coerce")
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        time_note = "Timestamp (per record, UTC)"
    else:
        time_note = "Timestamp (per record, the cycler's local clock)"
    out = {"timestamp": ts.astype("datetime64[ns]").to_numpy()}
    mapping = [("timestamp", time_note),
               ("voltage_v", "Voltage"),
               ("current_a", "Current(mA) / 1000 (sign as recorded: positive charges)")]
    out["voltage_v"] = data["Voltage"].to_numpy(dtype="float64")
    out["current_a"] = data["Current(mA)"].to_numpy(dtype="float64") / 1000.0
    # Older .nda files stamp records to the second: rows sharing one are told apart by their index.
    for column, name, dtype, note in (("T1", "temperature_c", "float64", "T1 (first auxiliary temperature channel)"),
                                      ("Cycle", "cycle", "int64", "Cycle"),
                                      ("Step", "step", "int64", "Step (NewareNDA's step count)"),
                                      ("Index", "record", "int64", "Index (the cycler's record number)")):
        if column in data:
            out[name] = data[column].to_numpy(dtype=dtype)
            mapping.append((name, note))
    return CyclerFile(str(path), pd.DataFrame(out), tuple(mapping), f"{reader} ({what})")
