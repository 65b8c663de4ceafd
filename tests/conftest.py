"""Shared fixtures: seeded synthetic telemetry frames for property tests, a headless Chromium, and
`sbg serve` in a subprocess with a browser tab helper for the tests that drive the served dashboard."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
COUNT_POINTS = """() => {
  let n = 0;
  for (const doc of window.Bokeh.documents)
    for (const m of doc.all_models)
      if (m.data && m.data.timestamp && m.type !== "Tabulator") n += m.data.timestamp.length;
  return n;
}"""


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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright; one per test module."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it with apt-get")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        yield b
        b.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def status(base):
    return json.loads(get(base + "/api/status")[1])


@contextlib.contextmanager
def sbg_served(log, *args, env=None):
    """``sbg serve ARGS`` on a free port, in its own process group; yields the base URL.

    Its output goes to ``log``. On the way out the server is stopped and its
    log must hold no traceback through sbg's own code.
    """
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sbg.cli", "serve", "--port", str(port), *map(str, args)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=ROOT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if get(base + "/api/status")[0] == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
        pytest.fail("sbg serve did not come up:\n" + log.read_text())
    yield base
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    # Tornado logs closed-websocket races when tabs vanish; sbg's own code must never raise.
    text = log.read_text()
    assert "/sbg/" not in text, text[-4000:]


class Tab:
    """A page of the served dashboard in its own browser context, recording console errors."""

    def __init__(self, browser, base, width=1366, height=768):
        self.context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(base + "/monitor")
        self.page.wait_for_selector(".sbg-kpis", timeout=60_000)

    def kpi(self, key):
        if self.page.evaluate("document.hidden"):
            # A background window defers rendering: bring it up and let it paint.
            self.page.bring_to_front()
            self.page.wait_for_timeout(600)
        text = self.page.locator(f'[data-kpi="{key}"] .value').first.inner_text()
        return int(text.replace(",", "").replace("%", "").split(".")[0] or 0)

    def state(self):
        return self.page.locator(".sbg-live").first.get_attribute("data-state")

    def click(self, name):
        self.page.get_by_role("button", name=name, exact=True).first.click()

    def points(self):
        return self.page.evaluate(COUNT_POINTS)

    def wait_for(self, predicate, timeout=30, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            self.page.wait_for_timeout(250)
        raise AssertionError(f"timed out waiting for {what}")

    def shot(self, name):
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"dashboard_{name}.png"))

    def close(self):
        self.context.close()
