"""sbg detect on one process and on 1, 2 and 4 Dask workers, side by side in one run.

    python benchmarks/scaling.py [--entities 200] [--hours 24] [--workers 1,2,4]

1. Writes a fleet archive (``--entities`` batteries at 1 Hz for ``--hours``
   hours, four signals, with faults) as a Parquet dataset of one file per
   hour, into benchmarks/_data/scaling/. The default is 200 x 1 day:
   17,280,000 rows.
2. Runs ``sbg detect ARCHIVE -o OUT.parquet`` as a child process, first on
   one process (the reference), then with ``--workers N`` for each N, and
   reports wall time end to end (imports and cluster start included),
   rows/s, the time relative to the single-process run, and the peak RSS of
   the client and of each worker process (sampled every 0.2 s with psutil).
3. Checks that every run found the same rows, flags and alerts, and that
   the alert logs are identical.

The load average is printed with each figure: the machine is shared, and a
busy neighbour slows every run. Timings are single runs; the ratios taken in
the same run are the figures to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "_data" / "scaling"


def write_archive(folder: Path, entities: int, hours: int, seed: int = 0) -> int:
    """One Parquet file per hour, every battery every second; returns the rows written."""
    marker = folder / "_done.json"
    want = {"entities": entities, "hours": hours, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return entities * hours * 3600
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ids = np.array([f"bat-{i:04d}" for i in range(entities)], dtype=object)
    offset = rng.normal(0, 1, entities)
    t0 = np.datetime64("2024-01-01T00:00:00", "s").astype("int64")
    for h in range(hours):
        secs = np.arange(h * 3600, (h + 1) * 3600)
        n = len(secs) * entities
        k = np.repeat(secs, entities)
        e = np.tile(np.arange(entities), len(secs))
        current = 5 * np.sin(k / 1800 + e) + rng.normal(0, 0.3, n)
        voltage = 3.7 - 0.01 * current + rng.normal(0, 0.003, n)
        temp = 25 + offset[e] + 0.2 * np.sin(k / 3600) + rng.normal(0, 0.05, n)
        soc = 80 - (k % 20000) / 400 + rng.normal(0, 0.05, n)
        spikes = rng.random(n) < 2e-6
        voltage[spikes] += 0.8
        hot = (e % 50 == 7) & (k % 43200 > 40000) & (k % 43200 < 40300)
        temp[hot] += 30
        table = pa.table({
            "timestamp": pa.array(t0 + k, pa.timestamp("s")),
            "battery_id": pa.array(ids[e], pa.string()),
            "voltage_v": np.round(voltage, 4), "current_a": np.round(current, 3),
            "temperature_c": np.round(temp, 2), "soc_pct": np.round(soc, 2),
        })
        pq.write_table(table, folder / f"hour={h:02d}.parquet", row_group_size=1 << 17)
    marker.write_text(json.dumps(want))
    return entities * hours * 3600


class PeakRSS:
    """Peak resident memory of a process and of each of its descendants, sampled on a thread."""

    def __init__(self, pid: int, every: float = 0.2):
        self.root = psutil.Process(pid)
        self.peaks: dict[int, tuple[int, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every):
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    cmd = " ".join(p.cmdline())
                except psutil.Error:
                    continue
                if rss > self.peaks.get(p.pid, (0, ""))[0]:
                    self.peaks[p.pid] = (rss, cmd)
            self._stop.wait(every)

    def stop(self) -> tuple[int, list[int]]:
        """``(client peak, [peak of each worker process])`` in bytes."""
        self._stop.set()
        self._thread.join()
        client = self.peaks.get(self.root.pid, (0, ""))[0]
        # Worker processes are spawned children; the resource tracker is a child too, and small.
        workers = [rss for pid, (rss, cmd) in self.peaks.items()
                   if pid != self.root.pid and "resource_tracker" not in cmd]
        return client, sorted(workers, reverse=True)


def run_detect(archive: Path, out: Path, workers: int | None) -> dict:
    db = out.with_suffix(".sqlite")
    for p in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm")):
        p.unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    summary = out.with_suffix(".json")
    cmd = [sys.executable, "-m", "sbg.cli", "detect", str(archive), "-o", str(out), "--alerts-db", str(db),
           "--summary-json", str(summary)]
    if workers:
        cmd += ["--workers", str(workers)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss = PeakRSS(proc.pid)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    client, worker_peaks = rss.stop()
    if proc.returncode != 0:
        raise SystemExit(f"sbg detect failed ({proc.returncode}):\n{stderr}")
    s = json.loads(summary.read_text())
    with sqlite3.connect(db) as conn:
        alerts = conn.execute("SELECT * FROM alerts ORDER BY id").fetchall()
    return {"workers": workers, "seconds": seconds, "rows": s["rows_in"], "flagged": s["rows_flagged"],
            "alerts": alerts, "client_rss": client, "worker_rss": worker_peaks if workers else [],
            "load_before": load_before, "load_after": os.getloadavg(), "stdout": stdout}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=200)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    ap.add_argument("--keep", action="store_true", help="keep the outputs in benchmarks/_data/scaling_out")
    args = ap.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",") if w.strip()]

    archive = DATA / f"fleet_{args.entities}x{args.hours}h.parquet"
    t0 = time.perf_counter()
    rows = write_archive(archive, args.entities, args.hours)
    size = sum(p.stat().st_size for p in archive.glob("*.parquet"))
    print(f"archive: {archive} ({rows:,} rows, {args.entities} entities x {args.hours} h at 1 Hz, "
          f"{len(list(archive.glob('*.parquet')))} files, {size / 1e6:,.0f} MB; ready in {time.perf_counter() - t0:.0f}s)")
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    outdir = ROOT / "_data" / "scaling_out"
    outdir.mkdir(parents=True, exist_ok=True)
    results = []
    for workers in [None, *counts]:
        label = "single process" if workers is None else f"{workers} worker{'s' if workers > 1 else ''}"
        r = run_detect(archive, outdir / f"flags_{workers or 0}.parquet", workers)
        results.append(r)
        print(f"  {label:<15} {r['seconds']:7.1f}s  {r['rows'] / r['seconds']:>10,.0f} rows/s  "
              f"load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}", flush=True)
    base = results[0]
    print()
    print(f"{'run':<15} {'time':>8} {'rows/s':>11} {'time vs 1 process':>18} {'client RSS':>11} "
          f"{'peak RSS per worker':>22}   load (1 min) before -> after")
    for r in results:
        label = "single process" if r["workers"] is None else f"{r['workers']} workers"
        workers = ", ".join(f"{b / 2**20:,.0f}" for b in r["worker_rss"][: r["workers"] or 0]) or "-"
        print(f"{label:<15} {r['seconds']:7.1f}s {r['rows'] / r['seconds']:>11,.0f} "
              f"{r['seconds'] / base['seconds']:>17.2f}x {r['client_rss'] / 2**20:>8,.0f} MB "
              f"{workers + ' MB':>22}   {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}")
    same = all(r["rows"] == base["rows"] and r["flagged"] == base["flagged"] and r["alerts"] == base["alerts"]
               for r in results)
    print(f"\nsame rows, flags and alert log in every run: {'yes' if same else 'NO'} "
          f"({base['rows']:,} rows, {base['flagged']:,} flagged, {len(base['alerts'])} alerts)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.keep:
        shutil.rmtree(outdir, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
