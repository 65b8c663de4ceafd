"""How fast the live dashboard answers in a real JupyterLab: Resume clicked -> rows rise on the page.

    python benchmarks/notebook_latency.py [--rounds 5]

Starts JupyterLab (as ``tests/test_jupyterlab.py`` does: offline, a fresh
workspace, the project's kernel), runs the quickstart, then on its live
dashboard clicks Resume and times until the "rows in" card changes, and
clicks Pause and times until the state shows paused; ``--rounds`` times
each. Prints min, median and max in milliseconds beside the machine's load.
Figures only: nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.jupyter import console_errors, copy_notebooks, jupyter, offline, run_all, scroll_to  # noqa: E402
from tests.served import chromium, load  # noqa: E402


def _until(probe, test, timeout=120.0):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if test(probe()):
            return (time.perf_counter() - t0) * 1000
        time.sleep(0.02)
    return float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="sbg-nb-latency-"))
    root = copy_notebooks(tmp / "work")
    with jupyter(tmp / "lab.log", root) as (base, token), chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        blocked, errors = offline(page, base), console_errors(page)
        t0 = time.perf_counter()
        run_all(page, base, token, "01_quickstart.ipynb")
        print(f"quickstart, Run All to the last cell done: {time.perf_counter() - t0:.1f} s ({load()})")
        live = 1
        scroll_to(page.locator(".sbg-live").nth(live))
        rows = page.locator('[data-kpi="rows_in"] .value').nth(live)
        state = page.locator(".sbg-live").nth(live)
        resume, pause = [], []
        for _ in range(args.rounds):
            before = rows.inner_text()
            page.locator("button", has_text="Resume").nth(live).click()
            resume.append(_until(rows.inner_text, lambda v, b=before: v != b))
            page.wait_for_timeout(1500)
            page.locator("button", has_text="Pause").nth(live).click()
            pause.append(_until(lambda: state.get_attribute("data-state"), lambda s: s in ("paused", "finished")))
            page.wait_for_timeout(500)
        for name, values in (("Resume -> rows rise", resume), ("Pause -> state paused", pause)):
            print(f"{name:24s} min {min(values):7.0f} ms  median {statistics.median(values):7.0f} ms  "
                  f"max {max(values):7.0f} ms  ({len(values)} rounds)")
        print(f"outside requests: {len(blocked)}; console errors: {len(errors)}; {load()}; {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
