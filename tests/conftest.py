"""Shared fixtures: seeded synthetic telemetry frames for property tests, a headless Chromium, and
`sbg serve` in a subprocess with a browser tab helper (from ``tests/served.py``) for the tests that
drive the served dashboard."""

import numpy as np
import pandas as pd
import pytest

from tests.served import (  # noqa: F401  (re-exported for the browser tests)
    ARTIFACTS,
    CHROMIUM,
    ROOT,
    Tab,
    chromium,
    free_port,
    get,
    status,
)
from tests.served import served as sbg_served  # noqa: F401


def make_frame(n=600, entities=("a", "b", "c"), signals=("v", "w"), seed=0, nan_share=0.03,
               spikes=4, flat=True, gaps=True):
    """A long-format frame with noise, steps, spikes, a flat run, a gap and NaNs."""
    rng = np.random.default_rng(seed)
    ent = np.array(entities)[rng.integers(0, len(entities), n)]
    base = np.datetime64("2024-01-01T00:00:00", "ns").astype("int64")
    # Irregular sampling with ties, as real loggers produce.
    ts = base + np.cumsum(rng.choice([0, 1, 1, 1, 2], n)) * 10**9
    if gaps:
        ts[n // 2:] += 900 * 10**9
    data = {"timestamp": ts.view("datetime64[ns]"), "entity": ent.astype(object)}
    for j, s in enumerate(signals):
        x = np.cumsum(rng.normal(0, 0.1, n)) + 10 * j
        x[rng.integers(0, n, spikes)] += rng.choice([-1, 1], spikes) * 8
        x[rng.random(n) < nan_share] = np.nan
        if flat and j == 0:
            x[n // 3: n // 3 + n // 6] = 3.0
        data[s] = x
    return pd.DataFrame(data)


def chunkings(n, cuts):
    """Split ``range(n)`` at the sorted unique ``cuts``."""
    bounds = sorted({0, n, *[c for c in cuts if 0 < c < n]})
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.fixture
def frame():
    return make_frame()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright; one per test module."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it with apt-get")
    with chromium() as b:
        yield b


@pytest.fixture
def fleet(tmp_path):
    """Three cells at 1 Hz, each with one over-temperature episode (see tests/test_monitor.py)."""
    from .test_monitor import fleet_csv

    return fleet_csv(tmp_path / "fleet.csv")


@pytest.fixture
def limits():
    """Settings with a temperature limit the fleet's episodes cross."""
    from sbg.config import Settings

    from .test_monitor import LIMITS

    return Settings.from_dict(LIMITS)


@pytest.fixture
def slow_meters(tmp_path):
    """Three meters every 5 minutes: m2 written 150 s after m1, m3 silent for its last 50 rows (over 4 h)."""
    t = pd.date_range("2024-01-01", periods=300, freq="5min")
    frame = pd.concat([pd.DataFrame({"timestamp": t, "entity": "m1"}),
                       pd.DataFrame({"timestamp": t + pd.Timedelta("150s"), "entity": "m2"}),
                       pd.DataFrame({"timestamp": t[:250], "entity": "m3"})])
    frame["kw"] = 10.0 + np.arange(len(frame)) % 7
    path = tmp_path / "meters.csv"
    frame.sort_values("timestamp", kind="stable").to_csv(path, index=False)
    return path
