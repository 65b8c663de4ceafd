"""``sbg watch``: a headless monitor next to a logger, following its files as they grow.

It reads whole lines as they are appended (:mod:`sbg.io.follow`), scores
them, raises alerts, writes them with a checkpoint to the alert log, sends
them to the notifiers, and optionally answers ``/metrics``, ``/healthz`` and
``/readyz`` on a port. SIGTERM, SIGINT and SIGHUP stop it cleanly: the
replay stops between chunks, the alert log is committed and closed, the
notifiers get a few seconds to deliver what they hold, and the exit status
is 0. Started again with the same alert log, it carries on from the
checkpoint: no row is analysed twice and no alert is lost or repeated.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..stream.monitor import Monitor
from .exposition import prometheus_text

__all__ = ["Watch", "ProbeServer"]

log = logging.getLogger("sbg.watch")


class ProbeServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` of one watch, from a thread (standard library only).

    ``/healthz`` answers while the watch's loop has turned in the last
    ``stall`` seconds; ``/readyz`` once the monitor has read rows.
    """

    def __init__(self, watch: Watch, address: str = "127.0.0.1", port: int = 0, stall: float = 30.0):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (the standard library's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = prometheus_text([watch.monitor], notifiers=watch.notifiers).encode()
                    self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/healthz":
                    alive = time.monotonic() - watch.heartbeat < outer.stall
                    self._send(200 if alive else 503, b"ok\n" if alive else b"stalled\n")
                elif path == "/readyz":
                    ready = watch.monitor.metrics.rows_in > 0 and watch.monitor.replay.state == "running"
                    self._send(200 if ready else 503, b"ready\n" if ready else b"waiting\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, code, body, kind="text/plain; charset=utf-8"):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every few seconds: not worth a log line each
                pass

        self.stall = float(stall)
        self.httpd = ThreadingHTTPServer((address, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="sbg-probes", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Watch:
    """One headless monitor over followed files, its notifiers, and its stop.

    Parameters
    ----------
    monitor : Monitor
        Built with ``follow=True``.
    notifiers : list
        :mod:`sbg.alerts.notify` notifiers, subscribed to the monitor's alerts here.
    """

    def __init__(self, monitor: Monitor, notifiers=None):
        self.monitor = monitor
        self.notifiers = notifiers
        self.heartbeat = time.monotonic()
        self.stopping = False
        if notifiers:  # a resumed watch's firing alerts are adopted, not sent again
            from ..alerts.notify import attach

            attach(monitor.engine, notifiers)

    def stop(self, *_):
        """Ask the loop to stop (a signal handler): it does, between two chunks, never inside one."""
        self.stopping = True

    def run(self, on_tick=None) -> None:
        """Follow until :meth:`stop` (or a stop signal); then commit and close the log and flush the notifiers."""
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            def tick():  # between two steps of the replay: a chunk is never cut by the stop
                self.heartbeat = time.monotonic()
                if self.stopping:
                    self.monitor.replay.stop()
                    return
                if on_tick is not None:
                    on_tick()

            if not self.stopping:
                self.monitor.run_to_end(on_tick=tick)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close()

    def close(self, grace: float = 5.0) -> int:
        """Commit and close the alert log, then give the notifiers ``grace`` seconds; returns undelivered."""
        self.monitor.close()
        left = self.notifiers.close(timeout=grace) if self.notifiers else 0
        if left:
            log.warning("%d alert notifications were not delivered before the stop", left)
        return left


class JsonFormatter(logging.Formatter):
    """One JSON object per log record: time, level, logger, message (and the exception, if any)."""

    def format(self, record):
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(level: str = "info", fmt: str = "text", stream=None) -> None:
    """sbg's log to stderr: ``fmt`` ``json`` (one object per line, for a log shipper) or ``text``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger("sbg")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
