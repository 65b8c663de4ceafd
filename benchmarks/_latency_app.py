"""The dashboard app of ``benchmarks/latency.py``: sbg's served app plus an emit log.

Served by real ``panel serve`` exactly like ``apps/monitor.py``; the only
addition is one more subscriber on the shared monitor that writes, for every
chunk the monitor emits, the wall-clock time (ms since the epoch) and the
chunk's last timestamp per entity to ``SBG_BENCH_EMITS``.
"""

import json
import os
import time

import panel as pn

from sbg.serve.registry import default_monitor as _default_monitor
from sbg.ui.dashboard import Dashboard

pn.extension("tabulator", notifications=True)

monitor = _default_monitor()
if not getattr(monitor, "_bench_emit_log", None):
    log = open(os.environ["SBG_BENCH_EMITS"], "a", buffering=1, encoding="utf-8")

    # Names bound as defaults: Bokeh clears a session's app module when that session ends (one that
    # never connected in time does), and this subscriber outlives the session that made it.
    def on_chunk(chunk, time=time, json=json, log=log):
        wall = time.time() * 1000.0
        last = chunk.groupby(chunk["entity"].astype(str), observed=True)["timestamp"].max()
        log.write(json.dumps([wall, len(chunk), {e: t.value / 1e6 for e, t in last.items()}]) + "\n")

    monitor._bench_emit_log = log
    monitor.subscribe(on_chunk)

Dashboard(monitor=monitor).servable()
