"""Scale-out on Dask: a real ``LocalCluster`` of worker processes gives the single-process results.

The cluster (two worker processes, one thread each) is started once for the
module; the CLI runs as a user would, in subprocesses, pointed at it with
``--scheduler``. One test lets ``sbg detect --workers 2`` start its own.
The data is small and generated here, with faults that raise alerts and rows
that are quarantined, split into files the way archives are.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sbg.stream.batch import read_dataset, run_detect
from sbg.stream.monitor import Monitor
from tests.served import Tab, get, status
from tests.served import served as sbg_served
from tests.test_cli import no_traceback, one_error_line, run

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ENTITIES = [f"cell-{i:02d}" for i in range(6)]
HOURS = 3
PER_HOUR = 1200  # rows per entity per file: enough for every detector's warm-up over the run


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two worker processes (not threads), and a client on it."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            distributed.Client(lc) as client:
        yield lc.scheduler_address, client


def _fleet(seed=7) -> pd.DataFrame:
    """Six cells at 1 Hz for ``HOURS`` hours with spikes, an over-temperature run and a stuck sensor."""
    rng = np.random.default_rng(seed)
    n = HOURS * PER_HOUR
    parts = []
    for k, cell in enumerate(ENTITIES):
        t = pd.Timestamp("2024-03-01") + pd.to_timedelta(np.arange(n) * 3, unit="s")
        volt = 3.7 + 0.05 * np.sin(np.arange(n) / 300) + rng.normal(0, 0.004, n)
        temp = 25 + np.cumsum(rng.normal(0, 0.02, n)) + k
        soc = np.clip(80 - np.arange(n) * 0.01 + rng.normal(0, 0.05, n), 20, 90)
        volt[rng.integers(2000, n, 3)] += 0.6
        if k % 2 == 0:
            temp[2500 + 100 * k: 2600 + 100 * k] = 55 + rng.normal(0, 0.1, 100)
        if k == 3:
            volt[3000:3200] = volt[3000]
        parts.append(pd.DataFrame({"timestamp": t, "battery_id": cell, "voltage_v": volt.round(4),
                                   "temperature_c": temp.round(3), "soc_pct": soc.round(2),
                                   "mode": np.where(np.arange(n) % 500 < 250, "discharge", "rest")}))
    frame = pd.concat(parts).sort_values(["timestamp", "battery_id"], kind="stable").reset_index(drop=True)
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return frame


def _csv_archive(folder) -> pd.DataFrame:
    """The fleet as one CSV per hour, with a few malformed rows in the second file."""
    frame = _fleet()
    folder.mkdir()
    bounds = np.linspace(0, len(frame), HOURS + 1).astype(int)
    for h in range(HOURS):
        text = frame.iloc[bounds[h]:bounds[h + 1]].to_csv(index=False)
        if h == 1:
            lines = text.splitlines(keepends=True)
            lines.insert(50, "2024-03-01T01:00:00,cell-00,not-a-number,25,50,rest\n")
            lines.insert(90, "garbage line without enough fields\n")
            text = "".join(lines)
        (folder / f"fleet-{h:02d}.csv").write_text(text)
    return frame


def _sorted(table) -> pd.DataFrame:
    """A flags dataset in a canonical order: by entity, then time, keeping each entity's row order."""
    df = table.to_pandas()
    return df.sort_values(["battery_id", "timestamp"], kind="stable").reset_index(drop=True)


def _alert_log(path) -> pd.DataFrame:
    with sqlite3.connect(path) as conn:
        return pd.read_sql("SELECT * FROM alerts ORDER BY id", conn)


def test_backfill_of_a_glob_on_the_cluster_equals_one_process(tmp_path, cluster):
    """Flags, alert log, quarantine and counts of `sbg detect --scheduler` equal a single-process run, exactly."""
    address, _ = cluster
    _csv_archive(tmp_path / "archive")
    pattern = str(tmp_path / "archive" / "fleet-*.csv")
    single = run_detect(pattern, tmp_path / "single.parquet", alerts_db=tmp_path / "single.sqlite",
                        quarantine_path=tmp_path / "single_q.csv", chunk_size=1000)
    proc = run("detect", pattern, "-o", tmp_path / "dask.parquet", "--scheduler", address, "--partitions", "5",
               "--alerts-db", tmp_path / "dask.sqlite", "--quarantine", tmp_path / "dask_q.csv",
               "--summary-json", tmp_path / "dask.json")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "dashboard http" in proc.stdout

    s = single["summary"]
    assert s["rows_quarantined"] == 2 and s["alerts"] >= 4 and s["rows_flagged"] > 0
    parts = sorted(p.name for p in (tmp_path / "dask.parquet").glob("*.parquet"))
    assert len(parts) > 1 and all(p.startswith("part-") for p in parts)
    assert not (tmp_path / "dask.parquet" / "_sbg_tmp").exists()
    for part in parts:  # each entity lives in exactly one part file
        ents = set(pq.read_table(tmp_path / "dask.parquet" / part, columns=["battery_id"]).column(0).to_pylist())
        others = {p: set(pq.read_table(tmp_path / "dask.parquet" / p, columns=["battery_id"]).column(0).to_pylist())
                  for p in parts if p != part}
        assert all(not (ents & o) for o in others.values())

    pd.testing.assert_frame_equal(_sorted(read_dataset(tmp_path / "single.parquet")),
                                  _sorted(read_dataset(tmp_path / "dask.parquet")), check_exact=True)
    pd.testing.assert_frame_equal(_alert_log(tmp_path / "single.sqlite"), _alert_log(tmp_path / "dask.sqlite"),
                                  check_exact=True)
    assert (tmp_path / "single_q.csv").read_text() == (tmp_path / "dask_q.csv").read_text()
    import json

    d = json.loads((tmp_path / "dask.json").read_text())
    for key in ("rows_in", "rows_ok", "rows_quarantined", "rows_flagged", "alerts", "alerts_by_severity",
                "pipeline_errors", "first_quarantined"):
        assert d[key] == s[key], key
    assert s["first_quarantined"]["line"] > 1


def test_backfill_of_a_parquet_directory_with_local_workers(tmp_path):
    """`sbg detect DIR --workers 2` starts its own cluster of processes and matches one process."""
    frame = _fleet(seed=11)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    data = tmp_path / "fleet.parquet"
    data.mkdir()
    for i, cell in enumerate(ENTITIES):  # a dataset partitioned by entity, as many archives are
        (data / f"battery={i}").mkdir()
        frame[frame["battery_id"] == cell].to_parquet(data / f"battery={i}" / "part-0.parquet", index=False)
    single = run("detect", data, "-o", tmp_path / "single.parquet", "--alerts-db", tmp_path / "single.sqlite")
    dask = run("detect", data, "-o", tmp_path / "dask.parquet", "--workers", "2",
               "--alerts-db", tmp_path / "dask.sqlite")
    for proc in (single, dask):
        no_traceback(proc)
        assert proc.returncode == 0, proc.stderr
    assert "2 local worker processes" in dask.stdout and "dashboard http" in dask.stdout
    pd.testing.assert_frame_equal(_sorted(read_dataset(tmp_path / "single.parquet")),
                                  _sorted(read_dataset(tmp_path / "dask.parquet")), check_exact=True)
    log = _alert_log(tmp_path / "dask.sqlite")
    assert len(log) >= 3
    pd.testing.assert_frame_equal(_alert_log(tmp_path / "single.sqlite"), log, check_exact=True)


def test_live_fan_out_shows_the_same_numbers(tmp_path, cluster):
    """A monitor whose entities are scored on two workers has the metrics, history, health and alerts of one."""
    from sbg.scale.cluster import FanOut

    _, client = cluster
    _csv_archive(tmp_path / "archive")
    files = sorted((tmp_path / "archive").glob("*.csv"))
    one = Monitor(files, speed="max", max_chunk_rows=700)
    one.run_to_end()
    spread = Monitor(files, speed="max", max_chunk_rows=700, fan_out=FanOut(client, partitions=3),
                     alerts_db=tmp_path / "fan.sqlite")
    spread.run_to_end()
    spread.close()
    keys = ("rows_in", "rows_ok", "rows_quarantined", "analyses", "errors", "entities", "alerts_total",
            "alerts_firing", "sim_time")
    assert {k: one.metrics.as_dict()[k] for k in keys} == {k: spread.metrics.as_dict()[k] for k in keys}
    assert one.metrics.alerts_total >= 4
    pd.testing.assert_frame_equal(one.alerts, spread.alerts, check_exact=True)
    pd.testing.assert_frame_equal(one.history.frame(), spread.history.frame(), check_exact=True)
    pd.testing.assert_frame_equal(one.health(), spread.health(), check_exact=True)
    assert len(_alert_log(tmp_path / "fan.sqlite")) == len(one.alerts)


def test_replay_and_report_on_the_cluster(tmp_path, cluster):
    """`sbg replay` and `sbg report` with --scheduler print and file what a single-process run does."""
    address, _ = cluster
    _csv_archive(tmp_path / "archive")
    pattern = str(tmp_path / "archive" / "*.csv")
    plain = run("replay", pattern, "--alerts-db", tmp_path / "one.sqlite")
    spread = run("replay", pattern, "--scheduler", address, "--alerts-db", tmp_path / "two.sqlite")
    report = run("report", pattern, "-o", tmp_path / "r.html", "--scheduler", address)
    for proc in (plain, spread, report):
        no_traceback(proc)
        assert proc.returncode == 0, proc.stderr

    def fired(out):
        return [ln for ln in out.splitlines() if ln.startswith(("FIRE", "AGAIN", "CLEAR"))]

    assert fired(plain.stdout) and fired(plain.stdout) == fired(spread.stdout)
    assert _alert_log(tmp_path / "one.sqlite").equals(_alert_log(tmp_path / "two.sqlite"))
    assert "dashboard http" in spread.stdout
    assert (tmp_path / "r.html").stat().st_size > 10_000


def test_bad_inputs_and_addresses_are_one_line_errors(tmp_path, cluster):
    address, _ = cluster
    _csv_archive(tmp_path / "archive")
    nothing = run("detect", str(tmp_path / "archive" / "*.parquet"), "-o", tmp_path / "o.parquet",
                  "--scheduler", address)
    assert "matches nothing" in one_error_line(nothing) and nothing.returncode == 2

    not_an_address = run("detect", tmp_path / "archive", "-o", tmp_path / "o.parquet", "--scheduler", "localhost")
    assert "not a Dask scheduler address" in one_error_line(not_an_address)
    unreachable = run("detect", tmp_path / "archive", "-o", tmp_path / "o.parquet", "--scheduler", "tcp://127.0.0.1:9")
    assert "cannot reach the Dask scheduler" in one_error_line(unreachable)

    csv_out = run("detect", tmp_path / "archive", "-o", tmp_path / "o.csv", "--scheduler", address)
    assert "Parquet dataset" in one_error_line(csv_out)

    mixed = tmp_path / "mixed.parquet"
    mixed.mkdir()
    frame = _fleet().head(500)
    frame.to_parquet(mixed / "a.parquet", index=False)
    frame.rename(columns={"soc_pct": "state_of_charge"}).to_parquet(mixed / "b.parquet", index=False)
    proc = run("detect", mixed, "-o", tmp_path / "m.parquet", "--scheduler", address)
    line = one_error_line(proc)
    assert "b.parquet" in line and "different schema" in line and proc.returncode == 3

    # The same hour twice: every entity goes back in time from one file to the next.
    back = tmp_path / "back"
    back.mkdir()
    (back / "1.csv").write_text((tmp_path / "archive" / "fleet-01.csv").read_text())
    (back / "2.csv").write_text((tmp_path / "archive" / "fleet-00.csv").read_text())
    for extra in ([], ["--scheduler", address]):
        proc = run("detect", back, "-o", tmp_path / "b.parquet", *extra)
        line = one_error_line(proc)
        assert "2.csv" in line and "before" in line and "time order" in line and proc.returncode == 3


def test_served_fan_out_shows_the_same_numbers_in_the_browser(tmp_path, cluster, browser):
    """`sbg serve --scheduler`: the dashboard replays on the cluster and shows what one process computes."""
    address, _ = cluster
    _csv_archive(tmp_path / "archive")
    files = sorted((tmp_path / "archive").glob("*.csv"))
    one = Monitor(files, speed="max")
    one.run_to_end()
    expected = one.metrics.as_dict()
    keys = ("rows_in", "rows_ok", "rows_quarantined", "entities", "alerts_total", "alerts_firing", "sim_time")
    with sbg_served(tmp_path / "serve.log", str(tmp_path / "archive" / "*.csv"), "--scheduler", address,
                    "--speed", "max") as base:
        tab = Tab(browser, base)
        try:
            tab.click("Start")
            tab.wait_for(lambda: status(base)["replay"]["state"] == "finished", timeout=120, what="the replay to end")
            got = status(base)["metrics"]
            assert {k: got[k] for k in keys} == {k: expected[k] for k in keys}
            assert got["errors"] == 0, got["last_error"]
            alerts = json.loads(get(f"{base}/api/alerts?limit=1000")[1])
            assert len(alerts["alerts"]) == len(one.alerts) >= 4
            # The page shows the same numbers and draws the fleet.
            tab.wait_for(lambda: tab.kpi("rows_in") == expected["rows_in"], what="rows ingested on the page")
            assert tab.kpi("rows_quarantined") == expected["rows_quarantined"] > 0
            tab.wait_for(lambda: tab.points() > 0, what="points on the plots")
            tab.shot("fan_out")
            assert not tab.errors, tab.errors
        finally:
            tab.close()
