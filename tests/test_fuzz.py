"""Fuzzing ``sbg validate`` and ``sbg detect`` with hostile CSV files.

Generated files hold ragged rows, huge fields, NUL bytes, giant numbers,
NaN/inf strings, mixed time zones, stray and unbalanced quotes, quoted
multi-line fields, blank lines, CR, LF and CRLF line ends, several encodings
(UTF-8 with and without BOM, latin-1, UTF-16 with and without BOM), duplicate
headers, empty and header-only files, and plain random bytes. Each goes
through the real command line (``sbg.cli.main`` in-process; a few through a
real subprocess) and must satisfy:

* no traceback: the exit code is 0, or 3 with one stderr line naming the file;
* counts reconcile: ``rows_in == rows_ok + rows_quarantined`` in both commands,
  which agree with each other, with the rows ``detect`` wrote and, where the
  generator knows it, with the number of records written;
* every quarantined row names the file, its physical line (whose text it
  carries) and, when a field is at fault, the column.

Oversized input: a line over 10 MB is refused cleanly, and a ~100 MB file is
processed with memory that does not grow with the file (peak RSS of a child
process, measured with ``os.wait4``; nothing here is timed).

The number of generated cases is printed at the end of the module's run.
Raise it with ``SBG_FUZZ_EXAMPLES=2000``.
"""

from __future__ import annotations

import codecs
import collections
import concurrent.futures
import csv
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sbg.cli import main
from sbg.io.sources import MAX_LINE_BYTES, Source

settings.register_profile(
    "sbg-fuzz",
    max_examples=int(os.environ.get("SBG_FUZZ_EXAMPLES", 200)),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.large_base_example],
)
FUZZ = settings.get_profile("sbg-fuzz")
CASES: collections.Counter = collections.Counter()

HEADER = ["timestamp", "battery_id", "voltage", "temp", "status"]
NCOL = len(HEADER)


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request):
    yield
    total = sum(CASES.values())
    text = f"fuzz cases run: {total} (" + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())) + ")"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(text)
        return
    with capture.global_and_fixture_disabled():  # past output capture, onto the terminal
        reporter.write_line(text)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


_names = iter(range(10**9))


def _fresh(workdir: Path, stem="case") -> Path:
    return workdir / f"{stem}_{next(_names)}.csv"


# ----------------------------------------------------------------------------- running the CLI


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli(capsys, *args) -> Run:
    """``sbg ARGS`` in-process; any exception escaping ``main`` is a traceback a user would see."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except BaseException as exc:  # the property: nothing escapes, not even SystemExit
        captured = capsys.readouterr()
        raise AssertionError(f"sbg {' '.join(map(str, args))} raised {exc!r}; stderr: {captured.err}") from exc
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def check_error(run: Run, path: Path):
    """A refusal: exit 3 and exactly one stderr line ``sbg: error: PATH[:LINE[:COL]]: ...``."""
    assert run.code == 3, (run.code, run.err)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sbg: error: {path}"), run.err
    assert "Traceback" not in run.err


def error_line(run: Run, path: Path) -> int | None:
    rest = run.err.strip()[len(f"sbg: error: {path}"):]
    head = rest.split(": ", 1)[0]
    return int(head.split(":")[1]) if head.startswith(":") and head[1:].split(":")[0].isdigit() else None


@dataclass
class Outcome:
    """What both commands said about one file."""

    code: int
    report: dict | None = None
    quarantined: list = field(default_factory=list)


def run_both(capsys, path: Path, options=()) -> Outcome:
    """Run validate and detect on ``path``; check they agree and reconcile; return validate's report."""
    v = cli(capsys, "validate", path, "--json", "--show", "1000000", *options)
    out, summary, qfile = path.with_suffix(".out.csv"), path.with_suffix(".json"), path.with_suffix(".q.csv")
    d = cli(capsys, "detect", path, "-o", out, "--summary-json", summary, "--quarantine", qfile, *options)
    assert v.code == d.code, (v.err, d.err)
    if v.code != 0:
        check_error(v, path)
        check_error(d, path)
        assert v.err == d.err
        return Outcome(v.code)
    assert v.err == "" and d.err == ""
    report = json.loads(v.out)
    s = json.loads(summary.read_text())
    assert report["rows_in"] == report["rows_ok"] + report["rows_quarantined"]
    assert s["rows_in"] == s["rows_ok"] + s["rows_quarantined"]
    assert (s["rows_in"], s["rows_ok"], s["rows_quarantined"]) == (
        report["rows_in"], report["rows_ok"], report["rows_quarantined"])
    assert len(report["quarantined"]) == report["rows_quarantined"]
    with open(out, newline="", encoding="utf-8") as fh:
        written = sum(1 for _ in csv.reader(fh)) - 1
    assert written == report["rows_ok"]
    with open(qfile, newline="", encoding="utf-8") as fh:
        qrows = list(csv.DictReader(fh))
    assert [(int(r["line"]), r["reason"]) for r in qrows] == [(q["line"], q["reason"]) for q in report["quarantined"]]
    for q in report["quarantined"]:
        assert q["source"] == str(path)
        reason = q["reason"]
        if reason.startswith("column "):
            number = reason.split()[1].rstrip(":")
            assert number.isdigit() and 1 <= int(number), reason
    return Outcome(0, report, report["quarantined"])


# ----------------------------------------------------------------------------- generated telemetry files

ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "latin-1-flagged", "utf-16", "utf-16-le", "utf-16-be"]
EOLS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}
TEXTS = ["ok", "idle", "charging", "été", "Ünïcödé", "温度", "😀"]
NAN_STRINGS = ["", "NaN", "nan", "NA", "null", "N/A"]
INF_STRINGS = ["inf", "-inf", "Infinity", "-Infinity", "1e400", "-1e999", "9" * 400]
GIANT_OK = ["99999999999999999999999", "1e308", "-1.7976931348623157e308", "1e-320", "0.000000000000000000001"]
ZONES = ["Z", "+02:00", "-05:00", "+00:00", "+0530"]

ROW_KINDS = ["good"] * 6 + [
    "ragged", "bad_number", "nan", "inf", "giant", "huge_field", "huge_quoted", "nul", "tz", "open_quote",
    "mid_quote", "multiline", "quoted_comma", "bad_bytes", "blank", "spaces", "bad_time",
]


@dataclass
class Doc:
    """A generated file and what sbg must make of it."""

    data: bytes
    options: list[str]
    physical: list[str]  # the decoded physical lines, header first: line n is physical[n - 1]
    records: int | None  # rows_in, when well-defined
    bad: dict[int, str]  # line -> a text its quarantine reason must hold
    good: set[int]  # lines that must not be quarantined
    bytes_error_lines: list[int]  # lines with bytes invalid in the file's encoding
    readable: bool  # exit 0 is required
    expect_error: str | None = None  # text the refusal must hold, when one is required
    expect_error_line: int | None = None

    def _repr_pretty_(self, printer, cycle):
        """How hypothesis shows a falsifying file: huge fields cut short (in full, it warns and fails)."""
        lines = [line if len(line) < 200 else f"{line[:100]}...<{len(line)} chars>" for line in self.physical]
        printer.text(f"Doc({len(self.data)} bytes, head={self.data[:120]!r}, options={self.options}, "
                     f"lines={lines}, records={self.records}, bad={self.bad}, readable={self.readable}, "
                     f"expect={self.expect_error!r})")


@st.composite
def telemetry_docs(draw):
    n = draw(st.integers(0, 40))
    kinds = draw(st.lists(st.sampled_from(ROW_KINDS), min_size=n, max_size=n))
    for i in range(len(kinds) - 1):  # an open quote is judged by the whole row after it
        if kinds[i] == "open_quote":
            kinds[i + 1] = "good"
    encoding = draw(st.sampled_from(ENCODINGS))
    eol_name = draw(st.sampled_from(sorted(EOLS)))
    eol = EOLS[eol_name]
    trailing = draw(st.booleans())
    dup_header = draw(st.integers(0, 15)) == 0
    explicit = draw(st.booleans())
    header = list(HEADER)
    if dup_header:
        header[3] = "voltage"
    text_enc = {"utf-8-sig": "utf-8", "latin-1-flagged": "latin-1"}.get(encoding, encoding)
    if text_enc == "latin-1":
        texts = [t for t in TEXTS if t.encode("latin-1", "ignore").decode("latin-1") == t]
    else:
        texts = TEXTS

    lines: list[str] = [",".join(header)]  # physical lines as text
    raw_lines: list[bytes | None] = [None]  # a line's bytes when it is not the text encoded
    bad: dict[int, str] = {}
    good: set[int] = set()
    bytes_errors: list[int] = []
    records = 0
    tz_seen = False
    good_rows = 0
    for i, kind in enumerate(kinds):
        line_no = len(lines) + 1
        ts = f"2024-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
        ent = f"bat-{i % 3}"
        v, t = f"{3.7 + i / 1000:.4f}", f"{25 + (i % 7) / 10:.2f}"
        status = draw(st.sampled_from(texts))
        row = [ts, ent, v, t, status]
        extra_lines: list[str] = []
        raw = None
        if kind == "ragged":
            k = draw(st.sampled_from([1, 2, 3, 4, 6, 7, 12]))
            row = (row + ["x"] * 12)[:k]
            bad[line_no] = f"expected {NCOL} fields, found {k}"
        elif kind == "bad_number":
            row[2] = draw(st.sampled_from(["volts", "3.7.1", "0x1F", "--1", "1e", "١٢" if text_enc != "latin-1" else "½"]))
            bad[line_no] = "column 3 'voltage'"
        elif kind == "nan":
            row[2] = draw(st.sampled_from(NAN_STRINGS))
        elif kind == "inf":
            row[3] = draw(st.sampled_from(INF_STRINGS))
            bad[line_no] = "column 4 'temp'"
        elif kind == "giant":
            row[2] = draw(st.sampled_from(GIANT_OK))
        elif kind == "huge_field":
            row[4] = "x" * draw(st.integers(100_000, 400_000))
        elif kind == "huge_quoted":
            row[4] = '"' + "y, " * draw(st.integers(50_000, 120_000)) + '"'
        elif kind == "nul":
            text = ",".join(row)
            at = draw(st.integers(0, len(text)))
            row = [text[:at] + "\x00" + text[at:]]
            bad[line_no] = "NUL"
        elif kind == "tz":
            row[0] = ts + draw(st.sampled_from(ZONES))
            tz_seen = True
        elif kind == "open_quote":
            row[4] = '"' + status
            bad[line_no] = "quote"
        elif kind == "mid_quote":
            row[4] = status[:1] + '"' + status[1:] + '"'
        elif kind == "multiline":
            extra_lines = ['second, ""quoted"""']
        elif kind == "quoted_comma":
            row[4] = '"a, b; c"'
        elif kind == "bad_time":
            row[0] = draw(st.sampled_from(["yesterday", "2024-13-45T00:00:00", "1e400", "99999999999999999999999", "NaT"]))
            bad[line_no] = "column 1 'timestamp'"
        if kind == "multiline":
            text = ",".join(row[:4]) + ',"first'
            lines.append(text)
            raw_lines.append(None)
            lines.extend(extra_lines)
            raw_lines.append(None)
        elif kind == "blank":
            lines.append("")
            raw_lines.append(None)
            continue
        elif kind == "spaces":
            lines.append("   ")
            raw_lines.append(None)
            bad[line_no] = "expected"
            records += 1
            continue
        elif kind == "bad_bytes":
            text = ",".join(row)
            if text_enc.startswith("utf-16") or text_enc == "latin-1":
                lines.append(text)  # every byte is valid latin-1; UTF-16 files are refused anyway
                raw_lines.append(None)
                good.add(line_no)
                good_rows += 1
            else:
                raw = text.encode("utf-8") + b"\xff\xfe\xc3"
                lines.append(text + "\ufffd\ufffd\ufffd")
                raw_lines.append(raw)
                bytes_errors.append(line_no)
                bad[line_no] = "not valid"
            records += 1
            continue
        else:
            lines.append(",".join(row))
            raw_lines.append(None)
        records += 1
        if kind in ("good", "nan", "giant", "huge_field", "huge_quoted", "mid_quote", "multiline",
                    "quoted_comma", "tz"):
            good_rows += 1
            if kind != "tz":
                good.add(line_no)
    if tz_seen:
        good = set()  # a zoned time may move a row back in time, or the rows after it
    # Mixed CR and LF line ends: records and line numbers are then not well-defined.
    mixed = eol_name != "cr" and draw(st.integers(0, 9)) == 0
    if mixed:
        bad, good = {}, set()

    out = bytearray()
    if encoding == "utf-8-sig":
        out += codecs.BOM_UTF8
    wire_enc = {"utf-16": "utf-16-le"}.get(text_enc, text_enc)
    if encoding == "utf-16":
        out += codecs.BOM_UTF16_LE
    for k, (text, raw) in enumerate(zip(lines, raw_lines, strict=True)):
        chunk = raw if raw is not None else text.encode(wire_enc)
        out += chunk
        last = k == len(lines) - 1
        if not last or trailing:
            sep = "\r" if mixed and k % 3 == 1 else eol
            out += sep.encode(wire_enc)
    options = ["--encoding", "latin-1"] if encoding == "latin-1-flagged" else []
    if explicit:
        options += ["--time", "timestamp", "--entity", "battery_id"]
        if not dup_header:
            options += ["--signals", "voltage,temp"]
    readable = (
        not dup_header and not mixed and not encoding.startswith("utf-16") and not bytes_errors
        and good_rows >= 3 and good_rows * 3 >= records * 2
        and not (encoding == "latin-1" and any(not line.isascii() for line in lines))
    )
    expect_error = None
    expect_line = None
    if encoding.startswith("utf-16") and lines:
        expect_error, expect_line = "UTF-16", 1
    elif dup_header and (text_enc != "latin-1" or all(line.isascii() for line in lines)) and not bytes_errors:
        expect_error, expect_line = "duplicate column names", 1
    elif not kinds or all(k == "blank" for k in kinds):
        expect_error = "no data rows" if kinds or lines else "is empty"
    if encoding == "latin-1":  # read as UTF-8: quarantined rows show what sbg decoded
        lines = [line.encode("latin-1").decode("utf-8", "replace") for line in lines]
    return Doc(
        data=bytes(out), options=options, physical=lines, records=None if mixed else records, bad=bad,
        good=good, bytes_error_lines=bytes_errors, readable=readable, expect_error=expect_error,
        expect_error_line=expect_line,
    )


def check_doc(capsys, path: Path, doc: Doc):
    path.write_bytes(doc.data)
    result = run_both(capsys, path, doc.options)
    if doc.readable:
        assert result.code == 0, "a well-formed file was refused"
    if result.code != 0:
        err = cli(capsys, "validate", path, *doc.options)
        if doc.expect_error:
            assert doc.expect_error in err.err, err.err
        if doc.expect_error_line is not None:
            assert error_line(err, path) == doc.expect_error_line, err.err
        if "not valid" in err.err and doc.bytes_error_lines and doc.records is not None:
            assert error_line(err, path) == doc.bytes_error_lines[0], err.err
        return
    assert doc.expect_error is None, f"expected a refusal naming {doc.expect_error!r}"
    report = result.report
    if doc.records is not None:
        assert report["rows_in"] == doc.records
    by_line = {q["line"]: q for q in result.quarantined}
    assert len(by_line) == len(result.quarantined), "two quarantined records on one line"
    nphys = len(doc.physical)
    for q in result.quarantined:
        assert 2 <= q["line"] <= nphys, q
        if doc.records is not None:
            want = doc.physical[q["line"] - 1].rstrip("\r")
            assert q["raw"].split("\n")[0].rstrip("\r")[:80] == want[:80], (q, want[:200])
    for line, reason in doc.bad.items():
        if reason.startswith("column") and not (doc.readable or "--signals" in doc.options):
            continue  # the column may rightly be inferred to be text, not a signal
        assert line in by_line, f"line {line} should be quarantined ({reason}); got {sorted(by_line)}"
        got = by_line[line]["reason"]
        # Bytes the encoding cannot decode are named before anything else is checked.
        assert reason in got or ("\ufffd" in doc.physical[line - 1] and "not valid" in got), by_line[line]
    if not doc.readable:
        return report  # few good rows: schema inference may rightly read the columns another way
    wrongly = sorted(doc.good & set(by_line))
    assert not wrongly, [by_line[x] for x in wrongly]
    return report


def check_block_invariance(path: Path, cli_options, block_bytes: int, report: dict):
    """Read in small blocks, the file gives what the command line (4 MiB blocks) reported."""
    flags = dict(zip(cli_options[::2], cli_options[1::2], strict=True))
    options = {k: flags[f"--{k}"] for k in ("encoding", "time", "entity") if f"--{k}" in flags}
    if "--signals" in flags:
        options["signals"] = flags["--signals"].split(",")
    batches = list(Source(path, block_bytes=block_bytes, **options).batches())
    got = [(q.line, q.reason) for b in batches for q in b.quarantined]
    assert got == [(q["line"], q["reason"]) for q in report["quarantined"]]
    assert sum(b.rows_in for b in batches) == report["rows_in"]


@FUZZ
@given(doc=telemetry_docs(), block_bytes=st.integers(64, 1 << 16))
@example(doc=Doc(b"", [], [], None, {}, set(), [], False, "is empty"), block_bytes=64)
def test_generated_telemetry_files(capsys, workdir, doc, block_bytes):
    CASES["telemetry"] += 1
    path = _fresh(workdir)
    report = check_doc(capsys, path, doc)
    if report is not None:
        check_block_invariance(path, doc.options, block_bytes, report)


# ----------------------------------------------------------------------------- arbitrary bytes

_CSVISH = "0123456789.,;\"'\r\n\t -:+eEZT abc\x00\xe9é"
_GOOD_HEADER = b"timestamp,battery_id,voltage,temp,status\n"
_GOOD_ROW = b"2024-01-01T00:00:%02d,bat-%d,3.7,25,ok\n"


@st.composite
def arbitrary_files(draw):
    shape = draw(st.sampled_from(["bytes", "header+bytes", "csvish", "rows+bytes", "fields"]))
    if shape == "bytes":
        return draw(st.binary(max_size=4000))
    if shape == "header+bytes":
        return _GOOD_HEADER + draw(st.binary(max_size=4000))
    if shape == "csvish":
        text = draw(st.text(alphabet=_CSVISH, max_size=3000))
        return _GOOD_HEADER + text.encode(draw(st.sampled_from(["utf-8", "latin-1"])), "replace")
    if shape == "rows+bytes":
        rows = b"".join(_GOOD_ROW % (i, i % 2) for i in range(draw(st.integers(0, 20))))
        cut = draw(st.integers(0, len(rows)))
        return _GOOD_HEADER + rows[:cut] + draw(st.binary(max_size=200)) + rows[cut:]
    table = draw(st.lists(st.lists(st.text(max_size=12), min_size=1, max_size=7), min_size=1, max_size=25))
    sep = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = sep.join(",".join(r) for r in table)
    return _GOOD_HEADER + text.encode("utf-8", "surrogatepass")


@FUZZ
@given(data=arbitrary_files(), block_bytes=st.integers(1, 4096))
@example(data=b"\x00" * 100, block_bytes=1)
@example(data=b"timestamp,v\n", block_bytes=1)
@example(data=b"timestamp,v", block_bytes=1)
@example(data=b"\n\n\r\n", block_bytes=1)
@example(data=_GOOD_HEADER + b'2024-01-01T00:00:00,a,1,2,"\n' * 30, block_bytes=1)
def test_arbitrary_bytes_never_crash_and_reconcile(capsys, workdir, data, block_bytes):
    CASES["arbitrary"] += 1
    path = _fresh(workdir, "bytes")
    path.write_bytes(data)
    result = run_both(capsys, path)
    if result.code == 0:
        physical = max(data.count(b"\n"), data.count(b"\r")) + 1
        for q in result.quarantined:
            assert 2 <= q["line"] <= physical, q
        check_block_invariance(path, [], block_bytes, result.report)


# ----------------------------------------------------------------------------- a stray quote never swallows rows


@FUZZ
@given(
    n=st.integers(2, 200),
    at=st.data(),
    quote=st.sampled_from(['"ok', 'o"k', '"o""k', 'ok"', '"']),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_one_stray_quote_costs_at_most_its_own_row(capsys, workdir, n, at, quote, eol):
    CASES["stray quote"] += 1
    k = at.draw(st.integers(0, n - 1))
    rows = [f"2024-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d},bat-{i % 3},3.7,25,ok" for i in range(n)]
    rows[k] = rows[k].rsplit(",", 1)[0] + "," + quote
    path = _fresh(workdir, "quote")
    path.write_bytes(eol.join([",".join(HEADER), *rows]).encode() + eol.encode())
    result = run_both(capsys, path, ["--time", "timestamp", "--entity", "battery_id"])
    assert result.code == 0
    assert result.report["rows_in"] == n
    assert [q["line"] for q in result.quarantined] in ([], [k + 2])
    if result.quarantined:
        assert "quote" in result.quarantined[0]["reason"]


# ----------------------------------------------------------------------------- what the fuzzer found

_200 = [f"2024-01-01T00:{i // 60:02d}:{i % 60:02d},bat-{i % 3},3.7,25,ok" for i in range(200)]


def _with(changes: dict[int, str], rows=_200, eol="\n") -> bytes:
    rows = [changes.get(i, r) for i, r in enumerate(rows)]
    return eol.join([",".join(HEADER), *rows]).encode() + eol.encode()


def _status(i, value):
    return _200[i].rsplit(",", 1)[0] + "," + value


FINDINGS = {
    # A field opening a quote that never closes swallowed every row after it (rows_in was 6).
    "open quote": (_with({4: _status(4, '"ok')}), 200, [(6, "column 5 'status': unbalanced quote")]),
    # A quote inside an unquoted field is text, yet it joined the lines after it into one bad record.
    "mid-field quote": (_with({4: _status(4, 'o"k')}), 200, []),
    # Two stray quotes 145 rows apart made one record of everything between them.
    "two stray quotes": (_with({4: _status(4, '"ok'), 150: _status(150, 'ok"')}), 200,
                         [(6, "column 5 'status': unbalanced quote")]),
    # A quoted field over 128 KiB was refused by the csv module's default field limit.
    "300 KB quoted field": (_with({100: _status(100, '"' + "x, " * 100_000 + '"')}), 200, []),
    # ... and in the first row it made the whole file "a header but no data rows".
    "300 KB field in row 1": (_with({0: _status(0, "x" * 300_000)}), 200, []),
    # CR-only line ends (Excel's "CSV (Macintosh)") were refused with the csv module's own advice.
    "CR line ends": (_with({}, eol="\r"), 200, []),
    # With CR line ends the whole file looked like the header: a NUL in any row refused the file.
    "CR and a NUL row": (_with({7: _status(7, "o\x00k")}, eol="\r"), 200, [(9, "contains NUL bytes")]),
    # A stray CR read one way by pyarrow and another by the csv module: the result depended on the block size.
    "stray CR": (_with({3: "\r" + _200[3], 9: _status(9, "o\rk")}), 200,
                 [(5, "carriage return inside an unquoted field"), (11, "carriage return inside an unquoted field")]),
    # 1e400 counted as evidence of a numeric time column; half such rows made every real timestamp bad.
    "1e400 in the time column": (
        b"timestamp,v\n2024-01-01T00:00:00,1\n1e400,2\n2024-01-01T00:00:02,3\ninf,4\n", 4,
        [(3, "column 1 'timestamp': unparsable timestamp '1e400'"), (5, "column 1 'timestamp': unparsable timestamp 'inf'")]),
}


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_what_the_fuzzer_found_stays_fixed(capsys, tmp_path, name):
    CASES["findings"] += 1
    data, rows_in, quarantined = FINDINGS[name]
    path = tmp_path / "finding.csv"
    path.write_bytes(data)
    result = run_both(capsys, path)
    assert result.code == 0
    assert result.report["rows_in"] == rows_in
    assert [(q["line"], q["reason"].split(" (")[0]) for q in result.quarantined] == quarantined
    for block_bytes in (1, 4096):
        check_block_invariance(path, [], block_bytes, result.report)


def test_utf16_is_named_with_or_without_its_byte_order_mark(capsys, tmp_path):
    CASES["findings"] += 4
    text = "timestamp,v\n2024-01-01T00:00:00,1\n"
    for name, data in (("bom", text.encode("utf-16")), ("le", text.encode("utf-16-le")), ("be", text.encode("utf-16-be"))):
        path = tmp_path / f"{name}.csv"
        path.write_bytes(data)
        run = cli(capsys, "validate", path)
        check_error(run, path)
        assert run.err.startswith(f"sbg: error: {path}:1: is UTF-16 encoded; re-save it as UTF-8"), run.err
    run = cli(capsys, "validate", path, "--encoding", "utf-16")  # asking for it is a usage error, not a crash
    assert run.code == 2 and "not supported" in run.err and run.err.count("\n") == 1


# ----------------------------------------------------------------------------- real processes

SBG = [sys.executable, "-m", "sbg.cli"]
ENV = {**os.environ, "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
ENV.pop("PYTHONWARNINGS", None)


def _hostile_files(root: Path) -> dict[str, bytes]:
    rows = [_GOOD_ROW % (i, i % 2) for i in range(30)]
    return {
        "empty": b"",
        "binary": bytes(range(256)) * 8,
        "utf16": ("timestamp,v\n2024-01-01,1\n").encode("utf-16"),
        "stray_quote": _GOOD_HEADER + b"".join(rows[:5]) + b'2024-01-01T00:00:40,bat-0,3.7,25,"ok\n' + b"".join(rows[5:]),
        "cr_only": (_GOOD_HEADER + b"".join(rows)).replace(b"\n", b"\r"),
        "ragged_nul_inf": _GOOD_HEADER + b"".join(rows) + b"2024-01-02,a,1e400,2,ok\n2024-01-02,a,\x00\n1,2\n",
    }


def test_hostile_files_through_real_processes(tmp_path):
    files = {}
    for name, data in _hostile_files(tmp_path).items():
        files[name] = tmp_path / f"{name}.csv"
        files[name].write_bytes(data)

    def run(args):
        return subprocess.run([*SBG, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300,
                              stdin=subprocess.DEVNULL)

    # Every process pays for importing the engine: validate each file, detect two of them.
    jobs = [["validate", path, "--json", "--show", "1000"] for path in files.values()]
    jobs += [["detect", files[name], "-o", files[name].with_suffix(".out.csv"), "--summary-json",
              files[name].with_suffix(".json")] for name in ("stray_quote", "binary")]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(run, jobs))
    CASES["subprocess"] += len(procs)
    for args, proc in zip(jobs, procs, strict=True):
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        assert proc.returncode in (0, 3), (args, proc.returncode, proc.stderr)
        if proc.returncode:
            assert proc.stderr.startswith(f"sbg: error: {args[1]}") and proc.stderr.count("\n") == 1, proc.stderr
        elif args[0] == "validate":
            report = json.loads(proc.stdout)
            assert report["rows_in"] == report["rows_ok"] + report["rows_quarantined"]
    codes = {args[1].stem + " " + args[0]: p.returncode for args, p in zip(jobs, procs, strict=True)}
    assert codes["stray_quote validate"] == codes["cr_only validate"] == codes["ragged_nul_inf validate"] == 0
    assert codes["empty validate"] == codes["binary validate"] == codes["utf16 validate"] == 3


# ----------------------------------------------------------------------------- oversized input


def _rows(n, start=0):
    return "".join(f"2024-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d},bat-{i % 3},3.7,25,ok\n"
                   for i in range(start, start + n)).encode()


def test_a_single_line_over_10_mb_is_refused_with_file_and_line(capsys, tmp_path):
    CASES["oversized"] += 3
    monster = b"9" * (MAX_LINE_BYTES + 100)
    only = tmp_path / "one_line.csv"  # the whole file is one huge line: the header
    only.write_bytes(monster)
    data_line = tmp_path / "one_row.csv"  # a header, then one huge data line and nothing else
    data_line.write_bytes(_GOOD_HEADER + b"2024-01-01T00:00:00,bat-0,3.7,25," + monster + b"\n")
    among = tmp_path / "among.csv"  # the huge line among good rows is quarantined; the rest is read
    among.write_bytes(_GOOD_HEADER + _rows(50) + b"2024-01-01T01:00:00,bat-0,3.7,25," + monster + b"\n" + _rows(50, 3601))

    for path, line in ((only, 1), (data_line, 2)):
        run = cli(capsys, "validate", path)
        check_error(run, path)
        assert error_line(run, path) == line and "10 MB" in run.err, run.err
    result = run_both(capsys, among)
    assert result.code == 0
    assert result.report["rows_in"] == 101 and result.report["rows_ok"] == 100
    (q,) = result.quarantined
    assert q["line"] == 52 and q["reason"] == "line longer than 10 MB" and len(q["raw"]) < 2100


def _bigfile():
    """benchmarks/bigfile.py: its fleet file writer and child-process runner serve this test too."""
    spec = importlib.util.spec_from_file_location("bigfile", Path(__file__).resolve().parent.parent / "benchmarks" / "bigfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_100_mb_file_is_streamed_not_loaded(tmp_path):
    bigfile = _bigfile()
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    bigfile.write_fleet_csv(small, rows=500_000)  # ~25 MB: enough to fill every queue of blocks
    bigfile.write_fleet_csv(big, rows=2_000_000)  # ~105 MB
    extra_mb = (big.stat().st_size - small.stat().st_size) / 1e6
    assert big.stat().st_size > 100e6
    peaks = {}
    for path in (small, big):
        for args in (["validate", path], ["detect", path, "-o", path.with_suffix(".out.csv")]):
            result = bigfile.run_child([*SBG, *map(str, args)])
            assert result["code"] == 0 and result["stderr"] == "", result["stderr"]
            peaks[path.stem, args[0]] = result["peak_mb"]
    CASES["streaming"] += 4
    for command in ("validate", "detect"):
        growth = peaks["big", command] - peaks["small", command]
        # Loaded whole, 80 MB more text would cost more than 80 MB more memory; streamed, it costs none.
        assert growth < 0.25 * extra_mb, (command, peaks, extra_mb)
