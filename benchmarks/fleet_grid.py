"""The fleet health grid grouped by site: draw and update cost at 8 and at 500 batteries.

    python benchmarks/fleet_grid.py [--sizes 8,504] [--updates 20]

For each fleet size a multi-site fleet is generated (``sbg.io.datasets.fleet_sites``:
3 sites x 2 racks x N batteries, 30 min every 10 s; 8 is 2 x 2 x 2), and
replayed at max speed in chunks of three rows per battery (30 s of data). Once 60 % of the
data has gone through, the dashboard's fleet panel (``sbg.ui.health.HealthGrid``)
is attached to a Bokeh document and:

- draw    - the first ``refresh()``: states, roll-up, cells and the HoloViews
            grid rendered into Bokeh models (what a session pays once, and
            again when the site filter changes); best of 3 fresh panels;
- update  - ``refresh()`` after each further chunk, when the states changed and
            the colours are patched into the drawn grid (median and worst of
            ``--updates``), with its parts: ``Monitor.health()``, the roll-up,
            the cells, the patch;
- filter  - a change of the site filter: the grid of one site drawn anew.

The flat grid (no hierarchy, ``sbg.ui.plots.update_health``) is timed beside
it at the same size, for comparison. What the browser then takes to draw the
grid is measured by ``benchmarks/fleet_shots.py`` (Chromium, screenshots).
Timings are wall time on a shared, noisy machine: read them side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _fleet(n: int, out: Path) -> Path:
    from sbg.io.datasets import write_fleet_sites

    if n <= 8:
        options = dict(sites=2, racks=2, per_rack=max(1, n // 4))
    else:
        options = dict(sites=3, racks=2, per_rack=max(1, round(n / 6)))
    folder = out / f"fleet_{n}"
    return write_fleet_sites(folder, hours=0.5, step_s=10, **options)[0]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def measure(path: Path, n: int, grouped: bool, updates: int) -> dict:
    import pandas as pd
    import panel as pn
    from bokeh.document import Document

    from sbg.io.hierarchy import rollup, worst_states
    from sbg.stream.monitor import Monitor
    from sbg.ui.fleet import fleet_cells, update_fleet
    from sbg.ui.health import HealthGrid
    from sbg.ui.session import Session

    # Three rows a battery per chunk: at 10 s a row, half a minute of data per update.
    monitor = Monitor([path], speed="max", max_chunk_rows=3 * n)
    if not grouped:
        monitor.hierarchy = None
    replay = monitor.replay
    replay.scan()
    replay.state = "running"
    while replay.percent < 60 and replay.step():
        pass
    n_entities = monitor.health()["entity"].nunique()
    draws = []
    for _ in range(3):
        session = Session(monitor=monitor)
        grid = HealthGrid(session=session)
        grid.__panel__().get_root(Document())
        t0 = time.perf_counter()
        grid.refresh()
        draws.append(time.perf_counter() - t0)
        if _ < 2:
            session.close()
    parts = {"health": [], "rollup": [], "cells": [], "patch": []}
    refreshes = []
    changed = 0
    for _ in range(updates):
        before = monitor.health()["state"].to_numpy().tobytes()
        if not replay.step():
            break
        after = monitor.health()["state"].to_numpy().tobytes()
        changed += before != after
        grid._fleet_drawn_at = grid._drawn_at = 0.0  # patch every time, as when states change
        t0 = time.perf_counter()
        grid.refresh()
        refreshes.append(time.perf_counter() - t0)
        if grouped:
            t0 = time.perf_counter()
            health = monitor.health()
            t1 = time.perf_counter()
            scores = monitor.health_scores()
            by = pd.Series(scores["health"].to_numpy(float), index=scores["entity"].astype(str).to_numpy(object))
            rollup(worst_states(health), by, monitor.hierarchy)
            t2 = time.perf_counter()
            cells = fleet_cells(health, monitor.hierarchy)
            t3 = time.perf_counter()
            update_fleet(grid.fleet_pane, grid.fleet_pipe, cells)
            t4 = time.perf_counter()
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[k].append(v)
    out = {"entities": int(n_entities), "grouped": grouped, "draw_ms": _ms(min(draws)),
           "update_median_ms": _ms(statistics.median(refreshes)), "update_max_ms": _ms(max(refreshes)),
           "updates": len(refreshes), "updates_with_new_states": int(changed)}
    if grouped:
        out.update({f"{k}_ms": _ms(statistics.median(v)) for k, v in parts.items() if v})
        site = grid.site_select.options[1]
        t0 = time.perf_counter()
        grid.site_select.value = site
        out["filter_ms"] = _ms(time.perf_counter() - t0)
        out["filter_rows"] = len(grid._fleet_rows)
    session.close()
    monitor.close()
    pn.state.clear_caches()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,504", help="fleet sizes (default 8,504)")
    parser.add_argument("--updates", type=int, default=20, help="updates timed per size (default 20)")
    args = parser.parse_args(argv)
    import holoviews as hv
    import panel as pn

    pn.extension("tabulator")
    hv.extension("bokeh")
    with tempfile.TemporaryDirectory(prefix="sbg-fleet-bench-") as tmp:
        for n in [int(x) for x in args.sizes.split(",")]:
            path = _fleet(n, Path(tmp))
            for grouped in (True, False):
                r = measure(path, n, grouped, args.updates)
                kind = "grouped by site" if grouped else "flat (no hierarchy)"
                line = (f"{r['entities']:>4} batteries, {kind:<20} draw {r['draw_ms']:>7.1f} ms   update median "
                        f"{r['update_median_ms']:>6.1f} ms, worst {r['update_max_ms']:>6.1f} ms "
                        f"({r['updates']} updates, {r['updates_with_new_states']} with new states)")
                print(line)
                if grouped:
                    print(f"{'':>5} update parts: Monitor.health() {r.get('health_ms', 0):.1f} ms, roll-up "
                          f"{r.get('rollup_ms', 0):.1f} ms, cells {r.get('cells_ms', 0):.1f} ms, patch "
                          f"{r.get('patch_ms', 0):.1f} ms; site filter -> {r['filter_rows']} rows drawn in "
                          f"{r['filter_ms']:.1f} ms")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
