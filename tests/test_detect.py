"""One generic suite over every detector, then each detector's own behaviour."""

import numpy as np
import pandas as pd
import param
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbg.detect.detectors import (
    Baseline,
    Detector,
    Flatline,
    Gap,
    Limits,
    Spike,
    ZScore,
    detector_classes,
)
from sbg.detect.features import Features

from .conftest import chunkings, make_frame

FRAME = make_frame(n=900, seed=3)
SIGNALS = ["v", "w"]
REFERENCE = make_frame(n=600, seed=4, spikes=0, flat=False)


def build(cls):
    if cls is Baseline:
        return Baseline(REFERENCE, window=20)
    params = {}
    if "warmup" in cls.param:
        params["warmup"] = 100
    if "min_run" in cls.param:
        params["min_run"] = 20
    return cls(**params)


def run(det, frame, bounds):
    feats = Features(SIGNALS)
    out = [det.scores(feats.chunk(frame.iloc[a:b]), feats) for a, b in bounds]
    return np.vstack(out) if out else np.zeros((0, len(SIGNALS)))


# sbg's own detectors: test modules define subclasses of their own (an exploding one), also registered.
ALL = sorted((k, c) for k, c in detector_classes().items() if c.__module__.startswith("sbg."))


def test_every_detector_is_found():
    assert {"limits", "zscore", "robust", "spike", "flatline", "gap", "baseline"} <= {k for k, _ in ALL}


@pytest.mark.parametrize("label,cls", ALL)
def test_scores_are_bounded_and_shaped(label, cls):
    scores = run(build(cls), FRAME, [(0, len(FRAME))])
    assert scores.shape == (len(FRAME), len(SIGNALS))
    assert np.isfinite(scores).all()
    assert (scores >= 0).all() and (scores <= 1).all()


@pytest.mark.parametrize("label,cls", ALL)
@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, len(FRAME) - 1), max_size=20))
def test_chunk_invariance(label, cls, cuts):
    whole = run(build(cls), FRAME, [(0, len(FRAME))])
    pieces = run(build(cls), FRAME, chunkings(len(FRAME), cuts))
    np.testing.assert_array_equal(whole, pieces)


@pytest.mark.parametrize("label,cls", ALL)
def test_row_at_a_time(label, cls):
    n = 300
    whole = run(build(cls), FRAME.iloc[:n], [(0, n)])
    single = run(build(cls), FRAME.iloc[:n], [(i, i + 1) for i in range(n)])
    np.testing.assert_array_equal(whole, single)


@pytest.mark.parametrize("label,cls", ALL)
def test_empty_and_all_missing_chunks(label, cls):
    det = build(cls)
    assert run(det, FRAME.iloc[:0], [(0, 0)]).shape == (0, 2)
    missing = FRAME.iloc[:50].assign(v=np.nan, w=np.nan)
    scores = run(det, missing, [(0, 50)])
    if cls is not Gap:  # a gap is about timestamps, which are still there
        assert (scores < 0.5).all()


@pytest.mark.parametrize("label,cls", ALL)
def test_parameters_are_documented_and_bounded(label, cls):
    for name, p in cls.param.objects().items():
        if name == "name":
            continue
        assert p.doc, f"{cls.__name__}.{name} has no doc"
    assert issubclass(cls, Detector) and issubclass(cls, param.Parameterized)


@pytest.mark.parametrize("label,cls", ALL)
def test_standalone_score_carries_state(label, cls):
    det = build(cls)
    whole = build(cls).score(FRAME, signals=SIGNALS)
    parts = pd.concat([det.score(FRAME.iloc[:400], signals=SIGNALS), det.score(FRAME.iloc[400:], signals=SIGNALS)])
    np.testing.assert_array_equal(whole.to_numpy(), parts.to_numpy())
    det.reset()
    again = det.score(FRAME, signals=SIGNALS)
    np.testing.assert_array_equal(whole.to_numpy(), again.to_numpy())


@pytest.mark.parametrize("label,cls", [(k, c) for k, c in ALL if k not in ("flatline", "limits")])
def test_gaussian_noise_raises_almost_nothing(label, cls):
    rng = np.random.default_rng(7)
    n = 20_000
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=n, freq="s"), "entity": "a",
                          "v": rng.normal(0, 1, n), "w": rng.normal(5, 2, n)})
    det = Baseline(frame.iloc[:5000]) if cls is Baseline else cls()
    scores = run(det, frame, [(0, n)])
    assert (scores >= 0.5).mean() < 1e-3


def series(values, start="2024-01-01", freq="s", entity="a", **more):
    n = len(values)
    return pd.DataFrame({"timestamp": pd.date_range(start, periods=n, freq=freq), "entity": entity,
                         "v": np.asarray(values, dtype=float), **more})


def test_limits_battery_defaults_by_name():
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=4, freq="s"), "entity": "b",
                          "temperature_c": [25, 51, 4, 30.0], "soc_pct": [50, 14, 96, 50.0],
                          "bearing_temp_c": [80, 80, 80, 80.0]})
    flags = Limits().score(frame) >= 0.5
    assert flags["temperature_c"].tolist() == [False, True, True, False]
    assert flags["soc_pct"].tolist() == [False, True, True, False]
    assert not flags["bearing_temp_c"].any(), "battery limits must not apply to a machine bearing"


def test_limits_custom_and_one_sided():
    frame = series([1, 5, 11, -3])
    flags = Limits(limits={"v": [None, 10]}).score(frame)["v"] >= 0.5
    assert flags.tolist() == [False, False, True, False]


def test_zscore_flags_level_jump_not_noise():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 1, 600)
    v[500:] += 15
    flags = ZScore(warmup=100, confirm=0).score(series(v))["v"] >= 0.5
    assert flags.iloc[500]
    assert not flags.iloc[:500].any()


def test_spike_ignores_jumps_shared_with_other_signals():
    rng = np.random.default_rng(1)
    n = 400
    current = np.where(np.arange(n) < 200, 0.0, 30.0) + rng.normal(0, 0.02, n)
    voltage = 3.8 - 0.004 * current + rng.normal(0, 0.001, n)
    voltage[300] -= 0.3
    frame = series(voltage).rename(columns={"v": "voltage_v"}).assign(current_a=current)
    flags = Spike(warmup=100, confirm=0).score(frame) >= 0.5
    assert not flags.iloc[200].any(), "a load step moves both signals: not a glitch"
    assert flags["voltage_v"].iloc[300]


def test_flatline_needs_the_entity_to_be_active():
    rng = np.random.default_rng(2)
    n = 3000
    load = 10 + 5 * np.sin(np.arange(n) / 30) + rng.normal(0, 0.5, n)
    temp = 25 + 3 * np.sin(np.arange(n) / 500) + rng.normal(0, 0.05, n)
    temp[2000:2400] = temp[2000]
    soc = np.round(np.linspace(80, 60, n), 2)
    soc[1000:1600] = soc[1000]
    rest = np.arange(n)
    quiet = (rest >= 1000) & (rest < 1600)
    load[quiet] = rng.normal(0, 0.01, quiet.sum())
    frame = series(temp).rename(columns={"v": "temperature_c"}).assign(current_a=load, soc_pct=soc)
    flags = Flatline().score(frame) >= 0.5
    assert flags["temperature_c"].iloc[2200:2400].all(), "stuck while the load moves"
    assert not flags["soc_pct"].iloc[1000:1600].any(), "flat SOC at rest is normal"


def test_gap_flags_the_row_after_a_dropout():
    t = pd.date_range("2024-01-01", periods=600, freq="s")
    t = t[(t < t[200]) | (t >= t[200] + pd.Timedelta("4min"))]
    frame = pd.DataFrame({"timestamp": t, "entity": "a", "v": np.zeros(len(t))})
    flags = Gap().score(frame)["v"] >= 0.5
    assert np.flatnonzero(flags).tolist() == [200]


def test_baseline_flags_a_shift_but_not_the_reference_itself():
    rng = np.random.default_rng(3)
    ref = series(rng.normal(0, 1, 5000))
    det = Baseline(ref)
    same = det.score(series(rng.normal(0, 1, 3000)))["v"]
    assert (same >= 0.5).mean() < 0.002
    det.reset()
    shifted = det.score(series(rng.normal(1.5, 1, 3000)))["v"]
    assert (shifted.iloc[600:] >= 0.5).mean() > 0.9
