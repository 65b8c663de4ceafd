"""How the live dashboard answers in a real JupyterLab: Resume and Pause clicked in the page, what it then shows.

    python benchmarks/notebook_latency.py [--rounds 5] [--seconds 5] [--json FILE] [--shots FOLDER]

Starts JupyterLab as ``tests/test_jupyterlab.py`` does (offline, a fresh
workspace, this environment's kernel), opens ``notebooks/01_quickstart.ipynb``
in headless Chromium and runs every cell (Run All), as a user would. Its
second dashboard is the live one: a replay of the bundled fleet (8 cells,
1 Hz) at 1000x, left paused by the notebook. Before the rounds the page's
kernel is told ``live.replay.loop = True`` (as a user would type it), so
the six-hour log, 21.6 s at 1000x, never runs out mid-round.

Each round, on the live dashboard:

* **Resume -> running shown**: Resume clicked until the live indicator says
  running: the click's round trip through the comm and the kernel;
* **Resume -> rows rise**: Resume clicked until the "Rows in" card changes;
* then, over ``--seconds`` of running: the **rows/s card** (the median of
  its values, read every 250 ms), the **rows/s counted** from the "Rows in"
  card itself, **figure updates/s** (how often new rows land in the live
  dashboard's plots, seen by a 50 ms poll in the page) and the **kernel busy
  share** (how long JupyterLab's kernel indicator shows busy, from the
  kernel's ``statusChanged`` signal);
* **Pause -> paused shown**: Pause clicked until the indicator says paused.

It also counts the data states the live indicator showed from Resume to
Pause (``live``, ``behind``, ``stale``...), the requests that left the
machine and the browser's console errors. A round that never sees its click
answered prints what the kernel says beside what the page shows, and the
console errors (a page whose comm receiver failed stops applying updates).

Prints min, median and max over the rounds, beside the machine's load
averages and core count; ``--json`` writes them too (as in
``benchmarks/results/notebook_latency.json``) and ``--shots`` saves
screenshots of the live dashboard. Figures only: nothing here is a test,
and the tests never assert on speed. Results: ``docs/notebooks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.jupyter import (  # noqa: E402
    console_errors,
    copy_notebooks,
    jupyter,
    offline,
    run_all,
    scroll_to,
    wait_for,
)
from tests.served import chromium, load  # noqa: E402

LIVE = 1  # the quickstart's second dashboard is the live one

#: Installed once in the page: the kernel's busy time (from its status signal) and a count of the
#: moments new rows land in the live dashboard's plots (its Bokeh document, polled every 50 ms).
PROBE = """(live) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const docs = window.Bokeh.documents.filter(
    d => [...d.all_models].some(m => String(m.text || "").includes("sbg-kpis")));
  const doc = docs[live];
  const S = window.__sbgBench = {busyMs: 0, since: kernel.status === "busy" ? performance.now() : null,
                                 updates: 0, last: null};
  kernel.statusChanged.connect((_, status) => {
    const now = performance.now();
    if (status === "busy") { if (S.since === null) S.since = now; }
    else if (S.since !== null) { S.busyMs += now - S.since; S.since = null; }
  });
  const fingerprint = () => {
    const parts = [];
    for (const m of doc.all_models) {
      const ts = m.data && m.data.timestamp;
      if (ts && ts.length && m.type !== "Tabulator") parts.push(m.id + ":" + ts.length + ":" + ts[ts.length - 1]);
    }
    return parts.join(",");
  };
  S.last = fingerprint();
  setInterval(() => { const f = fingerprint(); if (f !== S.last) { S.updates += 1; S.last = f; } }, 50);
  return docs.length;
}"""
#: Panel's comm views per plot, and the page's Bokeh documents (printed when a round fails).
VIEWS = """() => {
  const sv = window.PyViz && window.PyViz.shared_views;
  return {views: sv ? [...sv.entries()].map(([k, v]) => [k, v.length, v.map(x => x.document != null)]) : null,
          docs: window.Bokeh.documents.length};
}"""
#: Runs code in the page's kernel, as a cell would, and returns its result as text.
EXECUTE = """async (code) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const future = kernel.requestExecute({code, store_history: false});
  let result = null;
  future.onIOPub = msg => {
    if (msg.header.msg_type === "execute_result") result = msg.content.data["text/plain"];
    if (msg.header.msg_type === "error") result = msg.content.ename + ": " + msg.content.evalue;
  };
  await future.done;
  return result;
}"""
#: The probe's counters now: wall ms, kernel busy ms (the current busy spell included), plot updates.
READ = """() => {
  const S = window.__sbgBench, now = performance.now();
  return {now, busy: S.busyMs + (S.since === null ? 0 : now - S.since), updates: S.updates};
}"""


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("%", "") or 0)


def _settle(page, read, every_ms=1000):
    """Wait until ``read()`` gives the same value twice ``every_ms`` apart (a paused page drawing its last updates)."""
    last = [read()]

    def same(value):
        unchanged, last[0] = value == last[0], value
        return unchanged

    wait_for(page, lambda: (page.wait_for_timeout(every_ms), read())[1], same, 120, "the paused count to settle")


def _firsts(t0: float, tests: dict, timeout=180.0, sample=None) -> dict:
    """Milliseconds from ``t0`` (``time.perf_counter()`` before a click) until each of ``tests`` first holds.

    The tests are polled together every 20 ms, and ``sample()`` at every poll
    too. The bound only ends a wait that would never end.
    """
    found: dict = {}
    while len(found) < len(tests):
        elapsed = (time.perf_counter() - t0) * 1000
        if elapsed > timeout * 1000:
            raise AssertionError(f"after {timeout:.0f} s still waiting for {sorted(set(tests) - set(found))}")
        for name, test in tests.items():
            if name not in found and test():
                found[name] = elapsed
        if sample is not None:
            sample()
        time.sleep(0.02)
    return found


def _rounds(page, args, live, rows, rate, figures, data_states):
    """Resume, run, Pause, ``args.rounds`` times; the figures go into ``figures`` and ``data_states``."""
    for _ in range(args.rounds):
        # Start each round from a settled page: the paused count no longer moves.
        _settle(page, rows.inner_text)
        before = rows.inner_text()
        scroll_to(live)  # the notebook may have scrolled: a click needs the button drawn
        clicked = time.perf_counter()
        page.locator("button", has_text="Resume").nth(LIVE).click()
        seen = _firsts(clicked, {"running": lambda: live.get_attribute("data-state") == "running",
                        "rise": lambda b=before: rows.inner_text() != b},
                       sample=lambda: data_states.update([live.get_attribute("data-data")]))
        figures["running"].append(seen["running"])
        figures["rise"].append(seen["rise"])
        # Running: the cards and plots as they are read, over the measured span.
        start, first_rows = page.evaluate(READ), _number(rows.inner_text())
        shown = []
        t_end = time.perf_counter() + args.seconds
        while time.perf_counter() < t_end:
            shown.append(_number(rate.inner_text()))
            data_states[live.get_attribute("data-data")] += 1
            page.wait_for_timeout(250)
        end, last_rows = page.evaluate(READ), _number(rows.inner_text())
        span_s = (end["now"] - start["now"]) / 1000
        figures["rate_card"].append(statistics.median(shown))
        figures["rate_counted"].append((last_rows - first_rows) / span_s)
        figures["updates"].append((end["updates"] - start["updates"]) / span_s)
        figures["busy"].append(100 * (end["busy"] - start["busy"]) / (end["now"] - start["now"]))
        state = live.get_attribute("data-state")
        assert state == "running", f"the live replay is {state!r} after {args.seconds:g} s: {live.inner_text()!r}"
        scroll_to(live)
        clicked = time.perf_counter()
        page.locator("button", has_text="Pause").nth(LIVE).click()
        paused = _firsts(clicked, {"paused": lambda: live.get_attribute("data-state") == "paused"})
        figures["paused"].append(paused["paused"])


def _screenshots(page, folder: Path):
    """The live dashboard at JupyterLab's width: its top (sidebar, cards, plots), then its alert table and feed."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, selector in (("top", ".sbg-live"), ("alerts", ".tabulator"), ("feed", ".sbg-feed")):
        scroll_to(page.locator(selector).nth(LIVE))
        page.wait_for_timeout(1000)
        page.screenshot(path=str(folder / f"lab-01-live-{name}.png"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of running measured per round")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--shots", type=Path, help="save screenshots of the live dashboard in this folder")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="sbg-nb-latency-"))
    root = copy_notebooks(tmp / "work")
    loads = [load()]
    with jupyter(tmp / "lab.log", root) as (base, token), chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        blocked, errors = offline(page, base), console_errors(page)
        t0 = time.perf_counter()
        run_all(page, base, token, "01_quickstart.ipynb")
        run_all_s = time.perf_counter() - t0
        print(f"quickstart, Run All to the last cell done: {run_all_s:.1f} s ({load()})", flush=True)

        live = page.locator(".sbg-live").nth(LIVE)
        rows = page.locator('[data-kpi="rows_in"] .value').nth(LIVE)
        rate = page.locator('[data-kpi="ingest_rate"] .value').nth(LIVE)
        scroll_to(live)
        wait_for(page, lambda: live.get_attribute("data-state"), lambda s: s == "paused", 120,
                 "the live dashboard to show it is paused")
        looping = page.evaluate(EXECUTE, "live.replay.loop = True\nlive.replay.loop")
        assert looping == "True", f"the kernel did not set the live replay to loop: {looping!r}"
        docs = page.evaluate(PROBE, LIVE)
        assert docs == 2, f"expected the quickstart's two dashboards, found {docs}"

        data_states = Counter()  # the live indicator's data state (live, behind, stale...) from Resume to Pause
        figures = {k: [] for k in ("running", "rise", "rate_card", "rate_counted", "updates", "busy", "paused")}
        try:
            _rounds(page, args, live, rows, rate, figures, data_states)
        except Exception:
            # What the kernel itself says, beside what the page shows.
            print("  kernel:", page.evaluate(EXECUTE, "live.replay.state, live.metrics.rows_in"),
                  "page:", live.inner_text(), rows.inner_text())
            for e in errors[:5]:
                print("  console:", " | ".join(e.splitlines()[:6])[:600])
            print("  views:", page.evaluate(VIEWS))
            raise
        loads.append(load())
        if args.shots:
            _screenshots(page, args.shots)

    names = {"running": ("Resume -> running shown", "ms"), "rise": ("Resume -> rows rise", "ms"),
             "paused": ("Pause -> paused shown", "ms"), "rate_card": ("rows/s card while running", "rows/s"),
             "rate_counted": ("rows/s counted (Rows in)", "rows/s"), "updates": ("figure updates/s", "/s"),
             "busy": ("kernel busy share", "%")}
    print(f"\n{'measure':28s} {'min':>9s} {'median':>9s} {'max':>9s}  unit    ({args.rounds} rounds, "
          f"{args.seconds:g} s running each)")
    summary = {}
    for key in ("running", "rise", "paused", "rate_card", "rate_counted", "updates", "busy"):
        label, unit = names[key]
        values = figures[key]
        row = {"min": min(values), "median": statistics.median(values), "max": max(values), "unit": unit}
        summary[key] = {"label": label, **row, "values": values}
        digits = 1 if key in ("updates", "busy") else 0
        print(f"{label:28s} {row['min']:9.{digits}f} {row['median']:9.{digits}f} {row['max']:9.{digits}f}  {unit}")
    print(f"outside requests: {len(blocked)}; console errors: {len(errors)}; {os.cpu_count()} cores; "
          f"before: {loads[0]}; after: {loads[1]}")
    print("data state shown from Resume to Pause (samples):", dict(data_states))
    for e in errors[:5]:
        print("  console:", " | ".join(e.splitlines()[:4])[:400])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "notebook_latency", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rounds": args.rounds, "seconds_running": args.seconds, "cores": os.cpu_count(),
            "load_before": loads[0], "load_after": loads[1], "run_all_s": run_all_s,
            "outside_requests": len(blocked), "data_states_running": dict(data_states), "console_errors": errors[:20], "figures": summary,
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
