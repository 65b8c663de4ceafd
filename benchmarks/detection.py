"""Detection quality on labelled data: sbg's defaults beside baselines and peers, in one run.

    python benchmarks/detection.py [--corpus skab|skab-uni|kpi|bundled|all] [--only NAME ...]
                                   [--sbg-settings FILE.yaml] [--json PATH]

Corpora
-------
* **SKAB** (a real water-circulation rig, 8 sensors at 1 Hz, 34 labelled runs
  and one anomaly-free run), read in place from ``../shared/data/skab`` or
  ``$SBG_SKAB`` when present; it is GPL-3.0 and never copied into the
  project. Scored as SKAB scores outlier detection: the first 400 rows of
  each run are training data and left out, counts are summed over runs.
* **SKAB, one signal at a time, 5 min apart**: each signal of each SKAB run
  as a series of its own (272 series), the rows stamped 5 minutes apart and
  the labelled windows moved with them. The same real values, seen as a slow
  univariate logger writes them: it checks the univariate detectors (no
  ``joint``) and the settings that depend on the sampling interval, away
  from 1 Hz. Written to a temporary folder, removed at exit.
* **Server KPIs** (real 5-minute server metrics with labelled anomalies of a
  few rows, 17,568 rows each: the sample series of the Donut detector, MIT
  licence), read in place from ``$SBG_KPI`` (default
  ``~/.cache/sbg-bench/kpi``) when present: clone
  https://github.com/NetManAIOps/donut and point ``SBG_KPI`` at its
  ``sample_data``. Scored with the labels as given and with NAB's windows.
  A second real slow corpus, so a setting for slow series is never judged
  on SKAB alone.
* **The bundled labelled samples** in ``data/``: the battery fleet, the
  site power meter and the machine monitor (with its known-good baseline
  for sbg).

Methods, each on the same rows
------------------------------
* ``sbg defaults``: the monitor as a user runs it, default settings.
* ``rolling z-score``: |x - mean| >= 3 std over the previous 100 rows.
* ``windowed Gaussian``: the Gaussian tail probability of each value under
  the previous 1,000 rows, flagged at <= 0.001 (the classic NAB baseline).
* ``river HalfSpaceTrees``: river's HST on MinMax-scaled signals (its
  defaults), flagged by river's own ``QuantileFilter`` at q = 0.99.
* ``adtk PersistAD``, ``LevelShiftAD``, ``SeasonalAD``: adtk 0.6.2, which
  fails under pandas 3, so it runs in a virtual environment of its own with
  pandas 2.2 (created on first use under ``~/.cache/sbg-bench``; see
  ``_adtk_runner.py``), fitted on each series' training part.
Univariate methods run per signal; a row is flagged when any signal is. None
of the peers' settings is tuned on these corpora.

Figures per method: point-wise precision, recall, F1 and false-alarm rate;
the NAB window score (standard profile, labelled windows as given); event
recall and precision of runs of flagged rows; and, for sbg on the bundled
data, those of its alerts (as ``tests/test_quality.py`` checks them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sbg.config import Settings  # noqa: E402
from sbg.evaluate import evaluate, flagged_runs, load_labels, nab_score, pointwise  # noqa: E402
from sbg.io.datasets import DATA_DIR  # noqa: E402
from sbg.stream.monitor import Monitor  # noqa: E402

SKAB = Path(os.environ.get("SBG_SKAB", ROOT.parent / "shared" / "data" / "skab"))
KPI = Path(os.environ.get("SBG_KPI", Path.home() / ".cache" / "sbg-bench" / "kpi"))
ADTK_ENV = Path.home() / ".cache" / "sbg-bench" / "adtk-env"
BUNDLED = {
    "battery_fleet": ("battery_fleet.csv.gz", "battery_fleet_labels.csv", None),
    "site_power_24h": ("site_power_24h.csv.gz", "site_power_24h_labels.csv", None),
    "machine_monitor": ("machine_monitor.csv", "machine_monitor_labels.csv", "machine_baseline.csv"),
}


# ----------------------------------------------------------------------------- data


class Case:
    """One labelled series set: its rows (entity, timestamp, signals), label windows and scoring rules."""

    def __init__(self, name, paths, windows, baseline=None, skip_rows=0, train_rows=400):
        self.name, self.paths, self.windows, self.baseline = name, paths, windows, baseline
        self.skip_rows, self.train_rows = skip_rows, train_rows
        self._monitors = None

    def monitors(self, settings):
        """One monitor per file, run to the end (files are separate runs: no state carried across)."""
        out = []
        for p in self.paths:
            m = Monitor([p], baseline=self.baseline, settings=settings, speed="max")
            m.run_to_end()
            out.append(m)
        return out

    def frame(self):
        """Every row as sbg reads it (entity, timestamp, signals): the same rows for every method."""
        if getattr(self, "_frame", None) is None:
            parts = []
            for p in self.paths:
                m = Monitor([p], settings=Settings({"detectors": {d: {"enabled": False} for d in (
                    "limits", "surprise", "joint", "zscore", "spike", "flatline", "gap")}}), speed="max")
                m.run_to_end()
                h = m.history.frame()
                parts.append(h[["entity", "timestamp", *m.signals]])
            self._frame = pd.concat(parts, ignore_index=True)
        return self._frame


def skab_cases():
    if not (SKAB / "segments.csv").exists():
        return []
    runs = sorted(p for p in (SKAB / "runs").glob("*.csv") if p.stem != "anomaly-free")
    windows = pd.read_csv(SKAB / "segments.csv", parse_dates=["start", "end"])
    free = SKAB / "runs" / "anomaly-free.csv"
    return [Case("SKAB", runs, windows, skip_rows=400, train_rows=400),
            Case("SKAB anomaly-free run", [free], windows.iloc[:0], skip_rows=400, train_rows=400)]


def skab_univariate_cases(step_s=300):
    """Each SKAB signal alone, rows ``step_s`` seconds apart (see the module docstring)."""
    import atexit
    import shutil

    found = skab_cases()
    if not found:
        return []
    base = found[0]
    folder = Path(tempfile.mkdtemp(prefix="sbg-skab-uni-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    paths, windows = [], []
    for p in base.paths:
        df = pd.read_csv(p, parse_dates=["timestamp"])
        stamps = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(len(df)) * step_s, unit="s")
        own = base.windows[base.windows["entity"].astype(str) == p.stem]
        # A window keeps its rows: its ends move to the new stamps of the rows they fell on.
        moved = own.assign(start=stamps[np.searchsorted(df["timestamp"], own["start"])],
                           end=stamps[np.searchsorted(df["timestamp"], own["end"], side="right") - 1])
        for signal in df.columns.drop("timestamp"):
            path = folder / f"{p.stem}__{signal}.csv"
            pd.DataFrame({"timestamp": stamps, "value": df[signal]}).to_csv(path, index=False)
            paths.append(path)
            windows.append(moved.assign(entity=path.stem))
    return [Case(f"SKAB one signal at a time, {step_s // 60} min apart", paths,
                 pd.concat(windows, ignore_index=True), skip_rows=400, train_rows=400)]


def kpi_cases():
    """Real 5-minute server KPIs with point labels (``timestamp,value,label``, epoch seconds).

    Two cases over the same rows: the labels as given (short ranges, a few
    rows each), and NAB's convention of windows, where the labelled ranges
    share 10 % of the series and each is centred on its range, so an early or
    a late flag near a short label still counts as NAB would count it.
    """
    import atexit
    import shutil

    files = sorted(KPI.glob("*.csv"))
    if not files:
        return []
    folder = Path(tempfile.mkdtemp(prefix="sbg-kpi-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    paths, given, nab = [], [], []
    for f in files:
        df = pd.read_csv(f)
        stamps = pd.to_datetime(df["timestamp"], unit="s")
        path = folder / f"kpi_{f.stem}.csv"
        pd.DataFrame({"timestamp": stamps, "value": df["value"]}).to_csv(path, index=False)
        paths.append(path)
        own = load_labels(f, entity=path.stem)  # each run of labelled rows, as sbg evaluate reads it
        if not len(own):
            continue
        given.append(own[["entity", "start", "end"]])
        starts = np.searchsorted(stamps, own["start"])
        ends = np.searchsorted(stamps, own["end"])
        half = max(int(0.10 * len(df) / len(starts)) // 2, 1)
        nab.append(pd.DataFrame({"entity": path.stem,
                                 "start": stamps[np.maximum((starts + ends) // 2 - half, 0)].to_numpy(),
                                 "end": stamps[np.minimum((starts + ends) // 2 + half, len(df) - 1)].to_numpy()}))
    merge = lambda parts: _merge_windows(pd.concat(parts, ignore_index=True))  # noqa: E731
    return [Case("server KPIs, labels as given", paths, merge(given)),
            Case("server KPIs, NAB windows (10 % of each series)", paths, merge(nab))]


def _merge_windows(windows):
    """Overlapping windows of an entity as one (NAB's windows never overlap)."""
    out = []
    for entity, w in windows.sort_values(["entity", "start"]).groupby("entity", sort=False):
        start, end = None, None
        for s, e in zip(w["start"], w["end"], strict=True):
            if start is not None and s <= end:
                end = max(end, e)
                continue
            if start is not None:
                out.append((entity, start, end))
            start, end = s, e
        out.append((entity, start, end))
    return pd.DataFrame(out, columns=["entity", "start", "end"])


def bundled_cases():
    cases = []
    for name, (data, labels, baseline) in BUNDLED.items():
        path = DATA_DIR / data
        windows = load_labels(DATA_DIR / labels, entity=name)
        cases.append(Case(name, [path], windows, baseline=DATA_DIR / baseline if baseline else None,
                          skip_rows=0, train_rows=0))
    return cases


# ----------------------------------------------------------------------------- methods


def run_sbg(case, settings):
    flags, alerts = [], []
    for m in case.monitors(settings):
        h = m.history.frame()
        flags.append(h[["entity", "timestamp", "is_anomaly"]].assign(quality=h["quality"] != ""))
        alerts.append(m.alerts)
    return pd.concat(flags, ignore_index=True), pd.concat(alerts, ignore_index=True)


def _rolling_flags(frame, window, test):
    out = np.zeros(len(frame), dtype=bool)
    signals = [c for c in frame.columns if c not in ("entity", "timestamp")]
    for _, rows in frame.groupby("entity", sort=False):
        X = rows[signals].astype(float)
        prior = X.shift(1).rolling(window, min_periods=min(30, window))
        out[rows.index.to_numpy()] = test(X, prior.mean(), prior.std()).any(axis=1).to_numpy()
    return out


def run_zscore(case):
    f = case.frame()
    return f[["entity", "timestamp"]].assign(
        is_anomaly=_rolling_flags(f, 100, lambda x, m, s: ((x - m).abs() / s) >= 3.0))


def run_gaussian(case):
    from scipy.stats import norm

    f = case.frame()
    return f[["entity", "timestamp"]].assign(
        is_anomaly=_rolling_flags(f, 1000, lambda x, m, s: pd.DataFrame(
            2 * norm.sf(((x - m).abs() / s).to_numpy()), index=x.index) <= 1e-3))


def run_hst(case):
    from river import anomaly, compose, preprocessing

    f = case.frame()
    signals = [c for c in f.columns if c not in ("entity", "timestamp")]
    out = np.zeros(len(f), dtype=bool)
    for _, rows in f.groupby("entity", sort=False):
        model = anomaly.QuantileFilter(compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=42)),
                                       q=0.99)
        hits = []
        for x in rows[signals].to_dict(orient="records"):
            x = {k: v for k, v in x.items() if v == v}
            score = model.score_one(x)
            hits.append(model.classify(score))
            model.learn_one(x)
        out[rows.index.to_numpy()] = hits
    return f[["entity", "timestamp"]].assign(is_anomaly=out)


def adtk_python():
    """The adtk environment's Python (created on first use), or None with the reason."""
    py = ADTK_ENV / "bin" / "python"
    if not py.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(ADTK_ENV)], check=True, capture_output=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "adtk==0.6.2", "pandas>=2.2,<2.3", "numpy<2"],
                           check=True, capture_output=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"could not build the adtk environment: {exc}"
    return py, None


def run_adtk(case):
    py, why = adtk_python()
    if py is None:
        return None, why
    f = case.frame()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.csv", Path(tmp) / "out.csv"
        f.to_csv(src, index=False)
        proc = subprocess.run([str(py), str(Path(__file__).with_name("_adtk_runner.py")), str(src), str(dst),
                               str(case.train_rows or max(30, int(0.15 * len(f) / max(f["entity"].nunique(), 1))))],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        flags = pd.read_csv(dst)
    return {name: f[["entity", "timestamp"]].assign(is_anomaly=flags[name].to_numpy() == 1)
            for name in flags.columns if (flags[name] >= 0).any()}, None


# ----------------------------------------------------------------------------- scoring


def score(case, flags):
    pw = pointwise(flags, case.windows, case.skip_rows)
    row = {"precision": pw["precision"], "recall": pw["recall"], "f1": pw["f1"], "far": pw["false_alarm_rate"],
           "flagged": float(flags["is_anomaly"].mean())}
    if len(case.windows):
        row["nab"] = nab_score(flags, case.windows)["score"]
        ev = evaluate(flagged_runs(flags), case.windows)
        row["event_recall"], row["event_precision"] = ev["recall"], ev["precision"]
    return row


def table(case, rows):
    cols = [("precision", "prec", "{:.3f}"), ("recall", "recall", "{:.3f}"), ("f1", "F1", "{:.3f}"),
            ("far", "FAR", "{:.1%}"), ("flagged", "flagged", "{:.1%}"), ("nab", "NAB std", "{:.1f}"),
            ("event_recall", "ev.rec", "{:.2f}"), ("event_precision", "ev.prec", "{:.2f}"),
            ("alerts_recall", "al.rec", "{:.2f}"), ("alerts_precision", "al.prec", "{:.2f}"), ("seconds", "s", "{:.1f}")]
    cols = [c for c in cols if any(c[0] in r for r in rows.values())]
    width = max(len(n) for n in rows) + 2
    skip = f"; first {case.skip_rows} rows of each run left out" if case.skip_rows else ""
    lines = [f"\n{case.name}: {len(case.paths)} file(s), {len(case.windows)} labelled windows{skip}",
             "method".ljust(width) + "".join(f"{h:>9}" for _, h, _ in cols)]
    for name, r in rows.items():
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            cells.append(f"{'-' if v is None or v != v else fmt.format(v):>9}")
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)


def run_case(case, settings, only):
    rows, notes = {}, []

    def timed(name, fn):
        if only and not any(o.lower() in name.lower() for o in only):
            return None
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    got = timed("sbg defaults", lambda: run_sbg(case, settings))
    if got:
        (flags, alerts), secs = got
        rows["sbg defaults"] = {**score(case, flags), "seconds": secs}
        if len(case.windows):
            ev = evaluate(alerts, case.windows)
            rows["sbg defaults"].update(alerts_recall=ev["recall"], alerts_precision=ev["precision"])
        notes.append(f"sbg: {int(flags['quality'].sum()):,} rows carry a data-quality finding (not counted as "
                     "anomalies)")
    for name, fn in (("rolling z-score", run_zscore), ("windowed Gaussian", run_gaussian),
                     ("river HalfSpaceTrees", run_hst)):
        got = timed(name, lambda fn=fn: fn(case))
        if got:
            rows[name] = {**score(case, got[0]), "seconds": got[1]}
    got = timed("adtk", lambda: run_adtk(case))
    if got:
        (results, why), secs = got
        if results is None:
            notes.append(f"adtk: not run ({why})")
        else:
            for name, flags in results.items():
                rows[name] = {**score(case, flags), "seconds": secs / max(len(results), 1)}
            missing = {"adtk PersistAD", "adtk LevelShiftAD", "adtk SeasonalAD"} - set(results)
            if missing:
                notes.append(f"{', '.join(sorted(missing))}: does not apply (no seasonality found)")
    return rows, notes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=["skab", "skab-uni", "kpi", "bundled", "all"], default="all")
    ap.add_argument("--only", action="append", help="methods whose name contains this (repeatable)")
    ap.add_argument("--sbg-settings", help="YAML settings for sbg instead of the defaults")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "detection.json"))
    args = ap.parse_args(argv)
    settings = Settings.from_yaml(args.sbg_settings) if args.sbg_settings else Settings()
    corpora = {  # each corpus's cases, and what to say when its files are not here
        "skab": (skab_cases, f"SKAB: not found at {SKAB} (set SBG_SKAB); skipped"),
        "skab-uni": (skab_univariate_cases, None),
        "kpi": (kpi_cases, f"server KPIs: no CSV files in {KPI} (set SBG_KPI; see the module docstring); skipped"),
        "bundled": (bundled_cases, None),
    }
    cases = []
    for name, (load, missing) in corpora.items():
        if args.corpus in (name, "all"):
            found = load()
            if not found and missing:
                print(missing)
            cases += found
    import river

    print(f"sbg settings: {settings.origin}; river {river.__version__}; adtk 0.6.2 in {ADTK_ENV} (pandas 2.2)")
    results = {}
    for case in cases:
        rows, notes = run_case(case, settings, args.only)
        print(table(case, rows))
        for n in notes:
            print(f"  note: {n}")
        results[case.name] = rows
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    print(f"\nfigures written to {out}")
    return results


if __name__ == "__main__":
    main()
