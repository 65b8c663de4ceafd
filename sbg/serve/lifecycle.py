"""The served process's start and end: a headless start, readiness, and a clean shutdown.

``sbg serve`` runs ``panel serve`` with ``--setup sbg/ui/apps/setup.py``,
which calls :func:`prepare` once, before the server takes requests:

* with ``--autostart``, the first monitor is created and its replay started
  as soon as the server's event loop turns, with no page and no request:
  a Prometheus server that scrapes only ``/metrics`` sees the counters move;
* at exit (Bokeh stops the loop on SIGTERM or Ctrl-C, then runs the exit
  hooks), every monitor stops its replay and commits and closes its alert
  log, so a service manager's stop loses no alert.
"""

from __future__ import annotations

import atexit
import logging
import os

from .registry import ServeConfig, close_monitor, default_monitor, monitors

__all__ = ["prepare", "close_all", "readiness"]

log = logging.getLogger("sbg.serve")
_PREPARED = False


def prepare(serve: ServeConfig | None = None) -> None:
    """Arrange the headless start (``--autostart``) and the clean end of this server process; once."""
    global _PREPARED
    if _PREPARED:
        return
    _PREPARED = True
    serve = serve or ServeConfig.from_env()
    if os.environ.get("SBG_LOG_FORMAT"):  # sbg serve --log-format/--log-level: sbg's own log on stderr
        from .watch import configure_logging

        configure_logging(os.environ.get("SBG_LOG_LEVEL", "info"), os.environ["SBG_LOG_FORMAT"])
    atexit.register(close_all)
    if serve.autostart:
        from tornado.ioloop import IOLoop

        IOLoop.current().add_callback(_start, serve)


def _start(serve: ServeConfig) -> None:
    try:
        monitor = default_monitor(serve)
    except Exception as exc:  # noqa: BLE001  (the page and /readyz say what is wrong; the server stays up)
        log.error("autostart failed: %s", exc)
        return
    log.info("autostart: replaying %s", ", ".join(p.name for p in monitor.paths))


def close_all() -> None:
    """Stop every monitor of this process and commit and close its alert log (idempotent)."""
    for key, monitor in list(monitors().items()):
        try:
            close_monitor(monitor)
        except Exception as exc:  # noqa: BLE001  (one failing log must not keep the others open)
            log.error("closing %s: %s", getattr(monitor, "source_key", key), exc)


def readiness(found=None) -> tuple[bool, str]:
    """``(ready, word)``: ready once a monitor (of this process, or ``found``) is running and has read data.

    >>> readiness([])
    (False, 'starting')
    """
    found = list(monitors().values()) if found is None else list(found)
    if not found:
        return False, "starting"
    for monitor in found:
        if monitor.metrics.rows_in > 0 and monitor.replay.state in ("running", "finished", "paused"):
            return True, "ready"
    if any(m.replay.state == "stopped" for m in found):
        return False, "stopped"
    return False, "waiting"
