"""Emit-to-browser latency of the served dashboard, measured in a real browser.

    python benchmarks/latency.py [--minutes 10] [--sessions 1] [--speed 100x] [--shots artifacts]

Real ``panel serve`` (the command ``sbg serve`` builds) runs in a subprocess
on a generated fleet of 8 entities at 1 Hz, long enough that the replay at
``--speed`` lasts the whole run. Headless Chromium opens ``--sessions`` tabs
and clicks Start. The served app is ``apps/monitor.py`` plus one more
subscriber that logs each emitted chunk's wall-clock time and the last
timestamp of each entity in it (``benchmarks/_latency_app.py``).

In every tab, a hook on each Bokeh ColumnDataSource that holds a
``timestamp`` column records when new rows land in it (its ``streaming``
and ``change`` signals). A chunk has reached a tab when every source that
ever receives its last timestamp holds it; the latency is that moment
minus the emit. Server and browser share this machine's clock.

Printed: chunks matched, p50 / p95 / max latency over all sessions (and the
best and worst session's p95), how many sessions got new rows in at least
half of the polls (every 2 s), the response times of ``/api/status`` (asked
every 2 s while the sessions stream), and the server's RSS at start, its
peak and at the end, sampled every 10 s, with the slope over the second
half (flat memory means about 0 MB/min); the load averages alongside. The server's memory
grows while its retained history fills (``--history-rows``, about 0.7 kB a
row here), so the run uses a retention that fills in the first minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from run import fleet_frame  # noqa: E402

from tests.served import chromium, load, open_tabs, rss_mb, served, timed_status  # noqa: E402

HOOK = """() => {
  const S = window.__sbg = window.__sbg || {seen: new Set(), rec: []};
  if (!window.Bokeh) return 0;
  for (const doc of window.Bokeh.documents)
    for (const m of doc.all_models) {
      if (!m.data || !m.data.timestamp || m.type === "Tabulator" || S.seen.has(m.id)) continue;
      S.seen.add(m.id);
      const id = m.id;
      S.rec.push([Date.now(), id, null]);
      const note = () => {
        const ts = m.data.timestamp;
        if (ts && ts.length) S.rec.push([Date.now(), id, Number(ts[ts.length - 1])]);
      };
      if (m.streaming) m.streaming.connect(note);
      m.change.connect(note);
    }
  return S.seen.size;
}"""
TAKE = "() => { const S = window.__sbg; if (!S) return []; const r = S.rec; S.rec = []; return r; }"


def write_fleet(path: Path, seconds: int, entities: int = 8) -> Path:
    frame = fleet_frame(seconds * entities, entities=entities)
    frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S")
    return path


def latencies(emits: list, records: list) -> list[float]:
    """Per chunk and tab: when every source that ever holds its last timestamp held it, minus the emit."""
    by_source: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for rid in {r[1] for r in records}:
        rows = [r for r in records if r[1] == rid]
        hooked = min(r[0] for r in rows)
        got = [(r[0], r[2]) for r in rows if r[2] is not None]
        if not got:
            continue
        t = np.array([g[0] for g in got])
        ts = np.maximum.accumulate(np.array([g[1] for g in got]))
        by_source[rid] = (t, ts, hooked)
    out = []
    for wall, _, last in emits:
        target = max(last.values())
        arrivals = []
        for t, ts, hooked in by_source.values():
            if hooked > wall or ts[-1] < target:
                continue
            arrivals.append(t[np.searchsorted(ts, target)])
        if arrivals:
            out.append(max(arrivals) - wall)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--speed", default="100x")
    ap.add_argument("--history-rows", type=int, default=120_000,
                    help="the server's history retention (sbg.yaml history.max_rows); memory grows until it is "
                         "full, so it must fill well inside the run for the slope to mean anything")
    ap.add_argument("--browser-nice", type=int, default=0,
                    help="run Chromium at this lower CPU priority (10 for many sessions: viewers' browsers run on "
                         "their own machines, here they share the server's cores)")
    ap.add_argument("--shots", type=Path, default=None, help="save a screenshot of the first and last tab here")
    opts = ap.parse_args(argv)
    factor = float(opts.speed.rstrip("x"))
    seconds = int(opts.minutes * 60 * factor * 1.1) + 600
    print(f"latency: {opts.sessions} session(s) at {opts.speed} for {opts.minutes:g} min, browser nice "
          f"{opts.browser_nice}; {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sbg-latency-") as tmp:
        tmp = Path(tmp)
        data = write_fleet(tmp / "fleet.csv", seconds)
        config = tmp / "sbg.yaml"
        config.write_text(f"history: {{max_rows: {opts.history_rows}}}\n")
        emits_path = tmp / "emits.jsonl"
        emits_path.touch()
        records: list[list] = []
        rss, status_ms, loads = [], [], []
        slow = []  # (seconds after Start, ms) of every /api/status answer over 500 ms
        fresh = [0] * opts.sessions  # polls in which each session's plots got new rows
        with chromium(nice=opts.browser_nice) as browser, served(tmp / "serve.log", data, "--speed", opts.speed, "--data-dir", tmp,
                                           "--config", config, app=HERE / "_latency_app.py",
                                           env={"SBG_BENCH_EMITS": str(emits_path)}, check_log=False) as base:
            t_open = time.monotonic()
            tabs = open_tabs(browser, base, opts.sessions, path="/_latency_app")
            print(f"  {opts.sessions} session(s) open in {time.monotonic() - t_open:.0f} s", flush=True)
            for tab in tabs:
                tab.page.evaluate(HOOK)
            st, _ = timed_status(base)
            rss.append((0.0, rss_mb(st)))
            tabs[0].click("Start")
            t0 = time.monotonic()
            stop = threading.Event()
            unanswered = [0]

            def watch_server():
                # Its own thread: with many tabs at a low priority one round of page polls can take
                # minutes, and the server must be asked every 2 s whatever the pages do.
                next_rss = 10.0
                while not stop.wait(2.0):
                    elapsed = time.monotonic() - t0
                    try:
                        st, ms = timed_status(base, timeout=30)
                    except OSError:  # a timeout: counted, and the run goes on
                        unanswered[0] += 1
                        continue
                    status_ms.append(ms)
                    if ms > 500:
                        slow.append((round(elapsed), round(ms)))
                    if elapsed >= next_rss:
                        rss.append((elapsed, rss_mb(st)))
                        loads.append(load())
                        next_rss += 10.0
                        pace = st.get("display", {})
                        print(f"  {elapsed:6.0f} s  rows_in {st['metrics']['rows_in']:>9,}  sessions {st['sessions']}  "
                              f"RSS {rss[-1][1]:7.1f} MB  /api/status {ms:5.0f} ms  stretch {pace.get('stretch', 1):4.1f}  "
                              f"loop lag p95 {pace.get('lag_p95_ms', 0):5.0f} max {pace.get('lag_max_ms', 0):5.0f} ms  full GCs {pace.get('full_collections', 0)} "
                              f"(longest {pace.get('full_collection_max_ms', 0):.0f} ms)  {loads[-1]}", flush=True)

            watcher = threading.Thread(target=watch_server, name="status", daemon=True)
            watcher.start()
            polls = 0
            while time.monotonic() - t0 < opts.minutes * 60:
                time.sleep(2.0)
                polls += 1
                for i, tab in enumerate(tabs):
                    tab.page.evaluate(HOOK)
                    got = tab.page.evaluate(TAKE)
                    fresh[i] += any(r[2] is not None for r in got)
                    records += [[r[0], f"{i}:{r[1]}", r[2]] for r in got]
            stop.set()
            watcher.join()
            time.sleep(1.0)
            for i, tab in enumerate(tabs):
                records += [[r[0], f"{i}:{r[1]}", r[2]] for r in tab.page.evaluate(TAKE)]
            if opts.shots:
                opts.shots.mkdir(parents=True, exist_ok=True)
                try:
                    tabs[0].page.screenshot(path=str(opts.shots / "latency_run.png"))
                    if len(tabs) > 1:
                        tabs[-1].page.bring_to_front()
                        tabs[-1].page.wait_for_timeout(1000)
                        tabs[-1].page.screenshot(path=str(opts.shots / "latency_run_last_session.png"))
                except PlaywrightError as exc:  # a starved renderer (--browser-nice) may not paint in time
                    print(f"  screenshot not taken: {str(exc).splitlines()[0]}", flush=True)
            errors = sum(len(tab.errors) for tab in tabs)
            kinds = Counter(e[:160] for tab in tabs for e in tab.errors).most_common(3)
        emits = [json.loads(line) for line in emits_path.read_text().splitlines() if line]
    per_session = []
    for i in range(opts.sessions):
        mine = [r for r in records if r[1].startswith(f"{i}:")]
        per_session.append(latencies(emits, mine))
    lat = np.array([x for one in per_session for x in one])
    ms = np.array(status_ms)
    print(f"\nemit-to-browser latency, {opts.sessions} session(s) (browser nice {opts.browser_nice}), "
          f"{opts.speed}, 8 entities at 1 Hz, "
          f"{opts.minutes:g} min, history retention {opts.history_rows:,} rows; {load()}")
    print(f"  chunks emitted     {len(emits):,}  ({sum(e[1] for e in emits):,} rows)")
    print(f"  chunk arrivals     {len(lat):,}  (chunks x sessions)")
    if len(lat):
        print(f"  p50 / p95 / max    {np.percentile(lat, 50):.0f} / {np.percentile(lat, 95):.0f} / "
              f"{lat.max():.0f} ms   (target p95 <= 250 ms)")
    if opts.sessions > 1:
        p95s = [np.percentile(one, 95) for one in per_session if len(one)]
        print(f"  per-session p95    best {min(p95s):.0f} ms, worst {max(p95s):.0f} ms")
    print(f"  sessions updating  {sum(f >= polls // 2 for f in fresh)} of {opts.sessions} got rows in at least "
          f"half of the {polls} polls (fewest {min(fresh)}); console errors {errors}")
    for text, n in kinds:
        print(f"    {n:5d} x {text}")
    print(f"  /api/status        p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms, "
          f"max {ms.max():.0f} ms over {len(ms)} requests (target < 500 ms); {unanswered[0]} not answered in 30 s")
    print(f"  answers > 500 ms   {', '.join(f'{m} ms at {t} s' for t, m in slow) or 'none'}")
    half = [(t, m) for t, m in rss if t >= opts.minutes * 30]
    slope = np.polyfit([t for t, _ in half], [m for _, m in half], 1)[0] * 60 if len(half) >= 3 else float("nan")
    print(f"  server RSS         start {rss[0][1]:.0f} MB, peak {max(m for _, m in rss):.0f} MB, "
          f"end {rss[-1][1]:.0f} MB; second-half slope {slope:+.2f} MB/min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
