"""The Prometheus text exposition of sbg's counters, for ``sbg serve`` and ``sbg watch`` alike.

It imports neither Bokeh nor Tornado: ``sbg watch --port`` serves it from
the standard library's HTTP server.
"""

from __future__ import annotations

import os

__all__ = ["prometheus_text", "rss_bytes"]


def rss_bytes() -> int | None:
    """This process's resident memory (Linux), for operators watching the server's footprint."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _notifier_lines(notifiers) -> list[str]:
    """Deliveries of each notifier: sent, failed attempts, retries and drops, by kind and target."""
    notifiers = list(notifiers or [])
    if not notifiers:
        return []
    lines = []
    for key, doc in (("sent", "Alert notifications delivered."),
                     ("failed", "Alert notification attempts that failed."),
                     ("retried", "Alert notification attempts retried."),
                     ("dropped", "Alert notifications given up (queue full or retries exhausted).")):
        name = f"sbg_notifications_{key}_total"
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
        for n in notifiers:
            st = n.stats()
            lines.append(f'{name}{{kind="{_escape_label(n.kind)}",target="{_escape_label(n.target)}"}} '
                         f"{float(st[key]):.6g}")
    lines += ["# HELP sbg_notifications_queued Alert notifications waiting to be sent.",
              "# TYPE sbg_notifications_queued gauge"]
    for n in notifiers:
        lines.append(f'sbg_notifications_queued{{kind="{_escape_label(n.kind)}",target="{_escape_label(n.target)}"}} '
                     f"{float(n.stats()['queued']):.6g}")
    return lines


def _escape_label(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _gauge(name: str, doc: str, value) -> list[str]:
    """One process-wide gauge in the Prometheus text format: its help, its type and its value."""
    return [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {value}"]


def _health_lines(monitors) -> list[str]:
    """``sbg_health_score{entity=...}`` and one gauge per component, for every battery of every monitor.

    A score or component without data is left out (Prometheus has no "no data" value but absence).
    """
    tables = [(m, m.health_scores()) for m in monitors if hasattr(m, "health_scores")]
    tables = [(m, t) for m, t in tables if len(t)]
    if not tables:
        return []
    from ..battery.health import COMPONENTS

    gauges = [("sbg_health_score", "health", "Battery health score, 0-100 (sbg.battery.health).")]
    gauges += [(f"sbg_health_{name}_score", name, f"Health component: {title.lower()}, 0-100.")
               for name, title, _ in COMPONENTS]
    lines = []
    for full, column, doc in gauges:
        lines += [f"# HELP {full} {doc}", f"# TYPE {full} gauge"]
        for m, table in tables:
            source = _escape_label(m.source_key)
            for entity, value in zip(table["entity"], table[column], strict=True):
                if value == value:  # not NaN
                    lines.append(f'{full}{{source="{source}",entity="{_escape_label(entity)}"}} {float(value):.6g}')
    return lines


def prometheus_text(monitors, display: bool = False, notifiers=()) -> str:
    """Prometheus exposition (text format 0.0.4) of every monitor's counters.

    ``display`` adds the served dashboard's gauges (update pacing, sessions
    behind); ``notifiers`` the deliveries of each alert notifier.

    >>> prometheus_text([]).splitlines()[0]
    '# HELP sbg_rows_in_total Rows read from the sources.'
    """
    metrics = [
        ("rows_in", "counter", "Rows read from the sources."),
        ("rows_ok", "counter", "Rows that passed validation."),
        ("rows_quarantined", "counter", "Rows quarantined with line, raw text and reason."),
        ("analyses", "counter", "Chunks processed by the pipeline."),
        ("errors", "counter", "Exceptions caught in pipeline steps, sinks or views."),
        ("alerts_total", "counter", "Alerts raised."),
        ("alerts_firing", "gauge", "Alerts currently firing."),
        ("entities", "gauge", "Entities seen."),
        ("ingest_rate", "gauge", "Rows per second over the last seconds."),
        ("uptime_s", "gauge", "Seconds since the run started."),
        ("percent_done", "gauge", "Share of the data replayed, in percent."),
        ("sessions", "gauge", "Dashboard sessions subscribed to the monitor."),
    ]
    lines = []
    for name, kind, doc in metrics:
        full = f"sbg_{name}" + ("_total" if kind == "counter" and not name.endswith("_total") else "")
        lines.append(f"# HELP {full} {doc}")
        lines.append(f"# TYPE {full} {kind}")
        for m in monitors:
            d = m.metrics.as_dict()
            d["percent_done"] = m.replay.percent
            d["sessions"] = m.subscriber_count
            state = m.replay.state
            lines.append(f'{full}{{source="{_escape_label(m.source_key)}",state="{state}"}} {float(d[name]):.6g}')
    lines += _health_lines(monitors)
    rss = rss_bytes()
    if rss is not None:
        lines += _gauge("process_resident_memory_bytes", "Resident memory size in bytes.", rss)
    lines += _notifier_lines(notifiers)
    if not display:
        return "\n".join(lines) + "\n"
    from .pacing import PACER
    from .registry import sessions_behind

    pace = PACER.summary()
    lines += _gauge("sbg_display_stretch", "Factor the sessions' update periods are stretched by to keep the loop "
                    "on time.", f"{pace['stretch']:.6g}")
    lines += _gauge("sbg_loop_lag_p95_seconds", "95th percentile of the event loop's lag over the last probes.",
                    f"{pace['lag_p95_ms'] / 1000:.6g}")
    lines += _gauge("sbg_display_update_share", "Share of the event loop's time the sessions' updates took over "
                    "the last window.", f"{pace['update_share']:.6g}")
    lines += _gauge("sbg_sessions_behind", "Sessions whose updates wait for their browser to take the previous one.",
                    sessions_behind())
    return "\n".join(lines) + "\n"
