"""Real JupyterLab (or Notebook 7) in a subprocess, and notebooks run in it from headless Chromium.

A new user opens a notebook in JupyterLab and runs every cell; so do these
helpers, with the parts a user has: the ``jupyter lab`` server of the
project's environment, its real kernel (this interpreter's ipykernel), the
pyviz_comms extension, and Debian's Chromium. Every request that does not go
to the local server is blocked, as on an air-gapped plant machine.

The notebooks run from a copy in a temporary folder, so the session's
autosaves never touch the committed ones; they find their data through
``sbg.io.datasets.DATA_DIR``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .served import ROOT, _stop_group, free_port, get

NOTEBOOK_DIR = ROOT / "notebooks"

#: Is every cell of the open notebook done, and the kernel idle? (JupyterLab's app, exposed in the page.)
NOTEBOOK_STATE = """() => {
  const app = window.jupyterapp;
  if (!app) return null;
  const panel = app.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext || !panel.content.model) return null;
  const session = panel.sessionContext.session;
  const cells = panel.content.model.toJSON().cells.filter(c => c.cell_type === "code");
  return {
    kernel: session && session.kernel ? session.kernel.status : "none",
    cells: cells.length,
    done: cells.filter(c => c.execution_count !== null).length,
    pending: panel.content.widgets.filter(w => w.model.type === "code" && w.promptNode
                                          && w.promptNode.textContent.includes("*")).length,
  };
}"""
#: The open notebook's cells as nbformat JSON, outputs included.
NOTEBOOK_JSON = "() => window.jupyterapp.shell.currentWidget.content.model.toJSON()"


class JupyterFailed(RuntimeError):
    """The server did not come up."""


@contextlib.contextmanager
def jupyter(log, root, app="lab"):
    """``jupyter lab`` (or ``jupyter notebook``) on a free loopback port over ``root``; yields ``(base, token)``.

    Its configuration, data and runtime folders are fresh ones under
    ``root``'s parent, so no user setting or kernelspec of this machine can
    change what the test sees; the extensions come from the environment.
    """
    root, log = Path(root), Path(log)
    home = root.parent / f"jupyter-{app}-home"
    for sub in ("config", "data", "runtime"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    port = free_port()
    cmd = [sys.executable, "-m", "jupyterlab" if app == "lab" else "notebook", "--no-browser",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True" if app == "lab" else "--JupyterNotebookApp.expose_app_in_browser=True",
           "--ServerApp.allow_root=True"]  # CI machines and containers run as root
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_PLATFORM_DIRS": "1",
           # the environment's own scripts first, as in an activated environment
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=root, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise JupyterFailed(f"jupyter {app} did not come up:\n" + log.read_text()[-4000:])
            try:
                if get(f"{base}/api/status?token={token}")[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        yield base, token
    finally:
        _stop_group(proc)


def copy_notebooks(folder) -> Path:
    """The project's notebooks copied into ``folder`` (a user's working copy)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for nb in NOTEBOOK_DIR.glob("*.ipynb"):
        shutil.copy(nb, folder / nb.name)
    return folder


def offline(page, base):
    """Block every request that does not go to ``base``; returns the list of blocked URLs."""
    blocked = []

    def route(r):
        if r.request.url.startswith(base):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.context.route("**/*", route)
    return blocked


def console_errors(page):
    """Errors the page logs or throws, as they come."""
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack or ''}"))
    return errors


#: Notebook 7.6's own frontend throws this while loading its settings, with any notebook (one holding
#: only ``print(1)`` too): not something a notebook can cause or fix.
NOTEBOOK7_OWN = ("Cannot read properties of undefined (reading 'schema')", "/static/notebook/notebook_core.")


def not_notebook7_own(errors):
    """``errors`` less the known error of Notebook 7's own code (:data:`NOTEBOOK7_OWN`)."""
    return [e for e in errors if not all(part in e for part in NOTEBOOK7_OWN)]


def wait_for(page, probe, test, timeout, what):
    """Poll ``probe`` (a script run in the page, or a function) until ``test(value)``.

    The bound is generous on purpose: it only ends a wait that would never
    end (a loaded machine just takes longer). The last value is in the error.
    """
    read = probe if callable(probe) else (lambda: page.evaluate(probe))
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = read()
        if test(value):
            return value
        page.wait_for_timeout(250)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {value!r}")


def shutdown_kernels(base, token):
    """Shut down every kernel of the server (a finished notebook's live replay must not slow the next)."""
    import json
    import urllib.request

    for kernel in json.loads(get(f"{base}/api/kernels?token={token}")[1]):
        request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
        with urllib.request.urlopen(request, timeout=60):
            pass


def run_all(page, base, token, name, app="lab", timeout=480):
    """Open notebook ``name``, run every cell as a user would (Run All), wait until all are done.

    In JupyterLab the notebook opens in a fresh workspace (``reset``), so the
    tabs of an earlier test are not restored beside it.
    """
    path = f"lab/workspaces/{name.removesuffix('.ipynb')}/tree" if app == "lab" else "notebooks"
    page.goto(f"{base}/{path}/{name}?token={token}" + ("&reset" if app == "lab" else ""))
    wait_for(page, NOTEBOOK_STATE, lambda s: s is not None and s["kernel"] == "idle", 180, "the kernel")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    state = wait_for(page, NOTEBOOK_STATE,
                     lambda s: s is not None and s["kernel"] == "idle" and s["pending"] == 0
                     and s["done"] == s["cells"], timeout, f"every cell of {name} to run")
    # The last outputs may still be on their way to the page's model: wait until they stop changing.
    size = "() => JSON.stringify(window.jupyterapp.shell.currentWidget.content.model.toJSON().cells).length"
    last = [None]

    def settled(n):
        same, last[0] = n == last[0], n
        return same

    wait_for(page, lambda: (page.wait_for_timeout(1000), page.evaluate(size))[1], settled, 120,
             f"the outputs of {name} to settle")
    return state


def outputs(page) -> list[dict]:
    """Every code cell of the open notebook: its source and outputs (nbformat)."""
    return [c for c in page.evaluate(NOTEBOOK_JSON)["cells"] if c["cell_type"] == "code"]


def tracebacks(cells) -> list[str]:
    """Each error output, and each stream output that holds a traceback, as text."""
    found = []
    for c in cells:
        for o in c.get("outputs", []):
            if o["output_type"] == "error":
                found.append("\n".join(o.get("traceback", [])))
            elif o["output_type"] == "stream" and "Traceback" in "".join(o.get("text", "")):
                found.append("".join(o["text"]))
    return found



def scroll_to(locator, attempts=20):
    """Scroll ``locator`` into view; live panes are redrawn often, so a detached element is tried again."""
    for _ in range(attempts):
        try:
            locator.evaluate("e => e.scrollIntoView({block: 'start'})", timeout=10_000)
            return
        except Exception as exc:  # playwright's Error: the element was replaced while being resolved
            last = exc
            time.sleep(0.2)
    raise last
