"""Session churn: open and close many dashboard sessions; memory and counts must come back.

    python benchmarks/churn.py [--sessions 200] [--batch 10] [--speed max] [--objects]

Real ``sbg serve`` in a subprocess replays the bundled fleet to its end. Each
session is a tab in its own Playwright context in headless Chromium:
``--batch`` tabs are opened until their dashboards show, held open together,
then closed. After a warm-up of one batch, the server's RSS, session count
and monitor subscribers are read from ``/api/status`` before the churn,
after every five batches and at the end. With ``--objects`` the server runs
with ``SBG_DEBUG_OBJECTS=1`` and the live Dashboards, Bokeh Documents,
Buffers and Panel and Bokeh models are counted too: a leak grows them with
every batch, a high-water mark of the allocator does not. Also used, with
fewer sessions, by ``tests/test_load.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.served import chromium, load, objects, open_tabs, rss_mb, served, status  # noqa: E402


def settle(base: str, sessions: int, timeout: float = 60.0) -> dict:
    """Wait until the server holds at most ``sessions`` sessions and subscribers; returns the status then."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(base)
        if st["sessions"] <= sessions and st["subscribers"] <= sessions or time.monotonic() > deadline:
            return st
        time.sleep(0.5)


def batch(browser, base: str, n: int, during=None):
    """Open ``n`` tabs (a browser context each) until their dashboards show, call ``during()``, close them."""
    tabs = open_tabs(browser, base, n)
    result = during() if during else None
    for tab in tabs:
        tab.close()
    return result


def churn(browser, base: str, total: int, size: int, debug_objects=False, warmup=True, report=print) -> dict:
    """Open and close ``total`` tabs, ``size`` at a time, after a warm-up batch; returns before/after figures.

    ``rounds`` holds, after every five batches (once their sessions are
    freed), the tabs opened so far, the RSS in MB and, with ``debug_objects``,
    the live object counts.
    """
    if warmup:
        batch(browser, base, size)
    before = settle(base, 0)
    count = (lambda: objects(base)) if debug_objects else dict
    rounds = [(0, rss_mb(before), count())]
    peak_sessions = 0
    opened = 0
    t0 = time.monotonic()
    while opened < total:
        n = min(size, total - opened)
        peak_sessions = max(peak_sessions, batch(browser, base, n, lambda: status(base)["sessions"]))
        opened += n
        if opened % (size * 5) == 0 or opened == total:
            st = settle(base, before["sessions"])
            rounds.append((opened, rss_mb(st), count()))
            report(f"  {opened:4d} sessions opened and closed  RSS {rss_mb(st):6.1f} MB  live sessions "
                   f"{st['sessions']}  subscribers {st['subscribers']}  {load()}"
                   + (f"\n        objects {rounds[-1][2]}" if debug_objects else ""), flush=True)
    elapsed = time.monotonic() - t0
    after = settle(base, before["sessions"])
    return {"before": before, "after": after, "opened": opened, "peak_sessions": peak_sessions,
            "seconds": elapsed, "rounds": rounds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--speed", default="max",
                    help="replay speed; the churn starts once the replay has finished, so that the memory "
                         "the run itself retains (its history) is not counted as the sessions'")
    ap.add_argument("--objects", action="store_true", help="count live objects (SBG_DEBUG_OBJECTS=1)")
    ap.add_argument("--browser-nice", type=int, default=19,
                    help="run Chromium at this lower CPU priority (viewers' browsers run on their own machines, "
                         "here they share the server's cores)")
    opts = ap.parse_args(argv)
    env = {"SBG_DEBUG_OBJECTS": "1"} if opts.objects else None
    print(f"churn: {opts.sessions} sessions, {opts.batch} at a time; {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sbg-churn-") as tmp, chromium(nice=opts.browser_nice) as browser, \
            served(Path(tmp) / "serve.log", "--speed", opts.speed, "--autostart", env=env) as base:
        while status(base)["replay"]["state"] != "finished":  # the first status request starts the replay
            time.sleep(1.0)
        result = churn(browser, base, opts.sessions, opts.batch, opts.objects)
    b, a = result["before"], result["after"]
    print(f"\nsession churn: {result['opened']} sessions, {opts.batch} at a time, after a replay at {opts.speed}, "
          f"{result['seconds']:.0f} s; {load()}")
    print(f"  sessions      before {b['sessions']}, peak {result['peak_sessions']}, after {a['sessions']}")
    print(f"  subscribers   before {b['subscribers']}, after {a['subscribers']}")
    print(f"  server RSS    before {rss_mb(b):.1f} MB, after {rss_mb(a):.1f} MB ({rss_mb(a) - rss_mb(b):+.1f} MB)")
    print("  RSS by tabs   " + ", ".join(f"{n}: {mb:.0f}" for n, mb, _ in result["rounds"]))
    if opts.objects:
        first, last = result["rounds"][0][2], result["rounds"][-1][2]
        print("  live objects  " + ", ".join(f"{k} {first[k]} -> {last[k]}" for k in first if k != "top_types"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
