"""Access control of the served dashboard: real `sbg serve` in a subprocess, real HTTP, real Chromium.

* with ``--basic-auth`` the page sends a visitor to the login form, and the
  ``/api/*`` and ``/metrics`` endpoints answer 401 without a valid login;
* with a login (the page's cookie or an HTTP Basic header) everything works;
* with ``--admin-users`` only those users may change the shared state, and
  everyone else sees the dashboard read-only;
* a websocket from an origin that ``--allow-websocket-origin`` does not
  name is refused;
* by default the server listens on 127.0.0.1 only.
"""

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sbg.datasets import DATA_DIR

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
USERS = {"alice": "wonderland-1", "bob": "builder-22"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, path, user=None, password=None, host="127.0.0.1", headers=None):
    """One plain HTTP GET (redirects not followed): ``(status, headers, body)``."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    headers = dict(headers or {})
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, r.headers, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


class Served:
    """``sbg serve ARGS`` on a free port; stopped by :meth:`stop`, whose log must hold no sbg traceback."""

    def __init__(self, tmp, *args):
        self.port = free_port()
        self.log = tmp / f"serve-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sbg.cli", "serve", "--port", str(self.port), *map(str, args)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                request(self.port, "/api/status")
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail("sbg serve did not come up:\n" + self.log.read_text())

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        text = self.log.read_text()
        assert "/sbg/" not in text, text[-4000:]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    shutil.copy(DATA_DIR / "machine_monitor.csv", root / "machine_monitor.csv")
    return root


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("auth")
    users = tmp / "users.json"
    users.write_text(json.dumps(USERS))
    served = Served(tmp, "--data-dir", data_dir, "--speed", "10x", "--basic-auth", users,
                    "--cookie-secret", "a-long-cookie-secret-for-tests-0123456789", "--admin-users", "alice")
    yield served
    served.stop()


@pytest.mark.parametrize("path", ["/api/status", "/api/alerts?limit=5", "/metrics"])
def test_endpoints_refuse_without_a_login(guarded, path):
    status, headers, _ = request(guarded.port, path)
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
    assert request(guarded.port, path, "alice", "wrong")[0] == 401
    assert request(guarded.port, path, "mallory", USERS["alice"])[0] == 401


def test_the_page_sends_a_visitor_without_a_login_to_the_login_form(guarded):
    status, headers, body = request(guarded.port, "/monitor")
    assert status in (302, 401, 403)
    if status == 302:
        assert headers["Location"].split("?")[0].endswith("/login")
    assert "Smart Battery Guardian" not in body
    status, _, form = request(guarded.port, "/login")
    assert status == 200 and 'name="password"' in form


@pytest.mark.parametrize("path", ["/api/status", "/api/alerts?limit=5", "/metrics"])
def test_endpoints_answer_with_a_login(guarded, path):
    status, _, body = request(guarded.port, path, "bob", USERS["bob"])
    assert status == 200, body
    if path == "/api/status":
        assert json.loads(body)["source"] == "machine_monitor"
    elif path == "/metrics":
        assert "sbg_rows_in_total" in body


def log_in(browser, base, user, tmp=None):
    ctx = browser.new_context(viewport={"width": 1366, "height": 768})
    page = ctx.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/monitor")
    page.fill('input[name="username"]', user)
    page.fill('input[name="password"]', USERS[user])
    page.click('button[type="submit"]')
    page.wait_for_selector(".sbg-kpis", timeout=60_000)
    # Panel's own login page asks a CDN for its style sheet (refused here); from the dashboard on, nothing may fail.
    errors.clear()
    return ctx, page, errors


def test_admins_control_and_viewers_watch(guarded, browser):
    admin_ctx, admin, admin_errors = log_in(browser, guarded.base, "alice")
    viewer_ctx, viewer, viewer_errors = log_in(browser, guarded.base, "bob")
    try:
        # The viewer has no control that changes the shared monitor.
        for name in ("Start", "Pause", "Resume", "Stop", "Reset", "Seek"):
            assert viewer.get_by_role("button", name=name, exact=True).count() == 0, name
        assert viewer.locator(".sbg-readonly").count() == 1
        assert viewer.locator("input[type=file]").is_disabled()
        # The session cookie also opens the endpoints, as the page's own login.
        assert viewer.evaluate("fetch('/api/status').then(r => r.status)") == 200
        ARTIFACTS.mkdir(exist_ok=True)
        viewer.screenshot(path=str(ARTIFACTS / "dashboard_read_only.png"))
        # The admin starts the replay; the viewer sees it run.
        admin.get_by_role("button", name="Start", exact=True).click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if viewer.locator(".sbg-live").first.get_attribute("data-state") == "running":
                break
            viewer.wait_for_timeout(250)
        else:
            raise AssertionError("the viewer never saw the admin's Start")
        admin.get_by_role("button", name="Pause", exact=True).click()
        assert admin_errors == [] and viewer_errors == []
    finally:
        admin_ctx.close()
        viewer_ctx.close()


def websocket_status(port, origin):
    """The HTTP status of a websocket handshake on the app's ``/monitor/ws`` from ``origin``."""
    status, _, page = request(port, "/monitor")
    assert status == 200
    token = re.search(r'"token":\s*"([^"]+)"', page).group(1)
    key = base64.b64encode(os.urandom(16)).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/monitor/ws", headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": key, "Origin": origin, "Sec-WebSocket-Protocol": f"bokeh, {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_websocket_from_another_origin_is_refused(tmp_path, data_dir):
    served = Served(tmp_path, "--data-dir", data_dir)
    try:
        assert websocket_status(served.port, f"http://127.0.0.1:{served.port}") == 101
        assert websocket_status(served.port, "http://evil.example") == 403
        assert websocket_status(served.port, f"http://127.0.0.1:{served.port}.evil.example") == 403
    finally:
        served.stop()


def test_it_listens_on_loopback_only_by_default(data_dir):
    from sbg.cli import build_parser, serve_command

    args = build_parser().parse_args(["serve", "--data-dir", str(data_dir)])
    args.panel_args = []
    cmd, _ = serve_command(args)
    assert cmd[cmd.index("--address") + 1] == "127.0.0.1"
    assert "--allow-websocket-origin" in cmd
    assert all(o.split(":")[0] in ("127.0.0.1", "localhost")
               for i, o in enumerate(cmd) if i and cmd[i - 1] == "--allow-websocket-origin")


@pytest.fixture
def jail(tmp_path):
    """A data directory, a sibling sharing its prefix, and files outside reached by links."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "ok.csv").write_text("t,v\n")
    (data / "sub" / "nested.csv").write_text("t,v\n")
    sibling = tmp_path / "data-private"
    sibling.mkdir()
    (sibling / "secret.csv").write_text("t,v\n")
    (tmp_path / "outside.csv").write_text("t,v\n")
    (data / "link_out.csv").symlink_to(tmp_path / "outside.csv")
    (data / "dir_out").symlink_to(sibling, target_is_directory=True)
    return data


@pytest.mark.parametrize("name", [
    "../outside.csv", "../data-private/secret.csv", "sub/../../outside.csv", "link_out.csv",
    "dir_out/secret.csv", "/etc/passwd", "", " ", "sub", "missing.csv", "..", ".",
])
def test_a_file_named_in_the_ui_or_api_stays_inside_the_data_dir(jail, name):
    from sbg.app import resolve_data_file
    from sbg.errors import SbgError

    with pytest.raises(SbgError, match="not a file inside the data directory"):
        resolve_data_file(name, jail)
    with pytest.raises(SbgError):
        resolve_data_file(str(jail.parent / "outside.csv"), jail)


def test_the_data_dir_lists_and_opens_only_its_own_files(jail):
    from sbg.app import Dashboard, data_files, resolve_data_file
    from sbg.monitor import Monitor

    assert data_files(jail) == ["ok.csv", "sub/nested.csv"]
    assert resolve_data_file("sub/nested.csv", jail) == (jail / "sub" / "nested.csv").resolve()
    # A crafted choice in the source selector (the browser can send any value) is refused, with a message.
    monitor = Monitor([DATA_DIR / "machine_monitor.csv"])
    try:
        view = Dashboard(monitor=monitor, data_dir=str(jail))
        view.source_select.options = [*view.source_select.options, "../data-private/secret.csv"]
        view.source_select.value = "../data-private/secret.csv"
        assert view.monitor is monitor
        assert "not a file inside the data directory" in view.upload_status.object
        view.close()
    finally:
        monitor.close()
