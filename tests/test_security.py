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
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sbg.io.datasets import DATA_DIR
from tests.served import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
USERS = {"alice": "wonderland-1", "bob": "builder-22"}
#: What Panel's login page loads from its CDN (filled in by the ``guarded`` fixture).
LOGIN_ASSETS: set[str] = set()


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

    def __init__(self, tmp, *args, port=None, env=None):
        self.port = port or free_port()
        self.log = tmp / f"serve-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sbg.cli", "serve", "--port", str(self.port), *map(str, args)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT,
                env={**os.environ, **(env or {})})
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
    LOGIN_ASSETS.update(re.findall(r'(?:src|href)="(https?://[^"]+)"', request(served.port, "/login")[2]))
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
    errors = watch_errors(page)
    page.goto(base + "/monitor")
    page.fill('input[name="username"]', user)
    page.fill('input[name="password"]', USERS[user])
    page.click('button[type="submit"]')
    page.wait_for_selector(".sbg-kpis", timeout=60_000)
    return ctx, page, errors


def watch_errors(page) -> list:
    """Script errors, console errors and failed requests of ``page``, except the login page's own assets.

    Panel's login page asks a CDN for its logo and style sheet (no network
    here), and those failures can be reported after the dashboard is up; only
    the exact URLs the login page names are let through.
    """
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("requestfailed", lambda r: errors.append(f"{r.url} failed")
            if r.url not in LOGIN_ASSETS else None)
    return errors


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


class IdentityProvider:
    """An OAuth 2 identity provider on loopback (authorization-code flow), where GitHub or Okta would be.

    It approves ``user`` at once: ``/authorize`` sends the browser back with
    a code, ``/token`` trades the code (with the client's secret) for a
    token, ``/userinfo`` names the user for that token. Every step it served
    is in :attr:`seen`.
    """

    KEY, SECRET, CODE, TOKEN = "sbg-dashboard", "client-secret-9f2", "code-4711", "token-abc123"

    def __init__(self, user):
        import asyncio
        import threading
        import urllib.parse

        from tornado.web import Application, RequestHandler

        provider, self.user, self.seen = self, user, []
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

        class Authorize(RequestHandler):
            def get(self):
                provider.seen.append("authorize")
                assert self.get_argument("client_id") == provider.KEY
                back = self.get_argument("redirect_uri")
                query = urllib.parse.urlencode({"code": provider.CODE, "state": self.get_argument("state")})
                self.redirect(back + ("&" if "?" in back else "?") + query)

        class Token(RequestHandler):
            def post(self):
                provider.seen.append("token")
                if (self.get_argument("code", "") != provider.CODE
                        or self.get_argument("client_secret", "") != provider.SECRET):
                    self.set_status(400)
                    self.write({"error": "invalid_grant"})
                    return
                self.write({"access_token": provider.TOKEN, "token_type": "Bearer", "expires_in": 3600})

        class UserInfo(RequestHandler):
            def get(self):
                provider.seen.append("userinfo")
                if self.request.headers.get("Authorization") != f"Bearer {provider.TOKEN}":
                    self.set_status(401)
                    return
                self.write({"email": provider.user, "name": provider.user.split("@")[0]})

        ready = threading.Event()

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            Application([("/authorize", Authorize), ("/token", Token), ("/userinfo", UserInfo)]).listen(
                self.port, address="127.0.0.1")
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True, name="identity-provider")
        self.thread.start()
        ready.wait(10)

    def env(self) -> dict:
        """What ``panel serve --oauth-provider generic`` reads to find this provider."""
        return {"PANEL_OAUTH_AUTHORIZE_URL": self.base + "/authorize", "PANEL_OAUTH_TOKEN_URL": self.base + "/token",
                "PANEL_OAUTH_USER_URL": self.base + "/userinfo", "PANEL_USER_KEY": "email"}

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_oauth_flags_pass_through_to_panel(tmp_path, data_dir, browser):
    idp = IdentityProvider("alice@example.org")
    port = free_port()
    served = Served(tmp_path, "--data-dir", data_dir, "--speed", "10x", "--oauth-provider", "generic",
                    "--oauth-key", idp.KEY, "--oauth-secret", idp.SECRET,
                    "--cookie-secret", "a-long-cookie-secret-for-tests-0123456789", "--admin-users", idp.user,
                    "--oauth-redirect-uri", f"http://127.0.0.1:{port}/login",
                    # an option sbg does not know goes to panel serve as it is
                    "--oauth-expiry=1", port=port, env=idp.env())
    ctx = browser.new_context(viewport={"width": 1366, "height": 768})
    try:
        # Without a login: the endpoints refuse, the page sends the visitor to the provider.
        for path in ("/api/status", "/api/alerts?limit=5", "/metrics"):
            assert request(port, path)[0] == 401, path
        status, headers, _ = request(port, "/monitor")
        assert status == 302 and headers["Location"].split("?")[0].endswith("/login")
        status, headers, _ = request(port, "/login")
        assert status == 302 and headers["Location"].startswith(idp.base + "/authorize?"), headers["Location"]
        assert idp.seen == []
        # A browser goes through the provider and lands on the dashboard, as the admin it names.
        page = ctx.new_page()
        errors = watch_errors(page)
        page.goto(served.base + "/monitor")
        page.wait_for_selector(".sbg-kpis", timeout=60_000)
        assert idp.seen == ["authorize", "token", "userinfo"]
        assert page.get_by_role("button", name="Start", exact=True).count() == 1
        assert page.evaluate("fetch('/api/status').then(r => r.status)") == 200
        assert page.evaluate("fetch('/metrics').then(r => r.status)") == 200
        assert errors == []
    finally:
        ctx.close()
        served.stop()
        idp.stop()


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
    from sbg.errors import SbgError
    from sbg.serve.registry import resolve_data_file

    with pytest.raises(SbgError, match="not a file inside the data directory"):
        resolve_data_file(name, jail)
    with pytest.raises(SbgError):
        resolve_data_file(str(jail.parent / "outside.csv"), jail)


def test_the_data_dir_lists_and_opens_only_its_own_files(jail):
    from sbg.serve.registry import data_files, resolve_data_file
    from sbg.stream.monitor import Monitor
    from sbg.ui.dashboard import Dashboard

    assert data_files(jail) == ["ok.csv", "sub/nested.csv"]
    assert resolve_data_file("sub/nested.csv", jail) == (jail / "sub" / "nested.csv").resolve()
    # A crafted choice in the source selector (the browser can send any value) is refused, with a message.
    monitor = Monitor([DATA_DIR / "machine_monitor.csv"])
    try:
        view = Dashboard(monitor=monitor, data_dir=str(jail))
        view.sources.source_select.options = [*view.sources.source_select.options, "../data-private/secret.csv"]
        view.sources.source_select.value = "../data-private/secret.csv"
        assert view.monitor is monitor
        assert "not a file inside the data directory" in view.sources.upload_status.object
        view.close()
    finally:
        monitor.close()


@pytest.fixture
def upload_view(tmp_path):
    """A dashboard in this process over a data directory holding the machine monitor, with its sidebar.

    The shared monitors its source changes open are closed and forgotten afterwards.
    """
    from sbg.serve import registry
    from sbg.stream.monitor import Monitor
    from sbg.ui.dashboard import Dashboard

    shutil.copy(DATA_DIR / "machine_monitor.csv", tmp_path / "machine_monitor.csv")
    before = set(registry.monitors())
    monitor = Monitor([tmp_path / "machine_monitor.csv"])
    view = Dashboard(monitor=monitor, data_dir=str(tmp_path))
    view.settings.__panel__()  # laid out: the settings area a source change redraws
    try:
        yield view
    finally:
        view.close()
        monitor.close()
        for key in set(registry.monitors()) - before:
            registry.monitors().pop(key).close()


def test_a_failed_re_upload_keeps_the_earlier_file_and_shows_no_server_path(upload_view, tmp_path):
    view = upload_view
    good = "".join((DATA_DIR / "machine_monitor.csv").read_text().splitlines(keepends=True)[:300]).encode()
    saved = tmp_path / "uploads" / "run.csv"
    view.sources.upload.filename = "run.csv"
    view.sources.upload.value = good
    assert saved.read_bytes() == good
    assert view.sources.upload_status.object == "Uploaded uploads/run.csv."
    # Someone else uploads content that does not load under the same name: the good file stays as it was.
    for bad in (b"timestamp,unit\n", b"\x00\x01\x02 not a table\n", b"a,b\nx,1\ny,2\n"):
        view.sources.upload.value = bad
        shown = view.sources.upload_status.object
        assert saved.read_bytes() == good
        assert "run.csv" in shown and "was not saved" in shown, shown
        assert str(tmp_path) not in shown and str(tmp_path.resolve()) not in shown, shown
        assert sorted(p.name for p in saved.parent.iterdir()) == ["run.csv"]  # no temporary file left


def test_an_upload_the_server_cannot_write_is_an_error_without_its_path(upload_view, tmp_path):
    view = upload_view
    (tmp_path / "uploads").write_text("a file where the uploads folder goes")
    view.sources.upload.filename = "run.csv"
    view.sources.upload.value = (DATA_DIR / "machine_monitor.csv").read_bytes()[:20_000]
    shown = view.sources.upload_status.object
    assert "run.csv was not saved" in shown and str(tmp_path) not in shown, shown


def test_bad_input_to_the_page_callbacks_is_shown_not_raised(upload_view):
    from sbg.report.style import STATE_COLORS

    view = upload_view
    monitor = view.monitor
    # The baseline, then the source selector: a value with a NUL byte (a browser can send any value).
    for select in (view.sources.baseline_select, view.sources.source_select):
        view.sources.upload_status.object = ""
        select.options = [*select.options, "machine_monitor.csv\x00.csv"]
        select.value = "machine_monitor.csv\x00.csv"
        assert view.monitor is monitor
        assert "embedded null byte" in view.sources.upload_status.object
        assert STATE_COLORS["critical"] in view.sources.upload_status.object
    # The speed: a value that is not a speed leaves the replay's speed as it was.
    speed = monitor.replay.speed
    view.sources.speed.options = [*view.sources.speed.options, "fast\x00"]
    view.sources.speed.value = "fast\x00"
    assert monitor.replay.speed == speed
    assert "Speed not changed" in view.sources.upload_status.object
    # The scatter's axes: a value that is not a signal is refused, the plot keeps its axes.
    xy = view.baseline.xy
    view.baseline.x_select.options = [*view.baseline.x_select.options, "<no such signal>"]
    view.baseline.x_select.value = "<no such signal>"
    assert view.baseline.xy == xy
    assert "is not a signal of this source" in view.sources.upload_status.object
    # Seek to a position that is not a number: an error in the event feed, the replay where it was.
    view.controls.seek.value = float("nan")
    view.controls.control("seek")
    assert monitor.replay.state == "idle" and list(monitor.events)[-1]["message"].startswith("seek failed: ")


def test_a_source_with_other_signals_can_be_chosen(upload_view, tmp_path):
    view = upload_view
    shutil.copy(DATA_DIR / "site_power_24h.csv.gz", tmp_path / "site_power_24h.csv.gz")
    view.sources.source_select.options = [*view.sources.source_select.options, "site_power_24h.csv.gz"]
    view.sources.source_select.value = "site_power_24h.csv.gz"
    assert [p.name for p in view.monitor.paths] == ["site_power_24h.csv.gz"]
    assert set(view.baseline.xy) <= set(view.monitor.signals) and view.plots.live.signals == view.monitor.signals
    assert (view.baseline.x_select.value, view.baseline.y_select.value) == view.baseline.xy


def _status_request(monkeypatch, remote_ip, user=None):
    """``GET /api/status`` through sbg's handler in this process, from ``remote_ip``; the JSON it writes."""
    import asyncio
    from unittest import mock

    from bokeh.server.auth_provider import NullAuth
    from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
    from tornado.web import Application

    from sbg.serve.api import StatusHandler

    application = Application()
    application.auth_provider = NullAuth() if user is None else mock.Mock(get_user_async=None,
                                                                            get_user=lambda handler: user)
    connection = mock.Mock()
    connection.context.remote_ip = remote_ip
    request = HTTPServerRequest(start_line=RequestStartLine("GET", "/api/status", "HTTP/1.1"),
                                headers=HTTPHeaders({"Host": "sbg.example"}), connection=connection)
    request.remote_ip = remote_ip
    handler = StatusHandler(application, request)

    async def answer():
        await handler.prepare()
        handler.get()

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, answer()).result()
    return json.loads(b"".join(handler._write_buffer))


def test_status_names_files_without_paths_or_pid_for_remote_callers_without_a_login(monkeypatch, tmp_path):
    from sbg.serve import registry
    from sbg.serve.registry import status_payload
    from sbg.stream.monitor import Monitor

    shutil.copy(DATA_DIR / "machine_monitor.csv", tmp_path / "machine_monitor.csv")
    shutil.copy(DATA_DIR / "machine_baseline.csv", tmp_path / "machine_baseline.csv")
    monitor = Monitor([tmp_path / "machine_monitor.csv"], baseline=tmp_path / "machine_baseline.csv")
    try:
        monitor.metrics.last_error = f"source: {tmp_path / 'machine_monitor.csv'}: could not be read"
        names = status_payload(monitor, full=False)
        assert names["files"] == ["machine_monitor.csv"] and names["baseline"] == "machine_baseline.csv"
        assert "pid" not in names["process"] and names["process"]["rss_bytes"]
        assert names["metrics"]["last_error"] == "source: machine_monitor.csv: could not be read"
        assert str(tmp_path) not in json.dumps(names)
        full = status_payload(monitor)
        assert full["files"] == [str(tmp_path / "machine_monitor.csv")] and full["process"]["pid"] == os.getpid()

        # The handler: names only to a remote caller of a server without a login; everything to a caller
        # on this machine or one who has logged in.
        monkeypatch.setattr(registry, "_MONITORS", {("test",): monitor})  # only this one, whatever ran before
        for ip, user, shows in [("192.0.2.7", None, False), ("2001:db8::7", None, False),
                                ("127.0.0.1", None, True), ("::1", None, True), ("192.0.2.7", "alice", True)]:
            got = _status_request(monkeypatch, ip, user)
            assert (got["files"] == [str(tmp_path / "machine_monitor.csv")]) is shows, (ip, user, got["files"])
            assert ("pid" in got["process"]) is shows
            assert (str(tmp_path) in json.dumps(got)) is shows
    finally:
        monitor.close()
