"""The ``sbg`` command line, run as a user would: in subprocesses.

Each ``sbg`` process pays for importing the engine, so independent runs are
started together from a thread pool; the test data is small and generated
here (seeded), never read from ``data/``. A few tests call ``main()`` in
this process, to see with ``capsys`` exactly what goes to stdout and stderr.
"""

from __future__ import annotations

import concurrent.futures
import csv
import gzip
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SBG = [sys.executable, "-m", "sbg.cli"]
ENV = {**os.environ, "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
ENV.pop("PYTHONWARNINGS", None)
WORKERS = max(2, min(4, os.cpu_count() or 2))


def run(*args, cwd=None, timeout=300):
    return subprocess.run([*SBG, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=ENV,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def run_many(arg_lists, cwd=None):
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda a: run(*a, cwd=cwd), arg_lists))


def no_traceback(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


def one_error_line(proc):
    """stderr is exactly one line, ``sbg: error: ...``; returns it."""
    no_traceback(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sbg: error: "), proc.stderr
    return lines[0]


# ----------------------------------------------------------------------------- test data

N_PER_ENTITY = 200
ENTITIES = ("bat-1", "bat-2", "bat-3")


def _telemetry(path):
    """Three batteries, 1 Hz, with spikes, an over-temperature episode and bad rows.

    Returns the 1-based line numbers of the bad rows and their expected reasons.
    """
    rng = np.random.default_rng(20240101)
    frames = []
    for k, ent in enumerate(ENTITIES):
        t = pd.date_range("2024-01-01", periods=N_PER_ENTITY, freq="s")
        v = 3.7 + 0.01 * rng.standard_normal(N_PER_ENTITY)
        c = 25 + 0.1 * rng.standard_normal(N_PER_ENTITY)
        v[60 + k] += 0.8  # spike
        c[120 + 5 * k: 132 + 5 * k] += 40  # sustained over-temperature: a critical alert
        frames.append(pd.DataFrame({"timestamp": t.strftime("%Y-%m-%dT%H:%M:%S"), "battery_id": ent,
                                    "voltage": v.round(4), "temp_c": c.round(3),
                                    "status": np.where(rng.random(N_PER_ENTITY) < 0.05, "charging, CC", "idle")}))
    df = pd.concat(frames).sort_values(["timestamp", "battery_id"], kind="stable")
    text = df.to_csv(index=False, lineterminator="\n")
    lines = text.splitlines()
    bad = {  # index in lines (0 = header) -> (row, reason prefix)
        40: ("garbage,bat-1,3.7,25.0,idle", "column 1 'timestamp': unparsable timestamp 'garbage'"),
        90: ("2024-01-01T00:00:29,bat-2,3.7,25.0", "expected 5 fields, found 4"),
        150: ("2024-01-01T00:00:50,bat-3,x,25.0,idle", "column 3 'voltage': 'x' is not a number"),
        300: ("2024-01-01T00:01:40,bat-1,3.7,inf,idle", "column 4 'temp_c': infinite value"),
        450: ("2024-01-01T00:00:01,bat-2,3.7,25.0,idle", "timestamp goes backwards for entity 'bat-2'"),
    }
    for index in sorted(bad):  # ascending, so each row lands at its index
        lines.insert(index, bad[index][0])
    dup_at = 520
    lines.insert(dup_at, lines[dup_at - 1])
    bad[dup_at] = (lines[dup_at], "exact duplicate of an earlier row")
    path.write_text("\n".join(lines) + "\n")
    # Line numbers are 1-based with the header as line 1.
    return {index + 1: reason for index, (_, reason) in bad.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tele = root / "telemetry.csv"
    bad_lines = _telemetry(tele)
    (root / "empty.csv").write_bytes(b"")
    (root / "header.csv").write_text("timestamp,battery_id,voltage\n")
    (root / "nots.csv").write_text("a,b\nx,1\ny,2\nz,3\n")
    (root / "nonum.csv").write_text("timestamp,battery_id,state\n2024-01-01,a,ok\n2024-01-02,a,ok\n")
    (root / "latin1.csv").write_bytes("timestamp,battery_id,température\n2024-01-01,a,1\n2024-01-02,a,2\n".encode("latin-1"))
    (root / "unknown_detector.yaml").write_text("detectors:\n  psychic: {threshold: 3}\n")
    (root / "bad_value.yaml").write_text("detectors:\n  zscore: {threshold: lots}\n")
    (root / "bad_yaml.yaml").write_text("detectors: [zscore\n")
    (root / "bad_section.yaml").write_text("detectorz: {}\n")
    return {"root": root, "tele": tele, "bad_lines": bad_lines}


# ----------------------------------------------------------------------------- help and usage


def test_module_has_main_guard():
    import sbg.cli

    with open(sbg.cli.__file__, encoding="utf-8") as fh:
        assert 'if __name__ == "__main__":' in fh.read()


def _subcommands():
    import argparse

    from sbg.cli import build_parser

    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(action.choices)


def test_help_for_sbg_and_every_subcommand():
    subcommands = _subcommands()
    assert {"replay", "detect", "validate", "data"} <= set(subcommands)
    cmds = [["--help"], ["replay", "--help"], ["detect", "--help"], ["validate", "--help"], ["data", "--help"],
            ["data", "generate", "--help"], ["--version"]]
    cmds += [[name, "--help"] for name in subcommands if name not in ("replay", "detect", "validate", "data")]
    procs = run_many(cmds)
    for cmd, proc in zip(cmds, procs, strict=True):
        assert proc.returncode == 0, (cmd, proc.stderr)
        assert proc.stderr == "", cmd
        if cmd[-1] == "--help":
            assert proc.stdout.startswith(" ".join(["usage: sbg", *cmd[:-1]]))
    top, replay, detect, validate, data, generate, version = (p.stdout for p in procs[:7])
    assert top.startswith("usage: sbg")
    for word in ("replay", "detect", "validate", "data", "Exit codes"):
        assert word in top
    assert "--speed" in replay and "--alerts-db" in replay and "--fail-on" in replay
    for opt in ("--output", "--chunk-size", "--quarantine", "--summary-json", "--config"):
        assert opt in detect
    assert "--json" in validate and "--schema-only" in validate
    for opt in ("--time", "--entity", "--wide", "--signals", "--date", "--encoding"):  # shared schema options
        assert opt in replay and opt in detect and opt in validate
    assert "generate" in data and "--seed" in generate
    assert re.fullmatch(r"sbg \d+\.\d+\.\d+\S*\n", version)


def _parsers(parser, name="sbg"):
    """``(name, parser)`` for ``parser`` and every subcommand's parser under it, at any depth."""
    import argparse

    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _parsers(subparser, f"{name} {sub}")


def test_every_option_of_every_command_has_help():
    import argparse

    from sbg.cli import build_parser

    parsers = dict(_parsers(build_parser()))
    assert {"sbg detect", "sbg report", "sbg serve", "sbg data generate", "sbg data list"} <= set(parsers)
    missing = []
    for name, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
            if isinstance(action, argparse._SubParsersAction):  # each command's one-line summary
                missing += [f"{name} {a.dest}" for a in action._choices_actions if not (a.help or "").strip()]
    assert missing == []


@pytest.fixture(scope="module")
def usage_runs(data):
    tele = data["tele"]
    cases = {
        "no command": [],
        "unknown command": ["frobnicate"],
        "unknown option": ["validate", tele, "--frobnicate"],
        "bad --speed": ["replay", tele, "--speed", "fast"],
        "bad --fail-on": ["detect", tele, "-o", data["root"] / "x.csv", "--fail-on", "meh"],
        "--chunk-size 0": ["detect", tele, "-o", data["root"] / "x.csv", "--chunk-size", "0"],
        "--chunk-size text": ["detect", tele, "-o", data["root"] / "x.csv", "--chunk-size", "lots"],
        "bad --encoding": ["validate", tele, "--encoding", "klingon"],
    }
    return dict(zip(cases, run_many(list(cases.values())), strict=True))


@pytest.mark.parametrize("case", ["no command", "unknown command", "unknown option",
                                  "bad --speed", "bad --fail-on", "--chunk-size 0", "--chunk-size text",
                                  "bad --encoding"])
def test_usage_errors_exit_2_without_traceback(usage_runs, case):
    proc = usage_runs[case]
    assert proc.returncode == 2, proc.stderr
    no_traceback(proc)
    if case == "no command":
        assert proc.stdout.startswith("usage: sbg")
    elif case in ("--chunk-size 0", "bad --encoding"):  # our own checks: one line
        one_error_line(proc)
    else:  # argparse: usage, then "sbg[ CMD]: error: ..."
        assert proc.stderr.startswith("usage: sbg")
        assert re.search(r"^sbg( \w+)?: error: ", proc.stderr, re.M)


# ----------------------------------------------------------------------------- bad input and bad config


@pytest.fixture(scope="module")
def error_runs(data):
    r = data["root"]
    tele = data["tele"]
    out = r / "unused.csv"
    cases = {
        # bad input: exit 3
        "missing file": (3, ["validate", r / "nope.csv"], "nope.csv: no such file"),
        "missing file (replay)": (3, ["replay", r / "nope.csv"], "nope.csv: no such file"),
        "missing file (serve)": (3, ["serve", r / "nope.csv", "--print-command"], "nope.csv: no such file"),
        "empty file": (3, ["validate", r / "empty.csv"], "empty.csv: is empty"),
        "header only": (3, ["detect", r / "header.csv", "-o", out], "header.csv: has a header but no data rows"),
        "no timestamp": (3, ["validate", r / "nots.csv"], "nots.csv: no usable timestamp column"),
        "no numeric": (3, ["replay", r / "nonum.csv"], "nonum.csv: no numeric signal column"),
        "--time nope": (3, ["validate", tele, "--time", "nope"], "no column named 'nope'"),
        "--signals nope": (3, ["detect", tele, "-o", out, "--signals", "voltage,nope"], "no column named 'nope'"),
        "latin-1": (3, ["validate", r / "latin1.csv"], "latin1.csv:1:3: not valid UTF-8"),
        # bad config: exit 4
        "unknown detector": (4, ["detect", tele, "-o", out, "--config", r / "unknown_detector.yaml"],
                             "unknown detector 'psychic'"),
        "bad value": (4, ["detect", tele, "-o", out, "--config", r / "bad_value.yaml"], "detectors.zscore"),
        "invalid YAML": (4, ["detect", tele, "-o", out, "--config", r / "bad_yaml.yaml"], "invalid YAML"),
        "unknown section": (4, ["replay", tele, "--config", r / "bad_section.yaml"], "unknown section"),
        # these run alongside: latin-1 read with --encoding, and --fail-on with critical alerts
        "latin-1 --encoding": (0, ["validate", r / "latin1.csv", "--encoding", "latin-1", "--json"], None),
        "fail-on critical": (1, ["detect", tele, "-o", r / "failon.csv", "--fail-on", "critical"], None),
    }
    procs = run_many([args for _, args, _ in cases.values()])
    return {name: (code, proc, expect) for (name, (code, _, expect)), proc in zip(cases.items(), procs, strict=True)}


@pytest.mark.parametrize("case", [
    "missing file", "missing file (replay)", "missing file (serve)", "empty file", "header only", "no timestamp", "no numeric",
    "--time nope", "--signals nope", "latin-1", "unknown detector", "bad value", "invalid YAML", "unknown section",
])
def test_bad_input_and_config_exit_codes(error_runs, case):
    code, proc, expect = error_runs[case]
    assert proc.returncode == code, proc.stderr
    line = one_error_line(proc)
    assert expect in line


def test_latin1_with_encoding_option(error_runs):
    _, proc, _ = error_runs["latin-1 --encoding"]
    assert proc.returncode == 0 and proc.stderr == ""
    report = json.loads(proc.stdout)
    assert report["schema"]["signals"] == ["température"] and report["schema"]["encoding"] == "latin-1"
    assert report["rows_in"] == report["rows_ok"] == 2


# ----------------------------------------------------------------------------- validate


@pytest.fixture(scope="module")
def validate_runs(data):
    tele = data["tele"]
    gz = data["root"] / "packed.csv.gz"
    gz.write_bytes(gzip.compress(tele.read_bytes()))
    lines = tele.read_text().splitlines()
    rows = [r for i, r in enumerate(csv.reader(lines[1:]), start=2) if i not in data["bad_lines"]]
    good = pd.DataFrame(rows, columns=next(csv.reader(lines[:1])))
    pq_path = data["root"] / "cells.parquet"
    good.assign(timestamp=pd.to_datetime(good["timestamp"], format="ISO8601"),
                voltage=good["voltage"].astype(float), temp_c=good["temp_c"].astype(float)).to_parquet(pq_path)
    return run_many([["validate", tele], ["validate", tele, "--json", "--show", "100"],
                     ["validate", tele, "--schema-only"], ["validate", gz, "--json"], ["validate", pq_path, "--json"]])


def test_validate_prints_schema_counts_and_quarantine(validate_runs, data):
    proc = validate_runs[0]
    assert proc.returncode == 0 and proc.stderr == ""
    out = proc.stdout
    assert "time:      'timestamp' (date and time)" in out
    assert "entity:    'battery_id'" in out
    assert "signals:   voltage, temp_c" in out
    assert "carried:   status" in out
    n_bad = len(data["bad_lines"])
    n_in = 3 * N_PER_ENTITY + n_bad
    assert f"rows:      {n_in:,} in, {3 * N_PER_ENTITY:,} ok, {n_bad} quarantined" in out
    assert "entities:  3" in out
    assert "span:      2024-01-01 00:00:00 .. 2024-01-01 00:03:19" in out
    for line, reason in data["bad_lines"].items():
        assert f"telemetry.csv:{line}: {reason}" in out


def test_validate_json(validate_runs, data):
    proc = validate_runs[1]
    assert proc.returncode == 0 and proc.stderr == ""
    report = json.loads(proc.stdout)
    schema = report["schema"]
    assert (schema["time"], schema["time_kind"], schema["entity"]) == ("timestamp", "datetime", "battery_id")
    assert schema["signals"] == ["voltage", "temp_c"] and schema["carried"] == ["status"]
    assert schema["columns"] == ["timestamp", "battery_id", "voltage", "temp_c", "status"]
    assert report["rows_in"] == report["rows_ok"] + report["rows_quarantined"]
    assert report["rows_quarantined"] == len(data["bad_lines"]) and report["entities"] == 3
    got = {q["line"]: q["reason"] for q in report["quarantined"]}
    assert sorted(got) == sorted(data["bad_lines"])
    for line, reason in data["bad_lines"].items():
        assert got[line].startswith(reason)


def test_validate_gzip_and_parquet(validate_runs, data):
    plain = json.loads(validate_runs[1].stdout)
    for proc in validate_runs[3:]:
        assert proc.returncode == 0 and proc.stderr == ""
        report = json.loads(proc.stdout)
        assert report["schema"]["signals"] == ["voltage", "temp_c"] and report["schema"]["entity"] == "battery_id"
        assert report["rows_in"] == report["rows_ok"] + report["rows_quarantined"]
        assert report["entities"] == 3
    gz, parquet = (json.loads(p.stdout) for p in validate_runs[3:])
    assert (gz["rows_in"], gz["rows_quarantined"]) == (plain["rows_in"], plain["rows_quarantined"])
    assert (parquet["rows_ok"], parquet["rows_quarantined"]) == (3 * N_PER_ENTITY, 0)  # the good rows only
    assert (parquet["first"], parquet["last"]) == (plain["first"], plain["last"])


def test_validate_schema_only(validate_runs):
    proc = validate_runs[2]
    assert proc.returncode == 0 and proc.stderr == ""
    assert "signals:   voltage, temp_c" in proc.stdout and "rows:" not in proc.stdout


# ----------------------------------------------------------------------------- detect


@pytest.fixture(scope="module")
def detect_runs(data):
    root, tele = data["root"], data["tele"]
    runs = {}
    args = []
    for chunk in ("1", "7", "1000", "default"):
        out = root / f"scored_{chunk}.csv"
        extra = [] if chunk == "default" else ["--chunk-size", chunk]
        runs[chunk] = (out, root / f"quarantine_{chunk}.csv", root / f"summary_{chunk}.json")
        args.append(["detect", tele, "-o", out, "--quarantine", runs[chunk][1], "--summary-json", runs[chunk][2],
                     *extra])
    procs = run_many(args)
    return {chunk: (proc, *paths) for (chunk, paths), proc in zip(runs.items(), procs, strict=True)}


def test_detect_exits_0_and_reports(detect_runs, data):
    for chunk, (proc, *_rest) in detect_runs.items():
        assert proc.returncode == 0, (chunk, proc.stderr)
        assert proc.stderr == "", (chunk, proc.stderr)
        n_bad = len(data["bad_lines"])
        assert f"{3 * N_PER_ENTITY:,} rows scored" in proc.stdout
        assert f"{n_bad} quarantined of {3 * N_PER_ENTITY + n_bad:,}" in proc.stdout


def test_detect_output_is_byte_identical_for_any_chunk_size(detect_runs):
    outputs = {chunk: out.read_bytes() for chunk, (_, out, _, _) in detect_runs.items()}
    quarantines = {chunk: q.read_bytes() for chunk, (_, _, q, _) in detect_runs.items()}
    ref = outputs["default"]
    assert len(ref) > 1000
    for chunk in outputs:
        assert outputs[chunk] == ref, f"--chunk-size {chunk} differs from the default"
        assert quarantines[chunk] == quarantines["default"]


def test_detect_writes_one_row_per_accepted_row(detect_runs, data):
    _, out, _, _ = detect_runs["default"]
    scored = pd.read_csv(out)
    assert scored.columns.tolist() == ["timestamp", "battery_id", "voltage", "temp_c", "status",
                                       "anomaly_score", "is_anomaly", "reason", "quality"]
    assert len(scored) == 3 * N_PER_ENTITY
    # The accepted rows are exactly the generated ones, in input order.
    lines = data["tele"].read_text().splitlines()
    good_rows = [row for i, row in enumerate(csv.reader(lines[1:]), start=2) if i not in data["bad_lines"]]
    assert len(good_rows) == len(scored)
    assert (pd.to_datetime(scored["timestamp"]) == pd.to_datetime([r[0] for r in good_rows])).all()
    assert scored["battery_id"].tolist() == [r[1] for r in good_rows]
    np.testing.assert_array_equal(scored["voltage"].to_numpy(), np.array([float(r[2]) for r in good_rows]))
    assert scored["status"].tolist() == [r[4] for r in good_rows]  # quoted commas survive
    assert scored["is_anomaly"].dtype == bool
    assert scored["anomaly_score"].between(0, 1).all()
    flagged = scored[scored["is_anomaly"]]
    assert len(flagged) >= 3 * 12  # the over-temperature episodes at least
    assert (flagged["reason"].fillna("") != "").all()
    assert (scored.loc[~scored["is_anomaly"], "reason"].fillna("") == "").all()
    hot = scored[scored["temp_c"] > 50]
    assert hot["is_anomaly"].all() and hot["reason"].str.contains("temp_c").all()


def test_detect_quarantine_file(detect_runs, data):
    _, _, qpath, _ = detect_runs["default"]
    with open(qpath, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["line", "raw", "reason"]
    got = {int(line): (raw, reason) for line, raw, reason in rows[1:]}
    assert sorted(got) == sorted(data["bad_lines"])
    lines = data["tele"].read_text().splitlines()
    for line, reason in data["bad_lines"].items():
        assert got[line][0] == lines[line - 1]
        assert got[line][1].startswith(reason)


def test_detect_summary_json(detect_runs, data):
    summaries = {chunk: json.loads(s.read_text()) for chunk, (_, _, _, s) in detect_runs.items()}
    s = summaries["default"]
    for key in ("rows_in", "rows_ok", "rows_quarantined", "alerts", "settings", "schema", "rows_flagged"):
        assert key in s
    assert s["rows_in"] == s["rows_ok"] + s["rows_quarantined"]
    assert s["rows_ok"] == 3 * N_PER_ENTITY and s["rows_quarantined"] == len(data["bad_lines"])
    assert s["alerts"] >= 3 and s["alerts"] == sum(s["alerts_by_severity"].values())
    assert s["alerts_by_severity"]["critical"] >= 3  # one over-temperature episode per battery
    assert s["chunk_size"] == 65536
    first = min(data["bad_lines"])
    assert s["first_quarantined"] == {"file": str(data["tele"]), "line": first,
                                      "reason": s["first_quarantined"]["reason"]}
    assert s["first_quarantined"]["reason"].startswith(data["bad_lines"][first])
    assert s["settings"]["rows"] and {"object", "parameter", "value"} <= set(s["settings"]["rows"][0])
    for chunk, other in summaries.items():
        assert other["chunk_size"] == (65536 if chunk == "default" else int(chunk))
        for key in ("rows_in", "rows_ok", "rows_quarantined", "rows_flagged", "alerts", "alerts_by_severity"):
            assert other[key] == s[key], (chunk, key)


def test_detect_names_the_first_quarantined_row_when_no_quarantine_file_is_asked_for(tmp_path):
    path = tmp_path / "meter.csv"
    path.write_text("timestamp,value\n2024-01-01 00:00:00,5\n2024-01-01 00:05:00,\x1b[31m6\n"
                    "2024-01-01 00:10:00,oops\n2024-01-01 00:15:00,7\n")
    proc = run("detect", path, "-o", tmp_path / "flags.csv")
    assert proc.returncode == 0, proc.stderr
    assert "2 quarantined of 4" in proc.stdout
    # File, line and column; the terminal gets the file's control character written out, never the byte.
    assert (f"first quarantined row: {path}, line 3: column 2 'value': '\\x1b[31m6' is not a number "
            "(--quarantine Q.csv writes every one") in proc.stdout
    assert "\x1b" not in proc.stdout
    with_file = run("detect", path, "-o", tmp_path / "flags.csv", "--quarantine", tmp_path / "q.csv")
    assert "first quarantined row" not in with_file.stdout


def test_detect_fail_on_critical_exits_1(error_runs):
    _, proc, _ = error_runs["fail-on critical"]
    assert proc.returncode == 1 and proc.stderr == ""
    assert "rows scored" in proc.stdout


def _tiny_csv(path):
    """Two batteries, 40 rows each at 1 Hz, one temperature spike each: 80 rows, all accepted."""
    rows = ["timestamp,battery_id,voltage,temp_c"]
    for i in range(40):
        for k, ent in enumerate(("bat-1", "bat-2")):
            temp = 60.0 if i == 30 + k else 25 + 0.1 * ((i * 7 + k) % 5)
            rows.append(f"2024-01-01T00:00:{i:02d},{ent},{3.7 + 0.001 * (i % 3):.3f},{temp:.1f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


# These run main() in this process (capsys sees exactly what it prints on stdout and stderr).


def test_detect_without_o_writes_name_flags_csv_in_the_current_directory(tmp_path, monkeypatch, capsys):
    from sbg.cli import main

    data = _tiny_csv(tmp_path / "in" / "tiny.csv")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["detect", str(data)]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.startswith("tiny.flags.csv: 80 rows scored")  # says where it wrote
    assert sorted(p.name for p in work.iterdir()) == ["tiny.flags.csv"]
    assert not (data.parent / "tiny.flags.csv").exists()
    scored = pd.read_csv(work / "tiny.flags.csv")
    assert scored.columns.tolist() == ["timestamp", "battery_id", "voltage", "temp_c",
                                       "anomaly_score", "is_anomaly", "reason", "quality"]
    assert len(scored) == 80


def test_detect_default_name_drops_data_suffixes(tmp_path):
    from sbg.cli import default_output

    gz = tmp_path / "fleet.csv.gz"
    gz.write_bytes(gzip.compress(b"timestamp,v\n2024-01-01T00:00:00,1\n"))
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "day1.csv").write_text("timestamp,v\n2024-01-01T00:00:00,1\n")
    assert default_output([gz]) == default_output([str(gz), "other.csv"]) == Path("fleet.flags.csv")
    assert default_output([tmp_path / "archive"]) == Path("archive.flags.csv")
    assert default_output([str(tmp_path / "archive" / "*.csv")]) == Path("day1.flags.csv")
    assert default_output([tmp_path / "archive"], dataset=True) == Path("archive.flags.parquet")


def test_detect_o_dash_writes_only_csv_to_stdout(tmp_path, monkeypatch, capsys):
    from sbg.cli import main

    data = _tiny_csv(tmp_path / "in" / "tiny.csv")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["detect", str(data), "-o", "-", "--summary-json", "s.json"]) == 0
    out = capsys.readouterr()
    header = "timestamp,battery_id,voltage,temp_c,anomaly_score,is_anomaly,reason,quality"
    assert out.out.splitlines()[0].replace('"', "") == header  # nothing before the CSV
    scored = pd.read_csv(io.StringIO(out.out))
    assert scored.columns.tolist() == header.split(",")
    assert len(scored) == 80 and scored["is_anomaly"].dtype == bool
    assert scored.loc[scored["temp_c"] > 50, "is_anomaly"].all()
    # Nothing but rows after the header: every field count matches, and the message went to stderr.
    assert all(len(row) == 8 for row in csv.reader(io.StringIO(out.out)))
    assert out.err.startswith("stdout: 80 rows scored")
    assert sorted(p.name for p in work.iterdir()) == ["s.json"]  # no flags file
    assert json.loads((work / "s.json").read_text())["output"] == "-"


def test_detect_o_dash_with_dask_is_a_usage_error(tmp_path, capsys):
    from sbg.cli import main

    data = _tiny_csv(tmp_path / "tiny.csv")
    assert main(["detect", str(data), "-o", "-", "--workers", "2"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("sbg: error: -o - writes CSV to stdout")


# ----------------------------------------------------------------------------- replay


def _summary_counts(stdout):
    counts = {}
    for key in ("rows in", "rows ok", "rows quarantined", "alerts"):
        m = re.search(rf"^\s+{key}\s+([\d,]+)", stdout, re.M)
        assert m, (key, stdout)
        counts[key] = int(m.group(1).replace(",", ""))
    return counts


def _alerts(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT id, rule, entity, signal, severity, start, end, state FROM alerts ORDER BY id").fetchall()
    finally:
        con.close()


def test_replay_max_speed_summary_and_idempotent_alert_log(data):
    db = data["root"] / "alerts.sqlite"
    first = run("replay", data["tele"], "--speed", "max", "--alerts-db", db)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    counts = _summary_counts(first.stdout)
    assert counts["rows in"] == counts["rows ok"] + counts["rows quarantined"]
    assert counts["rows ok"] == 3 * N_PER_ENTITY and counts["rows quarantined"] == len(data["bad_lines"])
    assert re.search(r"reconciles\s+yes", first.stdout)
    assert "FIRE" in first.stdout  # alerts are printed as they fire
    assert db.exists()
    alerts = _alerts(db)
    assert len(alerts) == counts["alerts"] >= 3
    assert {a[2] for a in alerts if a[4] == "critical"} == set(ENTITIES)

    second = run("replay", data["tele"], "--speed", "max", "--alerts-db", db, "--quiet")
    assert second.returncode == 0 and second.stderr == ""
    assert "FIRE" not in second.stdout
    assert _summary_counts(second.stdout) == counts
    assert _alerts(db) == alerts  # upserted by id: the same alerts, not twice as many


# ----------------------------------------------------------------------------- nanoseconds


def test_nanosecond_timestamps_leave_stderr_clean(tmp_path):
    # pipeline.py and replay.py once warned "Discarding nonzero nanoseconds" (Timestamp.to_pydatetime).
    p = tmp_path / "ns.csv"
    p.write_text("timestamp,v\n2024-01-01T00:00:00,1\n2024-01-01T00:00:01.123456789,2\n")
    procs = run_many([["detect", p, "-o", tmp_path / "ns_out.csv"], ["replay", p, "--quiet"]])
    for proc in procs:
        assert proc.returncode == 0
        assert proc.stderr == "", proc.stderr
    assert '"2024-01-01 00:00:01.123456789"' in (tmp_path / "ns_out.csv").read_text()


def test_serve_options_after_files_are_sbgs_and_unknown_ones_go_to_panel():
    # --print-command shows what would run without starting a server.
    both = run_many([
        ("serve", "data/battery_fleet.csv.gz", "--port", "5123", "--print-command"),
        ("serve", "data/battery_fleet.csv.gz", "--port", "5123", "--print-command", "--keep-alive", "500"),
        ("serve", "--print-command", "--num-procs=4"),
        ("replay", "data/battery_fleet.csv.gz", "--keep-alive", "500"),
    ])
    placed, passed, procs, other = both
    assert placed.returncode == 0, placed.stderr
    assert "--port 5123" in placed.stdout and "--allow-websocket-origin 127.0.0.1:5123" in placed.stdout
    assert "--address 127.0.0.1" in placed.stdout
    assert passed.returncode == 0 and passed.stdout.rstrip().endswith("--keep-alive 500")
    assert procs.returncode == 2 and "one process" in procs.stderr
    assert other.returncode == 2 and "unrecognized arguments: --keep-alive 500" in other.stderr
    for proc in both:
        no_traceback(proc)


@pytest.mark.slow
@pytest.mark.parametrize("shadow", ["empty folder", "package that raises"])
def test_serve_runs_the_installed_sbg_from_a_directory_holding_a_folder_named_sbg(data, tmp_path, shadow):
    from tests.served import get, served

    folder = tmp_path / "sbg"
    folder.mkdir()
    if shadow == "package that raises":
        (folder / "__init__.py").write_text("raise ImportError('the sbg folder of the working directory')\n")
    with served(tmp_path / "serve.log", data["tele"], "--data-dir", data["root"], cwd=tmp_path) as base:
        code, body = get(base + "/api/status", timeout=30)
        assert code == 200 and json.loads(body)["files"] == [str(data["tele"])]
        assert get(base + "/monitor", timeout=60)[0] == 200


def test_set_reaches_every_command_and_is_checked_before_any_work(tmp_path):
    data = tmp_path / "v.csv"
    t = pd.date_range("2024-01-01", periods=100, freq="1s")
    pd.DataFrame({"time": t, "v": np.arange(100.0)}).to_csv(data, index=False)
    out = tmp_path / "flags.csv"
    ok = run("detect", data, "-o", out, "--set", "limits.limits={v: [0, 50]}", "--set", "limits.preset=none")
    assert ok.returncode == 0, ok.stderr
    flags = pd.read_csv(out)
    assert flags["is_anomaly"].sum() == 49 and (flags.loc[flags["is_anomaly"], "v"] > 50).all()
    results = run_many([["detect", data, "-o", tmp_path / "x.csv", "--set", "zscore.treshold=5"],
                        ["serve", data, "--port", "5999", "--set", "zscor.threshold=5"],
                        ["replay", data, "--set", "zscore.threshold=-1"]])
    for r, words in zip(results, ("unknown setting(s) ['treshold']", "'zscor' is neither a detector",
                                  "must be greater than 0"), strict=True):
        assert r.returncode == 4 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x.csv").exists()


def test_detect_refuses_its_own_output_as_input(tmp_path):
    """sbg's output columns in an input were scored as signals and overwritten, and the run hung."""
    data = tmp_path / "v.csv"
    pd.DataFrame({"time": pd.date_range("2024-01-01", periods=5, freq="1s"), "v": np.arange(5.0)}).to_csv(data, index=False)
    first = run("detect", data, "-o", tmp_path / "v.flags.csv")
    assert first.returncode == 0, first.stderr
    again = run("detect", tmp_path / "v.flags.csv", "-o", tmp_path / "again.csv", timeout=120)
    line = one_error_line(again)
    assert again.returncode == 3 and "v.flags.csv:1:3: column 3 'anomaly_score'" in line and "sbg wrote" in line
    assert not (tmp_path / "again.csv").exists()
