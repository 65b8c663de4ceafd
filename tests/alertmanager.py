"""Debian's Prometheus Alertmanager in a subprocess, on a free port, for the notification tests.

It runs ``deploy/alertmanager.yml`` (receivers without integrations: nothing leaves the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.served import free_port

BINARY = "/usr/bin/prometheus-alertmanager"
CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "alertmanager.yml"
MISSING = (f"{BINARY} is missing: install Debian's prometheus-alertmanager "
           "(`make test` installs it with apt-get: sudo apt-get install prometheus-alertmanager)")


def binary() -> str | None:
    return BINARY if os.access(BINARY, os.X_OK) else shutil.which("prometheus-alertmanager")


@contextlib.contextmanager
def alertmanager(workdir: Path, ready_within: float = 60.0):
    """Start Alertmanager in ``workdir``; yield its base URL once ``/-/ready`` answers; stop it after."""
    exe = binary()
    if exe is None:
        raise RuntimeError(MISSING)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "am.yml"
    config.write_text(CONFIG.read_text(encoding="utf-8"), encoding="utf-8")
    port = free_port()
    logfile = open(workdir / "alertmanager.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                             f"--storage.path={workdir}", f"--config.file={config}", "--log.level=warn"],
                            stdout=logfile, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited with {proc.returncode}: {_tail(workdir)}")
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"alertmanager not ready within {ready_within} s: {_tail(workdir)}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logfile.close()


def _tail(workdir: Path) -> str:
    try:
        return (workdir / "alertmanager.log").read_text(errors="replace")[-2000:]
    except OSError:
        return ""


def alerts(url: str, **matchers) -> list[dict]:
    """Alertmanager's alerts (active, silenced, inhibited and unprocessed; not resolved) matching the labels."""
    query = [("active", "true"), ("silenced", "true"), ("inhibited", "true"), ("unprocessed", "true")]
    query += [("filter", f'{k}="{v}"') for k, v in matchers.items()]
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{urllib.parse.urlencode(query)}", timeout=10) as r:
        return json.loads(r.read())
