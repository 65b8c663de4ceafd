"""A 2 GB CSV through sbg: streamed, never loaded whole.

    python benchmarks/bigfile.py [--gb 2] [--slice-mb 200]

1. Writes a ~2 GB long-format fleet file (8 batteries at 1 Hz, four signals)
   into a temporary directory, block by block with pyarrow.
2. Runs ``sbg validate FILE`` and ``sbg detect FILE -o OUT`` as child
   processes and reports wall time, rows/s and peak RSS (``os.wait4``), next
   to the file size: memory must stay flat however large the file is.
3. On a 200 MB slice of the same file (cut at a line end), times the read
   throughput of ``sbg validate`` against ``pandas.read_csv``, each in its
   own child process, timed from inside after its imports, side by side in
   one run. ``sbg validate`` does more than read: it types every column and
   checks every row; ``pandas.read_csv`` holds the whole frame in memory.

Everything generated is deleted at the end. Timings are single runs on a
shared, noisy machine; the ratio is the figure to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

HEADER = b"timestamp,battery_id,voltage,current,temp,soc\n"
ENTITIES = 8
BLOCK_ROWS = 1 << 20  # a multiple of ENTITIES: every block starts at a whole second


def write_fleet_csv(path: Path, target_bytes: int | None = None, rows: int | None = None, seed: int = 0) -> int:
    """Write a fleet CSV of about ``target_bytes`` (or exactly ``rows`` rows); return the number of rows.

    Time-major like a logger writes it: every second, one row per battery.
    Values are rounded so each row is about 60 bytes.
    """
    rng = np.random.default_rng(seed)
    ids = pa.array(np.tile(np.array([f"bat-{i}" for i in range(ENTITIES)], dtype=object), BLOCK_ROWS // ENTITIES))
    t0 = np.datetime64("2024-01-01T00:00:00", "s").astype("int64")
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    written = 0
    with open(path, "wb") as fh:
        fh.write(HEADER)
        while (rows is None or written < rows) and (target_bytes is None or fh.tell() < target_bytes):
            n = BLOCK_ROWS if rows is None else min(BLOCK_ROWS, rows - written)
            k = np.arange(written, written + n)
            current = 5 * np.sin(k / 7200) + rng.normal(0, 0.5, n)
            table = pa.table({
                "timestamp": pa.array(t0 + k // ENTITIES, pa.timestamp("s")).cast(pa.string()),
                "battery_id": ids.slice(0, n),
                "voltage": np.round(3.7 - 0.02 * current + rng.normal(0, 0.002, n), 4),
                "current": np.round(current, 3),
                "temp": np.round(25 + 3 * np.sin(k / 50000) + rng.normal(0, 0.05, n), 2),
                "soc": np.round(60 + 20 * np.sin(k / 200000), 2),
            })
            pacsv.write_csv(table, fh, options)
            written += n
    return written


def run_child(args, cwd=None) -> dict:
    """Run ``args`` as a child process: exit code, wall seconds, peak RSS (MB), stdout and stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd)
        # wait4 gives this child's own peak RSS (getrusage(RUSAGE_CHILDREN) is the max over all children).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return {"code": proc.returncode, "seconds": seconds, "peak_mb": usage.ru_maxrss / 1024,
                "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}


SBG = [sys.executable, "-m", "sbg.cli"]

_TIMED_SBG = """
import contextlib, io, json, sys, time
import sbg.stream.batch, sbg.cli, sbg.io.sources  # imports are not reading
t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = sbg.cli.main(["validate", sys.argv[1], "--json", "--show", "0"])
seconds = time.perf_counter() - t
print(json.dumps({"code": code, "seconds": seconds, "rows": json.loads(out.getvalue())["rows_in"]}))
"""

_TIMED_PANDAS = """
import json, sys, time
import pandas as pd
t = time.perf_counter()
frame = pd.read_csv(sys.argv[1])
print(json.dumps({"code": 0, "seconds": time.perf_counter() - t, "rows": len(frame)}))
"""


def timed(script: str, path: Path) -> dict:
    result = run_child([sys.executable, "-c", script, str(path)])
    if result["code"] != 0:
        raise SystemExit(f"child failed: {result['stderr'][-2000:]}")
    return {**json.loads(result["stdout"].strip().splitlines()[-1]), "peak_mb": result["peak_mb"]}


def slice_of(path: Path, out: Path, nbytes: int) -> Path:
    """The first ``nbytes`` of ``path``, cut at a line end."""
    with open(path, "rb") as src, open(out, "wb") as dst:
        data = src.read(nbytes)
        dst.write(data[: data.rfind(b"\n") + 1])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=2.0, help="size of the big file in GB (default 2)")
    parser.add_argument("--slice-mb", type=int, default=200, help="slice read by both sbg and pandas (default 200)")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="sbg-bigfile-"))
    try:
        big = tmp / "fleet.csv"
        t0 = time.perf_counter()
        rows = write_fleet_csv(big, target_bytes=int(args.gb * 1e9))
        size = big.stat().st_size
        print(f"generated {big.name}: {size / 1e9:.2f} GB, {rows:,} rows in {time.perf_counter() - t0:.1f}s", flush=True)

        print(f"\n{'command':<14} {'wall s':>8} {'rows/s':>12} {'MB/s':>8} {'peak RSS MB':>12}")
        figures = {}
        for name, cmd in (("sbg validate", [*SBG, "validate", big]),
                          ("sbg detect", [*SBG, "detect", big, "-o", tmp / "out.csv"])):
            result = run_child([str(c) for c in cmd], cwd=repo)
            if result["code"] != 0:
                raise SystemExit(f"{name} failed ({result['code']}): {result['stderr'][-2000:]}")
            figures[name] = result
            (tmp / "out.csv").unlink(missing_ok=True)
            print(f"{name:<14} {result['seconds']:>8.1f} {rows / result['seconds']:>12,.0f} "
                  f"{size / 1e6 / result['seconds']:>8.1f} {result['peak_mb']:>12,.0f}", flush=True)

        part = slice_of(big, tmp / "slice.csv", args.slice_mb * 10**6)
        big.unlink()
        part_mb = part.stat().st_size / 1e6
        ours = timed(_TIMED_SBG, part)
        theirs = timed(_TIMED_PANDAS, part)
        assert ours["rows"] == theirs["rows"], (ours, theirs)
        print(f"\n{part_mb:.0f} MB slice, {ours['rows']:,} rows, timed inside each child after imports:")
        for name, r in (("sbg validate", ours), ("pandas.read_csv", theirs)):
            print(f"  {name:<16} {r['seconds']:>7.2f}s  {part_mb / r['seconds']:>7.1f} MB/s  "
                  f"{r['rows'] / r['seconds']:>12,.0f} rows/s  peak RSS {r['peak_mb']:>6,.0f} MB")
        print(f"  read throughput, sbg validate / pandas.read_csv: {theirs['seconds'] / ours['seconds']:.2f}x")
        print(f"\n2 GB file: peak RSS {max(r['peak_mb'] for r in figures.values()):,.0f} MB "
              f"for a {size / 1e6:,.0f} MB file (streamed, never loaded whole)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
