"""Chunked sources: schema inference, quarantine of bad rows, chunk invariance.

Every hostile case asserts the exact 1-based physical line (the header is
line 1) and, where a column is at fault, that the reason names it. The
property tests check that validation does not depend on ``block_bytes`` and
that ``rows_in == rows_ok + rows_quarantined`` always holds, against a small
pure-Python oracle of the validation rules.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sbg.errors import EXIT_INPUT, SbgError, SourceError
from sbg.io.sources import (
    DEFAULT_CLOCK_DATE,
    MAX_LINE_BYTES,
    MAX_RAW_CHARS,
    Batch,
    Source,
    infer_schema,
)

HEADER = b"timestamp,battery_id,voltage,temp,status"
BIG = 1 << 30  # one block for the whole file


# ----------------------------------------------------------------------------- helpers


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def csv_bytes(*rows, eol=b"\n", header=HEADER, trailing=True):
    data = eol.join([header, *rows])
    return data + eol if trailing else data


def read_all(path, block_bytes=BIG, **options):
    """Clean frame, quarantine as ``(line, raw, reason)`` and the batches, for one pass."""
    src = Source(path, block_bytes=block_bytes, **options)
    batches = list(src.batches())
    for b in batches:
        assert isinstance(b, Batch)
        assert b.rows_in == b.rows_ok + b.rows_quarantined
    frame = pd.concat([b.frame for b in batches], ignore_index=True) if batches else None
    quarantined = [(q.line, q.raw, q.reason) for b in batches for q in b.quarantined]
    return frame, quarantined, batches


def quarantine(path, **options):
    return read_all(path, **options)[1]


def lines_and_reasons(path, **options):
    return [(line, reason) for line, _, reason in quarantine(path, **options)]


def ts(text):
    return pd.Timestamp(text)


# ----------------------------------------------------------------------------- the hostile cases


def test_clean_file_reads_typed_frame(tmp_path):
    p = write(tmp_path, "clean.csv", csv_bytes(
        b"2024-01-01T00:00:00,a,3.70,25.0,ok",
        b"2024-01-01T00:00:00,b,3.60,24.0,charging",
        b"2024-01-01T00:00:01,a,3.71,25.1,ok",
        b"2024-01-01T00:00:01,b,3.61,24.1,ok",
    ))
    frame, q, batches = read_all(p)
    assert q == []
    assert list(frame.columns) == ["timestamp", "entity", "voltage", "temp", "status"]
    assert frame["timestamp"].dtype == "datetime64[ns]"
    assert frame["voltage"].dtype == "float64" and frame["temp"].dtype == "float64"
    assert frame["entity"].tolist() == ["a", "b", "a", "b"]
    assert frame["status"].tolist() == ["ok", "charging", "ok", "ok"]
    assert frame["voltage"].tolist() == [3.70, 3.60, 3.71, 3.61]
    assert sum(b.rows_in for b in batches) == 4


@pytest.mark.parametrize(
    "row, found",
    [(b"2024-01-01T00:00:01,a,3.7,25", 4), (b"2024-01-01T00:00:01,a,3.7,25,ok,extra", 6), (b"just-one-field", 1)],
)
def test_wrong_number_of_fields(tmp_path, row, found):
    p = write(tmp_path, "f.csv", csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok", row, b"2024-01-01T00:00:02,a,3.7,25,ok"))
    frame, q, _ = read_all(p)
    assert q == [(3, row.decode(), f"expected 5 fields, found {found}")]
    assert len(frame) == 2


@pytest.mark.parametrize(
    "value, reason",
    [
        ("yesterday", "column 1 'timestamp': unparsable timestamp 'yesterday'"),
        ("2024-13-45T00:00:00", "column 1 'timestamp': unparsable timestamp '2024-13-45T00:00:00'"),
        ("", "column 1 'timestamp': missing timestamp"),
    ],
)
def test_unparsable_timestamp(tmp_path, value, reason):
    bad = f"{value},a,3.7,25,ok".encode()
    p = write(tmp_path, "t.csv", csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok", b"2024-01-01T00:00:01,a,3.7,25,ok", bad))
    assert quarantine(p) == [(4, bad.decode(), reason)]


def test_non_numeric_signal_names_column(tmp_path):
    p = write(tmp_path, "n.csv", csv_bytes(
        b"2024-01-01T00:00:00,a,3.7,25,ok",
        b"2024-01-01T00:00:01,a,volts,25,ok",
        b"2024-01-01T00:00:02,a,3.7,hot,ok",
        b"2024-01-01T00:00:03,a,3.7,25,ok",
    ))
    assert lines_and_reasons(p) == [
        (3, "column 3 'voltage': 'volts' is not a number"),
        (4, "column 4 'temp': 'hot' is not a number"),
    ]


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "1e400"])
def test_infinite_values_quarantined(tmp_path, value):
    p = write(tmp_path, "i.csv", csv_bytes(
        b"2024-01-01T00:00:00,a,3.7,25,ok",
        f"2024-01-01T00:00:01,a,3.7,{value},ok".encode(),
        f"2024-01-01T00:00:02,a,{value},25,ok".encode(),
    ))
    assert lines_and_reasons(p) == [(3, "column 4 'temp': infinite value"), (4, "column 3 'voltage': infinite value")]


def test_timestamp_backwards_within_entity_but_not_across(tmp_path):
    p = write(tmp_path, "b.csv", csv_bytes(
        b"2024-01-01T00:00:05,a,3.7,25,ok",
        b"2024-01-01T00:00:00,b,3.7,25,ok",  # earlier, but another entity: fine
        b"2024-01-01T00:00:04,a,3.7,25,ok",  # backwards for a
        b"2024-01-01T00:00:05,a,3.8,25,ok",  # equal time, new values: fine
        b"2024-01-01T00:00:01,b,3.7,25,ok",
    ))
    frame, q, _ = read_all(p)
    assert [(line, reason.split(" (")[0]) for line, _, reason in q] == [
        (4, "timestamp goes backwards for entity 'a'"),
    ]
    assert "2024-01-01 00:00:04 after 2024-01-01 00:00:05" in q[0][2]
    assert frame["entity"].tolist() == ["a", "b", "a", "b"]


def test_exact_duplicate_row(tmp_path):
    p = write(tmp_path, "d.csv", csv_bytes(
        b"2024-01-01T00:00:00,a,3.7,25,ok",
        b"2024-01-01T00:00:00,a,3.7,25,ok",  # exact duplicate
        b"2024-01-01T00:00:00,a,3.7,25,warn",  # differs in a carried column: kept
        b"2024-01-01T00:00:00,b,3.7,25,ok",  # other entity: kept
        b"2024-01-01T00:00:00,a,3.70,25.0,ok",  # same values once parsed: duplicate
    ))
    frame, q, _ = read_all(p)
    assert [(line, reason) for line, _, reason in q] == [
        (3, "exact duplicate of an earlier row"), (6, "exact duplicate of an earlier row"),
    ]
    assert len(frame) == 3


@pytest.mark.parametrize("missing", ["", "NaN", "nan", "NA", "null"])
def test_nan_or_empty_signal_is_missing_not_quarantined(tmp_path, missing):
    p = write(tmp_path, "m.csv", csv_bytes(
        b"2024-01-01T00:00:00,a,3.7,25,ok",
        f"2024-01-01T00:00:01,a,{missing},25,ok".encode(),
    ))
    frame, q, _ = read_all(p)
    assert q == []
    assert len(frame) == 2 and math.isnan(frame["voltage"].iloc[1]) and frame["temp"].iloc[1] == 25.0


def test_missing_entity_id(tmp_path):
    p = write(tmp_path, "e.csv", csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok", b"2024-01-01T00:00:01,,3.7,25,ok",
                                           b"2024-01-01T00:00:02,a,3.7,25,ok"))
    assert lines_and_reasons(p) == [(3, "column 2 'battery_id': missing entity id")]


def test_quoted_fields_with_commas_and_newlines_keep_physical_line_numbers(tmp_path):
    p = write(tmp_path, "q.csv", csv_bytes(
        b'2024-01-01T00:00:00,a,3.7,25,"charging, fast"',
        b'2024-01-01T00:00:01,a,3.7,25,"first line',  # lines 3-4: one record
        b'second line"',
        b'2024-01-01T00:00:02,a,3.7,25,"say ""hi"""',
        b"2024-01-01T00:00:03,a,oops,25,ok",  # line 6
    ))
    frame, q, _ = read_all(p)
    assert frame["status"].tolist() == ["charging, fast", "first line\nsecond line", 'say "hi"']
    assert q == [(6, "2024-01-01T00:00:03,a,oops,25,ok", "column 3 'voltage': 'oops' is not a number")]


def test_crlf_blank_lines_and_no_trailing_newline(tmp_path):
    p = write(tmp_path, "crlf.csv", csv_bytes(
        b"2024-01-01T00:00:00,a,3.7,25,ok",
        b"",  # line 3: blank, skipped and not counted
        b"2024-01-01T00:00:01,a,3.7,25",  # line 4
        b"",
        b"",
        b"2024-01-01T00:00:02,a,x,25,ok",  # line 7
        b"2024-01-01T00:00:03,a,3.9,25,end",  # line 8, no newline after it
        eol=b"\r\n", trailing=False,
    ))
    frame, q, batches = read_all(p)
    assert q == [
        (4, "2024-01-01T00:00:01,a,3.7,25", "expected 5 fields, found 4"),
        (7, "2024-01-01T00:00:02,a,x,25,ok", "column 3 'voltage': 'x' is not a number"),
    ]
    assert frame["status"].tolist() == ["ok", "end"]  # no stray "\r"
    assert sum(b.rows_in for b in batches) == 4


def test_utf8_bom_is_accepted(tmp_path):
    p = write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok"))
    src = Source(p)
    assert src.schema.columns[0] == "timestamp" and src.schema.time == "timestamp"
    frame, q, _ = read_all(p)
    assert q == [] and len(frame) == 1


def test_latin1_header_is_a_clear_error_then_encoding_option_works(tmp_path):
    p = write(tmp_path, "lat.csv", b"timestamp,battery_id,voltage,temp\xe9rature,status\n"
                                   b"2024-01-01T00:00:00,a,3.7,25,\xe9t\xe9\n")
    with pytest.raises(SourceError) as err:
        Source(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}:1:4: not valid UTF-8 (byte 0xe9)") and "latin-1" in msg and "\n" not in msg
    assert (err.value.line, err.value.column) == (1, 4)
    src = Source(p, encoding="latin-1")
    assert src.schema.signals == ("voltage", "température")
    frame, q, _ = read_all(p, encoding="latin-1")
    assert q == [] and frame["status"].tolist() == ["été"]


def test_latin1_in_first_rows_names_line_and_column(tmp_path):
    p = write(tmp_path, "lat2.csv", csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok", b"2024-01-01T00:00:01,a,3.7,25,\xe9t\xe9"))
    with pytest.raises(SourceError) as err:
        Source(p)
    assert (err.value.line, err.value.column) == (3, 5)
    assert str(err.value).startswith(f"{p}:3:5: not valid UTF-8")


def test_invalid_utf8_in_a_later_row_quarantines_only_that_row(tmp_path):
    # Past the schema sample (256 KiB): the stream quarantines the row and goes on.
    good = [f"2024-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d},a,3.7,25,ok".encode() for i in range(10000)]
    bad = b"2024-01-01T03:00:00,a,3.7,25,\xff\xfeok"
    p = write(tmp_path, "late.csv", csv_bytes(*good, bad, b"2024-01-01T03:00:01,a,3.7,25,ok"))
    assert p.stat().st_size > 300_000
    for block in (4096, BIG):
        frame, q, _ = read_all(p, block_bytes=block)
        assert [(line, reason) for line, _, reason in q] == [(10002, "column 5: not valid utf-8 (byte 0xff)")]
        assert len(frame) == 10001


def test_utf16_is_a_clear_error(tmp_path):
    p = write(tmp_path, "u16.csv", csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok").decode().encode("utf-16"))
    with pytest.raises(SourceError, match="UTF-16"):
        Source(p)


def test_nul_bytes_quarantine_the_row(tmp_path):
    p = write(tmp_path, "nul.csv", csv_bytes(
        b"2024-01-01T00:00:00,a,3.7,25,ok", b"2024-01-01T00:00:01,a,3.\x007,25,ok", b"2024-01-01T00:00:02,a,3.7,25,ok",
    ))
    frame, q, _ = read_all(p)
    assert [(line, reason) for line, _, reason in q] == [(3, "contains NUL bytes")]
    assert len(frame) == 2


def test_nul_bytes_in_header_is_an_error(tmp_path):
    p = write(tmp_path, "nulh.csv", b"time\x00stamp,v\n2024-01-01,1\n")
    with pytest.raises(SourceError, match="NUL"):
        Source(p)


@pytest.mark.parametrize("block_bytes", [4096, 1 << 20, 4 << 20, 64 << 20])
def test_line_over_10_mb_is_quarantined_and_stream_goes_on(tmp_path, block_bytes):
    monster = b"2024-01-01T00:00:01,a,3.7,25," + b"x" * (MAX_LINE_BYTES + 10)
    p = write(tmp_path, "long.csv", csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok", monster, b"2024-01-01T00:00:02,a,3.8,25,ok"))
    t0 = time.perf_counter()
    frame, q, batches = read_all(p, block_bytes=block_bytes)
    assert time.perf_counter() - t0 < 10
    assert [(line, reason) for line, _, reason in q] == [(3, "line longer than 10 MB")]
    assert q[0][1].startswith("2024-01-01T00:00:01,a,3.7,25,xxx") and len(q[0][1]) <= MAX_RAW_CHARS + 40
    assert frame["voltage"].tolist() == [3.7, 3.8]
    assert sum(b.rows_in for b in batches) == 3


def test_gzip_input_reads_like_plain(tmp_path):
    data = csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok", b"2024-01-01T00:00:01,a,bad,25,ok", b"2024-01-01T00:00:02,a,3.9,25,ok")
    plain = write(tmp_path, "plain.csv", data)
    gz = write(tmp_path, "packed.csv.gz", gzip.compress(data))
    f1, q1, _ = read_all(plain)
    f2, q2, _ = read_all(gz, block_bytes=32)
    pd.testing.assert_frame_equal(f1.drop(columns="entity"), f2.drop(columns="entity"))
    assert q1 == q2 == [(3, "2024-01-01T00:00:01,a,bad,25,ok", "column 3 'voltage': 'bad' is not a number")]
    assert Source(gz).name == "packed"
    assert Source(gz).count_rows() == 3


def test_truncated_gzip_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(7)
    rows = [f"2024-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d},a,{v!r},25,ok".encode()
            for i, v in enumerate(rng.random(20000))]
    packed = gzip.compress(csv_bytes(*rows))  # ~1 MB of text, so the cut is past the schema sample
    p = write(tmp_path, "cut.csv.gz", packed[: len(packed) * 2 // 3])
    src = Source(p, block_bytes=1 << 20)
    with pytest.raises(SourceError, match="cannot read") as err:
        list(src.batches())
    assert str(err.value).startswith(str(p))
    with pytest.raises(SourceError, match="cannot read"):
        Source(p).count_rows()


def test_not_gzip_is_a_clear_error(tmp_path):
    p = write(tmp_path, "fake.csv.gz", csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok"))
    with pytest.raises(SourceError, match="cannot read"):
        Source(p)


def _parquet(tmp_path, name="cells.parquet"):
    stamps = pd.to_datetime([
        "2024-01-01 00:00:00", "2024-01-01 00:00:01", "2024-01-01 00:00:00", "2024-01-01 00:00:02",
        "2024-01-01 00:00:02", "2024-01-01 00:00:03", None, "2024-01-01 00:00:04",
    ])
    table = pa.table({
        "timestamp": pa.array(stamps),
        "battery_id": ["a", "a", "a", "a", "a", "b", "b", "a"],
        "voltage": [1.0, np.nan, 2.0, np.inf, 3.0, 4.0, 5.0, 3.0],
        "status": ["ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok"],
    })
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def test_parquet_input(tmp_path):
    p = _parquet(tmp_path)
    src = Source(p)
    assert (src.schema.time, src.schema.entity, src.schema.signals, src.schema.carried) == (
        "timestamp", "battery_id", ("voltage",), ("status",))
    frame, q, batches = read_all(p)
    # For Parquet, "line" is the 1-based row number.
    assert [(line, reason.split(" (")[0]) for line, _, reason in q] == [
        (3, "timestamp goes backwards for entity 'a'"),
        (4, "column 3 'voltage': infinite value"),
        (7, "column 1 'timestamp': missing timestamp"),
    ]
    assert frame["voltage"].tolist()[:2] == [1.0, pytest.approx(np.nan, nan_ok=True)]
    assert len(frame) == 5 and sum(b.rows_in for b in batches) == 8
    assert src.count_rows() == 8


def test_parquet_is_chunk_invariant(tmp_path):
    rng = np.random.default_rng(3)
    n = 5000
    table = pa.table({
        "time": pa.array(pd.date_range("2024-01-01", periods=n, freq="s")[rng.permutation(n) // 50 * 50 + np.arange(n) % 50]),
        "unit_id": rng.choice(["u1", "u2", "u3"], n),
        "v": np.where(rng.random(n) < 0.01, np.inf, rng.normal(size=n)),
    })
    p = tmp_path / "big.parquet"
    pq.write_table(table, p, row_group_size=700)
    f1, q1, b1 = read_all(p, block_bytes=1)
    f2, q2, b2 = read_all(p, block_bytes=BIG)
    assert len(b1) > 1
    pd.testing.assert_frame_equal(f1, f2)
    assert q1 == q2 and len(q1) > 50
    assert len(f1) + len(q1) == n


def test_semicolon_delimited(tmp_path):
    p = write(tmp_path, "semi.csv", b'timestamp;battery_id;voltage;status\n'
                                    b'2024-01-01T00:00:01;a;3.7;"x;y"\n'
                                    b'2024-01-01T00:00:02;a;3.8;ok\n'
                                    b'2024-01-01T00:00:03;a;3,9;ok\n')
    src = Source(p)
    assert src.schema.delimiter == ";" and src.schema.signals == ("voltage",)
    frame, q, _ = read_all(p)
    assert frame["status"].tolist() == ["x;y", "ok"]
    assert q == [(4, "2024-01-01T00:00:03;a;3,9;ok", "column 3 'voltage': '3,9' is not a number")]


# ----------------------------------------------------------------------------- files that fail at once


def _one_line_source_error(path, **options):
    with pytest.raises(SourceError) as err:
        Source(path, **options)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path))
    assert err.value.exit_code == EXIT_INPUT
    return msg


@pytest.mark.parametrize(
    "name, data, options, expect",
    [
        ("empty.csv", b"", {}, "is empty"),
        ("blank.csv", b"\n\n  \n", {}, "is empty"),
        ("header.csv", HEADER + b"\n", {}, "has a header but no data rows"),
        ("header_nonl.csv", HEADER, {}, "has a header but no data rows"),
        ("nots.csv", b"a,b\n1,2\n3,4\n", {}, "no usable timestamp column"),
        ("nonum.csv", b"timestamp,s\n2024-01-01,x\n2024-01-02,y\n", {}, "no numeric signal column"),
        ("ok.csv", HEADER + b"\n2024-01-01,a,1,2,ok\n", {"time": "nope"}, "no column named 'nope'"),
        ("ok.csv", HEADER + b"\n2024-01-01,a,1,2,ok\n", {"signals": ["voltage", "nope"]}, "no column named 'nope'"),
        ("ok.csv", HEADER + b"\n2024-01-01,a,1,2,ok\n", {"entity": "nope"}, "no column named 'nope'"),
        ("ok.csv", HEADER + b"\n2024-01-01,a,1,2,ok\n", {"signals": ["timestamp"]}, "cannot also be a signal"),
        ("dupcol.csv", b"timestamp,v,v\n2024-01-01,1,2\n", {}, "duplicate column names"),
        ("fake.parquet", b"PAR1 not really", {}, "not a readable Parquet file"),
    ],
)
def test_unreadable_file_fails_at_once_with_one_line_naming_it(tmp_path, name, data, options, expect):
    p = write(tmp_path, name, data)
    assert expect in _one_line_source_error(p, **options)


@pytest.mark.parametrize("block_bytes", [0, -1])
def test_block_bytes_must_be_positive(tmp_path, block_bytes):
    p = write(tmp_path, "ok.csv", csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok"))
    with pytest.raises(ValueError, match="block_bytes"):
        Source(p, block_bytes=block_bytes)


def test_missing_file_and_directory(tmp_path):
    assert _one_line_source_error(tmp_path / "nothere.csv").endswith("no such file")
    assert _one_line_source_error(tmp_path / "nothere.parquet").endswith("no such file")
    assert "directory" in _one_line_source_error(tmp_path)


@pytest.mark.parametrize(
    "options, expect",
    [
        ({"encoding": "klingon"}, "unknown encoding"),
        ({"delimiter": ";;"}, "delimiter"),
        ({"date": "someday"}, "not a date"),
        ({"time_format": "%Q"}, "bad time format"),
    ],
)
def test_impossible_options_are_usage_errors(tmp_path, options, expect):
    p = write(tmp_path, "ok.csv", csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok"))
    with pytest.raises(SbgError, match=expect) as err:
        Source(p, **options)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- schema inference


def test_long_format_infers_entity_signals_and_carried(tmp_path):
    p = write(tmp_path, "long.csv", b"Date Time,cell_id,Voltage (V),current_a,mode\n"
                                    b"2024-01-01 00:00:00,c1,3.7,1.5,CC\n2024-01-01 00:00:00,c2,3.6,1.4,CC\n"
                                    b"2024-01-01 00:00:01,c1,3.7,1.5,CV\n2024-01-01 00:00:01,c2,3.6,1.4,CV\n")
    s = Source(p).schema
    assert (s.time, s.time_kind, s.entity, s.signals, s.carried) == (
        "Date Time", "datetime", "cell_id", ("Voltage (V)", "current_a"), ("mode",))


def test_wide_format_uses_file_name_as_entity(tmp_path):
    p = write(tmp_path, "pack7.csv.gz", gzip.compress(b"timestamp,cell_1,cell_2,cell_3\n2024-01-01,1,2,3\n2024-01-02,1,2,3\n"))
    src = Source(p)
    assert src.schema.entity is None and src.schema.signals == ("cell_1", "cell_2", "cell_3")
    frame, _, _ = read_all(p)
    assert frame["entity"].unique().tolist() == ["pack7"]
    assert "wide format" in src.schema.describe()


def test_entity_false_forces_wide_format(tmp_path):
    p = write(tmp_path, "w.csv", b"timestamp,device,v\n2024-01-01,x,1\n2024-01-02,x,2\n")
    assert Source(p).schema.entity == "device"
    s = Source(p, entity=False).schema
    assert s.entity is None and s.carried == ("device",)


def test_iso_with_offsets_becomes_naive_utc(tmp_path):
    p = write(tmp_path, "tz.csv", b"timestamp,v\n2024-01-01T02:00:00+02:00,1\n2024-01-01T01:00:00Z,2\n")
    frame, q, _ = read_all(p)
    assert q == [] and frame["timestamp"].tolist() == [ts("2024-01-01 00:00:00"), ts("2024-01-01 01:00:00")]


def test_datetime_found_by_values_in_an_oddly_named_column(tmp_path):
    p = write(tmp_path, "odd.csv", b"when,v\n2024-01-01 10:00:00,1\n2024-01-01 10:00:01,2\n")
    assert Source(p).schema.time == "when"


@pytest.mark.parametrize(
    "header, values, kind, first",
    [
        ("epoch", ["1700000000", "1700000001"], "epoch_s", "2023-11-14 22:13:20"),
        ("ts", ["1700000000000", "1700000001500"], "epoch_ms", "2023-11-14 22:13:20"),
        ("unix_time", ["1700000000.25", "1700000001"], "epoch_s", "2023-11-14 22:13:20.250"),
        ("test_time", ["0.5", "1.5"], "seconds", "1970-01-01 00:00:00.500"),
    ],
)
def test_numeric_time_kinds(tmp_path, header, values, kind, first):
    p = write(tmp_path, "e.csv", f"{header},v\n{values[0]},1\n{values[1]},2\n".encode())
    assert Source(p).schema.time_kind == kind
    frame, q, _ = read_all(p)
    assert q == [] and frame["timestamp"].iloc[0] == ts(first)


def test_clock_times_roll_over_midnight_on_default_date(tmp_path):
    p = write(tmp_path, "clock.csv", b"time,v\n23:59:58,1\n23:59:59,2\n00:00:00,3\n00:00:01,4\n")
    src = Source(p)
    assert src.schema.time_kind == "clock" and src.schema.date == DEFAULT_CLOCK_DATE == "1970-01-01"
    frame, q, _ = read_all(p, block_bytes=16)  # the rollover is seen across blocks too
    assert q == []
    assert frame["timestamp"].tolist() == [
        ts("1970-01-01 23:59:58"), ts("1970-01-01 23:59:59"), ts("1970-01-02 00:00:00"), ts("1970-01-02 00:00:01")]


def test_clock_with_date_option_and_several_days(tmp_path):
    rows = "".join(f"{h:02d}:00:00,{i}\n" for i, h in enumerate([22, 23, 1, 12, 23, 0]))
    p = write(tmp_path, "clock2.csv", ("time,v\n" + rows).encode())
    frame, q, _ = read_all(p, date="2024-03-05")
    assert q == []
    assert frame["timestamp"].dt.strftime("%d %H").tolist() == ["05 22", "05 23", "06 01", "06 12", "06 23", "07 00"]


def test_clock_going_back_less_than_half_a_day_is_disorder(tmp_path):
    p = write(tmp_path, "clock3.csv", b"time,v\n10:00:00,1\n09:59:59,2\n10:00:01,3\n")
    assert lines_and_reasons(p)[0][0] == 3


@pytest.mark.parametrize("block_bytes", [8, 40, BIG])
def test_clock_times_are_right_on_every_parsing_path(tmp_path, block_bytes):
    # A bad value or a quoted field sends a block down the untyped / row-by-row path.
    p = write(tmp_path, "clockq.csv", b'time,v,note\n10:00:00,1,ok\n10:00:01,2,"a, b"\n10:00:02,x,ok\n'
                                      b"10:00:03,4,ok\n10:05,5,ok\n23:59,6,ok\n00:00:30,7,ok\n")
    frame, q, _ = read_all(p, block_bytes=block_bytes)
    assert q == [(4, "10:00:02,x,ok", "column 2 'v': 'x' is not a number")]
    assert frame["timestamp"].dt.strftime("%d %H:%M:%S").tolist() == [
        "01 10:00:00", "01 10:00:01", "01 10:00:03", "01 10:05:00", "01 23:59:00", "02 00:00:30"]


def test_explicit_overrides_win_over_inference(tmp_path):
    p = write(tmp_path, "o.csv", b"t_a,t_b,id,v,w,x\n2024-01-01,2025-01-01,a,1,2,9\n2024-01-02,2025-01-02,a,3,4,9\n")
    inferred = Source(p).schema
    assert (inferred.time, inferred.entity, inferred.signals) == ("t_a", "id", ("v", "w", "x"))
    s = Source(p, time="t_b", signals=["w"], entity=False).schema
    assert (s.time, s.entity, s.signals, s.carried) == ("t_b", None, ("w",), ("t_a", "id", "v", "x"))
    frame, _, _ = read_all(p, time="t_b", entity="id", signals=["w"])
    assert frame.columns.tolist() == ["timestamp", "entity", "w", "t_a", "v", "x"]
    assert frame["timestamp"].tolist() == [ts("2025-01-01"), ts("2025-01-02")]


@pytest.mark.parametrize(
    "header, values, expect",
    [
        ("ts", ["1700000000000", "1700000001501", "1700000002999"],
         ["2023-11-14 22:13:20", "2023-11-14 22:13:21.501", "2023-11-14 22:13:22.999"]),
        ("epoch", ["1700000000.25", "1700000001.501", "1700000002.000001"],
         ["2023-11-14 22:13:20.25", "2023-11-14 22:13:21.501", "2023-11-14 22:13:22.000001"]),
    ],
)
def test_epoch_fractions_are_exact(tmp_path, header, values, expect):
    p = write(tmp_path, "ep.csv", (f"{header},v\n" + "".join(f"{t},{i}\n" for i, t in enumerate(values))).encode())
    frame, q, _ = read_all(p)
    assert q == [] and frame["timestamp"].tolist() == [ts(e) for e in expect]


@pytest.mark.parametrize("block_bytes", [8, BIG])
def test_out_of_range_times_are_quarantined_not_fatal(tmp_path, block_bytes):
    p = write(tmp_path, "oob.csv", b"timestamp,v\n2024-01-01T00:00:02,1\n2600-01-01T00:00:00,2\n"
                                   b"2024-01-01T00:00:03.123456789,3\n0001-01-01,4\n2024-01-01T00:00:04,5\n")
    frame, q, _ = read_all(p, block_bytes=block_bytes)
    assert [(line, reason) for line, _, reason in q] == [
        (3, "column 1 'timestamp': timestamp '2600-01-01T00:00:00' outside the supported range (1677-09-21 to 2262-04-11)"),
        (5, "column 1 'timestamp': timestamp '0001-01-01' outside the supported range (1677-09-21 to 2262-04-11)"),
    ]
    assert frame["v"].tolist() == [1, 3, 5]
    p2 = write(tmp_path, "oob2.csv", b"epoch,v\n1700000000,1\n1e300,2\n1700000002,3\n")
    assert lines_and_reasons(p2, block_bytes=block_bytes) == [(3, "column 1 'epoch': unparsable timestamp '1e+300'")]


def test_out_of_range_parquet_time_is_quarantined(tmp_path):
    import datetime

    table = pa.table({
        "timestamp": pa.array([datetime.datetime(2024, 1, 1), datetime.datetime(2600, 1, 1), datetime.datetime(2024, 1, 2)],
                              pa.timestamp("us")),
        "v": [1.0, 2.0, 3.0],
    })
    p = tmp_path / "oob.parquet"
    pq.write_table(table, p)
    frame, q, _ = read_all(p)
    assert [line for line, _, _ in q] == [2] and "outside the supported range (1677-09-21 to 2262-04-11)" in q[0][2]
    assert frame["v"].tolist() == [1.0, 3.0]


def test_time_format_option(tmp_path):
    p = write(tmp_path, "fmt.csv", b"stamp,v\n05/03/2024 10:00,1\n06/03/2024 10:00,2\n")
    frame, q, _ = read_all(p, time="stamp", time_format="%d/%m/%Y %H:%M")
    assert q == [] and frame["timestamp"].tolist() == [ts("2024-03-05 10:00"), ts("2024-03-06 10:00")]


def test_infer_schema_and_describe(tmp_path):
    p = write(tmp_path, "d.csv", csv_bytes(b"2024-01-01T00:00:00,a,3.7,25,ok"))
    s = infer_schema(p)
    text = s.describe()
    for part in ("'timestamp'", "'battery_id'", "voltage, temp", "status", "','"):
        assert part in text
    d = s.as_dict()
    assert d["signals"] == ["voltage", "temp"] and d["carried"] == ["status"] and d["entity"] == "battery_id"


# ----------------------------------------------------------------------------- count_rows / time_span


@pytest.mark.parametrize(
    "eol, trailing, blanks", [(b"\n", True, 0), (b"\n", False, 0), (b"\r\n", True, 0), (b"\n", True, 3), (b"\r\n", False, 2)]
)
def test_count_rows_and_time_span(tmp_path, eol, trailing, blanks):
    rows = [f"2024-01-01T00:00:{i:02d},a,3.7,25,ok".encode() for i in range(20)]
    rows[5:5] = [b""] * blanks
    p = write(tmp_path, "c.csv", csv_bytes(*rows, eol=eol, trailing=trailing))
    src = Source(p)
    assert src.count_rows() == 20
    assert src.count_rows() == 20  # cached
    assert sum(b.rows_in for b in src.batches()) == 20
    assert src.time_span() == (ts("2024-01-01 00:00:00").value, ts("2024-01-01 00:00:19").value)


def test_time_span_skips_quarantined_rows_at_either_end(tmp_path):
    rows = [b"", b"garbage,a,1,2,ok", b"2024-01-01T00:00:01,a,3.7,25,ok", b'2024-01-01T00:00:02,a,3.7,25,"x, y"',
            b"2024-01-01T00:00:03,a,3.7,25,ok", b"2024-01-01T00:00:04,a,3.7,25", b"not-a-time,a,1,2,ok", b""]
    p = write(tmp_path, "span.csv", csv_bytes(*rows))
    assert Source(p).time_span() == (ts("2024-01-01 00:00:01").value, ts("2024-01-01 00:00:03").value)
    p2 = write(tmp_path, "clock_span.csv", b"time,v\n23:00:00,1\n23:30:00,2\n")
    assert Source(p2, date="2024-02-29").time_span() == (ts("2024-02-29 23:00").value, ts("2024-02-29 23:30").value)


def test_time_span_of_epoch_and_parquet(tmp_path):
    p = write(tmp_path, "ms.csv", b"ts,v\n1700000000000,1\n1700000001500,2\n")
    assert Source(p).time_span() == (1700000000000 * 10**6, 1700000001500 * 10**6)
    pq_path = _parquet(tmp_path)
    assert Source(pq_path).time_span() == (ts("2024-01-01 00:00:00").value, ts("2024-01-01 00:00:04").value)


# ----------------------------------------------------------------------------- chunk invariance (hypothesis)


HOSTILE_ROWS = [
    b"2024-01-01T00:00:00,a,3.70,25.0,ok",  # 2
    b"2024-01-01T00:00:00,b,3.60,24.0,ok",  # 3  same time, other entity: fine
    b"2024-01-01T00:00:01,a,3.71,25.1",  # 4  too few fields
    b"not-a-time,a,3.72,25.2,ok",  # 5  bad timestamp
    b"2024-01-01T00:00:02,a,volts,25.3,ok",  # 6  non-numeric voltage
    b"2024-01-01T00:00:03,a,3.73,inf,ok",  # 7  +inf temp
    b"2024-01-01T00:00:04,a,-inf,25.4,ok",  # 8  -inf voltage
    b'2024-01-01T00:00:05,a,3.74,25.5,"charging, fast"',  # 9  quoted comma
    b"2024-01-01T00:00:01,b,3.61,24.1,ok",  # 10 fine (b)
    b"2024-01-01T00:00:04,a,3.75,25.6,ok",  # 11 backwards for a
    b'2024-01-01T00:00:05,a,3.74,25.5,"charging, fast"',  # 12 duplicate of 9
    b"2024-01-01T00:00:06,a,,25.7,ok",  # 13 empty voltage: kept as NaN
    b'2024-01-01T00:00:07,a,NaN,25.8,"multi',  # 14 NaN kept; quoted CRLF inside ...
    b'line note"',  # 15 ... the field
    b"",  # 16 blank
    b'2024-01-01T00:00:08,a,3.76,,"a ""quoted"" word"',  # 17
    b"2024-01-01T00:00:02,b,3.62,24.2,ok",  # 18
    b"2024-01-01T00:00:02,b,3.62,24.2,ok",  # 19 duplicate
    b"2024-01-01T00:00:09,a,3.77,25.9,ok,extra",  # 20 too many fields
    b"2024-01-01T00:00:10,a,3.\x0078,26.0,ok",  # 21 NUL byte
    b",b,3.63,24.3,ok",  # 22 missing timestamp
    b"2024-01-01T00:00:11,a,3.79," + b"9" * 2500 + b",ok",  # 23 long but finite
    b"2024-01-01T00:00:12,a,3.80,26.1," + b"z" * 2500 + b",extra",  # 24 long and too many fields
    b"2024-01-01T00:00:13,,3.81,26.2,ok",  # 25 missing entity
    b"   ",  # 26 whitespace only
    b"2024-01-01T00:00:14,a,3.82,26.3,ok",  # 27 last, no trailing newline
]

HOSTILE_QUARANTINE = [
    (4, "expected 5 fields, found 4"),
    (5, "column 1 'timestamp': unparsable timestamp 'not-a-time'"),
    (6, "column 3 'voltage': 'volts' is not a number"),
    (7, "column 4 'temp': infinite value"),
    (8, "column 3 'voltage': infinite value"),
    (11, "timestamp goes backwards for entity 'a' (2024-01-01 00:00:04 after 2024-01-01 00:00:05)"),
    (12, "exact duplicate of an earlier row"),
    (19, "exact duplicate of an earlier row"),
    (20, "expected 5 fields, found 6"),
    (21, "contains NUL bytes"),
    (22, "column 1 'timestamp': missing timestamp"),
    (23, "column 4 'temp': infinite value"),
    (24, "expected 5 fields, found 6"),
    (25, "column 2 'battery_id': missing entity id"),
    (26, "expected 5 fields, found 1"),
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The hostile file in four shapes (LF/CRLF, with/without final newline) and its one-block reading."""
    root = tmp_path_factory.mktemp("hostile")
    out = {}
    for eol in (b"\n", b"\r\n"):
        for trailing in (True, False):
            p = root / f"hostile_{len(eol)}_{int(trailing)}.csv"
            p.write_bytes(csv_bytes(*HOSTILE_ROWS, eol=eol, trailing=trailing))
            out[eol, trailing] = (p, read_all(p, block_bytes=BIG))
    return out


def test_hostile_file_exact_quarantine(hostile):
    for (eol, _), (_, (frame, q, batches)) in hostile.items():
        assert [(line, reason) for line, _, reason in q] == HOSTILE_QUARANTINE
        rows_in = sum(b.rows_in for b in batches)
        assert rows_in == 24 == len(frame) + len(q)  # 26 physical data lines, one blank, one continuation
        assert frame["status"].tolist()[2] == "charging, fast"
        assert frame["status"].tolist()[5] == f"multi{eol.decode()}line note"
        assert frame["status"].tolist()[6] == 'a "quoted" word'
        assert math.isnan(frame["voltage"].iloc[4]) and math.isnan(frame["voltage"].iloc[5])
        long_raw = dict((line, raw) for line, raw, _ in q)[24]
        assert long_raw == HOSTILE_ROWS[22][:MAX_RAW_CHARS].decode() + f"… ({len(HOSTILE_ROWS[22])} bytes)"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block=st.integers(16, 4096), eol=st.sampled_from([b"\n", b"\r\n"]), trailing=st.booleans())
@example(block=16, eol=b"\r\n", trailing=False)
@example(block=1, eol=b"\r\n", trailing=True)
@example(block=2, eol=b"\n", trailing=False)
def test_hostile_file_is_chunk_invariant(hostile, block, eol, trailing):
    path, (ref_frame, ref_q, _) = hostile[eol, trailing]
    frame, q, batches = read_all(path, block_bytes=block)
    assert q == ref_q
    pd.testing.assert_frame_equal(frame, ref_frame)
    assert sum(b.rows_in for b in batches) == len(frame) + len(q)


# An oracle for the validation rules on a small alphabet, in plain Python.

_TIMES = [f"2024-01-01T00:00:0{i}" for i in range(5)] + ["bad-ts", ""]
_VALUES = ["1.5", "2", "2.0", "", "NaN", "x", "inf", "-inf"]
_STATUS = {"ok": "ok", '"q, c"': "q, c", '"two\nlines"': "two\nlines", '"say ""hi"""': 'say "hi"'}

_row = st.one_of(
    st.just(None),  # a blank line
    st.tuples(
        st.sampled_from(_TIMES), st.sampled_from(["a", "b"]), st.sampled_from(_VALUES), st.sampled_from(_VALUES),
        st.sampled_from(sorted(_STATUS)), st.sampled_from([5, 5, 5, 5, 4, 6]),
    ),
)


def _oracle(rows):
    """Expected clean rows and quarantine ``(line, reason)`` for ``rows`` after the header."""
    line, clean, bad = 2, [], []
    newest: dict[str, pd.Timestamp] = {}
    seen: dict[str, set] = {}
    for row in rows:
        if row is None:
            line += 1
            continue
        t, ent, v, w, status, arity = row
        fields = [t, ent, v, w, status, "extra"][:arity]
        text = ",".join(fields)
        reason = None
        if arity != 5:
            reason = f"expected 5 fields, found {arity}"
        elif t == "":
            reason = "column 1 'timestamp': missing timestamp"
        elif t == "bad-ts":
            reason = "column 1 'timestamp': unparsable timestamp 'bad-ts'"
        else:
            nums = []
            for col, (name, value) in enumerate((("voltage", v), ("temp", w)), start=3):
                if value == "x":
                    reason = f"column {col} '{name}': 'x' is not a number"
                    break
                number = float(value) if value else math.nan
                if math.isinf(number):
                    reason = f"column {col} '{name}': infinite value"
                    break
                nums.append(number)
        if reason is None:
            when = pd.Timestamp(t)
            key = (when, ent, *("nan" if math.isnan(x) else x for x in nums), _STATUS[status])
            if ent in newest and when < newest[ent]:
                reason = f"timestamp goes backwards for entity '{ent}'"
            elif key in seen.setdefault(ent, set()):
                reason = "exact duplicate of an earlier row"
            else:
                newest[ent] = max(when, newest.get(ent, when))
                seen[ent].add(key)
                clean.append((when, ent, *nums, _STATUS[status]))
        if reason is not None:
            bad.append((line, reason))
        line += 1 + text.count("\n")
    return clean, bad


def _render(rows, eol):
    lines = []
    for row in rows:
        if row is None:
            lines.append(b"")
        else:
            t, ent, v, w, status, arity = row
            lines.append(",".join([t, ent, v, w, status, "extra"][:arity]).encode())
    return lines


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("oracle")


@pytest.fixture(scope="module")
def fixed_schema(oracle_dir):
    p = oracle_dir / "schema.csv"
    p.write_bytes(csv_bytes(b"2024-01-01T00:00:00,a,1,2,ok"))
    return infer_schema(p)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(_row, min_size=1, max_size=40),
    block=st.integers(16, 4096),
    eol=st.sampled_from([b"\n", b"\r\n"]),
    trailing=st.booleans(),
)
def test_validation_matches_oracle_and_reconciles_for_any_block_size(oracle_dir, fixed_schema, rows, block, eol, trailing):
    path = oracle_dir / "case.csv"
    path.write_bytes(csv_bytes(*_render(rows, eol), eol=eol, trailing=trailing))
    schema = dataclasses.replace(fixed_schema, path=str(path))
    expected_clean, expected_bad = _oracle(rows)
    results = []
    for size in (block, BIG):
        src = Source(path, block_bytes=size, schema=schema)
        batches = list(src.batches())
        for b in batches:  # reconciliation holds batch by batch
            assert b.rows_in == b.rows_ok + b.rows_quarantined
        q = [(x.line, x.reason) for b in batches for x in b.quarantined]
        frame = pd.concat([b.frame for b in batches], ignore_index=True) if batches else None
        got_clean = [] if frame is None else [
            (r.timestamp, r.entity, r.voltage, r.temp, r.status) for r in frame.itertuples(index=False)]
        assert sum(b.rows_in for b in batches) == sum(r is not None for r in rows)
        assert [(line, reason.split(" (")[0]) for line, reason in q] == expected_bad
        assert len(got_clean) == len(expected_clean)
        for got, want in zip(got_clean, expected_clean, strict=True):
            assert got[:2] == want[:2] and got[4] == want[4]
            np.testing.assert_array_equal(np.array(got[2:4], dtype=float), np.array(want[2:4], dtype=float))
        results.append((frame, q))
    assert results[0][1] == results[1][1]
    if results[0][0] is not None:
        pd.testing.assert_frame_equal(results[0][0], results[1][0])


# Chunk invariance for every kind of time column: typed (pyarrow) blocks and
# untyped / row-by-row blocks must read the same values the same way.

_KIND_POOLS = {
    "time": ["10:00:00", "10:00:0{d}", "10:0{d}", "1:00:0{d}", "10:00:0{d}.5", "24:00:00", "x", ""],
    "epoch": ["170000000{d}", "170000000{d}.25", "170000000{d}.501", "1.7e9", "1e300", "x", ""],
    "epoch_ms": ["170000000000{d}", "17000000000{d}1", "170000000000{d}.5", "x", ""],
    "test_time": ["{d}", "{d}.5", "-{d}", "1e300", "x", ""],
    "timestamp": ["2024-01-01T00:00:0{d}", "2024-01-01 00:00:0{d}.123456789", "2024-01-01T00:00:0{d}Z",
                  "2024-01-01T02:00:0{d}+02:00", "2600-01-01", "20240101T00000{d}", "x", ""],
}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    column=st.sampled_from(sorted(_KIND_POOLS)),
    rows=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 9), st.sampled_from(["a", "b"]),
                            st.sampled_from(["1.5", "x", "", "inf"]), st.sampled_from(["ok", '"p, q"', '"l1\nl2"'])),
                  min_size=1, max_size=30),
    block=st.integers(8, 512),
)
def test_every_time_kind_is_chunk_invariant(oracle_dir, column, rows, block):
    pool = _KIND_POOLS[column]
    good = pool[0].format(d=0)
    lines = [f"{column},battery_id,v,note".encode(), f"{good},a,1,ok".encode(), f"{good},b,1,ok".encode()]
    for k, d, ent, v, note in rows:
        lines.append(f"{pool[k % len(pool)].format(d=d)},{ent},{v},{note}".encode())
    clean = oracle_dir / "kinds_clean.csv"
    clean.write_bytes(b"\n".join(lines[:3]) + b"\n")
    path = oracle_dir / "kinds.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    schema = dataclasses.replace(infer_schema(clean, time=column, entity="battery_id", signals=["v"]), path=str(path))
    f1, q1, b1 = read_all(path, block_bytes=block, schema=schema)
    f2, q2, b2 = read_all(path, block_bytes=BIG, schema=schema)
    assert q1 == q2
    pd.testing.assert_frame_equal(f1, f2)
    assert sum(b.rows_in for b in b1) == len(rows) + 2 == len(f1) + len(q1)
