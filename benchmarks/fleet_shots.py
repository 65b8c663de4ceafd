"""The served dashboard of a multi-site fleet in headless Chromium: screenshots, and how long the grid takes.

    python benchmarks/fleet_shots.py [--sizes 8,504] [--out artifacts/fleet]

For each size a fleet is generated (``sbg data fleet``: 8 is 2 sites x 2 racks
x 2, 504 is 3 x 2 x 84; 30 min every 10 s), served with ``sbg serve FILE
--speed max --autostart``, and once the replay has ended a 1366 x 900 tab is
opened. Printed: milliseconds from navigation start until the fleet grid's
cells are in the page (Bokeh's source holds every battery x signal cell),
polled every 50 ms; then the site filter is set to the first site and the
time until the grid holds that site's cells. Screenshots: ``fleet_N.png``
(whole page), ``fleet_N_site.png`` (filtered).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID_CELLS = """() => {
  if (!window.Bokeh) return 0;
  let n = 0;
  for (const doc of window.Bokeh.documents)
    for (const m of doc.all_models)
      if (m.data && m.data.row && m.data.entity_id && m.type !== "Tabulator") n = Math.max(n, m.data.row.length);
  return n;
}"""


def main(argv=None) -> int:
    from tests.served import ARTIFACTS, Tab, chromium, served, status

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,504")
    parser.add_argument("--out", type=Path, default=ARTIFACTS / "fleet")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from sbg.io.datasets import write_fleet_sites

    with tempfile.TemporaryDirectory(prefix="sbg-fleet-shots-") as tmp, chromium() as browser:
        for n in [int(x) for x in args.sizes.split(",")]:
            shape = dict(sites=2, racks=2, per_rack=2) if n <= 8 else dict(sites=3, racks=2, per_rack=round(n / 6))
            data = write_fleet_sites(Path(tmp) / f"f{n}", hours=0.5, step_s=10, **shape)[0]
            with served(Path(tmp) / f"serve_{n}.log", data, "--speed", "max", "--autostart") as base:
                deadline = time.monotonic() + 300
                while status(base)["replay"]["state"] != "finished" and time.monotonic() < deadline:
                    time.sleep(0.5)
                entities = status(base)["metrics"]["entities"]
                cells = entities * 4
                tab = Tab(browser, base, 1366, 900)
                t0 = tab.page.evaluate("performance.now()")
                # The navigation started at performance's time origin: its now() is the time since.
                while tab.page.evaluate(GRID_CELLS) < cells:
                    tab.page.wait_for_timeout(50)
                    if tab.page.evaluate("performance.now()") > 120_000:
                        raise RuntimeError("the fleet grid did not arrive")
                loaded = tab.page.evaluate("performance.now()")
                tab.page.wait_for_timeout(800)
                shot = args.out / f"fleet_{n}.png"
                tab.page.screenshot(path=str(shot), full_page=True)
                select = tab.page.locator("select:has(option[value='All sites'])").first
                site = select.locator("option").nth(1).get_attribute("value")
                before = tab.page.evaluate("performance.now()")
                select.select_option(site)
                per_site = cells // (3 if n > 8 else 2)
                while tab.page.evaluate(GRID_CELLS) not in range(1, cells) or \
                        abs(tab.page.evaluate(GRID_CELLS) - per_site) > 8:
                    tab.page.wait_for_timeout(50)
                    if tab.page.evaluate("performance.now()") - before > 60_000:
                        raise RuntimeError("the filtered grid did not arrive")
                filtered = tab.page.evaluate("performance.now()") - before
                tab.page.wait_for_timeout(800)
                tab.page.screenshot(path=str(args.out / f"fleet_{n}_site.png"), full_page=True)
                print(f"{entities:>4} batteries: page to grid drawn {loaded:7.0f} ms (tab opened at {t0:.0f} ms); "
                      f"site filter {site} -> grid of that site {filtered:6.0f} ms; console errors: "
                      f"{len(tab.errors)}; {shot}", flush=True)
                tab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
