"""sbg benchmarks: ratios measured side by side in one run.

    python benchmarks/run.py [--rows 2000000] [--repeat 3] [--only pipeline|row|detect|startup ...]

1. pipeline  - stats + detectors + alerts on 8 entities x 4 signals in chunks
               of 1000 rows, against plain pandas doing the same work on the
               whole frame (groupby(entity).rolling/ewm/diff/shift). Printed
               twice: sbg's default detectors (which also run surprise, joint
               and forecast, work the anchor does not do), and sbg with the
               anchor's detectors only (the same arithmetic).
2. row       - one row per emit through the same pipeline (coalesced by
               sbg's row source), against river's rolling mean + variance on
               one signal.
3. detect    - `sbg detect` end to end on a generated CSV, against the I/O
               floor: pyarrow reading the file and writing it back with the
               four added columns (the flags and the quality findings). In
               this process (imports done), and as whole processes, the
               DESIGN target's measure (median of ``--repeat`` pairs).
4. startup   - whole processes: `sbg detect` of a 100-row file and
               `sbg --help` (median, min and max of 7 runs each).

Data is generated at bench time under benchmarks/_data (not committed).
Timings are best of ``--repeat`` runs; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
SIGNALS = ["voltage_v", "current_a", "temperature_c", "soc_pct"]


def fleet_frame(rows: int, entities: int = 8, seed: int = 0) -> pd.DataFrame:
    """A long-format fleet frame, time-major like a logger writes it."""
    rng = np.random.default_rng(seed)
    steps = rows // entities
    ent = pd.Series(np.tile(np.array([f"B{i:02d}" for i in range(entities)], dtype=object), steps), dtype=object)
    t0 = np.datetime64("2024-01-01T00:00:00", "ns").astype("int64")
    ts = (t0 + np.repeat(np.arange(steps, dtype="int64"), entities) * 10**9).view("datetime64[ns]")
    n = steps * entities
    current = np.round(5 * np.sin(np.arange(n) / 900) + rng.normal(0, 0.5, n), 3)
    return pd.DataFrame({
        "timestamp": ts, "entity": ent,
        "voltage_v": np.round(3.7 - 0.02 * current + rng.normal(0, 0.002, n), 4),
        "current_a": current,
        "temperature_c": np.round(25 + 3 * np.sin(np.arange(n) / 5000) + rng.normal(0, 0.05, n), 2),
        "soc_pct": np.round(np.clip(60 + 20 * np.sin(np.arange(n) / 20000), 0, 100), 2),
    })


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def pandas_same_work(df: pd.DataFrame):
    """The pipeline's arithmetic, written the plain pandas way on the whole frame."""
    w, span = 120, 3600
    g = df.groupby("entity", sort=False)
    x = df[SIGNALS]
    out = {}
    roll = g[SIGNALS].rolling(w, min_periods=2)
    for name in ("mean", "std", "min", "max"):
        out[name] = getattr(roll, name)().reset_index(level=0, drop=True).sort_index()
    out["ewm"] = g[SIGNALS].transform(lambda s: s.ewm(alpha=0.05).mean())
    prior = g[SIGNALS].shift(1).groupby(df["entity"], sort=False)
    pm = prior.rolling(w, min_periods=30).mean().reset_index(level=0, drop=True).sort_index()
    ps = prior.rolling(w, min_periods=30).std().reset_index(level=0, drop=True).sort_index()
    long = prior.transform(lambda s: s.ewm(span=span).std())
    hi = prior.cummax()
    lo = prior.cummin()
    z = (x - pm).abs() / np.maximum(ps, long)
    zs = z / (z + 6)
    zs = zs.where((x > hi) | (x < lo), np.minimum(zs, 0.49))
    d = g[SIGNALS].diff()
    dprior = d.groupby(df["entity"], sort=False).shift(1).groupby(df["entity"], sort=False)
    dstd = dprior.rolling(w, min_periods=30).std().reset_index(level=0, drop=True).sort_index()
    dz = d.abs() / dstd
    spike = dz / (dz + 8)
    change = (x != g[SIGNALS].shift(1)).cumsum()
    runs = pd.DataFrame({c: change[c].groupby([df["entity"], change[c]]).cumcount() + 1 for c in SIGNALS})
    flat = runs / (runs + 120)
    dt = df.groupby("entity", sort=False)["timestamp"].diff().dt.total_seconds()
    med = dt.groupby(df["entity"], sort=False).shift(1).groupby(df["entity"], sort=False).rolling(60, min_periods=10).median()
    gap = dt / med.reset_index(level=0, drop=True).sort_index()
    limits = ((df["temperature_c"] > 50) | (df["temperature_c"] < 5) | (df["soc_pct"] < 15) | (df["soc_pct"] > 95))
    score = np.maximum.reduce([zs.max(axis=1), spike.max(axis=1), flat.max(axis=1), (gap / (gap + 10)).fillna(0),
                               limits.astype(float)])
    flagged = pd.Series(score >= 0.5, index=df.index)
    # Alert runs: consecutive flagged rows per entity.
    starts = flagged & ~flagged.groupby(df["entity"], sort=False).shift(1, fill_value=False)
    return score, int(starts.sum())


def polars_same_work(df):
    """The same arithmetic in polars (rolling windows over each entity with ``.over``): the stronger anchor."""
    import polars as pl

    w, span = 120, 3600
    frame = pl.from_pandas(df)
    x = [pl.col(s) for s in SIGNALS]
    roll = [e.rolling_mean(w, min_samples=2).over("entity").alias(f"{n}_mean") for e, n in zip(x, SIGNALS, strict=True)]
    roll += [e.rolling_std(w, min_samples=2).over("entity").alias(f"{n}_std") for e, n in zip(x, SIGNALS, strict=True)]
    roll += [e.rolling_min(w, min_samples=2).over("entity").alias(f"{n}_min") for e, n in zip(x, SIGNALS, strict=True)]
    roll += [e.rolling_max(w, min_samples=2).over("entity").alias(f"{n}_max") for e, n in zip(x, SIGNALS, strict=True)]
    roll += [e.ewm_mean(alpha=0.05).over("entity").alias(f"{n}_ewm") for e, n in zip(x, SIGNALS, strict=True)]
    frame = frame.with_columns(roll)
    scores = []
    for e, n in zip(x, SIGNALS, strict=True):
        prior = e.shift(1)
        pm = prior.rolling_mean(w, min_samples=30)
        ps = prior.rolling_std(w, min_samples=30)
        long = prior.ewm_std(span=span)
        z = ((e - pm).abs() / pl.max_horizontal(ps, long))
        zs = z / (z + 6)
        zs = pl.when((e > prior.cum_max()) | (e < prior.cum_min())).then(zs).otherwise(pl.min_horizontal(zs, 0.49))
        d = e.diff()
        dz = d.abs() / d.shift(1).rolling_std(w, min_samples=30)
        change = (e != e.shift(1)).cast(pl.Int64).cum_sum()
        run = pl.int_range(pl.len()).over(["entity", change.over("entity")]) + 1
        scores += [zs.over("entity").alias(f"{n}_z"), (dz / (dz + 8)).over("entity").alias(f"{n}_spike"),
                   (run / (run + 120)).alias(f"{n}_flat")]
    dt = pl.col("timestamp").diff().dt.total_seconds().over("entity")
    med = pl.col("timestamp").diff().dt.total_seconds().shift(1).rolling_median(60, min_samples=10).over("entity")
    frame = frame.with_columns(scores + [(dt / med).alias("gap")])
    limits = ((pl.col("temperature_c") > 50) | (pl.col("temperature_c") < 5) | (pl.col("soc_pct") < 15)
              | (pl.col("soc_pct") > 95)).cast(pl.Float64)
    parts = [pl.col(f"{n}_{k}") for n in SIGNALS for k in ("z", "spike", "flat")]
    frame = frame.with_columns(pl.max_horizontal(*parts, (pl.col("gap") / (pl.col("gap") + 10)).fill_null(0),
                                                 limits).alias("score"))
    flagged = frame.select((pl.col("score") >= 0.5).alias("f"), "entity")
    starts = flagged.select((pl.col("f") & ~pl.col("f").shift(1, fill_value=False).over("entity")).sum())
    return frame["score"], int(starts.item())


def bench_pipeline(rows, repeat):
    from sbg.stream.pipeline import Pipeline

    df = fleet_frame(rows)

    def ours():
        p = Pipeline(signals=SIGNALS)
        for i in range(0, len(df), 1000):
            p.process(df.iloc[i:i + 1000])

    def same_detectors():
        # The anchors' work only: what pandas_same_work computes (no surprise, joint or forecast, and no
        # confirmation by the surprise's tail), so the ratio compares the same arithmetic.
        from sbg.detect.detectors import Flatline, Gap, Limits, Spike, ZScore

        p = Pipeline(signals=SIGNALS, detectors=[Limits(), ZScore(confirm=0), Spike(confirm=0), Flatline(), Gap()])
        for i in range(0, len(df), 1000):
            p.process(df.iloc[i:i + 1000])

    Pipeline(signals=SIGNALS).process(df.iloc[:2000])  # compile/load kernels outside the timing
    t_ours = best(ours, repeat)
    t_same = best(same_detectors, repeat)
    t_pd = best(lambda: pandas_same_work(df), repeat)
    out = {"rows": len(df), "sbg_rows_s": len(df) / t_ours, "pandas_rows_s": len(df) / t_pd, "ratio": t_pd / t_ours,
           "same_rows_s": len(df) / t_same, "same_ratio": t_pd / t_same}
    try:
        import polars  # noqa: F401
    except ImportError:
        return out
    polars_same_work(df.iloc[:2000])
    t_pl = best(lambda: polars_same_work(df), repeat)
    return {**out, "polars_rows_s": len(df) / t_pl, "polars_ratio": t_pl / t_ours, "same_polars_ratio": t_pl / t_same}


def bench_row_at_a_time(rows, repeat):
    from river import stats, utils

    from sbg.stream.pipeline import Pipeline
    from sbg.stream.rows import RowSource

    rng = np.random.default_rng(1)
    values = np.round(rng.normal(3.7, 0.01, rows), 4).tolist()
    t0 = np.datetime64("2024-01-01T00:00:00", "ns").astype("int64")
    stamps = (t0 + np.arange(rows, dtype="int64") * 10**9).tolist()
    records = [(t, "cell", v) for t, v in zip(stamps, values, strict=True)]

    def ours():
        p = Pipeline(signals=["voltage_v"])
        src = RowSource(["voltage_v"], n=20000)
        p.connect(src).stream.sink(lambda df: None)
        emit = src.emit
        for rec in records:
            emit(rec)
        src.flush()

    def river():
        mean = utils.Rolling(stats.Mean, window_size=120)
        var = utils.Rolling(stats.Var, window_size=120)
        for v in values:
            mean.update(v)
            var.update(v)
            mean.get()
            var.get()

    ours()
    t_ours = best(ours, repeat)
    t_river = best(river, repeat)
    return {"rows": rows, "sbg_rows_s": rows / t_ours, "river_rows_s": rows / t_river, "ratio": t_river / t_ours}


def bench_detect(rows, repeat):
    from sbg.stream.batch import run_detect

    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"fleet_{rows}.csv"
    if not path.exists():
        fleet_frame(rows).rename(columns={"entity": "battery_id"}).to_csv(
            path, index=False, date_format="%Y-%m-%dT%H:%M:%S")
    out = DATA / "detect_out.csv"
    floor_out = DATA / "floor_out.csv"

    io_floor = _floor_function()

    run_detect(path, out, chunk_size=65536)
    t_ours = best(lambda: run_detect(path, out, chunk_size=65536), repeat)
    t_floor = best(lambda: io_floor(path, floor_out), repeat)
    return {"rows": rows, "file_mb": path.stat().st_size / 1e6, "sbg_s": t_ours, "floor_s": t_floor,
            "ratio": t_ours / t_floor}


def _process_seconds(cmd, runs):
    """Wall seconds of ``runs`` whole runs of ``cmd`` (after one that is not counted)."""
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i:
            times.append(time.perf_counter() - t0)
    return times


#: The I/O floor: pyarrow reads the file and writes it back with the four added columns. One text, run in
#: this process (imports done) and as a whole process of its own (``python -c``, pyarrow's imports only).
FLOOR_SCRIPT = """
import numpy as np, pyarrow as pa, pyarrow.csv as pacsv

def io_floor(src, dst):
    table = pacsv.read_csv(src); n = table.num_rows
    for name, col in (("anomaly_score", pa.array(np.zeros(n))), ("is_anomaly", pa.array(np.zeros(n, dtype=bool))),
                      ("reason", pa.array(np.full(n, "", dtype=object), type=pa.string())),
                      ("quality", pa.array(np.full(n, "", dtype=object), type=pa.string()))):
        table = table.append_column(name, col)
    pacsv.write_csv(table, dst)

if __name__ == "__main__":
    import sys
    io_floor(sys.argv[1], sys.argv[2])
"""


def _floor_function():
    """:data:`FLOOR_SCRIPT`'s ``io_floor``, for timing in this process."""
    namespace = {"__name__": "floor"}
    exec(FLOOR_SCRIPT, namespace)
    return namespace["io_floor"]


def bench_detect_process(rows, repeat):
    """``sbg detect`` and the I/O floor as whole processes, run in turn (pairs keep the ratio fair on a
    machine whose speed drifts): the median of the pairs' ratios."""
    path, sbg = DATA / f"fleet_{rows}.csv", Path(sys.executable).with_name("sbg")
    ratios, ours, floors = [], [], []
    for _ in range(repeat):
        (t_ours,) = _process_seconds([str(sbg), "detect", str(path), "-o", str(DATA / "detect_out.csv")], 1)
        (t_floor,) = _process_seconds([sys.executable, "-c", FLOOR_SCRIPT, str(path), str(DATA / "floor_out.csv")], 1)
        ours.append(t_ours)
        floors.append(t_floor)
        ratios.append(t_ours / t_floor)
    return {"sbg_s": statistics.median(ours), "floor_s": statistics.median(floors), "ratio": statistics.median(ratios)}


def bench_startup(runs=7):
    """Whole-process start-up: ``sbg detect`` of a 100-row file, and ``sbg --help``."""
    DATA.mkdir(parents=True, exist_ok=True)
    small = DATA / "fleet_100.csv"
    fleet_frame(100, entities=4).rename(columns={"entity": "battery_id"}).to_csv(
        small, index=False, date_format="%Y-%m-%dT%H:%M:%S")
    sbg = str(Path(sys.executable).with_name("sbg"))
    detect = _process_seconds([sbg, "detect", str(small), "-o", str(DATA / "fleet_100_out.csv")], runs)
    helps = _process_seconds([sbg, "--help"], runs)
    return {"detect_100": detect, "help": helps}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows for the detect benchmark (default 2M)")
    ap.add_argument("--pipeline-rows", type=int, default=1_000_000)
    ap.add_argument("--row-rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=["pipeline", "row", "detect", "startup"], action="append")
    args = ap.parse_args(argv)
    todo = args.only or ["pipeline", "row", "detect", "startup"]
    results = {}
    if "pipeline" in todo:
        r = results["pipeline"] = bench_pipeline(args.pipeline_rows, args.repeat)
        print(f"pipeline vs pandas  {r['rows']:>9,} rows: sbg {r['sbg_rows_s']:>10,.0f} rows/s, "
              f"pandas {r['pandas_rows_s']:>10,.0f} rows/s  -> {r['ratio']:.2f}x pandas (target >= 2x; sbg's "
              "default detectors, more work than the anchor: surprise, joint, forecast)")
        print(f"  the same work     {r['rows']:>9,} rows: sbg {r['same_rows_s']:>10,.0f} rows/s, "
              f"pandas {r['pandas_rows_s']:>10,.0f} rows/s  -> {r['same_ratio']:.2f}x pandas (limits, zscore, "
              "spike, flatline, gap: the anchor's detectors)")
        if "polars_rows_s" in r:
            print(f"pipeline vs polars  {r['rows']:>9,} rows: sbg {r['sbg_rows_s']:>10,.0f} rows/s, "
                  f"polars {r['polars_rows_s']:>10,.0f} rows/s  -> {r['polars_ratio']:.2f}x polars "
                  f"({r['same_polars_ratio']:.2f}x for the same work; polars takes the whole frame at once, "
                  "multi-threaded; sbg runs 1,000-row chunks on one thread)")
    if "row" in todo:
        r = results["row"] = bench_row_at_a_time(args.row_rows, args.repeat)
        print(f"row at a time       {r['rows']:>9,} rows: sbg {r['sbg_rows_s']:>10,.0f} rows/s, "
              f"river  {r['river_rows_s']:>10,.0f} rows/s  -> {r['ratio']:.2f}x river (target >= 5x)")
    if "detect" in todo:
        r = results["detect"] = bench_detect(args.rows, args.repeat)
        print(f"sbg detect          {r['rows']:>9,} rows ({r['file_mb']:.0f} MB): sbg {r['sbg_s']:.2f} s, "
              f"I/O floor {r['floor_s']:.2f} s  -> {r['ratio']:.2f}x the floor (in this process, imports done)")
        r = results["detect_process"] = bench_detect_process(args.rows, args.repeat)
        print(f"  whole processes   {args.rows:>9,} rows: sbg {r['sbg_s']:.2f} s, I/O floor {r['floor_s']:.2f} s  -> "
              f"{r['ratio']:.2f}x the floor (median of {args.repeat} pairs; target <= 1.5x)")
    if "startup" in todo:
        r = results["startup"] = bench_startup()

        def spread(ts):
            return f"median {statistics.median(ts):.3f} s (min {min(ts):.3f}, max {max(ts):.3f})"
        print(f"start-up            sbg detect of 100 rows: {spread(r['detect_100'])} (target <= 1.0 s); "
              f"sbg --help: {spread(r['help'])} (target <= 0.3 s)")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
