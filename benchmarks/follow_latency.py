"""Append → alert latency of ``sbg watch``: from a line written to a growing file to its alert.

A real ``sbg watch`` process follows a CSV that this script appends to at a
steady rate (20 rows/s by default). Every 40 rows one row breaks a limit;
each such row must raise a new alert. For each we time, from the moment the
line is written and flushed:

* **log**: the alert's row in the SQLite alert log (polled every 5 ms);
* **/metrics**: ``sbg_alerts_total`` counting it (polled every 10 ms);
* **tail -F** (the floor): Debian's ``tail -F`` on the same file printing the line.

The goal (issue 20) is p95 ≤ 1 s. Run: ``python benchmarks/follow_latency.py [--faults 30] [--poll 0.1]``.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.served import free_port, metric_total  # noqa: E402

CONFIG = """
detectors:
  limits: {limits: {v: [0, 10]}, preset: none}
rules:
  - {name: over, detectors: [limits], severity: critical, pending_rows: 1, clear_rows: 5, dedup: 0s}
"""


def alerts_total(port) -> float:
    return metric_total(port, "sbg_alerts_total")


def log_count(db) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
    except sqlite3.Error:
        return -1


def seen_by_tail(tail, marker: str, sent: float, got: dict):
    """Time until ``tail -F`` prints ``marker`` (the floor of following a file)."""
    buf = b""
    while time.monotonic() - sent < 10:
        ready, _, _ = select.select([tail.stdout], [], [], 0.5)
        if ready:
            buf += os.read(tail.stdout.fileno(), 65536)
            if marker.encode() in buf:
                got["tail"] = time.monotonic() - sent
                return


def seen_on_metrics(port, before: float, sent: float, got: dict):
    """Time until ``/metrics`` counts one more alert than ``before``."""
    while time.monotonic() - sent < 10:
        if alerts_total(port) > before:
            got["metrics"] = time.monotonic() - sent
            return
        time.sleep(0.01)


def stats(values) -> str:
    a = np.asarray(values) * 1000
    return (f"{a.min():7.0f} {np.median(a):7.0f} {np.percentile(a, 95):7.0f} {a.max():7.0f}"
            if len(a) else "      -       -       -       -")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", type=int, default=30)
    ap.add_argument("--rate", type=float, default=20.0, help="rows per second appended")
    ap.add_argument("--poll", type=float, default=0.1, help="sbg watch --poll")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="sbg-follow-"))
    data, db, cfg = tmp / "bench.csv", tmp / "alerts.sqlite", tmp / "sbg.yaml"
    cfg.write_text(CONFIG)
    t0 = pd.Timestamp("2024-01-01")
    rows = 0

    def line(value) -> str:
        nonlocal rows
        rows += 1
        return f"{(t0 + pd.Timedelta(seconds=rows)).isoformat()},{value:.4f}\n"

    with open(data, "w") as fh:
        fh.write("time,v\n" + "".join(line(5 + 0.01 * (i % 7)) for i in range(200)))
    port = free_port()
    watch = subprocess.Popen([sys.executable, "-m", "sbg.cli", "watch", str(data), "--alerts-db", str(db),
                              "--config", str(cfg), "--port", str(port), "--poll", str(args.poll), "--quiet"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    tail = subprocess.Popen(["tail", "-n", "0", "-F", str(data)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while alerts_total(port) < 0:
            if time.monotonic() > deadline or watch.poll() is not None:
                print("sbg watch did not come up", file=sys.stderr)
                return 1
            time.sleep(0.1)
        lat_log, lat_metrics, lat_tail = [], [], []
        period = 1.0 / args.rate
        out = open(data, "a")  # noqa: SIM115
        for _ in range(args.faults):
            for _row in range(39):
                out.write(line(5 + 0.01 * (rows % 7)))
                out.flush()
                time.sleep(period)
            before_log, before_metrics = log_count(db), alerts_total(port)
            marker = line(50.0)
            out.write(marker)
            out.flush()
            sent = time.monotonic()
            got = {}
            threads = [threading.Thread(target=seen_by_tail, args=(tail, marker, sent, got)),
                       threading.Thread(target=seen_on_metrics, args=(port, before_metrics, sent, got))]
            for t in threads:
                t.start()
            while time.monotonic() - sent < 10:
                if log_count(db) > before_log:
                    got["log"] = time.monotonic() - sent
                    break
                time.sleep(0.005)
            for t in threads:
                t.join()
            for key, dest in (("log", lat_log), ("metrics", lat_metrics), ("tail", lat_tail)):
                if key in got:
                    dest.append(got[key])
            time.sleep(period)
        out.close()
    finally:
        tail.kill()
        os.killpg(watch.pid, signal.SIGTERM)
        watch.wait(timeout=60)
    load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print(f"append → alert, {args.faults} faults at {args.rate:g} rows/s, sbg watch --poll {args.poll:g}  ({load}, "
          f"{os.cpu_count()} cores)")
    print(f"{'path':<34} {'seen':>5} {'min':>7} {'median':>7} {'p95':>7} {'max':>7}   (ms)")
    for name, values in (("tail -F prints the line (floor)", lat_tail),
                         ("alert in the SQLite log", lat_log), ("alert counted on /metrics", lat_metrics)):
        print(f"{name:<34} {len(values):>5} {stats(values)}")
    p95 = np.percentile(np.asarray(lat_log + lat_metrics), 95) if lat_log else float("inf")
    print(f"goal p95 ≤ 1000 ms: {'met' if p95 <= 1.0 and len(lat_log) == args.faults else 'NOT met'} "
          f"(p95 of both {p95 * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
