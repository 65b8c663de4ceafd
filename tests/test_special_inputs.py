"""Inputs that are not plain data files, and dates a data file cannot hold.

* a named pipe (or a device) given to ``sbg detect``, ``validate`` or
  ``replay`` is refused at once with one line naming it (exit 3), never read:
  reading it would block until its writer closes it, maybe for ever;
* a real date outside the nanosecond range (year 9999, 1677) is quarantined
  as outside the supported range, not as unparsable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sbg.cli import main
from sbg.errors import EXIT_INPUT

DATA = "timestamp,v\n2024-01-01T00:00:00,1\n2024-01-01T00:00:01,2\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [
    ["detect", "{fifo}", "-o", "{tmp}/out.csv"],
    ["validate", "{fifo}"],
    ["replay", "{fifo}", "--speed", "max", "--quiet"],
    ["detect", "{data}", "--baseline", "{fifo}", "-o", "{tmp}/out.csv"],
], ids=["detect", "validate", "replay", "baseline"])
def test_a_named_pipe_is_refused_not_read(tmp_path, capsys, command):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    data = tmp_path / "data.csv"
    data.write_text(DATA)
    # A writer that keeps the pipe open: a reader gets these rows, then waits for more for ever.
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, DATA.encode())
        code = main([a.format(fifo=fifo, data=data, tmp=tmp_path) for a in command])
    finally:
        os.close(fd)
    assert code == EXIT_INPUT
    err = capsys.readouterr().err
    assert err == f"sbg: error: {fifo}: not a regular file: a named pipe\n"
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_a_device_is_refused_not_read(capsys):
    assert main(["validate", "/dev/zero"]) == EXIT_INPUT
    assert capsys.readouterr().err == "sbg: error: /dev/zero: not a regular file: a character device\n"


def test_dates_outside_the_nanosecond_range_say_so(tmp_path, capsys):
    p = tmp_path / "years.csv"
    p.write_text("timestamp,v\n"
                 "1677-12-01T00:00:00,1\n"   # line 2: early, but inside the range
                 "2024-01-01T00:00:00,2\n"
                 "9999-12-31T23:59:59,3\n"   # line 4
                 "1677-01-01,4\n"            # line 5
                 "2262-04-12T00:00:00,5\n"   # line 6: a day past the end
                 "not-a-date,6\n"            # line 7: not a date at all
                 "2024-01-01T00:00:01,7\n")
    assert main(["validate", "--json", str(p)]) == 0
    report = json.loads(capsys.readouterr().out)
    outside = "outside the supported range (1677-09-21 to 2262-04-11)"
    assert {q["line"]: q["reason"] for q in report["quarantined"]} == {
        4: f"column 1 'timestamp': timestamp '9999-12-31T23:59:59' {outside}",
        5: f"column 1 'timestamp': timestamp '1677-01-01' {outside}",
        6: f"column 1 'timestamp': timestamp '2262-04-12T00:00:00' {outside}",
        7: "column 1 'timestamp': unparsable timestamp 'not-a-date'",
    }
    assert (report["rows_ok"], report["first"]) == (3, "1677-12-01 00:00:00")
