"""Real ``sbg serve`` in a subprocess and headless Chromium tabs on it.

One place for what the browser tests (through ``tests/conftest.py``) and the
benchmarks that drive the served dashboard (``benchmarks/latency.py``,
``churn.py``, ``soak.py``) all need: a free port, the status endpoint, the
server's life cycle and log check, Debian's Chromium under Playwright, and a
dashboard tab. Only loopback addresses are used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Without the background-networking flags Chromium keeps dialling out, and this machine has no network.
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync"]
COUNT_POINTS = """() => {
  let n = 0;
  for (const doc of window.Bokeh.documents)
    for (const m of doc.all_models)
      if (m.data && m.data.timestamp && m.type !== "Tabulator") n += m.data.timestamp.length;
  return n;
}"""
#: The newest timestamp (ms) any plot source of the page holds: it rises while rows arrive, even once
#: the sources roll over and their length stays put.
NEWEST = """() => {
  let t = null;
  if (!window.Bokeh) return t;
  for (const doc of window.Bokeh.documents)
    for (const m of doc.all_models) {
      const ts = m.data && m.data.timestamp;
      if (!ts || !ts.length || m.type === "Tabulator") continue;
      const last = Number(ts[ts.length - 1]);
      if (t === null || last > t) t = last;
    }
  return t;
}"""
#: Changes whenever any plot source of the page gets rows, also when a looped replay starts over.
FINGERPRINT = """() => {
  const parts = [];
  if (!window.Bokeh) return "";
  for (const doc of window.Bokeh.documents)
    for (const m of doc.all_models) {
      const ts = m.data && m.data.timestamp;
      if (ts && ts.length && m.type !== "Tabulator") parts.push(m.id + ":" + ts.length + ":" + ts[ts.length - 1]);
    }
  return parts.sort().join(",");
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_total(base, name, auth=None) -> float:
    """The sum of a counter or gauge over its label sets on ``base``'s ``/metrics``; -1 while it does not answer.

    ``base`` is a URL (``http://host:port``) or a local port number; ``auth`` is ``"user:password"``.
    """
    if isinstance(base, int):
        base = f"http://127.0.0.1:{base}"
    request = urllib.request.Request(base + "/metrics")
    if auth:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    prefix = name + "{"
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(prefix) or
               x.startswith(name + " "))


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def status(base, timeout=30) -> dict:
    return json.loads(get(base + "/api/status", timeout)[1])


def timed_status(base, timeout=30) -> tuple[dict, float]:
    """``/api/status`` and how long it took to answer, in milliseconds."""
    t0 = time.perf_counter()
    st = status(base, timeout)
    return st, (time.perf_counter() - t0) * 1000


def objects(base) -> dict:
    """Live objects in the server by kind (a server started with ``SBG_DEBUG_OBJECTS=1``)."""
    return json.loads(get(base + "/api/status?objects=1", 60)[1])["objects"]


def rss_mb(st: dict) -> float:
    """The server's resident memory in MB from a status payload."""
    return st["process"]["rss_bytes"] / 2**20


def load() -> str:
    """This machine's load averages (1, 5, 15 min), to print beside every figure: it has 2 cores."""
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


class ServeFailed(RuntimeError):
    """The server did not come up, or its log holds a traceback through sbg's own code."""


def _command(args, port: int, app):
    """``sbg serve ARGS`` itself, or, with ``app``, the ``panel serve`` line it builds with another app file."""
    if app is None:
        return [sys.executable, "-m", "sbg.cli", "serve", "--port", str(port), *args], {}
    from sbg.cli import build_parser, serve_command

    parsed = build_parser().parse_args(["serve", "--port", str(port), *args])
    parsed.panel_args = []
    cmd, env = serve_command(parsed)
    cmd[next(i for i, a in enumerate(cmd) if a.endswith("monitor.py"))] = str(app)
    return cmd, env


def _stop_group(proc, grace=15.0):
    """SIGTERM to the server's process group, SIGKILL to whatever of it is left after ``grace`` seconds.

    The group, not the process: ``sbg serve`` exits at once and leaves its
    ``panel serve`` child, which stops only once its event loop gets to it.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def served(log, *args, env=None, app=None, check_log=True, cwd=None):
    """``sbg serve ARGS`` on a free loopback port, in its own process group; yields the base URL.

    Its output goes to ``log``. ``app`` serves another app file with the same
    options (see ``benchmarks/_latency_app.py``). ``cwd`` runs it from another
    working directory (the repository's by default), as the ``sbg`` console
    script would: without putting that directory on ``sys.path``. On the way
    out the server is stopped and, with ``check_log``, its log must hold no
    traceback through sbg's own code.
    """
    log = Path(log)
    port = free_port()
    cmd, app_env = _command([str(a) for a in args], port, app)
    if cwd is not None and cmd[1] != "-P":
        cmd.insert(1, "-P")  # only this launcher: what it starts finds its own sys.path
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd or ROOT, env={**os.environ, **app_env, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServeFailed("sbg serve did not come up:\n" + log.read_text()[-4000:])
            try:
                if get(base + "/api/status")[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        yield base
    finally:
        _stop_group(proc)
    # Tornado logs closed-websocket races when tabs vanish; sbg's own code must never raise.
    text = log.read_text()
    if check_log and "/sbg/" in text:
        raise ServeFailed("a traceback through sbg in the server's log:\n" + text[-4000:])
    if check_log and "Task exception was never retrieved" in text:  # e.g. a closed tab's websocket write
        raise ServeFailed("an unretrieved task exception in the server's log:\n" + text[-4000:])


@contextlib.contextmanager
def chromium(nice: int = 0):
    """Debian's Chromium, headless, driven by Playwright.

    ``nice`` runs the browser (and every renderer it starts) at that lower
    CPU priority. Tests that open many tabs use it: viewers' browsers run on
    their own machines, while here twenty renderers share the server's two
    cores and would otherwise starve the server being measured.

    A process's own nice value does not do it: Chromium sets its processes'
    priorities itself (browser and GPU at -8, renderers at 0 when run as
    root), and with the kernel's autogroups (on in Debian) a nice value only
    ranks processes of one session against each other, while the browser
    runs in a session of its own. So the whole session is lowered: the
    autogroup's nice (``/proc/self/autogroup``), set before Chromium starts.
    """
    if CHROMIUM is None:
        raise RuntimeError("chromium is not installed: `make test` installs it with apt-get")
    from playwright.sync_api import sync_playwright

    with contextlib.ExitStack() as stack:
        executable = CHROMIUM
        if nice:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sbg-chromium-")))
            executable = folder / "chromium"
            executable.write_text(f'#!/bin/sh\necho {int(nice)} > /proc/self/autogroup 2>/dev/null\n'
                                  f'exec nice -n {int(nice)} "{CHROMIUM}" "$@"\n')
            executable.chmod(0o755)
        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path=str(executable), args=CHROME_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found[1:]


@contextlib.contextmanager
def stalled_renderers():
    """Stop (SIGSTOP) every Chromium renderer this process started, and continue them on exit.

    A stopped renderer reads nothing more from its page's websocket, so the
    server sees a browser that has stopped taking updates, as a frozen laptop
    or a dead link would leave it. (Freezing the page through the DevTools
    protocol does not do it: the renderer keeps reading and buffers.)
    """
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"--type=renderer" in fh.read():
                    pids.append(pid)
        except OSError:
            continue
    if not pids:
        raise RuntimeError("no Chromium renderer found to stop")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


#: The alerts table among the page's tables (the battery-health and site tables are Tabulators too).
ALERTS_TABLE = '.tabulator:has(.tabulator-col[tabulator-field="severity"])'


class Tab:
    """A page of the served dashboard in its own browser context, recording console errors.

    With ``wait=False`` the page is only requested: open many at once, then
    call :meth:`ready` on each, so the server builds their sessions side by side.
    """

    def __init__(self, browser, base, width=1366, height=768, path="/monitor", wait=True, timeout=60):
        self.context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # The server builds the page's document before it answers: a busy server takes its time.
        self.page.goto(base + path, wait_until="load" if wait else "commit", timeout=timeout * 1000)
        if wait:
            self.ready(timeout)

    def ready(self, timeout=60):
        """Wait until the dashboard shows (its KPI cards are drawn)."""
        self.page.wait_for_selector(".sbg-kpis", timeout=timeout * 1000)
        return self

    def kpi(self, key):
        if self.page.evaluate("document.hidden"):
            # A background window defers rendering: bring it up and let it paint.
            self.page.bring_to_front()
            self.page.wait_for_timeout(600)
        text = self.page.locator(f'[data-kpi="{key}"] .value').first.inner_text()
        return int(text.replace(",", "").replace("%", "").split(".")[0] or 0)

    def state(self):
        return self.page.locator(".sbg-live").first.get_attribute("data-state")

    def click(self, name, timeout=120):
        """Click the button ``name``; the bound (seconds) only ends a wait that would never end."""
        self.page.get_by_role("button", name=name, exact=True).first.click(timeout=timeout * 1000)

    def points(self):
        return self.page.evaluate(COUNT_POINTS)

    def newest(self):
        """The newest timestamp (ms since the epoch) on the page's plots, or ``None`` before any row."""
        return self.page.evaluate(NEWEST)

    def fingerprint(self):
        """A text that changes whenever rows reach the page's plots."""
        return self.page.evaluate(FINGERPRINT)

    def wait_for(self, predicate, timeout=30, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            self.page.wait_for_timeout(250)
        raise AssertionError(f"timed out waiting for {what}")

    def shot(self, name):
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"dashboard_{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def close(self):
        self.context.close()


def open_tabs(browser, base, n, path="/monitor", timeout=180) -> list[Tab]:
    """``n`` dashboard tabs, requested together and returned once every one shows."""
    tabs = [Tab(browser, base, path=path, wait=False, timeout=timeout) for _ in range(n)]
    for tab in tabs:
        tab.ready(timeout)
    return tabs
