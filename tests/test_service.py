"""sbg as a service, with real parts: a headless ``sbg serve --autostart``, its probes, its stop, and Prometheus.

Every server here is started with no browser and is asked nothing but what
the check is about: the monitor must start with the server, not with the
first page or ``/api/status`` request.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.served import free_port, metric_total

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


@pytest.fixture
def sample_csv():
    from sbg.io.datasets import DATA_DIR

    return DATA_DIR / "battery_fleet.csv.gz"


def wait_for(check, timeout=90.0, what="condition", every=0.25):
    """Poll ``check()`` until it returns a truthy value (returned); fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def http(url, auth=None, timeout=10):
    """``(status, body)``; an HTTP error status is returned, a refused connection is ``(None, "")``."""
    req = urllib.request.Request(url)
    if auth:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None, ""


def rows_in(base, auth=None) -> float:
    return metric_total(base, "sbg_rows_in_total", auth)


def port_free(port: int) -> bool:
    """Whether a restarted server could listen on ``port`` (with SO_REUSEADDR, as Tornado does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def headless(tmp_path, *args, env=None):
    """``sbg serve --autostart ARGS`` with nothing asking for a page; yields ``(proc, base, port)``."""
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "sbg.cli", "serve", "--port", str(port), "--autostart", *args],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            cwd=ROOT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http(base + "/healthz")[0] == 200 or proc.poll() is not None, 120, "the server to answer")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        yield proc, base, port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def test_autostart_counts_with_no_page_and_probes_need_no_login(tmp_path, sample_csv):
    with headless(tmp_path, sample_csv, "--speed", "20x", "--basic-auth", "secret-pw",
                  "--cookie-secret", "x" * 40, "--log-format", "json") as (proc, base, _):
        # Only /metrics and the probes are asked: the counters must move on their own.
        first = wait_for(lambda: rows_in(base, "prometheus:secret-pw") > 0, 60, "rows counted with no page open")
        wait_for(lambda: rows_in(base, "prometheus:secret-pw") > first, 60, "the count to rise")
        assert http(base + "/healthz") == (200, "ok\n")
        assert wait_for(lambda: http(base + "/readyz")[0] == 200, 30, "/readyz") and http(base + "/readyz")[1] == "ready\n"
        # Everything else keeps its login.
        for path in ("/metrics", "/api/status", "/api/alerts"):
            assert http(base + path)[0] == 401, path
        status = json.loads(http(base + "/api/status", "u:secret-pw")[1])
        assert status["replay"]["state"] == "running" and status["metrics"]["rows_in"] > 0
    logged = [json.loads(ln) for ln in (tmp_path / "serve.log").read_text().splitlines() if ln.startswith("{")]
    assert any(r["logger"] == "sbg.serve" and r["message"].startswith("autostart: replaying") for r in logged)


def test_readyz_waits_for_a_monitor(tmp_path, sample_csv):
    """Without --autostart nothing runs until asked: alive, not ready."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sbg.cli", "serve", "--port", str(port), str(sample_csv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http(base + "/healthz")[0] == 200, 120, "/healthz")
        assert http(base + "/readyz") == (503, "starting\n")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_everything_cleanly(tmp_path, sample_csv, signum):
    db = tmp_path / "alerts.sqlite"
    with headless(tmp_path, sample_csv, "--speed", "50x", "--alerts-db", db) as (proc, base, port):
        wait_for(lambda: rows_in(base) > 0, 60, "rows counted")
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "sbg serve runs panel serve as its child"
        proc.send_signal(signum)  # to the wrapper only, as a service manager's stop does
        rc = wait_for(lambda: proc.poll() is not None and [proc.returncode], 60, "sbg serve to exit")[0]
        assert rc == 0
        for pid in children:
            wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or
                     Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", 30, f"child {pid} to end")
        wait_for(lambda: port_free(port), 30, "the port to be free")
    with sqlite3.connect(db) as conn:  # the exit committed a checkpoint of where the replay had got to
        (position,) = conn.execute("SELECT position FROM checkpoint").fetchone()
    assert json.loads(position)


def _prometheus_config(tmp_path, target: str, password_file: Path) -> Path:
    """deploy/prometheus.yml pointed at the test's server, scraping every second, with its login."""
    cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = cfg["scrape_configs"][0]
    job["static_configs"][0]["targets"] = [target]
    job["scrape_interval"] = "1s"
    job["basic_auth"] = {"username": "prometheus", "password_file": str(password_file)}
    out = tmp_path / "prometheus.yml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def test_prometheus_scrapes_a_headless_server(tmp_path, sample_csv):
    prometheus = shutil.which("prometheus")
    assert prometheus, "Debian's prometheus is missing: `make test` installs it (apt-get install prometheus)"
    pw = tmp_path / "pw"
    pw.write_text("secret-pw")
    with headless(tmp_path, sample_csv, "--speed", "5x", "--loop", "--basic-auth", "secret-pw",
                  "--cookie-secret", "x" * 40) as (_, _base, port):
        prom_port = free_port()
        cfg = _prometheus_config(tmp_path, f"127.0.0.1:{port}", pw)
        with open(tmp_path / "prometheus.log", "wb") as log:
            prom = subprocess.Popen([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                     f"--web.listen-address=127.0.0.1:{prom_port}"],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        api = f"http://127.0.0.1:{prom_port}/api/v1/query?query=" + urllib.parse.quote("sum(sbg_rows_in_total)")

        def scraped() -> float | None:
            code, text = http(api)
            if code != 200:
                return None
            result = json.loads(text)["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        try:
            first = wait_for(lambda: (v := scraped()) is not None and v > 0 and v, 60,
                             "Prometheus to scrape sbg_rows_in_total above 0")
            wait_for(lambda: (v := scraped()) is not None and v > first, 60, "the scraped count to rise")
            code, text = http(f"http://127.0.0.1:{prom_port}/api/v1/targets")
            (target,) = json.loads(text)["data"]["activeTargets"]
            assert target["health"] == "up" and target["labels"]["site"] == "bench-1"
        finally:
            prom.terminate()
            prom.wait(timeout=30)


def test_serve_follow_counts_appended_lines_and_resumes_after_a_restart(tmp_path):
    log = tmp_path / "bench.csv"
    t0 = pd.Timestamp("2024-01-01")
    log.write_text("time,v\n" + "".join(f"{(t0 + pd.Timedelta(seconds=i)).isoformat()},{i % 7}\n" for i in range(50)))
    db = tmp_path / "alerts.sqlite"
    with headless(tmp_path, "--follow", log, "--alerts-db", db) as (proc, base, _):
        wait_for(lambda: rows_in(base) == 50, 60, "the first 50 rows")
        with open(log, "a") as fh:
            fh.write("".join(f"{(t0 + pd.Timedelta(seconds=i)).isoformat()},{i % 7}\n" for i in range(50, 80)))
        wait_for(lambda: rows_in(base) == 80, 60, "the appended rows")
        status = json.loads(http(base + "/api/status")[1])
        assert status["replay"]["rows_total"] is None and status["data"]["state"] in ("live", "stale")
        proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: proc.poll() is not None and [proc.returncode], 60, "the stop")[0] == 0
    with open(log, "a") as fh:
        fh.write(f"{(t0 + pd.Timedelta(seconds=80)).isoformat()},1\n")
    with headless(tmp_path, "--follow", log, "--alerts-db", db) as (_, base, _):
        # Carried on from the checkpoint: the 80 rows are not read again, the new one is.
        wait_for(lambda: rows_in(base) == 81, 60, "the count to carry on at 81")


# ---------------------------------------------------------------------------------- notifications, systemd


class _Receiver:
    """A webhook receiver (a real HTTP server in a thread) that can hang, and records what it got."""

    def __init__(self):
        import hashlib
        import hmac
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.got, self.hang = [], threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.hang.is_set():
                    time.sleep(3)
                    return
                want = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
                outer.got.append((self.headers.get("X-Sbg-Signature") == want, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_watch_sends_to_a_real_alertmanager_and_a_signed_webhook_and_a_hung_one_stalls_nothing(tmp_path):
    from tests import alertmanager as am

    assert am.binary(), am.MISSING
    t0 = pd.Timestamp("2024-01-01")

    def rows(start, n, value=None):
        return "".join(f"{(t0 + pd.Timedelta(seconds=i)).isoformat()},{5 + 0.01 * (i % 7) if value is None else value}\n"
                       for i in range(start, start + n))

    log = tmp_path / "bench.csv"
    log.write_text("time,v\n" + rows(0, 100))
    cfg = tmp_path / "sbg.yaml"
    cfg.write_text("detectors:\n  limits: {limits: {v: [0, 10]}, preset: none}\n"
                   "rules:\n  - {name: over, detectors: [limits], severity: critical, pending_rows: 1, clear_rows: 5}\n")
    receiver = _Receiver()
    port = free_port()
    with am.alertmanager(tmp_path / "am") as am_url:
        proc = subprocess.Popen([sys.executable, "-m", "sbg.cli", "watch", str(log), "--config", str(cfg),
                                 "--alertmanager", am_url, "--webhook", receiver.url, "--port", str(port),
                                 "--poll", "0.05", "--quiet"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "SBG_WEBHOOK_SECRET": "s3cret"})
        try:
            wait_for(lambda: metric_total(port, "sbg_rows_in_total") >= 100, 90, "the first rows")
            with open(log, "a") as fh:
                fh.write(rows(100, 2, value=50))
            firing = wait_for(lambda: am.alerts(am_url, alertname="over"), 60, "the alert in Alertmanager")[0]
            assert firing["labels"]["entity"] == "bench" and firing["labels"]["severity"] == "critical"
            assert firing["status"]["state"] == "active"
            with open(log, "a") as fh:
                fh.write(rows(102, 10))
            wait_for(lambda: not am.alerts(am_url, alertname="over"), 60, "its resolution in Alertmanager")
            wait_for(lambda: len(receiver.got) >= 2, 60, "the webhook's two events")
            assert [(ok, m["event"], m["alert"]["rule"]) for ok, m in receiver.got] == [
                (True, "fired", "over"), (True, "resolved", "over")]
            # A receiver that hangs: the rows still flow, and the notifier's queue holds what waits.
            receiver.hang.set()
            with open(log, "a") as fh:
                fh.write(rows(112, 1, value=50) + rows(113, 300))
            wait_for(lambda: metric_total(port, "sbg_rows_in_total") >= 413, 60, "rows past a hung webhook")
            assert metric_total(port, "sbg_notifications_sent_total") >= 4  # 2 to each
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()[-2000:]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
            receiver.close()


def _unit(name: str, tmp_path, exe: str) -> Path:
    text = (DEPLOY / name).read_text().replace("/opt/sbg/bin/sbg", exe)
    out = tmp_path / name
    out.write_text(text)
    return out


@pytest.mark.parametrize("name", ["sbg-watch.service", "sbg-serve.service"])
def test_the_systemd_units_verify(tmp_path, name):
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing (Debian's systemd package)"
    exe = shutil.which("sbg") or str(Path(sys.executable).with_name("sbg"))
    out = subprocess.run([tool, "verify", str(_unit(name, tmp_path, exe))], capture_output=True, text=True)
    problems = [ln for ln in out.stderr.splitlines() if name in ln and "User=" not in ln]
    assert out.returncode == 0 or not problems, out.stderr


def test_the_watch_units_command_line_runs(tmp_path):
    """deploy/sbg-watch.service's ExecStart, its paths pointed at the test's: the flags it uses are real."""
    import shlex

    text = (DEPLOY / "sbg-watch.service").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    logger, state = tmp_path / "logger", tmp_path / "state"
    logger.mkdir()
    state.mkdir()
    t0 = pd.Timestamp("2024-01-01")
    (logger / "bench.csv").write_text("time,v\n" + "".join(f"{(t0 + pd.Timedelta(seconds=i)).isoformat()},{i % 5}\n"
                                                         for i in range(30)))
    port = free_port()
    args = [a.replace("/srv/logger", str(logger)).replace("/var/lib/sbg", str(state)) for a in argv[1:]]
    args[args.index("--port") + 1] = str(port)
    i = args.index("--alertmanager")
    del args[i:i + 2]  # no Alertmanager in this test (test_notify.py runs one)
    proc = subprocess.Popen([sys.executable, "-m", "sbg.cli", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: http(f"http://127.0.0.1:{port}/readyz") == (200, "ready\n"), 90, "/readyz")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read().decode()
        records = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        assert (state / "alerts.sqlite").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
