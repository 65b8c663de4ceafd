"""Rolling statistics equal pandas on the whole frame, for any chunking."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbg.detect.features import Features, Stats

from .conftest import chunkings, make_frame

FRAME = make_frame(n=500)
SIGNALS = ["v", "w"]


def pandas_rolling(frame, window, min_periods):
    g = frame.set_index("timestamp").groupby("entity", sort=False)[SIGNALS]
    out = {}
    for name in ("mean", "std", "min", "max"):
        r = getattr(g.rolling(window, min_periods=min_periods), name)()
        # groupby-rolling returns rows grouped by entity; put them back in input order.
        r.index = np.concatenate([np.flatnonzero(frame["entity"].to_numpy() == e) for e in frame["entity"].unique()])
        out[name] = r.sort_index()
    return out


def run_chunked(frame, bounds, **params):
    stats = Stats(signals=SIGNALS, **params)
    parts = [stats.process(frame.iloc[a:b]) for a, b in bounds]
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("window", [1, 5, 30, "1s", "20s", "5min"])
def test_whole_frame_matches_pandas(window):
    min_periods = 1 if window == 1 else 2
    ours = run_chunked(FRAME, [(0, len(FRAME))], window=window, min_periods=min_periods)
    ref = pandas_rolling(FRAME, window, min_periods)
    for name, expected in ref.items():
        for s in SIGNALS:
            np.testing.assert_allclose(ours[f"{s}__{name}"], expected[s], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name} of {s} over {window}")


def test_ewm_matches_pandas():
    ours = run_chunked(FRAME, [(0, 100), (100, 101), (101, 500)], ewm_alpha=0.2)
    ref = FRAME.groupby("entity")[SIGNALS].transform(lambda s: s.ewm(alpha=0.2).mean())
    for s in SIGNALS:
        np.testing.assert_allclose(ours[f"{s}__ewm"], ref[s], rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(1, len(FRAME) - 1), max_size=25),
       window=st.sampled_from([3, 17, "7s", "90s"]))
def test_chunk_invariance_is_exact(cuts, window):
    whole = run_chunked(FRAME, [(0, len(FRAME))], window=window)
    pieces = run_chunked(FRAME, chunkings(len(FRAME), cuts), window=window)
    # Same operations in the same order per entity: equal to the last bit.
    pd.testing.assert_frame_equal(whole, pieces, check_exact=True)


def test_one_row_at_a_time_equals_whole():
    whole = run_chunked(FRAME, [(0, len(FRAME))], window="30s")
    single = run_chunked(FRAME, [(i, i + 1) for i in range(len(FRAME))], window="30s")
    pd.testing.assert_frame_equal(whole, single, check_exact=True)


def test_time_window_grows_past_initial_capacity():
    # 2000 rows in one second each entity: forces the ring buffers to grow.
    n = 4000
    frame = pd.DataFrame({
        "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n) // 2000, unit="s"),
        "entity": np.where(np.arange(n) % 2, "a", "b").astype(object),
        "v": np.random.default_rng(1).normal(size=n), "w": np.arange(n, dtype=float),
    })
    ours = run_chunked(frame, [(0, 1500), (1500, n)], window="2s", min_periods=1)
    ref = pandas_rolling(frame, "2s", 1)
    np.testing.assert_allclose(ours["v__mean"], ref["mean"]["v"], rtol=1e-9)
    np.testing.assert_allclose(ours["w__max"], ref["max"]["w"])


def test_long_stream_does_not_drift():
    n = 30_000
    x = 1e6 + np.random.default_rng(2).normal(0, 1e-3, n)
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=n, freq="s"),
                          "entity": "a", "v": x, "w": x})
    ours = run_chunked(frame, [(0, n)], window=50)
    ref = frame["v"].rolling(50, min_periods=2).std()
    np.testing.assert_allclose(ours["v__std"].to_numpy()[-1000:], ref.to_numpy()[-1000:], rtol=1e-4)


def test_features_cache_computes_each_window_once():
    feats = Features(SIGNALS)
    chunk = feats.chunk(FRAME.iloc[:50])
    first = feats.moments(chunk, 10)
    assert feats.moments(chunk, 10) is first


def test_bad_window_is_refused():
    with pytest.raises(ValueError, match="neither a row count nor a duration"):
        Stats(signals=SIGNALS, window="soon")
