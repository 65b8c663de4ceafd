"""Soak: a long looped replay at full speed with tabs watching; the server's memory must stay flat.

    python benchmarks/soak.py [--minutes 30] [--speed max] [--tabs 1] [--every 10] [FILE]

Real ``sbg serve FILE --speed max --loop --autostart`` runs in a subprocess
(the bundled fleet by default). ``--tabs`` dashboard tabs in headless
Chromium watch it the whole time. Every ``--every`` seconds the server's
``/api/status`` is read: RSS (``process.rss_bytes``), rows in, loops and
pipeline errors, and how long the request took; each tab is checked for new
rows on its plots.

The server's memory grows while the retained history fills (``history.max_rows``
rows, 500,000 by default), so the warm-up lasts until the rows replayed pass
that retention and at least ``--warmup`` minutes. Printed: RSS at the start,
after the warm-up and at the end; the slope in MB/min over the second half
of the run (a least-squares line; flat memory is about 0) and the range after
the warm-up; rows replayed, loops, errors; the load averages of this 2-core
machine. With ``--objects`` the server is started with ``SBG_DEBUG_OBJECTS=1``
and the most common live object types after the warm-up and at the end are
compared, to see what grows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.served import chromium, load, objects, open_tabs, rss_mb, served, timed_status  # noqa: E402


def slope_mb_per_min(samples, since_s: float) -> float:
    """Least-squares slope of RSS (MB) over time after ``since_s``, per minute.

    >>> slope_mb_per_min([(0, 100.0), (60, 101.0), (120, 102.0), (180, 103.0)], 0)
    1.0
    """
    part = [(t, mb) for t, mb, *_ in samples if t >= since_s]
    if len(part) < 3:
        return float("nan")
    return round(float(np.polyfit([t for t, _ in part], [mb for _, mb in part], 1)[0] * 60), 4)


def soak(base: str, browser, minutes: float, tabs: int, every: float, retention: int, warmup_min: float,
         debug_objects=False, report=print) -> dict:
    """Watch the served replay with ``tabs`` tabs for ``minutes``; returns the samples and figures.

    With ``debug_objects`` (a server started with ``SBG_DEBUG_OBJECTS=1``), the live
    objects are counted once the warm-up is over and at the end.
    """
    t0 = time.monotonic()
    first, ms = timed_status(base)
    samples, status_ms = [(0.0, rss_mb(first), first["metrics"]["rows_in"], first["replay"]["loops"],
                           first["metrics"]["errors"])], [ms]
    pages = open_tabs(browser, base, tabs)
    seen = [tab.fingerprint() for tab in pages]
    fresh = [0] * tabs  # samples in which each tab had new rows on its plots
    warm_at = None
    counted = {}
    while True:
        elapsed = time.monotonic() - t0
        st, ms = timed_status(base)
        status_ms.append(ms)
        m, r = st["metrics"], st["replay"]
        samples.append((elapsed, rss_mb(st), m["rows_in"], r["loops"], m["errors"]))
        for i, tab in enumerate(pages):
            now = tab.fingerprint()
            fresh[i] += now != seen[i]
            seen[i] = now
        if warm_at is None and m["rows_in"] >= retention and elapsed >= warmup_min * 60:
            warm_at = elapsed
            if debug_objects:
                counted["warm"] = objects(base)
        report(f"  {elapsed:6.0f} s  RSS {rss_mb(st):7.1f} MB  rows_in {m['rows_in']:>11,}  loops {r['loops']:>4}"
               f"  errors {m['errors']}  state {r['state']}  /api/status {ms:4.0f} ms  {load()}", flush=True)
        if elapsed >= minutes * 60:
            break
        time.sleep(max(0.0, every - (time.monotonic() - t0 - elapsed)))
    if debug_objects:
        counted["end"] = objects(base)
    for tab in pages:
        tab.close()
    return {"samples": samples, "status_ms": status_ms, "fresh": fresh, "warm_at": warm_at, "first": first,
            "last": st, "objects": counted}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", default=str(ROOT / "data" / "battery_fleet.csv.gz"))
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--speed", default="max")
    ap.add_argument("--tabs", type=int, default=1)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=5.0, help="minutes of warm-up at least")
    ap.add_argument("--objects", action="store_true", help="compare live object types after warm-up and at the end")
    opts = ap.parse_args(argv)
    from sbg.config import Settings

    retention = Settings().make_history().max_rows
    env = {"SBG_DEBUG_OBJECTS": "1"} if opts.objects else None
    print(f"soak: {Path(opts.file).name} at {opts.speed} with --loop, {opts.tabs} tab(s), {opts.minutes:g} min; "
          f"{load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sbg-soak-") as tmp, chromium() as browser, \
            served(Path(tmp) / "serve.log", opts.file, "--speed", opts.speed, "--loop", "--autostart",
                   env=env) as base:
        result = soak(base, browser, opts.minutes, opts.tabs, opts.every, retention, opts.warmup, opts.objects)
    samples = result["samples"]
    half = opts.minutes * 30
    warm_at = result["warm_at"]
    warm = next((s for s in samples if warm_at is not None and s[0] >= warm_at), None)
    after_warm = [mb for t, mb, *_ in samples if warm_at is not None and t >= warm_at]
    ms = np.array(result["status_ms"])
    last = result["last"]
    print(f"\nsoak of {Path(opts.file).name} at {opts.speed}, looped, {opts.tabs} tab(s), {opts.minutes:g} min "
          f"(history retention {retention:,} rows); {load()}")
    print(f"  rows replayed      {last['metrics']['rows_in']:,} in {last['replay']['loops']} loops; "
          f"errors {last['metrics']['errors']}; rows_in = ok + quarantined: "
          f"{last['metrics']['rows_in'] == last['metrics']['rows_ok'] + last['metrics']['rows_quarantined']}")
    print(f"  RSS start          {samples[0][1]:.1f} MB")
    if warm is not None:
        print(f"  RSS after warm-up  {warm[1]:.1f} MB at {warm[0] / 60:.1f} min; since then "
              f"{min(after_warm):.1f} to {max(after_warm):.1f} MB")
    else:
        print("  RSS after warm-up  (the retention never filled: run longer)")
    print(f"  RSS end            {samples[-1][1]:.1f} MB")
    print(f"  slope, 2nd half    {slope_mb_per_min(samples, half):+.3f} MB/min")
    print(f"  /api/status        p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms, "
          f"max {ms.max():.0f} ms over {len(ms)} requests")
    print(f"  tabs with new rows {', '.join(f'{f}/{len(samples) - 1}' for f in result['fresh'])} samples")
    for when, counts in result["objects"].items():
        print(f"  live objects, {when:4s} {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
