"""``sbg evaluate`` reads back what ``sbg detect`` wrote, spreadsheet-safe quotes and all.

The flags CSV neutralises text a spreadsheet would run (``-cell7`` is
written ``'-cell7``, see :mod:`sbg.io.csvsafe`); the labels file, written by
people, says ``-cell7``. Scoring the CSV must give what scoring the Parquet
dataset (exact text) gives: every window found, none "not in the run".
"""

from __future__ import annotations

import json

from sbg.cli import main

IDS = ["-cell7", "=cell8", "+cell9", "@cell10", "cell11"]


def test_neutralised_entity_ids_match_the_labels(tmp_path, capsys):
    rows = ["timestamp,cell_id,voltage"]
    for i in range(120):
        for k, cell in enumerate(IDS):
            v = 9.0 if i == 60 + k else 3.7 + 0.001 * ((i * 7 + k) % 5)
            rows.append(f"2024-01-01T00:{i // 60:02d}:{i % 60:02d},{cell},{v}")
    data = tmp_path / "cells.csv"
    data.write_text("\n".join(rows) + "\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("cell_id,start,end\n" + "".join(
        f"{cell},2024-01-01T00:00:55,2024-01-01T00:01:10\n" for cell in IDS))
    figures = {}
    for out in ("flags.csv", "flags.parquet"):
        assert main(["detect", str(data), "-o", str(tmp_path / out)]) == 0
        capsys.readouterr()
        assert main(["evaluate", str(tmp_path / out), "--labels", str(labels), "--json", str(tmp_path / f"{out}.json")]) == 0
        assert capsys.readouterr().err == ""  # no window "for entities not in" the flags, none without rows
        figures[out] = json.loads((tmp_path / f"{out}.json").read_text())
    assert "'-cell7" in (tmp_path / "flags.csv").read_text()  # the CSV does hold the quoted ids
    assert figures["flags.csv"] == figures["flags.parquet"]
    assert figures["flags.csv"]["events"]["labels"] == len(IDS)
    assert figures["flags.csv"]["events"]["recall"] == 1.0
