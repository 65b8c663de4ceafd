"""Status endpoints served beside the dashboard: ``panel serve ... --plugins sbg.serve.api``.

* ``GET /api/status``  metrics, replay state and progress, source and start time, and each
  battery's health score with its components (``health``; JSON);
  ``?sessions=1`` adds the rows each open session has sent to its browser
* ``GET /api/alerts?limit=N``  the newest alerts (JSON)
* ``GET /metrics``  the same counters in the Prometheus text format, with
  ``sbg_health_score{entity=...}`` and ``sbg_health_<component>_score`` per battery
* ``GET /healthz``  200 ``ok`` while the event loop turns (it answers from the loop)
* ``GET /readyz``  200 ``ready`` once a monitor is running and has read data, 503 before

The handlers authenticate like the app page: with ``--basic-auth`` or OAuth
on, a request without a valid login gets 401. ``/healthz`` and ``/readyz`` need no login and say
nothing but a status word. The others answer for the monitors of
this server process (the sources someone has opened), each labelled by source.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import os

from bokeh.server.auth_provider import NullAuth
from bokeh.server.views.auth_request_handler import AuthRequestHandler
from tornado.web import HTTPError, RequestHandler

from ..alerts.log import json_records
from .exposition import prometheus_text

__all__ = ["ROUTES", "prometheus_text"]


def _monitors():
    from .registry import monitors

    return list(monitors().values())


def _check_password(username: str, password: str) -> bool:
    from panel.config import config

    users = config.basic_auth  # a password, a path to a JSON file of users, or a dict
    if isinstance(users, str) and os.path.isfile(users):
        with open(users, encoding="utf-8") as fh:
            users = json.load(fh)
    if isinstance(users, dict):
        return username in users and hmac.compare_digest(str(users[username]), password)
    return isinstance(users, str) and bool(users) and hmac.compare_digest(users, password)


class _Api(AuthRequestHandler):
    """Authenticated like the app page.

    Plugin routes are not guarded by ``panel serve --basic-auth`` themselves:
    this handler accepts the signed login cookie the page sets (password or OAuth), or an HTTP
    Basic header (for Prometheus and curl), and answers 401 otherwise.
    """

    async def prepare(self):
        provider = self.application.auth_provider
        if isinstance(provider, NullAuth):
            self.current_user = "anonymous"  # served without --basic-auth or OAuth
            return
        # Bokeh's own get_current_user answers "default_user" for a provider with only an
        # async hook (Panel's OAuth): ask the provider itself, whichever hook it has.
        user = None
        if provider.get_user_async is not None:
            user = await provider.get_user_async(self)
        elif provider.get_user is not None:
            user = provider.get_user(self)
        user = user or self._basic_header_user()
        if not user:
            raise HTTPError(401)
        self.current_user = user

    def _basic_header_user(self):
        """The user of a valid HTTP Basic header (Prometheus, curl), if any."""
        header = self.request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return name if _check_password(name, password) else None

    def write_error(self, status_code, **kwargs):
        # send_error clears the headers set before it: say here how to log in.
        from panel.config import config

        if status_code == 401 and config.basic_auth:
            self.set_header("WWW-Authenticate", 'Basic realm="sbg"')
        super().write_error(status_code, **kwargs)

    def write_json(self, payload):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(payload, default=str))


def full_status_for(authenticated: bool, remote_ip: str | None) -> bool:
    """Whether ``/api/status`` may show a caller the files' paths and the process id.

    A logged-in caller and one on this machine may; anyone else who can reach
    the port of a server without a login gets file names only.

    >>> full_status_for(False, "127.0.0.1"), full_status_for(False, "::1"), full_status_for(True, "192.0.2.7")
    (True, True, True)
    >>> full_status_for(False, "192.0.2.7"), full_status_for(False, None)
    (False, False)
    """
    if authenticated:
        return True
    try:
        address = ipaddress.ip_address(remote_ip or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class StatusHandler(_Api):
    def get(self):
        from .registry import default_monitor, status_payload

        found = _monitors() or [default_monitor()]
        # prepare() has refused a request without a login whenever a login is required.
        full = full_status_for(not isinstance(self.application.auth_provider, NullAuth), self.request.remote_ip)
        payloads = [status_payload(m, full=full) for m in found]
        out = dict(payloads[0])
        out["monitors"] = payloads
        if self.get_argument("sessions", "") == "1":
            from .registry import session_rows_sent

            out["session_rows_sent"] = session_rows_sent()
        if os.environ.get("SBG_DEBUG_OBJECTS") == "1" and self.get_argument("objects", "") == "1":
            from .registry import live_objects

            out["objects"] = live_objects()
        self.write_json(out)


class AlertsHandler(_Api):
    def get(self):
        try:
            limit = int(self.get_argument("limit", "100"))
        except ValueError:
            raise HTTPError(400, "limit must be an integer") from None
        if not 1 <= limit <= 10_000:
            raise HTTPError(400, "limit must be between 1 and 10000")
        alerts = []
        for m in _monitors():
            alerts += json_records(m.alerts.head(limit))
        alerts.sort(key=lambda a: (a["start"] or "", a["id"]), reverse=True)
        self.write_json({"alerts": alerts[:limit], "count": len(alerts[:limit])})


class MetricsHandler(_Api):
    def get(self):
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        found = _monitors()
        notifiers = [n for m in found for n in (getattr(m, "notifiers", None) or [])]
        self.write(prometheus_text(found, display=True, notifiers=notifiers))


class _Probe(RequestHandler):
    """A service manager's probe: no login, no data, a status word only."""

    def answer(self, code: int, word: str):
        self.set_status(code)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(word + "\n")

    def head(self):
        self.get()


class HealthHandler(_Probe):
    def get(self):
        self.answer(200, "ok")


class ReadyHandler(_Probe):
    def get(self):
        from .lifecycle import readiness

        ready, word = readiness()
        self.answer(200 if ready else 503, word)


ROUTES = [
    (r"/healthz", HealthHandler, {}),
    (r"/readyz", ReadyHandler, {}),
    (r"/api/status", StatusHandler, {}),
    (r"/api/alerts", AlertsHandler, {}),
    (r"/metrics", MetricsHandler, {}),
]
