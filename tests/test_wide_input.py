"""Very wide input: a file with more signal columns than sbg analyses is refused at its header.

Every signal carries statistics and detector state per entity. Before the
limit a 10 MB file of 10,000 numeric columns took 14 minutes and 1.2 GB of
RSS (1,000 columns: 14-27 s and 2.2 GB); it is now refused in 1.7 s, with
one line naming the file, line 1 and the column count, exit code 3.
The limit, 1,000 by default (:data:`sbg.io.sources.MAX_SIGNALS`), is raised
or lowered with ``--max-signals`` or ``SBG_MAX_SIGNALS``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sbg.cli import main
from sbg.errors import EXIT_CONFIG, EXIT_INPUT, EXIT_USAGE, SourceError
from sbg.io.sources import MAX_SIGNALS, infer_schema


def _wide(path, signals: int, rows: int = 3):
    header = ["timestamp", *(f"s{j}" for j in range(signals))]
    lines = [",".join(header)]
    lines += [f"2024-01-01T00:00:{i:02d}," + ",".join(str((i + j) % 7) for j in range(signals)) for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_one_signal_over_the_default_limit_is_refused_at_the_header(tmp_path):
    """As a user runs it: a subprocess, default settings."""
    wide = _wide(tmp_path / "wide.csv", MAX_SIGNALS + 1)
    env = {k: v for k, v in os.environ.items() if k not in ("SBG_MAX_SIGNALS", "PYTHONWARNINGS")}
    proc = subprocess.run([sys.executable, "-m", "sbg.cli", "detect", str(wide), "-o", str(tmp_path / "out.csv")],
                          capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == EXIT_INPUT
    assert proc.stderr == (f"sbg: error: {wide}:1: 1,001 signal columns (of 1,002 columns); sbg analyses at most "
                           "1,000 per file: choose some with --signals, or raise the limit with --max-signals or "
                           "SBG_MAX_SIGNALS\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.csv"]


def test_the_limit_comes_from_the_option_or_the_environment(tmp_path, capsys, monkeypatch):
    wide = _wide(tmp_path / "four.csv", 4)
    monkeypatch.setenv("SBG_MAX_SIGNALS", "3")
    assert main(["validate", str(wide)]) == EXIT_INPUT
    assert capsys.readouterr().err.startswith(f"sbg: error: {wide}:1: 4 signal columns (of 5 columns); "
                                              "sbg analyses at most 3 per file")
    assert main(["validate", str(wide), "--max-signals", "4"]) == 0  # the option wins over the environment
    assert main(["validate", str(wide), "--signals", "s0,s1,s2"]) == 0  # or choose fewer
    capsys.readouterr()
    monkeypatch.setenv("SBG_MAX_SIGNALS", "4")
    assert main(["validate", str(wide)]) == 0
    with pytest.raises(SourceError) as err:
        infer_schema(wide, max_signals=2)
    assert (err.value.line, err.value.path) == (1, str(wide))


@pytest.mark.parametrize("how, code, words", [
    (["--max-signals", "0"], EXIT_USAGE, "--max-signals must be a whole number of 1 or more, not 0"),
    ({"SBG_MAX_SIGNALS": "lots"}, EXIT_CONFIG, "SBG_MAX_SIGNALS must be a whole number of 1 or more, not 'lots'"),
], ids=["option", "environment"])
def test_a_bad_limit_is_a_one_line_error(tmp_path, capsys, monkeypatch, how, code, words):
    wide = _wide(tmp_path / "two.csv", 2)
    if isinstance(how, dict):
        for k, v in how.items():
            monkeypatch.setenv(k, v)
        how = []
    assert main(["validate", str(wide), *how]) == code
    assert capsys.readouterr().err == f"sbg: error: {words}\n"
