"""Input sets: files, globs and directories expanded into one ordered list of data files, opened together.

``expand_inputs`` decides which files a command reads and in which order;
``open_inputs`` opens them, refusing files whose schema differs; ``source_name``
names the run; ``FileOrder`` refuses an entity going back in time from one
file to the next. Each error is one line naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sbg.errors import SbgError, SourceError
from sbg.io.inputs import DATA_SUFFIXES, FileOrder, expand_inputs, open_inputs, source_name

ROW = "2024-01-01T00:00:00,a,1\n"


def data_file(root: Path, rel: str, text: str = "time,id,v\n" + ROW) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def names(paths, root):
    return [p.relative_to(root).as_posix() for p in paths]


@pytest.fixture
def tree(tmp_path):
    """A folder of data files, in no particular creation order, with files and folders to leave out."""
    for rel in ("day2.csv", "day10.csv", "day1.csv", "UPPER.CSV", "gz.csv.gz", "tab.tsv", "log.txt", "set.parquet",
                "sub/x.csv", "sub/deeper/y.pq",
                # left out: not data, hidden, or under a hidden or underscore folder (a dataset's scratch)
                "notes.json", "README", ".hidden.csv", "_partial.csv", ".git/z.csv", "_sbg_tmp/part-00000.csv"):
        data_file(tmp_path, rel)
    return tmp_path


# ----------------------------------------------------------------------------- expand_inputs


def test_a_directory_gives_its_data_files_in_sorted_order(tree):
    assert names(expand_inputs([tree]), tree) == [
        "UPPER.CSV", "day1.csv", "day10.csv", "day2.csv", "gz.csv.gz", "log.txt", "set.parquet",
        "sub/deeper/y.pq", "sub/x.csv", "tab.tsv"]
    assert set(DATA_SUFFIXES) == {".csv", ".csv.gz", ".tsv", ".txt", ".parquet", ".pq", ".mpr", ".nda", ".ndax"}


def test_a_glob_gives_its_matches_in_sorted_order(tree):
    assert names(expand_inputs([str(tree / "day*.csv")]), tree) == ["day1.csv", "day10.csv", "day2.csv"]
    assert names(expand_inputs([str(tree / "day[12].csv")]), tree) == ["day1.csv", "day2.csv"]
    assert names(expand_inputs([str(tree / "*")]), tree) == [
        "UPPER.CSV", "day1.csv", "day10.csv", "day2.csv", "gz.csv.gz", "log.txt", "set.parquet", "tab.tsv"]
    # ``**`` recurses (into visible folders, not into a scratch folder unless the pattern names it).
    assert names(expand_inputs([str(tree / "**" / "*.csv")]), tree) == ["day1.csv", "day10.csv", "day2.csv",
                                                                          "sub/x.csv"]
    assert names(expand_inputs([str(tree / "_sbg_tmp" / "*.csv")]), tree) == ["_sbg_tmp/part-00000.csv"]


def test_a_recursive_glob_skips_what_a_directory_skips(tree):
    from_glob = expand_inputs([str(tree / "**" / "*")])
    from_dir = expand_inputs([tree])
    assert names(from_glob, tree) == names(from_dir, tree)


def test_specs_keep_their_order_and_a_file_named_twice_is_read_once(tree, monkeypatch):
    specs = [tree / "sub" / "x.csv", str(tree / "day*.csv"), tree / "day1.csv", tree / "sub" / ".." / "day2.csv",
             str(tree / "sub")]
    assert names(expand_inputs(specs), tree) == ["sub/x.csv", "day1.csv", "day10.csv", "day2.csv",
                                                 "sub/deeper/y.pq"]
    link = tree / "link.csv"
    os.symlink(tree / "day1.csv", link)
    assert expand_inputs([tree / "day1.csv", link]) == [tree / "day1.csv"]  # the same file under two names
    # Kept as given: a relative path stays relative.
    monkeypatch.chdir(tree)
    assert expand_inputs(["day1.csv", "./day1.csv"]) == [Path("day1.csv")]


def test_a_single_spec_need_not_be_a_list(tree):
    assert expand_inputs(str(tree / "day1.csv")) == [tree / "day1.csv"]
    assert expand_inputs(tree / "sub") == [tree / "sub" / "deeper" / "y.pq", tree / "sub" / "x.csv"]


def test_names_with_odd_characters_are_taken_literally(tmp_path):
    odd = ["data[1].csv", "a*b.csv", "what?.csv", "space and é.csv", "semi;colon,comma.csv", "-dash.csv"]
    for name in odd:
        data_file(tmp_path, name)
    for name in odd:
        assert expand_inputs([str(tmp_path / name)]) == [tmp_path / name], name
    # The same characters as a pattern, where no file has that name.
    with pytest.raises(SbgError, match=r"data\[0-9\]\.csv: the pattern matches nothing"):
        expand_inputs([str(tmp_path / "data[0-9].csv")])
    sources = open_inputs(expand_inputs([tmp_path]))
    assert sorted(s.name for s in sources) == sorted(n.removesuffix(".csv") for n in odd)


@pytest.mark.parametrize(("spec", "error", "message"), [
    ("nothing*.csv", SbgError, "{root}/nothing*.csv: the pattern matches nothing"),
    ("*.json", SbgError, "{root}/*.json: the pattern matches no data file (.csv, .csv.gz, .parquet, a cycler file)"),
    ("empty", SourceError, "{root}/empty: directory holds no data files (.csv, .csv.gz, .parquet, cycler files)"),
    ("only_hidden", SourceError, "{root}/only_hidden: directory holds no data files (.csv, .csv.gz, .parquet, cycler files)"),
])
def test_an_empty_expansion_is_an_error_naming_the_spec(tmp_path, spec, error, message):
    data_file(tmp_path, "notes.json", "{}")
    (tmp_path / "empty").mkdir()
    data_file(tmp_path, "only_hidden/.x.csv")
    data_file(tmp_path, "only_hidden/_y/z.csv")
    with pytest.raises(error) as info:
        expand_inputs([str(tmp_path / spec)])
    assert str(info.value) == message.format(root=tmp_path)


def test_no_spec_at_all_is_an_error():
    with pytest.raises(SbgError, match="^no data file given$"):
        expand_inputs([])


def test_a_missing_file_is_named_when_opened(tmp_path):
    missing = tmp_path / "gone.csv"
    assert expand_inputs([missing]) == [missing]  # a path is taken as given ...
    with pytest.raises(SourceError) as info:
        open_inputs([missing])  # ... and refused, by name, once it is read
    assert str(info.value) == f"{missing}: no such file" and info.value.exit_code == 3


def test_a_named_pipe_is_refused_at_once(tmp_path):
    pipe = tmp_path / "feed.csv"
    os.mkfifo(pipe)
    with pytest.raises(SourceError) as info:
        expand_inputs([pipe])
    assert str(info.value) == f"{pipe}: not a regular file: a named pipe"


# ----------------------------------------------------------------------------- open_inputs, source_name


def test_open_inputs_refuses_a_schema_that_differs_from_the_first(tmp_path):
    first = data_file(tmp_path, "a.csv", "time,id,v\n" + ROW)
    other = data_file(tmp_path, "b.csv", "time,id,w\n" + ROW)
    wide = data_file(tmp_path, "c.csv", "time,v\n2024-01-01T00:00:00,1\n")
    with pytest.raises(SourceError) as info:
        open_inputs([first, other])
    assert str(info.value) == f"{other}: has a different schema from {first}: signals ['w'], not ['v']"
    with pytest.raises(SourceError) as info:
        open_inputs([first, wide])
    assert str(info.value) == f"{wide}: has a different schema from {first}: entity None, not 'id'"


def test_open_inputs_passes_schema_options_to_every_file(tmp_path):
    a = data_file(tmp_path, "a.csv", "when;unit;v;w\n2024-01-01T00:00:00;x;1;2\n")
    b = data_file(tmp_path, "b.csv", "when;unit;v;w\n2024-01-01T00:00:01;x;1;2\n")
    sources = open_inputs([a, b], delimiter=";", time="when", entity="unit", signals=["w"])
    for src in sources:
        assert (src.schema.time, src.schema.entity, src.schema.signals, src.schema.delimiter) == (
            "when", "unit", ("w",), ";")


def test_source_name_joins_the_names_and_shortens_a_long_list(tmp_path):
    paths = [data_file(tmp_path, f"run_{i:03d}.csv") for i in range(40)]
    assert source_name(open_inputs(paths[:3])) == "run_000+run_001+run_002"
    long = source_name(open_inputs(paths))
    assert long.startswith("run_000+...+run_039 (40 files, ") and long.endswith(")") and len(long) < 60
    assert long != source_name(open_inputs(paths[:39] + [data_file(tmp_path, "run_999.csv")]))
    assert long == source_name(open_inputs(paths))  # stable


# ----------------------------------------------------------------------------- FileOrder


def ns(*times):
    return pd.to_datetime(list(times)).to_numpy(dtype="datetime64[ns]").view("int64")


def test_file_order_accepts_files_in_time_order_per_entity():
    order = FileOrder()
    order.start("a.csv")
    order.update(np.array(["x", "y"], dtype=object), ns("2024-01-01 00:00", "2024-01-01 05:00"))
    order.update(np.array([], dtype=object), ns())  # an empty piece is nothing
    order.start("b.csv")
    # y may start before a.csv's last row of x: only an entity's own rows must not go back.
    order.update(np.array(["x", "y", "z"], dtype=object), ns("2024-01-01 00:00", "2024-01-01 05:00",
                                                             "2023-01-01 00:00"))


def test_file_order_names_the_entity_and_both_files():
    order = FileOrder()
    order.start("a.csv")
    order.update(np.array(["x"], dtype=object), ns("2024-01-01 00:00"))
    order.update(np.array(["x"], dtype=object), ns("2024-01-01 01:00"))  # a second piece of the same file
    order.start("b.csv")
    order.update(np.array(["x"], dtype=object), ns("2024-01-01 01:00"))
    order.start("c.csv")
    with pytest.raises(SourceError) as info:
        order.update(np.array(["x"], dtype=object), ns("2024-01-01 00:30"))
    assert str(info.value) == ("c.csv: entity 'x' starts at 2024-01-01 00:30:00, before b.csv ends "
                               "(2024-01-01 01:00:00); an entity's files must be given in time order")
