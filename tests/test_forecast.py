"""The limit forecast: trend, predicted crossing, warning before the limit, chunk invariance, alert wording."""

import json

import numpy as np
import pandas as pd
import pytest

from sbg.alerts.engine import AlertEngine, default_rules
from sbg.detect.detectors import Limits, default_detectors, is_flag
from sbg.detect.features import Features
from sbg.detect.forecast import Forecast
from sbg.stream.pipeline import Pipeline

from .conftest import chunkings

START = pd.Timestamp("2024-01-01")


def frame(values, seconds=None, entity="a", signal="v"):
    values = np.asarray(values, dtype=float)
    seconds = np.arange(len(values), dtype=float) if seconds is None else np.asarray(seconds, dtype=float)
    return pd.DataFrame({"timestamp": START + pd.to_timedelta(seconds, unit="s"), "entity": entity,
                         signal: values})


def forecast(low=None, high=None, signal="v", **params):
    return Forecast(limits=Limits(limits={signal: [low, high]}), **params)


def run(det, df, bounds=None, signal="v"):
    feats = Features([signal])
    bounds = bounds or [(0, len(df))]
    return np.vstack([det.scores(feats.chunk(df.iloc[a:b]), feats) for a, b in bounds])[:, 0]


def ramp(n=2400, start=20.0, rate=0.02, noise=0.05, seed=0):
    """1 Hz: ``start + rate * t`` plus Gaussian noise; with the defaults it crosses 50 at t = 1500 s."""
    rng = np.random.default_rng(seed)
    return start + rate * np.arange(n) + rng.normal(0, noise, n)


def test_a_ramp_is_predicted_to_cross_when_it_does():
    det = forecast(high=50.0)
    df = frame(ramp()[:901])
    run(det, df)
    p = det.projection("a", "v")
    crossing = p["time"] + pd.Timedelta(minutes=p["minutes_to_cross"])
    # The truth is 00:25:00; within 2 % of the 10 minutes ahead.
    assert abs((crossing - (START + pd.Timedelta(seconds=1500))).total_seconds()) <= 12
    assert p["limit"] == 50.0 and p["slope_low"] <= p["slope"] <= p["slope_high"]
    assert p["minutes_early"] <= p["minutes_to_cross"] <= p["minutes_late"] < np.inf
    assert p["slope"] == pytest.approx(0.02, rel=0.02)


def test_the_warning_comes_a_horizon_before_the_crossing():
    scores = run(forecast(high=50.0, horizon="15min"), frame(ramp()))
    first = int(np.argmax(is_flag(scores)))
    # Crossing at 1500 s, horizon 900 s: the slow edge of the band reaches the limit a little later than 600 s.
    assert 600 <= first <= 660
    assert is_flag(scores[first:1490]).all()


def test_noise_without_trend_never_warns():
    rng = np.random.default_rng(1)
    n = 6 * 3600
    # Close under the limit, white noise and a slow wobble: no trend to project.
    values = 48.0 + rng.normal(0, 0.5, n) + 0.3 * np.sin(np.arange(n) / 900)
    scores = run(forecast(high=50.0), frame(np.minimum(values, 49.9)))
    assert not is_flag(scores).any()


def test_a_random_walk_warns_rarely():
    rng = np.random.default_rng(2)
    n = 6 * 3600
    values = 30.0 + np.cumsum(rng.normal(0, 0.01, n))
    scores = run(forecast(low=20.0, high=40.0), frame(values))
    assert is_flag(scores).mean() < 0.01


def test_irregular_sampling():
    rng = np.random.default_rng(3)
    seconds = np.cumsum(rng.exponential(3.0, 800))
    values = 20.0 + 0.02 * seconds + rng.normal(0, 0.05, len(seconds))
    # Bursts: a quarter of the rows come 0.1 s apart, so rows and time disagree.
    burst = rng.random(len(seconds)) < 0.25
    seconds = np.cumsum(np.where(burst, 0.1, np.diff(np.r_[0, seconds])))
    values = 20.0 + 0.02 * seconds + rng.normal(0, 0.05, len(seconds))
    df = frame(values[seconds < 900], seconds[seconds < 900])
    det = forecast(high=50.0)
    run(det, df)
    p = det.projection("a", "v")
    crossing = p["time"] + pd.Timedelta(minutes=p["minutes_to_cross"])
    assert abs((crossing - (START + pd.Timedelta(seconds=1500))).total_seconds()) <= 30


@pytest.mark.parametrize("size", [1, 7, 100, None])
def test_chunk_invariance(size):
    rng = np.random.default_rng(4)
    a = frame(ramp(1500, noise=0.2), entity="a")
    b = frame(80.0 - 0.03 * np.arange(1500) + rng.normal(0, 0.2, 1500), entity="b")
    df = pd.concat([a, b]).sort_values("timestamp", kind="stable").reset_index(drop=True)
    df.loc[rng.random(len(df)) < 0.05, "v"] = np.nan
    whole = run(forecast(low=15.0, high=50.0), df)
    n = len(df)
    bounds = [(0, n)] if size is None else [(i, min(i + size, n)) for i in range(0, n, size)]
    pieces = run(forecast(low=15.0, high=50.0), df, bounds)
    np.testing.assert_array_equal(whole, pieces)
    assert is_flag(whole).any()


def test_chunk_invariance_at_random_cuts():
    df = frame(ramp(1200, noise=0.3))
    whole = run(forecast(high=50.0), df)
    for seed in range(3):
        cuts = np.random.default_rng(seed).integers(1, len(df) - 1, 15).tolist()
        np.testing.assert_array_equal(whole, run(forecast(high=50.0), df, chunkings(len(df), cuts)))


def test_silent_once_the_limit_is_breached():
    df = frame(ramp(2400))
    scores = run(forecast(high=50.0), df)
    beyond = df["v"].to_numpy() > 50.0
    assert beyond.sum() > 800
    assert (scores[beyond] == 0).all()


def test_a_falling_signal_towards_a_low_limit():
    # 80 down to 15 at 0.05 per second: crossing at t = 1300 s.
    values = 80.0 - 0.05 * np.arange(1600) + np.random.default_rng(5).normal(0, 0.1, 1600)
    det = forecast(low=15.0, high=95.0)
    scores = run(det, frame(values[:700]))
    p = det.projection("a", "v")
    assert p["limit"] == 15.0 and p["slope"] < 0
    assert p["minutes_to_cross"] * 60 == pytest.approx(1300 - 699, abs=15)
    assert is_flag(scores[-1])
    assert "predicted to cross 15 in 10 min" in det.describe("v", values[699])


def test_missing_values():
    values = ramp(1200)
    rng = np.random.default_rng(6)
    holes = rng.random(len(values)) < 0.3
    values[holes] = np.nan
    det = forecast(high=50.0)
    scores = run(det, frame(values))
    assert np.isfinite(scores).all()
    assert (scores[holes] == 0).all()
    assert is_flag(scores[~holes][-100:]).all()
    p = det.projection("a", "v")
    assert p["slope"] == pytest.approx(0.02, rel=0.05)


def test_no_trend_before_enough_of_the_window():
    scores = run(forecast(high=50.0, window="10min"), frame(ramp(300, start=45.0)))
    # Eight of sixteen slots (five minutes) before anything is said.
    assert (scores[:299] == 0).all()


def test_signals_without_limits_and_skipped_signals_do_not_warn():
    falling = 60.0 - 0.05 * np.arange(900)
    df = pd.DataFrame({"timestamp": START + pd.to_timedelta(np.arange(900), unit="s"), "entity": "cell",
                       "soc_pct": falling, "other": falling})
    det = Forecast(limits=Limits(preset="battery"))
    feats = Features(["soc_pct", "other"])
    scores = det.scores(feats.chunk(df), feats)
    assert (scores == 0).all()
    # The state of charge is projected (for the plots), not warned about.
    p = det.projection("cell", "soc_pct")
    assert p["limit"] == 15.0 and p["score"] >= 0.5
    assert det.projection("cell", "other") is None
    det2 = Forecast(limits=Limits(preset="battery"), skip="")
    feats = Features(["soc_pct", "other"])
    assert is_flag(det2.scores(feats.chunk(df), feats)[:, 0]).any()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="horizon"):
        Forecast(horizon="soon")
    with pytest.raises(ValueError, match="window"):
        Forecast(window="-5min")
    with pytest.raises(ValueError, match="min_bins"):
        Forecast(bins=8, min_bins=10)


def pipeline(limits):
    return Pipeline(signals=["temperature_c"], detectors=[Limits(limits=limits), Forecast()],
                    engine=AlertEngine(default_rules()))


def heating(n=2400):
    # 30 °C rising 1 °C a minute: 50 °C at t = 1200 s.
    return frame(30.0 + np.arange(n) / 60.0 + np.random.default_rng(7).normal(0, 0.05, n), signal="temperature_c")


def test_the_warning_fires_before_the_limit_alert_and_says_when():
    p = pipeline({"temperature_c": [None, 50.0]})
    events = []
    p.engine.subscribe(lambda ev, alert: events.append((ev, alert.rule, alert.start, alert.message)))
    df = heating()
    for i in range(0, len(df), 250):
        p.process(df.iloc[i:i + 250])
    fired = {rule: (start, msg) for ev, rule, start, msg in events if ev == "fired"}
    assert set(fired) == {"limit_forecast", "limit_breach"}
    lead = fired["limit_breach"][0] - fired["limit_forecast"][0]
    # A 15-minute horizon on a steady ramp: a warning about 15 minutes ahead.
    assert pd.Timedelta(minutes=13) <= lead <= pd.Timedelta(minutes=15)
    assert "limit ahead: temperature_c = " in fired["limit_forecast"][1]
    assert "predicted to cross 50 in 1" in fired["limit_forecast"][1]
    assert "(forecast, score" in fired["limit_forecast"][1]
    feed = [e["message"] for e in p.events if e["kind"] == "alert"]
    assert any("predicted to cross 50 in" in m for m in feed)


def test_the_user_limits_of_the_limits_detector_are_the_ones_forecast():
    p = pipeline({"temperature_c": [None, 40.0]})
    p.process(heating(900))
    det = p.detectors[1]
    assert det.projection("a", "temperature_c")["limit"] == 40.0


def test_state_is_checkpointed():
    df = heating(1500)
    p = pipeline({"temperature_c": [None, 50.0]})
    p.process(df.iloc[:700])
    meta, arrays = p.features.state_dict()
    assert any(part["kind"] == "TrendBins" for k in meta["kernels"] for part in k["parts"])
    resumed = pipeline({"temperature_c": [None, 50.0]})
    # As the alert log keeps them: serialised, not shared with the running pipeline.
    resumed.features.load_state_dict(json.loads(json.dumps(meta)), {k: v.copy() for k, v in arrays.items()})
    resumed.stats.features = resumed.features
    a = p.process(df.iloc[700:])
    b = resumed.process(df.iloc[700:])
    np.testing.assert_array_equal(a["temperature_c__score"].to_numpy(), b["temperature_c__score"].to_numpy())


def test_state_is_bounded():
    p = pipeline({"temperature_c": [None, 500.0]})
    p.process(heating(600))
    before = p.features.nbytes()
    p.process(heating(20_000).iloc[600:])
    assert p.features.nbytes() == before


def test_registered_by_default():
    assert "forecast" in [d.label for d in default_detectors()]
    rule = next(r for r in default_rules() if r.name == "limit_forecast")
    assert rule.severity == "warning" and rule.matches("forecast", "temperature_c")
    assert not rule.matches("limits", "temperature_c")


def test_the_live_plots_get_the_projection_and_its_band():
    from sbg.ui.plots import LiveBuffers

    det = forecast(high=50.0)
    run(det, frame(ramp()[:901]))
    live = LiveBuffers(["v"], ["a", "b"])
    assert live.send_forecasts(det.projection, span_s=600) == 1
    rows = live.forecasts["v"].data
    assert len(rows) == 6 and rows.iloc[:3]["v"].isna().all()  # b has no forecast: no line
    assert np.isfinite(rows.iloc[:, 2:].to_numpy()).all()  # and a band of no height (varea cannot skip NaN)
    seg = rows.iloc[3:]
    p = det.projection("a", "v")
    assert seg["timestamp"].iat[0] == p["time"]
    # Drawn until the predicted crossing (10 min), within a quarter of the visible 10 minutes: 150 s on.
    assert (seg["timestamp"].iat[1] - p["time"]).total_seconds() == 150
    assert seg["v"].iat[1] == pytest.approx(p["level"] + 150 * p["slope"])
    assert seg["v__forecast_low"].iat[1] <= seg["v"].iat[1] <= seg["v__forecast_high"].iat[1]
    assert np.isnan(seg["v"].iat[2])
    # Once no forecast is left, the segments are replaced by breaks.
    assert live.send_forecasts(lambda e, s: None, span_s=600) == 0
    assert live.forecasts["v"].data["v"].isna().all()


def test_a_forecast_is_a_warning_not_a_finding():
    # Its rows set neither is_anomaly nor quality (nor the per-signal scores the plots mark): only its
    # alert speaks, with kind "forecast" in the alert table.
    from sbg.alerts.engine import alerts_frame

    p = pipeline({"temperature_c": [None, 50.0]})
    df = heating()
    before = df[df["timestamp"] < START + pd.Timedelta(seconds=1190)]  # heating, still under the limit
    out = pd.concat([p.process(before.iloc[i:i + 250]) for i in range(0, len(before), 250)], ignore_index=True)
    alerts = alerts_frame(a.as_record() for a in p.engine.alerts.values())
    assert list(alerts["rule"]) == ["limit_forecast"] and list(alerts["kind"]) == ["forecast"]
    assert not out["is_anomaly"].any() and (out["quality"] == "").all() and (out["reason"] == "").all()
    assert (out["temperature_c__score"] < 0.5).all() and (out["temperature_c__quality"] < 0.5).all()


def test_a_return_towards_the_usual_level_is_not_a_departure_towards_the_other_limit():
    # Two hours at 22 °C, a fault heats the cell to 53 °C, then it cools back to ambient, at 4 °C a minute first.
    rng = np.random.default_rng(8)
    cool = 22.0 + 31.0 * np.exp(-np.arange(2400) / 465.0)
    values = np.r_[np.full(7200, 22.0), np.linspace(22, 53, 900), np.full(300, 53.0), cool]
    values = values + rng.normal(0, 0.05, len(values))
    cooling = np.arange(len(values)) >= 8400
    det = forecast(low=10.0, high=60.0)
    run(det, frame(values[:8700]))
    # The straight line through the first minutes of cooling reaches 10 °C within the horizon...
    p = det.projection("a", "v")
    assert p["limit"] == 10.0 and p["minutes_late"] < 15
    # ...but the cell is returning to where it usually is: no warning. The heating towards 60 °C was one.
    assert p["score"] == 0
    scores = run(forecast(low=10.0, high=60.0), frame(values))
    assert is_flag(scores[~cooling]).any()
    assert not is_flag(scores[cooling]).any()


def test_a_forecast_warning_turns_its_cell_of_the_health_grid_amber(tmp_path):
    from sbg.stream.monitor import Monitor

    df = heating(1150)  # 30 °C rising 1 °C a minute, stopped before the 50 °C limit at 1200 s
    df.assign(entity="cell1").to_csv(tmp_path / "heat.csv", index=False)
    from sbg.config import Settings

    m = Monitor([tmp_path / "heat.csv"], settings=Settings({"detectors": {"limits": {
        "limits": {"temperature_c": [None, 50.0]}}}}))
    m.run_to_end()
    assert [a.rule for a in m.engine.alerts.values() if a.state == "firing"] == ["limit_forecast"]
    assert not m.history.frame()["is_anomaly"].any()
    states = {r.signal: r.state for r in m.health().itertuples()}
    assert states == {"temperature_c": 1}
