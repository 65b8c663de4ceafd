"""Every notebook in notebooks/ runs top to bottom in a real kernel, and is committed clean.

The kernel is this interpreter's ipykernel, from a kernelspec written for the
test run: a ``python3`` kernelspec elsewhere on the machine (a user's own,
pointing at another Python) can then never be picked instead. Notebooks run
with notebooks/ as the working directory and find their data through
``sbg.datasets.DATA_DIR``.
"""

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "sbg-test-python"
#: Seconds one notebook may take as a whole, and one cell of it (each should run in well under a minute).
NOTEBOOK_TIMEOUT = 300
CELL_TIMEOUT = 240

#: Outputs that show a notebook did its job, beyond running without an error:
#: for a code cell whose source contains the key, texts its outputs must contain
#: (output mime types count as text, so a rendered Panel object can be asked for).
EXPECTED = {
    "01_quickstart.ipynb": {
        "Source(DATA)": ["battery_id", "voltage_v"],
        "monitor.metrics": ["rows_in", "reconciles"],
        "dashboard = Dashboard(monitor)": ["application/vnd.holoviews_exec.v0+json", "sbg-kpis"],
        "monitor.alerts[": ["limit_breach", "stuck_sensor"],
        "pd.crosstab": ["flatline", "limits"],
        "live_dashboard = Dashboard(live)": ["application/vnd.holoviews_exec.v0+json"],
        "live.replay.pause()": ["'state': 'paused'"],
        'main(["replay"': ["FIRE", "reconciles", "yes"],
    },
    "02_tuning_detection.ipynb": {
        "evaluate(monitor.alerts": ["recall", "precision", "median delay"],
        "table = compare(": ["recall", "precision", "median_delay_s", "defaults", "false_alarm_rate",
                             "nab_standard"],
        "hv.Layout(": ["application/vnd.holoviews_exec.v0+json"],
    },
    "03_baseline_vs_live.ipynb": {
        "table = pd.concat": ["rolling detectors only", "with baseline", "recall", "precision"],
        "evaluate(monitor.alerts": ["recall 100%", "baseline_drift"],
        "scatter = hv.Overlay": ["application/vnd.holoviews_exec.v0+json"],
        "hv.Layout([drift_view": ["application/vnd.holoviews_exec.v0+json"],
        "ks_2samp(": ["KS distance in fault"],
    },
}


@pytest.fixture(scope="module")
def kernel_manager_class(tmp_path_factory):
    """A kernel manager that starts ipykernel in this very interpreter (the project's venv)."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    kernels = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(kernels / KERNEL_NAME)  # its argv starts with sys.executable

    class VenvKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _only_this_kernelspec(self):
            return KernelSpecManager(kernel_dirs=[str(kernels)])

    return VenvKernelManager


def execute(nb, kernel_manager_class):
    from nbclient import NotebookClient

    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL_NAME, kernel_manager_class=kernel_manager_class,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()
    return nb


def output_text(cell) -> str:
    """Everything a code cell showed, as one string: stream text, mime types and their data."""
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        for mime, data in out.get("data", {}).items():
            parts += [mime, data if isinstance(data, str) else str(data)]
        if out["output_type"] == "error":
            parts += [out["ename"], out["evalue"]]
    return "\n".join(parts)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.slow
def test_kernel_is_this_interpreter(kernel_manager_class):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys\nprint(sys.executable)")])
    execute(nb, kernel_manager_class)
    assert output_text(nb.cells[0]).strip() == sys.executable


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_manager_class):
    nb = execute(nbformat.read(path, as_version=4), kernel_manager_class)
    cells = code_cells(nb)
    errors = [c.source for c in cells if any(o["output_type"] == "error" for o in c.outputs)]
    assert not errors, f"{path.name}: cells raised errors"
    warned = [c.source for c in cells for o in c.outputs
              if o["output_type"] == "stream" and o["name"] == "stderr" and "Warning" in o["text"]]
    assert not warned, f"{path.name}: cells printed warnings: {warned}"
    assert all(c.execution_count for c in cells), f"{path.name}: not every cell ran"
    for marker, needles in EXPECTED.get(path.name, {}).items():
        matching = [c for c in cells if marker in c.source]
        assert matching, f"{path.name}: no code cell contains {marker!r} any more; update EXPECTED"
        shown = "\n".join(output_text(c) for c in matching)
        missing = [n for n in needles if n not in shown]
        assert not missing, f"{path.name}: the cell with {marker!r} did not show {missing}"


def test_expected_outputs_name_existing_notebooks():
    assert set(EXPECTED) <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [c.source.splitlines()[0] if c.source else "(empty cell)" for c in code_cells(nb)
             if c.outputs or c.execution_count is not None]
    assert not dirty, (f"{path.name} has outputs or execution counts in {dirty}; "
                       "clear them before committing")
