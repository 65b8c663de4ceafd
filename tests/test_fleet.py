"""Fleets by site: the hierarchy (columns or mapping file), the roll-up, and where it shows (status, report, CLI, UI)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sbg.cli import main
from sbg.errors import SourceError
from sbg.io.datasets import SITE_FAULTS, fleet_sites, write_fleet_sites
from sbg.io.hierarchy import (
    UNASSIGNED,
    Hierarchy,
    hierarchy_columns,
    load_hierarchy,
    rollup,
    worst_states,
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A small multi-site fleet on disk: 2 sites x 2 racks x 2 batteries, 1 h every 4 s."""
    out = tmp_path_factory.mktemp("fleet")
    data, mapping = write_fleet_sites(out, sites=2, racks=2, per_rack=2, hours=1.0, step_s=4)[0::2]
    return {"data": data, "mapping": mapping, "dir": out}


def _mapping(tmp_path, text, name="map.csv", raw=None):
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_mapping_file_places_entities(tmp_path):
    path = _mapping(tmp_path, "battery_id,site,rack,notes\nB1,north,R1,x\nB2, north ,R2,\n\nB3,south,,\n")
    h = load_hierarchy(path)
    assert h.group_of("B1") == ("north", "R1")
    assert h.group_of("B2") == ("north", "R2")  # spaces around names dropped
    assert h.group_of("B3") == ("south", UNASSIGNED)  # no rack given
    assert h.group_of("nope") == (UNASSIGNED, UNASSIGNED)
    assert h.levels == ("site", "rack") and h.source == str(path)
    site_only = load_hierarchy(_mapping(tmp_path, "entity,Site\na,S1\n", "s.csv"))
    assert site_only.levels == ("site",) and site_only.group_of("a") == ("S1", "")


@pytest.mark.parametrize("content, where, words", [
    ("battery_id,rack\nB1,R1\n", ":1", "no a site column"),
    ("site,rack\nS1,R1\n", ":1", "no an entity column"),
    ("entity,site,rack\nB1,S1\n", ":2:3", "2 fields, the header has 3"),
    ("entity,site,rack\nB1,S1,R1\n,S1,R1\n", ":3:1", "empty entity"),
    ("entity,site,rack\nB1,,R1\n", ":2:2", "empty site"),
    ("entity,site,rack\nB1,S1,R1\nB1,S2,R1\n", ":3:1", "mapped again, to another group (first on line 2)"),
    ("entity,site,rack\nB1,(unassigned),R1\n", ":2:2", "reserved"),
    ("entity,site,rack\nB1,S1,R1,extra\n", ":2:4", "4 fields"),
    ("entity,site\nB1,\"S1\n", ":2", "malformed CSV"),
    ("entity,site,rack\n", "", "no entity mapped"),
    ("", "", "empty mapping file"),
    ("entity,site\nB1," + "x" * 300 + "\n", ":2:2", "longer than 200"),
])
def test_hostile_mapping_files_name_file_line_and_column(tmp_path, content, where, words):
    path = _mapping(tmp_path, content)
    with pytest.raises(SourceError) as info:
        load_hierarchy(path)
    message = str(info.value)
    assert message.startswith(f"{path}{where}: "), message
    assert words in message


def test_binary_missing_and_non_utf8_mapping_files(tmp_path):
    with pytest.raises(SourceError, match="no such mapping file"):
        load_hierarchy(tmp_path / "missing.csv")
    with pytest.raises(SourceError, match="NUL bytes"):
        load_hierarchy(_mapping(tmp_path, None, raw=b"entity,site\x00\nB1,S1\n"))
    with pytest.raises(SourceError, match=r"map.csv:2: not UTF-8"):
        load_hierarchy(_mapping(tmp_path, None, raw=b"entity,site\nB1,S\xff1\n"))
    with pytest.raises(SourceError, match="is a directory"):
        load_hierarchy(tmp_path)


def test_the_same_entity_twice_in_the_same_group_is_fine(tmp_path):
    h = load_hierarchy(_mapping(tmp_path, "entity,site,rack\nB1,S1,R1\nB1,S1,R1\n"))
    assert h.groups == {"B1": ("S1", "R1")}


def test_hierarchy_from_columns_learns_as_rows_arrive():
    assert hierarchy_columns(["timestamp", "battery_id", "SITE", "String"]) == {"site": "SITE", "rack": "String"}
    assert hierarchy_columns(["timestamp", "battery_id", "rack"]) == {}  # a rack alone is no hierarchy
    h = Hierarchy(columns={"site": "site", "rack": "rack"}, source="columns site, rack")
    h.learn(pd.DataFrame({"entity": ["a", "b", "a", "c"], "site": ["S1", "S2", "S1", ""],
                          "rack": ["R1", None, "R2", "R1"]}))
    assert h.group_of("a") == ("S1", "R2")  # the newest row wins
    assert h.group_of("b") == ("S2", UNASSIGNED)
    assert h.group_of("c") == (UNASSIGNED, UNASSIGNED)  # no site: not placed


def test_rollup_worst_state_lowest_health_and_counts():
    h = Hierarchy({"a": ("S1", "R1"), "b": ("S1", "R1"), "c": ("S1", "R2"), "d": ("S2", "R1")})
    health = pd.DataFrame({"entity": ["a", "a", "b", "b", "c", "c", "d", "d", "x", "x"],
                           "signal": ["v", "t"] * 5,
                           "state": [0, 1, 0, 0, 3, 4, 0, 2, 0, 0]})
    states = worst_states(health)
    assert states.to_dict() == {"a": "warning", "b": "normal", "c": "stale", "d": "critical", "x": "normal"}
    scores = pd.Series({"a": 90.0, "b": 60.5, "c": np.nan, "d": 75.0})
    racks = rollup(states, scores, h)
    assert racks[["site", "rack"]].values.tolist() == [["S1", "R1"], ["S1", "R2"], ["S2", "R1"],
                                                       [UNASSIGNED, UNASSIGNED]]
    first = racks.iloc[0]
    assert (first["entities"], first["state"], first["warning"], first["normal"]) == (2, "warning", 1, 1)
    assert (first["lowest_health"], first["lowest_health_entity"]) == (60.5, "b")
    assert racks.iloc[1]["state"] == "stale" and np.isnan(racks.iloc[1]["lowest_health"])
    assert racks.iloc[3]["entities"] == 1  # x is not lost: it is unassigned
    sites = rollup(states, scores, h, level="site")
    assert sites[["site", "entities", "state", "lowest_health"]].head(2).values.tolist() == [
        ["S1", 3, "warning", 60.5], ["S2", 1, "critical", 75.0]]
    assert sites.iloc[2]["site"] == UNASSIGNED and np.isnan(sites.iloc[2]["lowest_health"])
    assert sites["entities"].sum() == len(states)


def test_generator_is_seeded_labelled_and_grouped():
    a = fleet_sites(seed=7, sites=2, racks=2, per_rack=3, hours=1.0, step_s=5)
    b = fleet_sites(seed=7, sites=2, racks=2, per_rack=3, hours=1.0, step_s=5)
    c = fleet_sites(seed=8, sites=2, racks=2, per_rack=3, hours=1.0, step_s=5)
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)
    assert not a[0].equals(c[0])
    data, labels, mapping = a
    assert list(data.columns) == ["timestamp", "battery_id", "site", "rack", "voltage_v", "current_a",
                                  "temperature_c", "soc_pct"]
    assert len(mapping) == 12 and mapping["battery_id"].is_unique
    assert sorted(data["site"].unique()) == ["S1", "S2"] and sorted(data["rack"].unique()) == ["R1", "R2"]
    placed = dict(zip(mapping["battery_id"], zip(mapping["site"], mapping["rack"], strict=True), strict=True))
    assert all(placed[e] == (s, r) for e, s, r in data[["battery_id", "site", "rack"]].drop_duplicates().values)
    assert list(labels.columns) == ["battery_id", "site", "rack", "start", "end", "fault"]
    assert len(labels) == 3 and set(labels["fault"]) <= set(SITE_FAULTS)  # a quarter of 12
    for rec in labels.to_dict("records"):
        rows = data[data["battery_id"] == rec["battery_id"]]
        assert rec["start"] < rec["end"] and placed[rec["battery_id"]] == (rec["site"], rec["rack"])
        span = rows[(rows["timestamp"] >= rec["start"]) & (rows["timestamp"] < rec["end"])]
        if rec["fault"] == "dropout":
            assert span.empty
        elif rec["fault"] == "stuck_sensor":
            assert span["temperature_c"].nunique() == 1
        elif rec["fault"] == "over_temperature":
            assert (span["temperature_c"] > 50).all()
    with pytest.raises(ValueError):
        fleet_sites(sites=0)


def test_monitor_status_groups_from_columns_and_flat_without(fleet, tmp_path):
    from sbg.stream.monitor import Monitor

    m = Monitor([fleet["data"]], speed="max")
    m.run_to_end()
    status = m.status()
    groups = status["groups"]
    assert groups["source"] == "columns site, rack" and groups["levels"] == ["site", "rack"]
    assert [s["site"] for s in groups["sites"]] == ["S1", "S2"]
    assert sum(s["entities"] for s in groups["sites"]) == 8 and groups["unassigned_count"] == 0
    scores = {r["entity"]: r["health"] for r in m.health_scores().to_dict("records")}
    s1 = groups["sites"][0]
    members = [e for e in scores if e.startswith("S1")]
    assert s1["lowest_health"] == round(min(scores[e] for e in members), 1)
    assert [r["rack"] for r in s1["racks"]] == ["R1", "R2"] and sum(r["entities"] for r in s1["racks"]) == 4
    m.close()
    # Without a hierarchy the status is as it was: no groups key.
    flat = tmp_path / "flat.csv"
    pd.read_csv(fleet["data"]).drop(columns=["site", "rack"]).to_csv(flat, index=False)
    m = Monitor([flat], speed="max")
    m.run_to_end()
    assert m.hierarchy is None and "groups" not in m.status() and m.groups() is None
    m.close()


def test_mapping_file_with_unassigned_entities_in_status_and_report(fleet, tmp_path):
    from sbg.stream.monitor import Monitor

    mapping = _mapping(tmp_path, "battery_id,site,rack\nS1R1-001,<b>North</b>,R1\nS1R1-002,<b>North</b>,R1\n")
    m = Monitor([fleet["data"]], speed="max", hierarchy=mapping)
    m.run_to_end()
    groups = m.status()["groups"]
    assert groups["source"] == str(mapping)
    assert [s["site"] for s in groups["sites"]] == ["<b>North</b>", UNASSIGNED]
    assert groups["unassigned_count"] == 6 and "S2R2-002" in groups["unassigned"]
    assert groups["sites"][1]["entities"] == 6
    html = m.report(tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="sites"' in html and "Fleet by site" in html
    assert "&lt;b&gt;North&lt;/b&gt;" in html and "<b>North</b>" not in html  # untrusted names stay text
    assert "6 entities not in the mapping" in html
    m.close()


def test_report_without_hierarchy_has_no_site_section(tmp_path):
    from sbg.io.datasets import DATA_DIR
    from sbg.stream.monitor import Monitor

    m = Monitor([DATA_DIR / "machine_monitor.csv"], speed="max")
    m.run_to_end()
    html = m.report(tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="sites"' not in html
    m.close()


def test_cli_replay_detect_and_bad_mapping(fleet, tmp_path, capsys):
    mapping = _mapping(tmp_path, "battery_id,site,rack\nS1R1-001,A,R1\n")
    assert main(["replay", str(fleet["data"]), "--quiet", "--no-color", "--hierarchy", str(mapping)]) == 0
    out = capsys.readouterr().out
    assert f"by site ({mapping})" in out and "7 entities not in the mapping, grouped as (unassigned)" in out
    summary = tmp_path / "s.json"
    assert main(["detect", str(fleet["data"]), "-o", str(tmp_path / "f.csv"), "--summary-json", str(summary)]) == 0
    groups = json.loads(summary.read_text())["groups"]
    assert groups["source"] == "columns site, rack" and len(groups["sites"]) == 2
    flagged = sum(s["rows_flagged"] for s in groups["sites"])
    assert flagged == json.loads(summary.read_text())["rows_flagged"]
    bad = _mapping(tmp_path, "battery_id,site\nB1\n", "bad.csv")
    assert main(["report", str(fleet["data"]), "-o", str(tmp_path / "r.html"), "--hierarchy", str(bad)]) == 3
    assert f"{bad}:2:2: 1 fields, the header has 2" in capsys.readouterr().err


def test_cli_data_fleet_writes_the_same_bytes_twice(tmp_path, capsys):
    for d in ("a", "b"):
        assert main(["data", "fleet", "--out", str(tmp_path / d), "--sites", "2", "--racks", "1", "--per-rack", "2",
                     "--hours", "0.75", "--step", "5"]) == 0
    for name in ("fleet_sites.csv.gz", "fleet_sites_labels.csv", "fleet_sites_mapping.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "4 batteries at 2 sites" in capsys.readouterr().out


def test_dashboard_groups_filters_and_patches(fleet):
    import holoviews as hv
    import panel as pn
    from bokeh.document import Document

    from sbg.stream.monitor import Monitor
    from sbg.ui.fleet import ALL_SITES
    from sbg.ui.health import HealthGrid
    from sbg.ui.session import Session

    hv.extension("bokeh")
    m = Monitor([fleet["data"]], speed="max", max_chunk_rows=64)
    session = Session(monitor=m)
    grid = HealthGrid(session=session)
    grid.__panel__().get_root(Document())
    replay = m.replay
    replay.scan()
    replay.state = "running"
    while replay.percent < 90 and replay.step():
        pass
    grid.refresh()
    assert grid.site_select.visible and grid.site_select.options == [ALL_SITES, "S1", "S2"]
    rows = grid._fleet_rows
    assert len(rows) == 8 and rows[0] == "S1 › R1 › S1R1-001" and rows[-1].startswith("S2 › R2")
    table = grid.rollup_table.value
    assert table[["site", "rack"]].values.tolist() == [["S1", "R1"], ["S1", "R2"], ["S2", "R1"], ["S2", "R2"]]
    assert table["n"].sum() == 8
    assert {"site", "rack"} <= set(grid.scores_table.value.columns)
    cds = grid.fleet_pane._plots and next(iter(grid.fleet_pane._plots.values()))[0].handles["cds"]
    drawn = cds.data
    replay.step()
    grid._fleet_drawn_at = 0.0
    grid.refresh()
    assert grid._fleet_rows == rows  # same rows: patched, not drawn anew
    assert next(iter(grid.fleet_pane._plots.values()))[0].handles["cds"] is cds and cds.data is drawn
    grid.site_select.value = "S2"
    assert len(grid._fleet_rows) == 4 and all(r.startswith("R") for r in grid._fleet_rows)
    assert set(grid.rollup_table.value["site"]) == {"S2"} and set(grid.scores_table.value["site"]) == {"S2"}
    session.close()
    m.close()
    pn.state.clear_caches()
