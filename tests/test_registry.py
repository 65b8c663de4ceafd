"""The served process's registry: one monitor per source, made with what ``sbg serve`` was given."""

from __future__ import annotations

import shutil

import pytest

from sbg.io.datasets import DATA_DIR
from sbg.serve import registry
from sbg.serve.registry import ServeConfig


@pytest.fixture()
def served_env(tmp_path, monkeypatch):
    """A data directory and the environment ``sbg serve`` hands its child: settings, alert log, loop."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DATA_DIR / "machine_monitor.csv", data / "first.csv")
    shutil.copy(DATA_DIR / "machine_monitor.csv", data / "second.csv")
    config = tmp_path / "sbg.yaml"
    config.write_text("detectors:\n  zscore: {threshold: 7.5}\n")
    db = tmp_path / "alerts.db"
    env = {"SBG_DATA_DIR": str(data), "SBG_FILES": "first.csv", "SBG_CONFIG": str(config),
           "SBG_ALERTS_DB": str(db), "SBG_LOOP": "1", "SBG_SPEED": "10x"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = set(registry.monitors())
    yield data, config, db
    for key in set(registry.monitors()) - before:
        registry.monitors().pop(key).close()


def _zscore_threshold(monitor):
    return next(d.threshold for d in monitor.pipeline.detectors if d.label == "zscore")


def test_serve_config_reads_what_sbg_serve_hands_its_child(served_env):
    data, config, db = served_env
    serve = ServeConfig.from_env()
    assert (serve.data_dir, serve.files, serve.config, serve.alerts_db) == (str(data), ["first.csv"], str(config), str(db))
    assert serve.loop and serve.speed == "10x" and not serve.autostart
    assert ServeConfig.from_env({}).data_root() == DATA_DIR


def test_switching_the_source_in_the_page_keeps_the_settings_alert_log_and_loop(served_env):
    """The source picker used to make its monitor without --config, --alerts-db or --loop."""
    from sbg.ui.dashboard import Dashboard

    data, config, db = served_env
    view = Dashboard()
    try:
        first = view.monitor
        assert first.paths[0].name == "first.csv"
        view.sources.items()  # laid out in the sidebar, as a page does
        view.sources.source_select.value = "second.csv"
        second = view.monitor
        assert second is not first and second.paths[0].name == "second.csv"
        for m in (first, second):
            assert _zscore_threshold(m) == 7.5
            assert m.log is not None and str(m.log.path) == str(db)
            assert m.replay.loop
        # One monitor per source: a second page choosing it shares it.
        assert registry.monitor_for([data / "second.csv"]) is second
    finally:
        view.close()


def test_data_files_lists_data_but_not_labels_and_refuses_paths_out(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.csv", "b_labels.csv", "sub/c.parquet", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert registry.data_files(tmp_path) == ["a.csv", "sub/c.parquet"]
    for bad in ("../a.csv", str(tmp_path / "a.csv"), "", "sub"):
        with pytest.raises(registry.SbgError):
            registry.resolve_data_file(bad, tmp_path)
