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

Printed: chunks matched, p50 / p95 / max latency per run, and the server's
RSS at start, its peak and at the end, sampled every 10 s, with the slope
over the second half (flat memory means about 0 MB/min). The server's memory
grows while its retained history fills (``--history-rows``, about 0.7 kB a
row here), so the run uses a retention that fills in the first minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import fleet_frame  # noqa: E402

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
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def status(base: str) -> dict:
    with urllib.request.urlopen(base + "/api/status", timeout=10) as r:
        return json.loads(r.read())


def write_fleet(path: Path, seconds: int, entities: int = 8) -> Path:
    frame = fleet_frame(seconds * entities, entities=entities)
    frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S")
    return path


def start_server(data: Path, speed: str, emits: Path, log: Path, history_rows: int):
    from sbg.cli import build_parser, serve_command

    port = free_port()
    config = data.with_name("sbg.yaml")
    config.write_text(f"history: {{max_rows: {history_rows}}}\n")
    args = build_parser().parse_args(["serve", str(data), "--port", str(port), "--speed", speed,
                                      "--data-dir", str(data.parent), "--config", str(config)])
    args.panel_args = []
    cmd, env = serve_command(args)
    app = next(i for i, a in enumerate(cmd) if a.endswith("monitor.py"))
    cmd[app] = str(HERE / "_latency_app.py")
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, env={**os.environ, **env, "SBG_BENCH_EMITS": str(emits)}, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, wait_until_up(proc, port, log)


def wait_until_up(proc, port: int, log: Path) -> str:
    """The server's base URL once ``/api/status`` answers; exits with its log if it never does."""
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status(base)
            return base
        except OSError:
            time.sleep(0.3)
    stop(proc)
    raise SystemExit("the server did not come up:\n" + log.read_text())


def stop(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


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
    ap.add_argument("--shots", type=Path, default=None, help="save a screenshot of the first tab here")
    opts = ap.parse_args(argv)
    factor = float(opts.speed.rstrip("x"))
    seconds = int(opts.minutes * 60 * factor * 1.1) + 600
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="sbg-latency-") as tmp:
        tmp = Path(tmp)
        data = write_fleet(tmp / "fleet.csv", seconds)
        emits_path, log = tmp / "emits.jsonl", tmp / "serve.log"
        emits_path.touch()
        proc, base = start_server(data, opts.speed, emits_path, log, opts.history_rows)
        records: list[list] = []
        rss = []
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=CHROME_ARGS)
                tabs = []
                for i in range(opts.sessions):
                    ctx = browser.new_context(viewport={"width": 1366, "height": 768})
                    page = ctx.new_page()
                    page.goto(base + "/_latency_app")
                    page.wait_for_selector(".sbg-kpis", timeout=120_000)
                    tabs.append((i, page))
                for _, page in tabs:
                    page.evaluate(HOOK)
                rss.append((0.0, rss_mb(proc.pid)))
                tabs[0][1].get_by_role("button", name="Start", exact=True).click()
                t0 = time.monotonic()
                next_rss = 10.0
                while (elapsed := time.monotonic() - t0) < opts.minutes * 60:
                    time.sleep(2.0)
                    for i, page in tabs:
                        page.evaluate(HOOK)
                        records += [[r[0], f"{i}:{r[1]}", r[2]] for r in page.evaluate(TAKE)]
                    if elapsed >= next_rss:
                        rss.append((elapsed, rss_mb(proc.pid)))
                        next_rss += 10.0
                        answered = time.monotonic()
                        st = status(base)
                        api_ms = (time.monotonic() - answered) * 1000
                        print(f"  {elapsed:6.0f} s  rows_in {st['metrics']['rows_in']:>9,}  "
                              f"RSS {rss[-1][1]:7.1f} MB  /api/status {api_ms:5.0f} ms", flush=True)
                time.sleep(1.0)
                for i, page in tabs:
                    records += [[r[0], f"{i}:{r[1]}", r[2]] for r in page.evaluate(TAKE)]
                if opts.shots:
                    opts.shots.mkdir(parents=True, exist_ok=True)
                    tabs[0][1].screenshot(path=str(opts.shots / "latency_run.png"))
                browser.close()
        except BaseException:
            print(log.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop(proc)
        emits = [json.loads(line) for line in emits_path.read_text().splitlines() if line]
    result = []
    for i in range(opts.sessions):
        mine = [r for r in records if r[1].startswith(f"{i}:")]
        result += latencies(emits, mine)
    lat = np.array(result)
    print(f"\nemit-to-browser latency, {opts.sessions} session(s), {opts.speed}, 8 entities at 1 Hz, "
          f"{opts.minutes:g} min, history retention {opts.history_rows:,} rows")
    print(f"  chunks emitted     {len(emits):,}  ({sum(e[1] for e in emits):,} rows)")
    print(f"  chunk arrivals     {len(lat):,}")
    if len(lat):
        print(f"  p50 / p95 / max    {np.percentile(lat, 50):.0f} / {np.percentile(lat, 95):.0f} / "
              f"{lat.max():.0f} ms   (target p95 <= 250 ms)")
    half = [(t, m) for t, m in rss if t >= opts.minutes * 30]
    slope = np.polyfit([t for t, _ in half], [m for _, m in half], 1)[0] * 60 if len(half) >= 3 else float("nan")
    print(f"  server RSS         start {rss[0][1]:.0f} MB, peak {max(m for _, m in rss):.0f} MB, "
          f"end {rss[-1][1]:.0f} MB; second-half slope {slope:+.2f} MB/min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
