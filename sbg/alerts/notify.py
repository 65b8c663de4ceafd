"""Sending alert events to other systems: Prometheus Alertmanager, webhooks and JSON lines.

Every notifier is subscribed to an :class:`~sbg.alerts.engine.AlertEngine` and
never holds up the pipeline: :meth:`Notifier.notify` puts a message on a
bounded queue and returns, and one daemon thread per notifier sends them in
order, retrying with exponential backoff and jitter. A full queue drops the
message and counts it. Events are deduplicated like the alert log: a repeated
``fired`` is not sent again, a resolution is sent once per firing period.

The webhook and JSON-lines payload (``version`` 1)::

    {"version": 1, "event": "fired" | "reopened" | "resolved",
     "sent_at": "2025-01-01T12:00:00.000Z",     # when sbg emitted the event (wall clock)
     "alert": {...}}                            # Alert.as_record() plus "kind"; times are data times

A webhook with a secret carries ``X-Sbg-Signature: sha256=<hex>``, the
HMAC-SHA256 of the exact body bytes under the secret (as GitHub's
``X-Hub-Signature-256``), plus ``X-Sbg-Event`` and ``X-Sbg-Delivery`` (an id
kept across retries). Counters: ``sent`` and ``dropped`` count messages,
``failed`` and ``retried`` count attempts, ``queued`` and ``inflight`` are
gauges.

>>> notify_specs({"webhook": "ftp://example.com/hook"})
Traceback (most recent call last):
...
sbg.errors.ConfigError: notify: webhook 'ftp://example.com/hook' is not an http:// or https:// URL
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import http.client
import json
import logging
import math
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime

import pandas as pd

from .. import __version__
from ..errors import ConfigError

__all__ = ["Notifier", "AlertmanagerNotifier", "WebhookNotifier", "JsonLinesNotifier", "Notifiers",
           "notifiers_from", "notify_specs", "attach", "PAYLOAD_VERSION", "SECRET_ENV"]

log = logging.getLogger("sbg.notify")

PAYLOAD_VERSION = 1
#: Environment variable whose value signs webhooks that have no secret of their own.
SECRET_ENV = "SBG_WEBHOOK_SECRET"
EVENTS = ("fired", "reopened", "resolved")
_RECENT = 10_000  # resolved ids remembered for deduplication (and firing ids at most 10x that)
_KINDS: dict[str, str] = {}


def _kind(detector: str) -> str:
    """``quality`` for a detector that finds problems in the data, ``anomaly`` otherwise (as the alert log)."""
    if not _KINDS:
        from ..detect.detectors import detector_classes

        _KINDS.update({label: cls.kind for label, cls in detector_classes().items()})
    return _KINDS.get(detector, "anomaly")


def _record(event: str, alert) -> dict:
    """The alert as the event saw it: the engine may have moved it on before its subscribers are called."""
    rec = alert.as_record()
    rec["state"] = "resolved" if event == "resolved" else "firing"
    if event != "resolved":
        rec["end"] = None
    rec["kind"] = _kind(rec["detector"])
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in rec.items()}


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _epoch(text) -> float:
    """Seconds since the epoch of a data time (a time without a zone is UTC)."""
    ts = pd.Timestamp(text)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.value / 1e9


class _Message:
    __slots__ = ("event", "record", "created", "delivery", "labels", "body")

    def __init__(self, event, record, labels=None):
        self.event, self.record, self.labels = event, record, labels
        self.created, self.delivery, self.body = time.time(), uuid.uuid4().hex, None

    def json(self) -> bytes:
        if self.body is None:  # once: retries send the same bytes, under the same signature
            self.body = json.dumps({"version": PAYLOAD_VERSION, "event": self.event,
                                    "sent_at": _rfc3339(self.created), "alert": self.record},
                                   default=str, separators=(",", ":")).encode()
        return self.body


class _Failure(Exception):
    """One failed attempt: why, in a few words, whether to retry, and how long the receiver asked to wait."""

    def __init__(self, reason, retry=True, retry_after=None):
        super().__init__(reason)
        self.reason, self.retry, self.retry_after = reason, retry, retry_after


class Notifier:
    """A bounded queue and the thread that sends it; subclasses say how one batch is sent (:meth:`_send`).

    Parameters
    ----------
    target : str
        What the notifier sends to, for messages and metric labels (never a secret).
    queue_size : int
        Messages held at most; beyond it new messages are dropped and counted.
    on_error : callable, optional
        ``on_error(message)`` with a one-line description of each failure, from the worker thread.
    timeout : float
        Seconds each network operation of an attempt may take.
    retries, backoff, max_backoff : int, float, float
        A failed attempt that may succeed later is retried ``retries`` times, after
        ``backoff * 2**n`` seconds (at most ``max_backoff``) with jitter, or the receiver's ``Retry-After``.
    """

    kind = "notifier"
    batch = 1  # messages per attempt

    def __init__(self, target: str, queue_size: int = 1000, on_error=None, timeout: float = 5.0,
                 retries: int = 0, backoff: float = 0.2, max_backoff: float = 30.0):
        self.target, self.queue_size, self.on_error = target, int(queue_size), on_error
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, int(retries), backoff, max_backoff
        self.sent = self.failed = self.retried = self.dropped = 0
        #: The engine this notifier follows (set by :func:`attach`): alerts it no longer holds are let go.
        self.engine = None
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._firing: collections.OrderedDict = collections.OrderedDict()  # id -> the Alert firing
        self._resolved: collections.OrderedDict = collections.OrderedDict()  # ids resolved lately
        self._inflight = self._overflow = self._reported_overflow = 0
        self._closing = self._abandoned = False
        self._deadline = 0.0
        self._close_dropped, self._finished = 0, False
        self._dead = ""  # why nothing more can be sent (a closed pipe)
        self._rng = random.Random()
        self._thread = threading.Thread(target=self._run, name=f"sbg-notify-{self.kind}", daemon=True)
        self._thread.start()

    def __repr__(self):
        return f"{type(self).__name__}({self.target!r})"

    # -- the caller's side -------------------------------------------------------------------------
    def notify(self, event: str, alert) -> bool:
        """Queue ``event`` of ``alert`` and return at once; ``False`` if a duplicate or dropped."""
        if event not in EVENTS:
            return False
        record = _record(event, alert)
        with self._cond:
            if not self._transition(event, alert):
                return False
            message = self._prepare(event, alert, record)
            if self._closing or self._dead or len(self._queue) >= self.queue_size:
                self.dropped += 1
                self._overflow += not (self._closing or self._dead)
                return False
            self._queue.append(message)
            self._cond.notify()
        return True

    def _transition(self, event, alert) -> bool:
        """Whether the event changes what this notifier last said of the alert (and remember it)."""
        if event == "resolved":
            if alert.id in self._resolved:
                return False
            self._firing.pop(alert.id, None)
            self._resolved[alert.id] = True
            if len(self._resolved) > _RECENT:
                self._resolved.popitem(last=False)
            return True
        # The same alert object firing again is a duplicate; another with its id means the engine started over.
        if self._firing.get(alert.id) is alert:
            return False
        self._resolved.pop(alert.id, None)
        self._firing[alert.id] = alert
        if len(self._firing) > 10 * _RECENT:
            self._firing.popitem(last=False)
        return True

    def _prepare(self, event, alert, record) -> _Message:
        return _Message(event, record)

    def adopt(self, alerts) -> None:
        """Take ``alerts`` as firing already, without sending them (an engine restored from a checkpoint)."""
        with self._cond:
            for alert in alerts:
                if alert.state == "firing" and self._transition("fired", alert):
                    self._prepare("fired", alert, _record("fired", alert))
            self._cond.notify()

    def stats(self) -> dict:
        """The counters: ``sent``, ``failed``, ``retried``, ``dropped``, ``queued``, ``inflight``."""
        with self._cond:
            return {"sent": self.sent, "failed": self.failed, "retried": self.retried, "dropped": self.dropped,
                    "queued": len(self._queue), "inflight": self._inflight}

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self, timeout: float = 5.0) -> int:
        """Stop taking messages, send what is queued for up to ``timeout`` s; returns messages given up."""
        before = self._begin_close(time.monotonic() + max(0.0, timeout))
        return self._finish_close(before)

    def _begin_close(self, deadline: float) -> int:
        with self._cond:
            if not self._closing:
                self._closing, self._deadline = True, deadline
                self._close_dropped = self.dropped
            self._cond.notify_all()
            return self._close_dropped

    def _finish_close(self, before: int) -> int:
        if self._finished:
            return 0
        # An attempt never runs past the deadline by more than its own timeout's rounding.
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + 1.0)
        with self._cond:
            self._finished = True
            alive = self._thread.is_alive()
            left = len(self._queue) + (self._inflight if alive else 0)
            self.dropped += left
            self._queue.clear()
            self._abandoned = self._abandoned or alive
            self._inflight = 0
            return self.dropped - before

    # -- the worker's side -------------------------------------------------------------------------
    def _due(self) -> float | None:
        """Seconds until :meth:`_periodic` is due, or ``None`` for never."""
        return None

    def _periodic(self) -> None:
        """Work the worker does when :meth:`_due` says (Alertmanager re-posts firing alerts)."""

    def _send(self, batch: list, timeout: float) -> None:
        """Send one batch, or raise :class:`_Failure`."""
        raise NotImplementedError

    def _run(self):
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        if not self._queue or time.monotonic() >= self._deadline:
                            return
                        due = None
                    else:
                        due = self._due()
                        if due is not None and due <= 0:
                            batch = []
                            break
                    if self._queue:
                        batch = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                        self._inflight = len(batch)
                        break
                    self._cond.wait(due)
            try:
                if batch:
                    self._deliver(batch)
                else:
                    self._periodic()
                if self._overflow != self._reported_overflow:
                    n, self._reported_overflow = self._overflow - self._reported_overflow, self._overflow
                    self._report(f"{self.kind} {self.target}: queue full ({self.queue_size}), "
                                 f"{n} notification{'s' * (n != 1)} dropped")
            except Exception as exc:  # a bug must not end the thread and with it every later notification
                log.exception("%s %s: unexpected error", self.kind, self.target)
                self._settle(len(batch), False)
                self._report(f"{self.kind} {self.target}: unexpected error: {exc!r}")

    def _attempt_timeout(self) -> float:
        if self._closing:
            return max(0.05, min(self.timeout, self._deadline - time.monotonic()))
        return self.timeout

    def _deliver(self, batch):
        attempt = 0
        while True:
            try:
                self._send(batch, self._attempt_timeout())
            except _Failure as exc:
                with self._cond:
                    self.failed += 1
                delay = min(self.max_backoff, self.backoff * 2 ** attempt) * self._rng.uniform(0.5, 1.0)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self.max_backoff))
                left = self._deadline - time.monotonic() if self._closing else math.inf
                if exc.retry and attempt < self.retries and left > 0:
                    attempt += 1
                    delay = min(delay, left)
                    self._report(f"{self.kind} {self.target}: {exc.reason}, "
                                 f"retry {attempt} of {self.retries} in {delay:.1f} s")
                    with self._cond:
                        self.retried += 1
                    self._sleep(delay)
                    continue
                what = ("not retried" if not exc.retry else "gave up at the stop" if left <= 0
                        else f"gave up after {attempt + 1} attempt{'s' * (attempt > 0)}")
                n = len(batch)
                self._report(f"{self.kind} {self.target}: {exc.reason}, {what}; "
                             f"{n} notification{'s' * (n != 1)} dropped")
                self._settle(n, False)
                return
            self._settle(len(batch), True)
            return

    def _settle(self, n: int, delivered: bool):
        with self._cond:
            if not self._abandoned:  # else close() has counted them already
                if delivered:
                    self.sent += n
                else:
                    self.dropped += n
                self._inflight = 0

    def _sleep(self, delay: float):
        """Wait ``delay`` s, or less once a close's deadline comes nearer."""
        end = time.monotonic() + delay
        with self._cond:
            while True:
                left = end - time.monotonic()
                if self._closing:
                    left = min(left, self._deadline - time.monotonic())
                if left <= 0:
                    return
                self._cond.wait(left)

    def _report(self, message: str):
        log.warning("%s", message)
        if self.on_error is not None:
            try:
                self.on_error(message)
            except Exception:  # the feed's trouble is not the notifier's
                log.debug("on_error failed", exc_info=True)


# -- HTTP ----------------------------------------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirected POST would become a GET: report it instead
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _retry_after(value) -> float | None:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def _post(url: str, body: bytes, headers: dict, timeout: float) -> None:
    """POST ``body``; raise :class:`_Failure` unless the answer is 2xx (5xx, 429 and no answer are retried)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        _OPENER.open(request, timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        try:
            detail = " ".join(exc.read(500).decode("utf-8", "replace").split())[:120]
        except Exception:
            detail = ""
        exc.close()
        reason = f"HTTP {exc.code}" + (f" ({detail})" if detail else "")
        raise _Failure(reason, retry=exc.code == 429 or exc.code >= 500,
                       retry_after=_retry_after((exc.headers or {}).get("Retry-After"))) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        cause = getattr(exc, "reason", exc)
        if isinstance(cause, TimeoutError):
            reason = f"no answer within {timeout:.3g} s"
        elif isinstance(cause, ConnectionRefusedError):
            reason = "connection refused"
        else:
            reason = str(cause) or type(cause).__name__
        raise _Failure(reason) from None


def _check_url(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"notify: {where} needs a URL, got {value!r}")
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value.strip()):
        raise ConfigError(f"notify: {where} {value!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ConfigError(f"notify: {where} {value!r} has an invalid port") from None
    return value.strip()


def _split_url(url: str) -> tuple[str, str, str | None]:
    """``(url without credentials, target for labels, Authorization header or None)``.

    The target drops credentials, query and fragment, and hides path segments
    of 16 characters or more: tokens, as in many chat webhooks' URLs.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parts.port}" if parts.port else "")
    path = "/".join("***" if len(s) >= 16 else s for s in parts.path.split("/"))
    auth = None
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return clean, f"{parts.scheme}://{netloc}{path}", auth


class _HttpNotifier(Notifier):
    def __init__(self, url, name=None, path="", **kw):
        self.url, target, self._auth = _split_url(url)
        self.url += path
        super().__init__(name or target, **kw)

    def _headers(self, extra: dict) -> dict:
        headers = {"Content-Type": "application/json", "User-Agent": f"sbg/{__version__}", **extra}
        if self._auth:
            headers["Authorization"] = self._auth
        return headers


class WebhookNotifier(_HttpNotifier):
    """One JSON POST per alert event (see the module's docstring for the payload and headers).

    Parameters
    ----------
    url : str
    secret : str, optional
        Signs each body: ``X-Sbg-Signature: sha256=<hex>``.
    timeout, retries, backoff, max_backoff, queue_size, on_error
        As :class:`Notifier`. 5xx, 429 and failures to connect or to answer are retried; other answers not.
    name : str, optional
        The target shown in messages and metrics, instead of the URL's.
    """

    kind = "webhook"

    def __init__(self, url: str, secret: str | None = None, timeout: float = 5.0, retries: int = 5,
                 backoff: float = 0.2, max_backoff: float = 30.0, queue_size: int = 1000, on_error=None,
                 name: str | None = None):
        self._secret = secret.encode() if secret else None
        super().__init__(_check_url(url, "webhook"), name, queue_size=queue_size, on_error=on_error,
                         timeout=timeout, retries=retries, backoff=backoff, max_backoff=max_backoff)

    def _send(self, batch, timeout):
        (message,) = batch
        body = message.json()
        extra = {"X-Sbg-Event": message.event, "X-Sbg-Delivery": message.delivery}
        if self._secret:
            extra["X-Sbg-Signature"] = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        _post(self.url, body, self._headers(extra), timeout)


class AlertmanagerNotifier(_HttpNotifier):
    """Alerts to Prometheus Alertmanager's v2 API (``POST {url}/api/v2/alerts``), kept firing while they are.

    Like Prometheus, each firing alert is posted with ``endsAt`` four
    ``repeat`` periods ahead and posted again every ``repeat`` seconds, so it
    stays active whatever Alertmanager's ``resolve_timeout``, and times out if
    sbg stops. A resolution is posted with ``endsAt`` the data's end, or now
    if the data's end is still ahead: Alertmanager resolves an alert whose
    ``endsAt`` has passed. ``startsAt`` is the data's start (or now, if that
    is ahead); the data times are also in the annotations (``start``,
    ``end``, ``peak_time``), with ``summary``, ``alert_id`` and the peak.

    The labels are ``alertname`` (the rule), ``entity``, ``signal``,
    ``severity``, ``detector``, ``kind`` and ``source`` (empty ones left
    out), frozen while the alert fires: Alertmanager tells alerts apart by
    their labels, and an alert's signal and detector follow its peak.
    """

    kind = "alertmanager"
    batch = 64

    def __init__(self, url: str, repeat: float = 60.0, generator_url: str | None = None, timeout: float = 5.0,
                 retries: int = 5, backoff: float = 0.2, max_backoff: float = 30.0, queue_size: int = 1000,
                 on_error=None, name: str | None = None):
        base = _check_url(url, "alertmanager").rstrip("/")
        base = base[: -len("/api/v2/alerts")] if base.endswith("/api/v2/alerts") else base
        self.repeat, self.generator_url, self.reposted = float(repeat), generator_url, 0
        self._active: dict = {}  # id -> (labels, alert), alerts sbg says are firing
        self._next = time.monotonic() + self.repeat
        super().__init__(base, name, "/api/v2/alerts", queue_size=queue_size, on_error=on_error,
                         timeout=timeout, retries=retries, backoff=backoff, max_backoff=max_backoff)

    def _prepare(self, event, alert, record):
        if event == "resolved":
            labels = self._active.pop(alert.id, (None,))[0] or _labels(record)
        else:
            labels = _labels(record)
            if not self._active:
                self._next = time.monotonic() + self.repeat
            self._active[alert.id] = (labels, alert)
        return _Message(event, record, labels)

    def adopt(self, alerts) -> None:
        super().adopt(alerts)
        with self._cond:
            self._next = time.monotonic()  # tell Alertmanager now: it may have timed them out meanwhile

    def stats(self) -> dict:
        return {**super().stats(), "reposted": self.reposted}

    def _alert(self, event, record, labels, now) -> dict:
        start = min(_epoch(record["start"]), now)
        if event == "resolved":
            end = max(start, min(_epoch(record["end"]) if record["end"] else now, now))
        else:
            end = now + 4 * self.repeat
        annotations = {"summary": record["message"], "alert_id": record["id"], "start": record["start"],
                       "end": record["end"], "peak": None if record["peak"] is None else f"{record['peak']:.6g}",
                       "peak_score": f"{record['peak_score']:.3f}", "peak_time": record["peak_time"],
                       "reopened": str(record["reopened"])}
        out = {"labels": labels, "annotations": {k: str(v) for k, v in annotations.items() if v not in (None, "")},
               "startsAt": _rfc3339(start), "endsAt": _rfc3339(end)}
        if self.generator_url:
            out["generatorURL"] = self.generator_url
        return out

    def _send(self, batch, timeout):
        now = time.time()
        body = json.dumps([self._alert(m.event, m.record, m.labels, now) for m in batch]).encode()
        _post(self.url, body, self._headers({}), timeout)

    def _due(self):
        return self._next - time.monotonic() if self._active else None

    def _periodic(self):
        """Post every firing alert again; one the engine no longer holds (it started over) as resolved now."""
        with self._cond:
            self._next = time.monotonic() + self.repeat
            items = list(self._active.items())
            gone = [i for i, (_, a) in items if self.engine is not None and self.engine.alerts.get(i) is not a]
            for i in gone:
                del self._active[i]
                self._firing.pop(i, None)
        if not items:
            return
        now = time.time()
        alerts = [self._alert("resolved" if i in gone else "fired", _record("fired", a), labels, now)
                  for i, (labels, a) in items if i in gone or a.state == "firing"]
        for lo in range(0, len(alerts), 500):
            try:
                _post(self.url, json.dumps(alerts[lo:lo + 500]).encode(), self._headers({}), self._attempt_timeout())
            except _Failure as exc:
                with self._cond:
                    self.failed += 1
                self._report(f"{self.kind} {self.target}: {exc.reason}; firing alerts are posted again "
                             f"in {self.repeat:g} s")
                return
            with self._cond:
                self.reposted += len(alerts[lo:lo + 500])


def _labels(record) -> dict:
    labels = {"alertname": record["rule"], "entity": record["entity"], "signal": record["signal"],
              "severity": record["severity"], "detector": record["detector"], "kind": record["kind"],
              "source": record["source"]}
    return {k: str(v) for k, v in labels.items() if v not in (None, "")}


class JsonLinesNotifier(Notifier):
    """One JSON object per alert event and line, flushed at once (``sbg watch --json | jq``).

    A reader that goes away (a closed pipe) ends the writing: that message and
    every later one are counted as dropped, and the pipeline runs on.
    """

    kind = "jsonl"

    def __init__(self, stream=None, queue_size: int = 1000, on_error=None, name: str | None = None):
        self.stream = sys.stdout if stream is None else stream
        super().__init__(name or str(getattr(self.stream, "name", "stream")), queue_size=queue_size,
                         on_error=on_error)

    def _send(self, batch, timeout):
        try:
            for message in batch:
                self.stream.write(message.json().decode() + "\n")
                self.stream.flush()
        except (OSError, ValueError) as exc:  # BrokenPipeError, or a closed file
            with self._cond:
                self._dead = "the output is closed"
            try:  # what is still buffered goes nowhere, not into an error at exit (see Python's SIGPIPE notes)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stream.fileno())
                os.close(devnull)
            except (OSError, ValueError, AttributeError):
                pass
            raise _Failure(f"cannot write ({type(exc).__name__}), no more JSON lines", retry=False) from None


class Notifiers(list):
    """Notifiers that follow one engine, report together and close within one deadline."""

    def attach(self, engine):
        """Subscribe each to ``engine``'s events (see :func:`attach`); returns an unsubscriber."""
        return attach(engine, self)

    def stats(self) -> list[dict]:
        """Each notifier's counters, with its ``kind`` and ``target`` (the labels of ``/metrics``)."""
        return [{"kind": n.kind, "target": n.target, **n.stats()} for n in self]

    def close(self, timeout: float = 5.0) -> int:
        """Close every notifier, all within ``timeout`` s; returns the messages given up."""
        deadline = time.monotonic() + max(0.0, timeout)
        before = [n._begin_close(deadline) for n in self]
        return sum(n._finish_close(b) for n, b in zip(self, before, strict=True))


def attach(engine, notifiers):
    """Send ``engine``'s alert events to ``notifiers``; returns a function that stops it.

    Alerts already firing (an engine resumed from a checkpoint) are adopted,
    not sent again; Alertmanager gets them re-posted at once. Alerts the engine
    lets go without resolving them (a restart of the data) are resolved in
    Alertmanager at its next re-post.
    """
    stops = []
    for n in notifiers:
        n.engine = engine
        n.adopt(engine.firing)
        stops.append(engine.subscribe(n.notify))
    return lambda: [stop() for stop in stops]


# -- configuration ------------------------------------------------------------------------------------
_OPTIONS = {
    "alertmanager": {"url", "repeat", "generator_url", "timeout", "retries", "backoff", "max_backoff",
                     "queue_size", "name"},
    "webhook": {"url", "secret", "secret_env", "timeout", "retries", "backoff", "max_backoff", "queue_size",
                "name"},
}
_NUMBERS = {"repeat": (1.0, float), "timeout": (0.001, float), "backoff": (0.0, float), "max_backoff": (0.0, float),
            "retries": (0, int), "queue_size": (1, int)}


def notify_specs(options, environ=None) -> list[tuple[type, dict]]:
    """Check ``options`` (the ``notify:`` section, CLI flags laid over it) and return ``(class, kwargs)`` pairs.

    ``alertmanager`` and ``webhook`` each take a URL, a mapping with ``url``
    and the class's options, or a list of those; ``jsonl`` a boolean. A
    webhook's secret is its ``secret``, else the variable its ``secret_env``
    names, else :data:`SECRET_ENV` if set. Starts nothing; raises
    :class:`~sbg.errors.ConfigError` naming the bad value.
    """
    env = os.environ if environ is None else environ
    options = options or {}
    if not isinstance(options, dict):
        raise ConfigError(f"notify: expected a mapping with alertmanager, webhook or jsonl, got {options!r}")
    unknown = set(options) - {"alertmanager", "webhook", "jsonl"}
    if unknown:
        raise ConfigError(f"notify: unknown setting(s) {sorted(unknown)}; known: alertmanager, jsonl, webhook")
    specs, seen = [], set()
    for key, cls in (("alertmanager", AlertmanagerNotifier), ("webhook", WebhookNotifier)):
        value = options.get(key)
        for item in [] if value is None else value if isinstance(value, (list, tuple)) else [value]:
            kw = dict(item) if isinstance(item, dict) else {"url": item}
            bad = set(kw) - _OPTIONS[key]
            if bad:
                raise ConfigError(f"notify: {key}: unknown setting(s) {sorted(bad)}; "
                                  f"known: {', '.join(sorted(_OPTIONS[key]))}")
            kw["url"] = _check_url(kw.get("url"), key)
            for name, (low, kind) in _NUMBERS.items():
                v = kw.get(name)
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                      or not math.isfinite(v) or v < low or (kind is int and v != int(v))):
                    raise ConfigError(f"notify: {key} {kw['url']!r}: {name} must be a number of at least "
                                      f"{low}, not {v!r}")
            for name in ("secret", "secret_env", "name"):
                if kw.get(name) is not None and not isinstance(kw[name], str):
                    raise ConfigError(f"notify: {key} {kw['url']!r}: {name} must be text, not {kw[name]!r}")
            if kw.get("generator_url") is not None:
                kw["generator_url"] = _check_url(kw["generator_url"], "alertmanager generator_url")
            if key == "webhook":
                var = kw.pop("secret_env", None)
                if kw.get("secret") is None and var is not None:
                    if not env.get(var):
                        raise ConfigError(f"notify: webhook {kw['url']!r}: the environment variable {var} "
                                          "named by secret_env is not set")
                    kw["secret"] = env[var]
                if kw.get("secret") is None and env.get(SECRET_ENV):
                    kw["secret"] = env[SECRET_ENV]
            if (key, kw["url"]) not in seen:  # the same target in the file and on the command line: once
                seen.add((key, kw["url"]))
                specs.append((cls, kw))
    jsonl = options.get("jsonl", False)
    if not isinstance(jsonl, bool):
        raise ConfigError(f"notify: jsonl must be true or false, not {jsonl!r}")
    if jsonl:
        specs.append((JsonLinesNotifier, {}))
    return specs


def notifiers_from(options, on_error=None, environ=None) -> Notifiers:
    """The notifiers ``options`` asks for (see :func:`notify_specs`), started, as a :class:`Notifiers`."""
    return Notifiers(cls(**kw, on_error=on_error) for cls, kw in notify_specs(options, environ))
