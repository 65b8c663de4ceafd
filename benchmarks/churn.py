"""Session churn: open and close many dashboard sessions; memory and counts must come back.

    python benchmarks/churn.py [--sessions 200] [--batch 10] [--speed 100x]

Real ``sbg serve`` in a subprocess replays the bundled fleet to its end. Each
session is a tab in its own Playwright context in headless Chromium:
``--batch`` tabs are opened until their dashboards show, held open together,
then closed. After a warm-up of one
batch, the server's RSS, session count and monitor subscribers are read from
``/api/status`` before and after the churn. Also used, with fewer sessions,
by ``tests/test_load.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import CHROME_ARGS, free_port, status, stop, wait_until_up  # noqa: E402


def settle(base: str, sessions: int, timeout: float = 60.0) -> dict:
    """Wait until the server holds at most ``sessions`` sessions; returns the status then."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(base)
        if st["sessions"] <= sessions and st["subscribers"] <= sessions or time.monotonic() > deadline:
            return st
        time.sleep(0.5)


def _batch(browser, url: str, n: int, during=None):
    """Open ``n`` tabs (a browser context each) until their dashboards show, call ``during()``, close them."""
    contexts = [browser.new_context(viewport={"width": 1366, "height": 768}) for _ in range(n)]
    pages = [ctx.new_page() for ctx in contexts]
    for page in pages:
        page.goto(url, wait_until="commit")
    for page in pages:
        page.wait_for_selector(".sbg-kpis", timeout=180_000)
    result = during() if during else None
    for ctx in contexts:
        ctx.close()
    return result


def churn(browser, base: str, total: int, batch: int, report=print) -> dict:
    """Open and close ``total`` tabs, ``batch`` at a time; returns before/after figures."""
    url = base + "/monitor"
    _batch(browser, url, batch)
    before = settle(base, 0)
    peak_sessions = 0
    opened = 0
    t0 = time.monotonic()
    while opened < total:
        n = min(batch, total - opened)
        peak_sessions = max(peak_sessions, _batch(browser, url, n, lambda: status(base)["sessions"]))
        opened += n
        if opened % (batch * 5) == 0 or opened == total:
            st = status(base)
            report(f"  {opened:4d} sessions opened and closed  RSS {st['process']['rss_bytes'] / 2**20:6.1f} MB"
                   f"  live sessions {st['sessions']}")
    elapsed = time.monotonic() - t0
    after = settle(base, before["sessions"])
    return {"before": before, "after": after, "opened": opened, "peak_sessions": peak_sessions,
            "seconds": elapsed}


def serve(data_args: list[str], log: Path):
    port = free_port()
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "sbg.cli", "serve", "--port", str(port), *data_args],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, wait_until_up(proc, port, log)


@contextlib.contextmanager
def browser_of():
    """Debian's Chromium, headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (make test installs it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROME_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--speed", default="max",
                    help="replay speed; the churn starts once the replay has finished, so that the memory "
                         "the run itself retains (its history) is not counted as the sessions'")
    opts = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sbg-churn-") as tmp:
        proc, base = serve(["--speed", opts.speed, "--autostart"], Path(tmp) / "serve.log")
        try:
            with browser_of() as browser:
                _batch(browser, base + "/monitor", 1)  # autostart begins with the first session
                while status(base)["replay"]["state"] != "finished":
                    time.sleep(1.0)
                result = churn(browser, base, opts.sessions, opts.batch)
        finally:
            stop(proc)
    b, a = result["before"], result["after"]
    mb = 2**20
    print(f"\nsession churn: {result['opened']} sessions, {opts.batch} at a time, after a replay at {opts.speed}, "
          f"{result['seconds']:.0f} s")
    print(f"  sessions      before {b['sessions']}, peak {result['peak_sessions']}, after {a['sessions']}")
    print(f"  subscribers   before {b['subscribers']}, after {a['subscribers']}")
    print(f"  server RSS    before {b['process']['rss_bytes'] / mb:.1f} MB, after {a['process']['rss_bytes'] / mb:.1f} MB"
          f" ({(a['process']['rss_bytes'] - b['process']['rss_bytes']) / mb:+.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
