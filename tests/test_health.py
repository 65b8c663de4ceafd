"""The per-battery health score (``sbg.battery.health``): known answers, chunk invariance, hostile input, exposure.

Known-answer tolerances (also in docs/battery.md): a cell from the bundled
generator aged by a known fade and resistance growth, six hours at 1 Hz,
must give its state of health within ``SOH_TOL`` (absolute, against the
nameplate capacity) and its resistance growth within ``GROWTH_TOL``
(absolute, against the fresh one-second resistance).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sbg.battery.health import COMPONENTS, HealthScore
from sbg.io.datasets import aged_cell

SOH_TOL = 0.01
GROWTH_TOL = 0.03
_NAMES = [c[0] for c in COMPONENTS]


def as_enriched(data: pd.DataFrame, keep: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """A generator frame as the pipeline hands it on: ``entity``, typed times, no flags; ``keep`` thins it
    at random (irregular sampling)."""
    frame = data.rename(columns={"battery_id": "entity"})
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    frame["is_anomaly"] = False
    frame["quality"] = pd.Series("", index=frame.index, dtype=object)
    if keep < 1.0:
        frame = frame[np.random.default_rng(seed).random(len(frame)) < keep].reset_index(drop=True)
    return frame


def scored(frame: pd.DataFrame, chunk: int | None = None, **params) -> pd.DataFrame:
    health = HealthScore(**params)
    step = chunk or max(len(frame), 1)
    for i in range(0, len(frame), step):
        health.update(frame.iloc[i:i + step])
    return health.table()


@pytest.fixture(scope="module")
def pair():
    """Two cells interleaved by time, one fresh and one aged, 90 minutes."""
    fresh, _ = aged_cell(seed=3, hours=1.5, entity="fresh")
    aged, _ = aged_cell(seed=4, fade=0.15, resistance_growth=0.4, hours=1.5, entity="aged")
    both = pd.concat([fresh, aged]).sort_values("timestamp", kind="stable").reset_index(drop=True)
    return as_enriched(both)


# ---------------------------------------------------------------------- known answers


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("fade", "growth"), [(0.0, 0.0), (0.2, 0.5), (0.1, 1.0)])
def test_known_fade_and_resistance_growth(seed, fade, growth):
    data, truth = aged_cell(seed=seed, fade=fade, resistance_growth=growth)
    table = scored(as_enriched(data), nameplate_ah=truth["capacity_ah"],
                   nameplate_resistance_ohm=truth["resistance_ohm"])
    row = table.iloc[0]
    assert abs(row["soh"] - (1.0 - fade)) <= SOH_TOL
    assert abs(row["resistance_growth"] - growth) <= GROWTH_TOL
    # The scores follow: SOH against the 80 % end of life, growth against a doubling.
    assert row["capacity"] == pytest.approx(100 * np.clip((row["soh"] - 0.8) / 0.2, 0, 1))
    assert row["resistance"] == pytest.approx(100 * np.clip(1 - row["resistance_growth"], 0, 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_known_answer_with_irregular_sampling(seed):
    """A third of the rows dropped at random: charge is integrated over the real time between rows."""
    estimates = {}
    for fade, growth in ((0.0, 0.0), (0.2, 0.5)):
        data, truth = aged_cell(seed=seed, fade=fade, resistance_growth=growth)
        estimates[fade] = scored(as_enriched(data, keep=0.67, seed=seed), nameplate_ah=truth["capacity_ah"]).iloc[0]
    assert abs(estimates[0.2]["soh"] - 0.8) <= SOH_TOL
    assert abs(estimates[0.0]["soh"] - 1.0) <= SOH_TOL
    # Steps now span 1-3 s, so the resistance is compared with the fresh cell's, sampled alike.
    measured = estimates[0.2]["resistance_ohm"] / estimates[0.0]["resistance_ohm"] - 1.0
    assert abs(measured - 0.5) <= GROWTH_TOL


def test_first_seen_reference_scores_a_steady_cell_healthy():
    data, _ = aged_cell(seed=5, fade=0.3, resistance_growth=0.8)
    row = scored(as_enriched(data)).iloc[0]
    # Without a nameplate the reference is the cell's own start: no fade within one run.
    assert abs(row["soh"] - 1.0) <= SOH_TOL and abs(row["resistance_growth"]) <= GROWTH_TOL
    assert row["capacity"] > 90 and "first seen" in row["capacity_status"]


def test_aged_cell_is_seeded_and_the_same_cell_whatever_the_ageing():
    a, truth_a = aged_cell(seed=7, hours=0.2)
    b, _ = aged_cell(seed=7, hours=0.2)
    c, truth_c = aged_cell(seed=7, fade=0.2, resistance_growth=0.5, hours=0.2)
    pd.testing.assert_frame_equal(a, b)
    assert truth_c["capacity_ah"] == truth_a["capacity_ah"]
    assert truth_c["aged_resistance_ohm"] == pytest.approx(1.5 * truth_a["resistance_ohm"])
    with pytest.raises(ValueError):
        aged_cell(fade=1.0)


# ---------------------------------------------------------------------- contracts


def test_chunk_invariance(pair):
    whole = scored(pair)
    assert whole["health"].notna().all() and whole["resistance_steps"].min() > 20
    for chunk in (1, 7, 100):
        pd.testing.assert_frame_equal(scored(pair, chunk), whole)


def test_state_survives_a_save_and_load(pair):
    whole = scored(pair)
    first = HealthScore()
    first.update(pair.iloc[:4321])
    meta, arrays = first.state_dict()
    second = HealthScore()
    second.load_state_dict(json.loads(json.dumps(meta)), {k: v.copy() for k, v in arrays.items()})
    second.update(pair.iloc[4321:])
    pd.testing.assert_frame_equal(second.table(), whole)


def test_load_refuses_bad_state(pair):
    h = HealthScore()
    h.update(pair.iloc[:100])
    meta, arrays = h.state_dict()
    with pytest.raises(ValueError):
        HealthScore().load_state_dict(meta, {**arrays, "res_ring": np.zeros((len(meta["labels"]), 3))})
    with pytest.raises(ValueError):
        HealthScore().load_state_dict({"labels": ["a", "a"]}, arrays)


def test_state_is_bounded_per_entity(pair):
    h = HealthScore()
    h.update(pair.iloc[:2000])
    size = h.nbytes()
    h.update(pair.iloc[2000:])
    assert h.nbytes() == size  # more rows of the same entities: not one byte more


# ---------------------------------------------------------------------- hostile input


def test_no_current_column_reports_no_data_and_spreads_the_weight(pair):
    row = scored(pair.drop(columns=["current_a"])).iloc[0]
    assert np.isnan(row["capacity"]) and np.isnan(row["resistance"])
    assert row["capacity_status"] == "no data: no current_a column"
    assert row["resistance_status"] == "no data: no current_a column"
    assert "spread over the others" in row["weights"] and "capacity" in row["weights"]
    h = HealthScore()
    available = {"thermal": row["thermal"], "anomalies": row["anomalies"], "data_quality": row["data_quality"]}
    weights = h.weights()
    expected = sum(weights[c] * s for c, s in available.items()) / sum(weights[c] for c in available)
    assert row["health"] == pytest.approx(expected)


def test_reversed_current_sign_scores_the_same(pair):
    flipped = pair.assign(current_a=-pair["current_a"])
    a, b = scored(pair), scored(flipped)
    same = ["health", *_NAMES, "soh", "resistance_ohm", "rise_c_per_a"]
    pd.testing.assert_frame_equal(a[same], b[same])
    # The generator counts discharge positive; the voltage response says so, and the flipped log the other way.
    assert set(a["current_sign"]) == {"discharge_positive"}
    assert set(b["current_sign"]) == {"charge_positive"}
    declared = scored(flipped, current_sign="discharge_positive")
    assert declared["current_sign"].str.contains("declared discharge_positive").all()


def test_nan_bursts_are_survived(pair):
    holed = pair.copy()
    rng = np.random.default_rng(1)
    for column in ("current_a", "voltage_v", "soc_pct", "temperature_c"):
        for start in rng.integers(0, len(holed) - 50, 20):
            holed.loc[start:start + int(rng.integers(1, 40)), column] = np.nan
    clean, dirty = scored(pair), scored(holed)
    assert dirty["health"].notna().all()
    assert (dirty["capacity_swings"] <= clean["capacity_swings"]).all()
    assert np.allclose(dirty["resistance_ohm"], clean["resistance_ohm"], rtol=0.05)


def test_constant_current_and_a_cell_that_never_cycles():
    t = pd.date_range("2024-01-01", periods=3600, freq="s")
    rest = pd.DataFrame({"timestamp": t, "entity": "parked", "voltage_v": 3.7, "current_a": 0.0,
                         "temperature_c": 24.0, "soc_pct": 60.0, "is_anomaly": False, "quality": ""})
    steady = rest.assign(entity="steady", current_a=2.5, soc_pct=np.linspace(80, 30, len(t)),
                         voltage_v=np.linspace(3.9, 3.6, len(t)))
    frame = pd.concat([rest, steady]).sort_values("timestamp", kind="stable").reset_index(drop=True)
    table = scored(frame, nameplate_ah=5.0).set_index("entity")
    parked, constant = table.loc["parked"], table.loc["steady"]
    assert np.isnan(parked["capacity"]) and parked["capacity_status"].startswith("no data: 0 of 2 swings")
    assert np.isnan(parked["resistance"]) and np.isnan(constant["resistance"])  # no current step at all
    # 2.5 A for an hour over 50 points of SOC: 5 Ah, the nameplate; counted discharge positive.
    assert constant["soh"] == pytest.approx(1.0, abs=1e-3)
    assert parked["health"] == pytest.approx(100.0) and np.isfinite(constant["health"])


def test_time_above_limit_and_rates():
    t = pd.date_range("2024-01-01", periods=1000, freq="s")
    frame = pd.DataFrame({"timestamp": t, "entity": "hot", "temperature_c": np.where(np.arange(1000) < 500, 30, 50.0),
                          "is_anomaly": np.arange(1000) % 10 == 0,
                          "quality": pd.Series(np.where(np.arange(1000) % 20 == 0, "gap", ""), dtype=object)})
    row = scored(frame, rate_half_life_s=1e9).iloc[0]
    # Intervals are judged at their midpoint: the one from 30 °C to 50 °C (40 °C) is not above 45 °C.
    assert row["time_above_s"] == pytest.approx(499.0) and row["above_fraction"] == pytest.approx(499 / 999)
    assert row["anomaly_rate"] == pytest.approx(0.1, abs=1e-3) and row["anomalies"] == 0.0
    assert row["quality_rate"] == pytest.approx(0.05, abs=1e-3) and row["data_quality"] == pytest.approx(50, abs=1)
    # Half the time above 45 °C scores 0 on its own; the Arrhenius part is averaged in.
    factor_45 = np.exp(0.5 / 8.617333262e-5 * (1 / 298.15 - 1 / 318.15))
    arrhenius = 100 * np.clip(1 - (row["arrhenius_factor"] - 1) / (factor_45 - 1), 0, 1)
    assert row["thermal"] == pytest.approx(arrhenius / 2) and row["thermal"] < 25


# ---------------------------------------------------------------------- in the flow


@pytest.fixture(scope="module")
def pair_csv(tmp_path_factory, pair):
    path = tmp_path_factory.mktemp("health") / "pair.csv"
    pair.drop(columns=["is_anomaly", "quality"]).rename(columns={"entity": "battery_id"}).to_csv(path, index=False)
    return path


def test_streaming_equals_batch_whatever_the_chunks(pair_csv, tmp_path):
    from sbg.stream.batch import run_detect
    from sbg.stream.monitor import Monitor

    live = Monitor([pair_csv], speed="max", max_chunk_rows=333)
    live.run_to_end()
    streamed = live.health_scores()
    assert len(streamed) == 2 and streamed["health"].notna().all()
    for chunk in (7, 100, 1 << 20):
        result = run_detect(pair_csv, tmp_path / f"out{chunk}.csv", chunk_size=chunk)
        pd.testing.assert_frame_equal(result["health"], streamed)
    assert set(result["summary"]["health"]) == {"fresh", "aged"}


def test_health_survives_checkpoint_and_resume(pair_csv, tmp_path):
    from sbg.stream.monitor import Monitor

    db = tmp_path / "alerts.sqlite"
    first = Monitor([pair_csv], speed="max", alerts_db=db)
    first.run_to_end()
    expected = first.health_scores()
    first.close()
    again = Monitor([pair_csv], speed="max", alerts_db=db, resume=True)
    pd.testing.assert_frame_equal(again.health_scores(), expected)
    again.close()


def test_status_metrics_and_report(pair_csv, tmp_path):
    from sbg.report.build import build_report
    from sbg.serve.exposition import prometheus_text
    from sbg.stream.monitor import Monitor

    m = Monitor([pair_csv], speed="max")
    m.run_to_end()
    status = json.loads(json.dumps(m.status()))
    aged = status["health"]["aged"]
    assert set(aged["components"]) == set(_NAMES)
    assert 0 <= aged["score"] <= 100 and aged["components"]["capacity"]["status"].startswith("SOH")
    text = prometheus_text([m])
    assert 'sbg_health_score{source="pair",entity="aged"}' in text
    assert 'sbg_health_resistance_score{source="pair",entity="fresh"}' in text
    html = build_report(m)
    assert '<section id="health">' in html and "Internal-resistance growth" in html and ">aged<" in html


def test_not_battery_data_has_no_score(tmp_path):
    from sbg.io.datasets import DATA_DIR
    from sbg.serve.exposition import prometheus_text
    from sbg.stream.monitor import Monitor

    m = Monitor([DATA_DIR / "machine_monitor.csv"], speed="max")
    m.run_to_end()
    assert m.pipeline.health is None and m.status()["health"] is None and m.health_scores().empty
    assert "sbg_health" not in prometheus_text([m])


def test_entity_text_is_escaped_in_the_report(tmp_path):
    from sbg.report.build import build_report
    from sbg.stream.monitor import Monitor

    data, _ = aged_cell(seed=1, hours=0.3, entity="<b>x</b>")
    path = tmp_path / "cell.csv"
    data.to_csv(path, index=False)
    m = Monitor([path], speed="max")
    m.run_to_end()
    html = build_report(m)
    start = html.index('<section id="health">')
    section = html[start:html.index("</section>", start)]
    assert "<b>x</b>" not in section and "&lt;b&gt;x&lt;/b&gt;" in section


def test_settings_configure_the_score():
    from sbg.config import Settings
    from sbg.errors import ConfigError

    s = Settings.from_dict({"health": {"nameplate_ah": 5.0, "capacity_weight": 0.5}})
    h = s.make_health()
    assert (h.nameplate_ah, h.capacity_weight) == (5.0, 0.5)
    assert Settings().with_overrides(["health.min_steps=30"]).make_health().min_steps == 30
    with pytest.raises(ConfigError):
        Settings.from_dict({"health": {"no_such": 1}})


def test_dashboard_health_table_sorts_and_drills_down(pair_csv):
    import panel as pn

    from sbg.stream.monitor import Monitor
    from sbg.ui.health import HealthGrid
    from sbg.ui.session import Session

    monitor = Monitor([pair_csv], speed="max")
    session = Session(monitor=monitor)
    grid = HealthGrid(session=session)
    assert not grid.scores_box.visible  # nothing scored yet
    monitor.run_to_end()
    grid.refresh()
    shown = grid.scores_table.value
    assert grid.scores_box.visible and set(shown["entity"]) == {"aged", "fresh"}
    assert shown["health"].is_monotonic_increasing  # worst first
    assert grid.scores_table.sorters == [{"field": "health", "dir": "asc"}]
    drill = grid.components(shown.iloc[0])  # what a click on the row opens
    table = drill.objects[0].object
    assert isinstance(drill, pn.Column) and list(table["component"]) == [t for _, t, _ in COMPONENTS]
    assert table["status"].iloc[0].startswith("SOH")
    session.close()
    monitor.close()
