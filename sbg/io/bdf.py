"""The Battery Data Format (BDF) column convention, read and written.

BDF (Battery Data Alliance, a Linux Foundation Energy project) fixes the
names and SI units of a cycler time series' columns: ``Test Time / s``,
``Voltage / V`` and ``Current / A`` are required; ``Unix Time / s``,
``Cycle Count / 1``, ``Step Count / 1`` and ``Ambient Temperature / degC``
are recommended; temperatures, capacities, energies... are optional. Each
quantity also has a machine-readable name (``voltage_volt``), accepted too.
Current is positive when it charges the cell, as in sbg.

Reading: :func:`match` maps a BDF header onto sbg's canonical columns
(:func:`sbg.io.sources.infer_schema` applies it). Time is ``Unix Time / s``
when present (absolute, UTC); else ``Test Time / s`` counted from the
``--date`` given (default 1970-01-01). ``Date Time`` (ISO text), used by
some converters, is accepted as the absolute time when ``Unix Time / s``
is missing.

Writing (``sbg detect --format bdf``): :class:`BdfRenamer` renames the
output's canonical columns to BDF names, writes ``Unix Time / s`` and
``Test Time / s`` (seconds since each entity's first row) in place of the
time column, and keeps sbg's ``anomaly_score``, ``is_anomaly``, ``reason``
and ``quality`` columns.

>>> match(["Test Time / s", "Voltage / V", "Current / A", "Cycle Count / 1"])
{'Test Time / s': 'timestamp', 'Voltage / V': 'voltage_v', 'Current / A': 'current_a', 'Cycle Count / 1': 'cycle'}
>>> match(["time", "v"]) is None
True
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["BDF_COLUMNS", "match", "BdfRenamer", "SIGNALS", "CARRIED"]

#: BDF preferred label, machine-readable name, sbg's canonical name.
BDF_COLUMNS = (
    ("Test Time / s", "test_time_second", "test_time_s"),
    ("Unix Time / s", "unix_time_second", "unix_time_s"),
    ("Voltage / V", "voltage_volt", "voltage_v"),
    ("Current / A", "current_ampere", "current_a"),
    ("Temperature T1 / degC", "temperature_t1_celsius", "temperature_c"),
    ("Surface Temperature / degC", "surface_temperature_celsius", "surface_temperature_c"),
    ("Ambient Temperature / degC", "ambient_temperature_celsius", "ambient_temperature_c"),
    ("Cycle Count / 1", "cycle_count", "cycle"),
    ("Step Count / 1", "step_count", "step"),
    ("Record Index / 1", "record_index", "record"),
)
#: canonical columns analysed when a BDF file has them; the other BDF columns are carried
SIGNALS = ("voltage_v", "current_a", "temperature_c", "surface_temperature_c", "ambient_temperature_c", "soc_pct")
CARRIED = ("cycle", "step", "record", "test_time_s")
_READ = {name: canon for label, machine, canon in BDF_COLUMNS for name in (label, machine)}
_WRITE = {canon: label for label, _, canon in BDF_COLUMNS}
_DATE_TIME = ("Date Time", "date_time")


def match(header) -> dict | None:
    """``{file column: canonical column}`` for a BDF header, or None if it is not one.

    A BDF header has ``Voltage / V`` and ``Current / A`` and a time
    (``Test Time / s`` or ``Unix Time / s``). The time column chosen becomes
    ``timestamp``; the other BDF names become their canonical names; other
    columns keep theirs.
    """
    canon = {h: _READ[h] for h in header if h in _READ}
    found = set(canon.values())
    if not {"voltage_v", "current_a"} <= found or not found & {"test_time_s", "unix_time_s"}:
        return None
    if len(found) != len(canon):  # a quantity twice (label and machine name): not a clean BDF header
        return None
    by_canon = {v: k for k, v in canon.items()}
    date_time = next((h for h in header if h in _DATE_TIME), None)
    if "unix_time_s" in found:
        canon[by_canon["unix_time_s"]] = "timestamp"
    elif date_time is not None:
        canon[date_time] = "timestamp"
    else:
        canon[by_canon["test_time_s"]] = "timestamp"
    taken = set(canon.values())
    for h in header:  # a file column already named like a canonical column would collide
        if h not in canon and h in taken:
            return None
    return {h: canon[h] for h in header if h in canon}


class BdfRenamer:
    """Turns ``sbg detect``'s output tables (one chunk at a time) into BDF-named tables.

    ``Test Time / s`` counts from each entity's first row, remembered across chunks.
    """

    def __init__(self, schema):
        self.schema = schema
        self._first: dict = {}

    def __call__(self, table: pa.Table, enriched) -> pa.Table:
        ns = enriched["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
        names_in = table.column_names
        if "test_time_s" in names_in:  # read from a BDF file: written back as it was
            test_time = table.column("test_time_s")
        elif self.schema.time_kind == "seconds":  # the time was test time from --date: the same seconds
            test_time = pa.array((ns - np.datetime64(self.schema.date, "ns").view("int64")) / 1e9)
        else:
            entity = enriched["entity"].astype(str).to_numpy(dtype=object)
            first = np.empty(len(ns), dtype="int64")
            for i, (e, t) in enumerate(zip(entity.tolist(), ns.tolist(), strict=True)):
                first[i] = self._first.setdefault(e, t)
            test_time = pa.array((ns - first) / 1e9)
        cols, names = [], []
        for name, col in zip(names_in, table.columns, strict=True):
            if name == self.schema.time:
                cols += [test_time, pa.array(ns / 1e9)]
                names += ["Test Time / s", "Unix Time / s"]
            elif name not in ("test_time_s", "unix_time_s"):
                cols.append(col)
                names.append(_WRITE.get(name, name))
        return pa.Table.from_arrays(cols, names=names)
