"""Lead time of the limit forecast on the bundled battery faults: minutes of warning before the limit alert.

    python benchmarks/forecast_lead.py [--window 10min] [--horizon 15min] [--confidence 0.999] [--skip REGEX]

Replays ``data/battery_fleet.csv.gz`` with the default settings (or the
forecast settings given) and, for each labelled fault that ends beyond a
limit (``thermal_runaway_onset`` and ``over_temperature`` on temperature,
``over_discharge`` on the state of charge), prints the start of the first
``limit_forecast`` warning of that battery before the fault's first
``limit_breach`` alert, the start of that limit alert, and the lead between
them. Both rules wait 3 rows before firing, so the starts compare like with
like. Then every other forecast warning of the run: on a healthy cell, or
outside a fault, each is a false warning.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sbg.config import Settings  # noqa: E402
from sbg.evaluate import load_labels  # noqa: E402
from sbg.io.datasets import DATA_DIR  # noqa: E402
from sbg.stream.monitor import Monitor  # noqa: E402

#: Labelled faults that take a signal over a limit, with that signal.
FAULTS = {"thermal_runaway_onset": "temperature_c", "over_temperature": "temperature_c",
          "over_discharge": "soc_pct"}


def lead_table(alerts: pd.DataFrame, labels: pd.DataFrame, said: dict) -> pd.DataFrame:
    """One row per labelled limit fault: forecast warning, limit alert, lead in minutes.

    ``said`` maps an alert id to the message it fired with (the alert keeps its peak's).
    """
    rows = []
    for _, lab in labels[labels["fault"].isin(FAULTS)].iterrows():
        mine = alerts[alerts["entity"].astype(str) == str(lab["entity"])]
        limit = mine[(mine["rule"] == "limit_breach") & (mine["end"].isna() | (mine["end"] >= lab["start"]))]
        limit_at = limit["start"].min() if len(limit) else pd.NaT
        # The warning counted is the one running when the limit alert came (or the last before it).
        before = mine[(mine["rule"] == "limit_forecast") & (mine["start"] <= (limit_at if pd.notna(limit_at)
                                                                               else lab["end"]))]
        warn = before.sort_values("start").iloc[-1] if len(before) else None
        warn_at = warn["start"] if warn is not None else pd.NaT
        lead = (limit_at - warn_at).total_seconds() / 60 if pd.notna(limit_at) and pd.notna(warn_at) else float("nan")
        fired = said.get(warn["id"], "") if warn is not None else ""
        fired = re.sub(r"^fired: \S+ limit ahead: ", "", fired)
        rows.append({"entity": lab["entity"], "fault": lab["fault"], "signal": FAULTS[lab["fault"]],
                     "fault start": lab["start"], "forecast warning": warn_at,
                     "warning until": warn["end"] if warn is not None else pd.NaT, "limit alert": limit_at,
                     "lead (min)": round(lead, 1), "fired with": fired})
    return pd.DataFrame(rows)


def other_warnings(alerts: pd.DataFrame, labels: pd.DataFrame, counted) -> pd.DataFrame:
    """Forecast warnings not counted in the lead table, with the fault (if any) they overlap."""
    out = []
    for _, a in alerts[alerts["rule"] == "limit_forecast"].iterrows():
        if (a["entity"], a["start"]) in counted:
            continue
        end = a["end"] if pd.notna(a["end"]) else pd.Timestamp.max
        hit = labels[(labels["entity"].astype(str) == str(a["entity"])) & (labels["start"] <= end)
                     & (labels["end"] >= a["start"])]
        out.append({"entity": a["entity"], "start": a["start"], "signal": a["signal"],
                    "in fault": ", ".join(hit["fault"]) or "none", "message": a["message"]})
    return pd.DataFrame(out, columns=["entity", "start", "signal", "in fault", "message"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window")
    ap.add_argument("--horizon")
    ap.add_argument("--confidence", type=float)
    ap.add_argument("--bins", type=int)
    ap.add_argument("--min-bins", type=int)
    ap.add_argument("--skip", help="signals projected but not warned about (a regular expression; '' for none)")
    args = ap.parse_args(argv)
    forecast = {k: v for k, v in (("window", args.window), ("horizon", args.horizon),
                                  ("confidence", args.confidence), ("skip", args.skip),
                                  ("bins", args.bins), ("min_bins", args.min_bins)) if v is not None}
    settings = Settings.from_dict({"detectors": {"forecast": forecast}} if forecast else {})
    started = time.perf_counter()
    monitor = Monitor([DATA_DIR / "battery_fleet.csv.gz"], settings=settings)
    monitor.run_to_end()
    secs = time.perf_counter() - started
    det = next(d for d in monitor.pipeline.detectors if d.label == "forecast")
    labels = load_labels(DATA_DIR / "battery_fleet_labels.csv")
    alerts = monitor.alerts
    said = {e["alert_id"]: e["message"] for e in monitor.pipeline.events
            if e["kind"] == "alert" and e["message"].startswith("fired:")}
    table = lead_table(alerts, labels, said)
    print(f"battery_fleet: {monitor.metrics.rows_in:,} rows in {secs:.1f} s; forecast window {det.window}, "
          f"horizon {det.horizon}, confidence {det.confidence}, skip {det.skip!r}")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 80):
        print(table.to_string(index=False))
        counted = set(zip(table["entity"], table["forecast warning"], strict=True))
        others = other_warnings(alerts, labels, counted)
        print(f"\nother forecast warnings: {len(others)}")
        if len(others):
            print(others.to_string(index=False))
    return table, others


if __name__ == "__main__":
    main()
