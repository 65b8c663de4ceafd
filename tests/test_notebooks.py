"""The notebooks are committed clean, and say what each must show once run.

They are run where users run them, in a real JupyterLab and Notebook 7 from
headless Chromium, offline (``tests/test_jupyterlab.py``); :data:`EXPECTED`
lists, per notebook, what its cells must show there.
"""

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

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
        '"sbg.cli", "replay"': ["FIRE", "reconciles", "yes", "exit code 0"],
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


def output_text(cell) -> str:
    """Everything a code cell showed, as one string: stream text, mime types and their data.

    Texts may be one string or a list of lines (nbformat allows both).
    """
    parts = []
    for out in cell.get("outputs", []):
        text = out.get("text", "")
        parts.append(text if isinstance(text, str) else "".join(text))
        for mime, data in out.get("data", {}).items():
            parts += [mime, data if isinstance(data, str) else "".join(data) if isinstance(data, list) else str(data)]
        if out["output_type"] == "error":
            parts += [out["ename"], out["evalue"]]
    return "\n".join(parts)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


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
