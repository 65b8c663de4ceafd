"""The HTML report's budget: build time, file size and open time in headless Chromium.

    python benchmarks/report.py [--repeat 3] [--only site_power_24h] [--shots artifacts]

For each bundled dataset the run is replayed once at max speed (timed for
context, not part of the budget), then:

- build   - ``build_report(monitor)``: the first call in the process (cold:
            includes importing Bokeh and Jinja) and the best of ``--repeat``
            further calls (warm);
- size    - bytes of the HTML file;
- open    - milliseconds from navigation start until Bokeh has drawn every
            plot (the page's ``data-rendered`` mark, read from
            ``performance.now()``), in headless Chromium with every
            non-file request refused; best and median of ``--repeat`` fresh tabs.

Target (DESIGN.md, for site_power_24h: 86,400 rows x 9 columns): built in at
most 5 s, at most 5 MB, opens in at most 2 s. The machine is shared and
noisy; the best of several runs is the figure that says what the code costs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

DATASETS = {"site_power_24h": "site_power_24h.csv.gz", "battery_fleet": "battery_fleet.csv.gz"}
BUDGET = {"build_s": 5.0, "size_mb": 5.0, "open_s": 2.0}
BUDGETED = "site_power_24h"
SHOT_NAMES = {"site_power_24h": "site_power", "battery_fleet": "fleet"}


def build(name: str, repeat: int, out_dir: Path) -> dict:
    from sbg.io.datasets import DATA_DIR
    from sbg.stream.monitor import Monitor

    t0 = time.perf_counter()
    monitor = Monitor([DATA_DIR / DATASETS[name]], speed="max")
    monitor.run_to_end()
    pipeline_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    from sbg.report.build import build_report

    html = build_report(monitor)
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        html = build_report(monitor)
        warm.append(time.perf_counter() - t0)
    path = out_dir / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    return {"name": name, "rows": monitor.metrics.rows_in, "signals": len(monitor.signals),
            "entities": monitor.metrics.entities, "pipeline_s": pipeline_s, "cold_s": cold, "warm_s": min(warm),
            "size_mb": path.stat().st_size / 1e6, "path": path,
            "plots": int(html.split('data-plots="', 1)[1].split('"', 1)[0])}


def open_times(paths, repeat: int, shots: Path | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        for path in paths:
            times, refused = [], []
            for _ in range(repeat + 1):
                context = browser.new_context(viewport={"width": 1366, "height": 900})
                context.route("**/*", lambda route, refused=refused: route.continue_()
                              if route.request.url.startswith("file:")
                              else (refused.append(route.request.url), route.abort()))
                page = context.new_page()
                page.goto(path.as_uri())
                page.wait_for_selector("html[data-rendered]", timeout=120_000)
                times.append(int(page.get_attribute("html", "data-rendered")) / 1000)
                context.close()
            # The first tab also warms the browser's disk cache and code cache: drop it.
            times = times[1:]
            if shots is not None:
                page = browser.new_page(viewport={"width": 1366, "height": 900})
                page.goto(path.as_uri())
                page.wait_for_selector("html[data-rendered]", timeout=120_000)
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / f"report_{SHOT_NAMES[path.stem]}.png"), full_page=True)
                page.close()
            out[path] = {"open_best_s": min(times), "open_median_s": statistics.median(times), "refused": refused}
        browser.close()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (default 3)")
    parser.add_argument("--only", choices=sorted(DATASETS), help="one dataset")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="write the reports here instead of a temp dir")
    parser.add_argument("--shots", type=Path, metavar="DIR", help="save full-page screenshots here")
    args = parser.parse_args(argv)
    names = [args.only] if args.only else list(DATASETS)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        results = [build(name, args.repeat, out_dir) for name in names]
        opened = open_times([r["path"] for r in results], args.repeat, args.shots)
    print(f"{'dataset':<16}{'rows':>9}{'sig':>5}{'ent':>5}{'plots':>6}{'pipeline':>10}{'build cold':>12}"
          f"{'build warm':>12}{'size':>9}{'open best':>11}{'open med':>10}")
    ok = True
    for r in results:
        o = opened[r["path"]]
        print(f"{r['name']:<16}{r['rows']:>9,}{r['signals']:>5}{r['entities']:>5}{r['plots']:>6}"
              f"{r['pipeline_s']:>9.2f}s{r['cold_s']:>11.2f}s{r['warm_s']:>11.2f}s{r['size_mb']:>7.2f}MB"
              f"{o['open_best_s']:>10.2f}s{o['open_median_s']:>9.2f}s")
        if o["refused"]:
            print(f"  ! {len(o['refused'])} outside requests attempted: {o['refused'][:3]}")
            ok = False
        if r["name"] == BUDGETED:
            checks = {"build_s": r["cold_s"], "size_mb": r["size_mb"], "open_s": o["open_best_s"]}
            verdict = ", ".join(f"{k} {v:.2f} <= {BUDGET[k]:g}: {'ok' if v <= BUDGET[k] else 'OVER'}"
                                for k, v in checks.items())
            print(f"  budget ({BUDGETED}): {verdict}")
            ok &= all(v <= BUDGET[k] for k, v in checks.items())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
