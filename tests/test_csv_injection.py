"""Spreadsheet formula injection: no CSV sbg writes holds a cell a spreadsheet would run.

A hostile input (entity ids, a carried text column, a header and raw
quarantined lines that read as formulas) goes through ``sbg detect`` (flags
CSV, ``--quarantine``, ``--alerts-db``), :meth:`AlertLog.to_csv` and the
dashboard's "Alerts CSV"; each file is read back with the csv module. Parquet
output keeps the exact text.
"""

from __future__ import annotations

import csv
import io
import re

import pandas as pd
import pyarrow as pa
import pytest

from sbg.alerts.log import AlertLog
from sbg.cli import main
from sbg.io.csvsafe import DANGEROUS, neutralise_cell, neutralise_frame, neutralise_table
from sbg.stream.batch import read_dataset

#: Entity ids are read with their blanks stripped, so the tab-led text is in the carried column only.
ENTITIES = ['=HYPERLINK("http://x","click")', "+cmd|' /C calc'!A0", "@SUM(1)", "-2+3", "plain"]
NOTES = ["+cmd|' /C calc'!A0", "@SUM(1)", "-2+3", "-1.5", "\ttabbed", "=1+1", "fine"]
#: Raw lines the reader refuses (unparsable timestamps, a NUL byte): copied into the quarantine CSV.
BAD_LINES = ['=HYPERLINK("http://x","click"),plain,1.0,x', "+cmd|' /C calc'!A0,plain,1.0,x", "@SUM(1),plain,1.0,x",
             "-2+3,plain,1.0,x", "2024-01-01T00:00:30,pl\x00ain,1.0,x"]
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
CONFIG = "detectors:\n  limits: {limits: {v: [-10, 10]}}\nrules:\n" \
         "  - {name: hot, detectors: [limits], severity: critical, pending_rows: 1}\n"


@pytest.fixture
def hostile(tmp_path):
    """A long-format CSV whose text reads as formulas; every entity dips to -500 once (an alert each)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["timestamp", "device", "v", "=note"])
    for i in range(40):
        for j, e in enumerate(ENTITIES):
            v = -500.0 if i == 20 else (-1.5 if (i + j) % 3 == 0 else 1.0 + i / 100)
            w.writerow([f"2024-01-01T00:00:{i:02d}", e, v, NOTES[(i + j) % len(NOTES)]])
    lines = buf.getvalue().splitlines()
    for k, bad in enumerate(BAD_LINES):  # among the valid rows, not at their end
        lines.insert(10 + 5 * k, bad)
    path = tmp_path / "hostile.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(CONFIG)
    return path


def detect(path, out, *extra):
    args = ["detect", str(path), "-o", str(out), "--entity", "device", "--signals", "v",
            "--config", str(path.parent / "rules.yaml"), *map(str, extra)]
    assert main(args) == 0


def cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def assert_safe(rows: list[list[str]]):
    """No cell starts with a formula character, unless it is a plain number."""
    risky = [c for row in rows for c in row if c.startswith(DANGEROUS) and not PLAIN_NUMBER.fullmatch(c)]
    assert risky == []


def column(rows, name):
    i = rows[0].index(name)
    return [r[i] for r in rows[1:]]


def test_detect_csv_and_quarantine_neutralise_formulas(hostile, tmp_path):
    out, q = tmp_path / "flags.csv", tmp_path / "q.csv"
    detect(hostile, out, "--quarantine", q)
    rows = cells(out.read_text(encoding="utf-8"))
    assert_safe(rows)
    assert rows[0][:4] == ["timestamp", "device", "v", "'=note"]
    assert set(column(rows, "device")) == {"'" + e if e != "plain" else e for e in ENTITIES}
    assert set(column(rows, "'=note")) == {"'" + n if n not in ("-1.5", "fine") else n for n in NOTES}
    values = column(rows, "v")
    assert "-1.5" in values and "-500" in values  # numbers keep their sign

    raw = q.read_bytes()
    assert b"\x00" not in raw
    qrows = cells(raw.decode("utf-8"))
    assert_safe(qrows)
    assert qrows[0] == ["line", "raw", "reason"]
    assert column(qrows, "raw") == ["'" + b for b in BAD_LINES[:4]] + [BAD_LINES[4].replace("\x00", "\\x00")]


def test_alert_log_csv_and_dashboard_export_neutralise_formulas(hostile, tmp_path):
    from sbg.ui.export import alerts_csv

    db = tmp_path / "alerts.sqlite"
    detect(hostile, tmp_path / "flags.csv", "--alerts-db", db)
    log = AlertLog(db)
    try:
        log.to_csv(tmp_path / "alerts.csv")
        alerts = log.read()
    finally:
        log.close()
    assert set(alerts["entity"]) >= {'=HYPERLINK("http://x","click")', "@SUM(1)", "-2+3"}
    # The dashboard's "Alerts CSV" button (Export.alerts_csv), on the same alerts.
    exported = alerts_csv(alerts).getvalue()
    for text in (tmp_path / "alerts.csv").read_text(encoding="utf-8"), exported:
        rows = cells(text)
        assert_safe(rows)
        assert {"'=HYPERLINK(\"http://x\",\"click\")", "'@SUM(1)", "'-2+3"} <= set(column(rows, "entity"))
        assert set(column(rows, "peak")) == {"-500.0"}
        assert len(rows) - 1 == len(alerts)


def test_parquet_output_keeps_the_exact_text(hostile, tmp_path):
    out = tmp_path / "flags.parquet"
    detect(hostile, out)
    table = read_dataset(out)
    assert "=note" in table.column_names
    assert set(table.column("device").to_pylist()) == set(ENTITIES)
    assert set(table.column("=note").to_pylist()) == set(NOTES)


def test_the_rule_is_the_same_for_cells_frames_and_tables():
    values = ["=1+1", "+1+1", "-1+1", "@A1", "\tx", "\rx", "-1.5", "+3", "-2e-3", ".5", "-", "-inf", "a=b", "'=x",
              "", None]
    expect = ["'=1+1", "'+1+1", "'-1+1", "'@A1", "'\tx", "'\rx", "-1.5", "+3", "-2e-3", ".5", "'-", "'-inf", "a=b",
              "'=x", "", None]
    assert [neutralise_cell(v) for v in values] == expect
    table = neutralise_table(pa.table({"=h": pa.array(values, pa.string()), "n": pa.array(range(len(values)))}))
    assert table.column_names == ["'=h", "n"] and table.column("'=h").to_pylist() == expect
    frame = neutralise_frame(pd.DataFrame({"@h": values, "x": -1.5}))
    assert list(frame.columns) == ["'@h", "x"] and frame["'@h"].tolist()[:-1] == expect[:-1]
    assert pd.isna(frame["'@h"].iloc[-1])
    assert frame["x"].tolist() == [-1.5] * len(values)  # numbers untouched
