"""Outputs sbg cannot write: one line naming the file, exit code 5, nothing half-written.

Every failure here is made by the kernel, not by a mock, and ``sbg`` runs
as a user runs it, in a subprocess:

* **A full disk.** The CLI runs with ``RLIMIT_FSIZE`` set and ``SIGXFSZ``
  ignored: the kernel then refuses to grow any file past the limit with
  EFBIG ("File too large") at the very write calls where a full disk
  refuses with ENOSPC, and sbg handles both alike. Where user namespaces
  are allowed (``unshare -rm``) a real 64 kB tmpfs gives ENOSPC too, and
  ``-o -`` into ``/dev/full`` gives ENOSPC on stdout everywhere.
* **A read-only file system.** A read-only bind mount of the output
  directory in a user and mount namespace (EROFS). The tests may run as
  root, which ignores permission bits, so a 0o555 directory (EACCES) is
  used instead only when not root; with neither, those cases skip.
* **A place no file can be.** An output whose directory is a regular file
  (ENOTDIR): refused to root as well, so it runs everywhere.
* **An alert log SQLite cannot open**: a directory, or a text file.

Each case checks the exit code (5, :data:`sbg.errors.EXIT_OUTPUT`), that
stderr is one line naming the file and the system's reason, with no
traceback, and that the directory holds exactly what it held before: the
earlier good file unchanged, no truncated file under the real name, no
temporary file left. Before these outputs were written atomically every
case ended in a traceback with exit code 1 (documented as "alerts at
--fail-on"), and a full disk left ``-o`` truncated mid-row.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sbg.errors import EXIT_OUTPUT

ENV = {**os.environ, "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
ENV.pop("PYTHONWARNINGS", None)
#: ``python -c`` prologue: a file size limit (the first argument), then ``sbg`` with the rest.
LIMITED = ("import resource, runpy, signal, sys\n"
           "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
           "limit = int(sys.argv.pop(1))\n"
           "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
           "sys.argv[0] = 'sbg'\n"
           "runpy.run_module('sbg.cli', run_name='__main__')\n")
EARLIER = "earlier,good\n1,2\n"


def sbg(*args, limit=None, prefix=(), stdout=subprocess.PIPE, timeout=300):
    """Run ``sbg ARGS`` in a subprocess, under a file size ``limit`` if given, after ``prefix``."""
    argv = [sys.executable, "-c", LIMITED, str(limit)] if limit else [sys.executable, "-m", "sbg.cli"]
    return subprocess.run([*prefix, *argv, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          env=ENV, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_error(proc, path, reason):
    """The run exited 5 with exactly ``sbg: error: PATH: ...: REASON`` on stderr."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"sbg: error: {path}: cannot "), lines[0]
    assert lines[0].endswith(f": {reason}"), lines[0]
    assert proc.returncode == EXIT_OUTPUT, (proc.returncode, proc.stderr)


def listing(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes: to compare before and after a run."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Inputs, and the outputs of one good run (which also warms the kernels' cache, so no run below writes it)."""
    root = tmp_path_factory.mktemp("write_failures")
    rows = ["timestamp,battery_id,voltage,temp_c"]
    for i in range(1500):  # the flags CSV is about 140 kB
        for k, ent in enumerate(("bat-1", "bat-2")):
            temp = 60.0 if i % 500 == 7 + k else 25 + 0.1 * ((i * 7 + k) % 5)
            rows.append(f"2024-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d},{ent},{3.7 + 0.001 * (i % 3):.3f},{temp:.1f}")
    big = root / "big.csv"
    big.write_text("\n".join(rows) + "\n")
    tiny = root / "tiny.csv"
    tiny.write_text("\n".join(rows[:5]) + "\n")
    # Twenty rows, then 400 long lines of five fields, which the reader refuses: a quarantine file far
    # larger than the flags.
    junk = ["2024-01-01T01:00:00,bat-1,3.7,25.0," + "x" * 200] * 400
    bad = root / "bad.csv"
    bad.write_text("\n".join(rows[:21] + junk) + "\n")
    labels = root / "labels.csv"
    labels.write_text("battery_id,start,end\nbat-1,2024-01-01T00:08:00,2024-01-01T00:08:30\n")
    good = root / "good"
    good.mkdir()
    for proc in (sbg("detect", big, "-o", good / "flags.csv", "--summary-json", good / "summary.json"),
                 sbg("detect", big, "-o", good / "flags.parquet"),
                 sbg("report", tiny, "-o", good / "report.html")):
        assert proc.returncode == 0, proc.stderr
    return {"root": root, "big": big, "tiny": tiny, "bad": bad, "labels": labels, "good": good}


#: Each output of the CLI: the arguments that write it into DIR, and the file the error names.
OUTPUTS = {
    "detect -o CSV": (["detect", "{big}", "-o", "{dir}/out.csv"], "{dir}/out.csv"),
    "detect -o Parquet": (["detect", "{big}", "-o", "{dir}/flags.parquet"], "{dir}/flags.parquet"),
    "detect --quarantine": (["detect", "{bad}", "-o", "{root}/{case}.flags.csv", "--quarantine", "{dir}/q.csv"],
                            "{dir}/q.csv"),
    "detect --summary-json": (["detect", "{tiny}", "-o", "{root}/{case}.flags.csv", "--summary-json",
                               "{dir}/summary.json"], "{dir}/summary.json"),
    "detect --alerts-db": (["detect", "{big}", "-o", "{root}/{case}.flags.csv", "--alerts-db", "{dir}/alerts.db"],
                           "{dir}/alerts.db"),
    "replay --alerts-db": (["replay", "{tiny}", "--quiet", "--alerts-db", "{dir}/alerts.db"], "{dir}/alerts.db"),
    "report": (["report", "{tiny}", "-o", "{dir}/report.html"], "{dir}/report.html"),
    "evaluate --json": (["evaluate", "{good}/flags.csv", "--labels", "{labels}", "--json", "{dir}/figures.json"],
                        "{dir}/figures.json"),
}


def _case(data, name, folder):
    args, path = OUTPUTS[name]
    fill = {**data, "dir": folder, "case": name.replace(" ", "_").replace("-", "")}
    return [a.format(**fill) for a in args], path.format(**fill)


def _earlier_outputs(folder: Path, data):
    """The files an earlier good run left in ``folder``, under the names the failing run writes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("out.csv", "q.csv", "summary.json", "figures.json"):
        (folder / name).write_text(EARLIER)
    shutil.copytree(data["good"] / "flags.parquet", folder / "flags.parquet")
    shutil.copy(data["good"] / "report.html", folder / "report.html")


# The limit each output passes: above every other file the run writes, below the one under test.
LIMITS = {"detect -o CSV": 20_000, "detect -o Parquet": 8_000, "detect --quarantine": 20_000,
          "detect --summary-json": 4_096, "detect --alerts-db": 4_096, "replay --alerts-db": 4_096,
          "report": 100_000, "evaluate --json": 300}


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_a_full_disk_is_one_line_exit_5_and_leaves_the_earlier_file(data, tmp_path, name):
    _earlier_outputs(tmp_path / "out", data)
    before = listing(tmp_path / "out")
    args, path = _case(data, name, tmp_path / "out")
    proc = sbg(*args, limit=LIMITS[name])
    # SQLite says "disk I/O error" for a refused write, "database or disk is full" for ENOSPC.
    one_line_error(proc, path, "disk I/O error" if "alerts-db" in name else "File too large")
    assert listing(tmp_path / "out") == before  # nothing truncated, nothing replaced, no temporary file


def test_an_alert_log_that_fills_up_during_a_replay_ends_it_with_exit_5(data, tmp_path):
    """The log opens, then a later commit of alerts and checkpoint outgrows the disk."""
    proc = sbg("replay", data["big"], "--quiet", "--alerts-db", tmp_path / "alerts.db", limit=40_000)
    one_line_error(proc, tmp_path / "alerts.db", "disk I/O error")
    assert proc.stderr.startswith(f"sbg: error: {tmp_path / 'alerts.db'}: cannot write: ")


def test_the_outputs_of_a_run_that_failed_are_not_written_either(data, tmp_path):
    """A run whose quarantine file fails writes no flags file either: a run that fails commits none of its outputs."""
    proc = sbg("detect", data["bad"], "-o", tmp_path / "flags.csv", "--quarantine", tmp_path / "q.csv", limit=20_000)
    one_line_error(proc, tmp_path / "q.csv", "File too large")
    assert listing(tmp_path) == {}


def test_a_new_dataset_that_fails_leaves_no_directory(data, tmp_path):
    proc = sbg("detect", data["big"], "-o", tmp_path / "new.parquet", limit=LIMITS["detect -o Parquet"])
    one_line_error(proc, tmp_path / "new.parquet", "File too large")
    assert not (tmp_path / "new.parquet").exists() and listing(tmp_path) == {}


@pytest.mark.slow
def test_a_full_disk_under_dask_workers_keeps_the_earlier_dataset(data, tmp_path):
    """The workers inherit the limit: a part they cannot write fails the run, and no part replaces the earlier ones."""
    pytest.importorskip("distributed")
    _earlier_outputs(tmp_path, data)
    before = listing(tmp_path)
    proc = sbg("detect", data["big"], "--workers", "1", "-o", tmp_path / "flags.parquet",
               limit=LIMITS["detect -o Parquet"])
    one_line_error(proc, tmp_path / "flags.parquet", "File too large")
    assert listing(tmp_path) == before


def test_a_good_run_replaces_the_earlier_outputs_and_leaves_no_temporary_file(data, tmp_path):
    _earlier_outputs(tmp_path, data)
    (tmp_path / "flags.parquet" / "part-00007.parquet").write_bytes(b"a part of an earlier Dask run")
    proc = sbg("detect", data["big"], "-o", tmp_path / "out.csv", "--quarantine", tmp_path / "q.csv",
               "--summary-json", tmp_path / "summary.json")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.csv").read_bytes() == (data["good"] / "flags.csv").read_bytes()
    assert (tmp_path / "q.csv").read_text() == "line,raw,reason\n"
    proc = sbg("detect", data["big"], "-o", tmp_path / "flags.parquet")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "flags.parquet").iterdir()) == ["part-00000.parquet"]
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


UNSHARE = shutil.which("unshare") is not None and _unshare_works()
needs_namespaces = pytest.mark.skipif(not UNSHARE, reason="user and mount namespaces (unshare -rm) not allowed here")


def in_namespace(script: str, **env) -> list[str]:
    """A prefix that runs the command in a new user and mount namespace, after ``script`` (``$1``... are env)."""
    assigns = " ".join(f"{k}='{v}'" for k, v in env.items())
    return ["unshare", "-rm", "sh", "-c", f"{assigns}; {script}", "sh"]


@needs_namespaces
def test_a_real_full_disk_enospc(data, tmp_path):
    """On a 64 kB tmpfs: the earlier file survives the failed run (checked inside the namespace)."""
    disk, after = tmp_path / "disk", tmp_path / "after"
    disk.mkdir()
    script = ('mount -t tmpfs -o size=64k tmpfs "$D" && printf "earlier,good\\n1,2\\n" > "$D/out.csv" && '
              '{ "$@"; rc=$?; cp -a "$D" "$A"; exit $rc; }')
    proc = sbg("detect", data["big"], "-o", disk / "out.csv", "--quarantine", disk / "q.csv",
               prefix=in_namespace(script, D=disk, A=after))
    one_line_error(proc, disk / "out.csv", "No space left on device")
    assert listing(after) == {"out.csv": EARLIER.encode()}


def test_stdout_on_a_full_device(data, tmp_path):
    with open("/dev/full", "w") as full:
        proc = sbg("detect", data["tiny"], "-o", "-", stdout=full)
    one_line_error(proc, "stdout", "No space left on device")


@pytest.fixture
def read_only(data, tmp_path):
    """A directory holding an earlier run's outputs that this test's runs cannot write, the prefix that
    makes it so, and the reason expected."""
    folder = tmp_path / "ro"
    _earlier_outputs(folder, data)
    if UNSHARE:  # EROFS, also for root
        script = 'mount --bind "$D" "$D" && mount -o remount,bind,ro "$D" && exec "$@"'
        yield folder, in_namespace(script, D=folder), "Read-only file system"
    elif os.geteuid() != 0:  # root ignores permission bits
        for d in (folder, folder / "flags.parquet"):
            d.chmod(0o555)
        yield folder, (), "Permission denied"
        for d in (folder, folder / "flags.parquet"):
            d.chmod(0o755)
    else:
        pytest.skip("running as root without user namespaces: no read-only place to write to")


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_a_read_only_file_system_is_one_line_exit_5(data, read_only, name):
    folder, prefix, reason = read_only
    before = listing(folder)
    args, path = _case(data, name, folder)
    proc = sbg(*args, prefix=prefix)
    one_line_error(proc, path, reason)
    assert listing(folder) == before


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_an_output_whose_directory_is_a_file_is_one_line_exit_5(data, tmp_path, name):
    """ENOTDIR: refused to root too. A report's missing directory stays a usage error (exit 2)."""
    (tmp_path / "plain").write_text("a file, not a directory\n")
    args, path = _case(data, name, tmp_path / "plain")
    proc = sbg(*args)
    if name == "report":
        assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    else:
        one_line_error(proc, path, f"{tmp_path / 'plain'} is not a directory")
    assert listing(tmp_path) == {"plain": b"a file, not a directory\n"}


@pytest.mark.parametrize("command", ["detect", "replay", "report", "serve"])
@pytest.mark.parametrize("db", ["a directory", "a text file"])
def test_an_alert_log_sqlite_cannot_open_is_one_line_exit_5(data, tmp_path, command, db):
    path = tmp_path / "alerts.db"
    if db == "a directory":
        path.mkdir()
    else:
        path.write_text("battery notes, not a database\n" * 200)
    before = listing(tmp_path)
    args = {"detect": ["detect", data["tiny"], "-o", tmp_path / "flags.csv"],
            "replay": ["replay", data["tiny"], "--quiet"],
            "report": ["report", data["tiny"], "-o", tmp_path / "report.html"],
            "serve": ["serve", data["tiny"], "--port", "1"]}[command]
    proc = sbg(*args, "--alerts-db", path, timeout=120)
    one_line_error(proc, path, "Is a directory" if db == "a directory" else "file is not a database")
    assert proc.stderr.startswith(f"sbg: error: {path}: cannot open the alert log: ")
    assert listing(tmp_path) == before  # the text file untouched; no flags, report or journal files
