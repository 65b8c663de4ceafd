"""The ``sbg`` command line.

Exit codes: 0 success; 1 alerts at or above ``--fail-on`` fired; 2 usage
error; 3 unreadable input; 4 bad configuration; 5 an output that cannot be
written (a full disk, a read-only file system, no permission, an alert log
that is not a database); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import EXIT_INPUT, EXIT_USAGE, SbgError, SourceError

__all__ = ["main"]

_SEV_RANK = {"info": 0, "warning": 1, "critical": 2}
_COLOURS = {"info": "\033[36m", "warning": "\033[33m", "critical": "\033[1;31m", "ok": "\033[32m",
            "dim": "\033[2m", "reset": "\033[0m"}


class _Out:
    """Writes to stdout, in colour only on a terminal (and never with NO_COLOR)."""

    def __init__(self, stream=None, colour=None):
        self.stream = stream or sys.stdout
        if colour is None:
            colour = self.stream.isatty() and not os.environ.get("NO_COLOR")
        self.colour = colour
        self.status_shown = False

    def paint(self, text, kind):
        return f"{_COLOURS[kind]}{text}{_COLOURS['reset']}" if self.colour else text

    def line(self, text=""):
        self.clear_status()
        print(text, file=self.stream, flush=True)

    def status(self, text):
        if self.stream.isatty():
            self.stream.write("\r\033[2K" + text)
            self.stream.flush()
            self.status_shown = True

    def clear_status(self):
        if self.status_shown:
            self.stream.write("\r\033[2K")
            self.status_shown = False


def _schema_args(p):
    g = p.add_argument_group("schema (overrides inference)")
    g.add_argument("--time", metavar="COLUMN", help="timestamp column")
    g.add_argument("--entity", metavar="COLUMN", help="entity column (long format)")
    g.add_argument("--wide", action="store_true", help="no entity column: one entity per file")
    g.add_argument("--signals", metavar="A,B,...", help="comma-separated signal columns to analyse")
    g.add_argument("--date", metavar="YYYY-MM-DD",
                   help="date for HH:MM:SS-only or relative-seconds timestamps (default 1970-01-01)")
    g.add_argument("--time-format", metavar="FMT", help="strftime format of the timestamps")
    g.add_argument("--delimiter", metavar="CHAR", help="field delimiter (default: sniffed)")
    g.add_argument("--encoding", default="utf-8", help="text encoding (default utf-8; BOM accepted)")
    g.add_argument("--reorder", metavar="DURATION",
                   help="accept rows up to DURATION older than their entity's newest (a clock change, a buffered "
                        "logger) and sort them before detection; older rows are quarantined (default: off)")
    g.add_argument("--max-signals", type=int, metavar="N",
                   help="refuse a file with more signal columns than N (default 1000, or SBG_MAX_SIGNALS)")


def _settings_args(p):
    p.add_argument("--config", type=Path, metavar="SBG.YAML", help="settings file")
    p.add_argument("--set", action="append", default=[], metavar="DETECTOR.NAME=VALUE", dest="overrides",
                   help="one setting over the file's, e.g. zscore.threshold=5 or limits.preset=battery "
                        "(also stats., history., replay.); may be repeated; docs/detection.md lists them")


def _hierarchy_args(p):
    p.add_argument("--hierarchy", type=Path, metavar="MAPPING.csv",
                   help="each entity's site and rack: a CSV of entity,site,rack (default: the data's site and "
                        "rack/string columns, if it has them); entities it leaves out are grouped as (unassigned)")


def _notify_args(p):
    g = p.add_argument_group("notifications (also the notify: section of the settings file)")
    g.add_argument("--alertmanager", action="append", default=[], metavar="URL",
                   help="post firing and resolved alerts to this Prometheus Alertmanager (its v2 API)")
    g.add_argument("--webhook", action="append", default=[], metavar="URL",
                   help="POST each alert event as JSON to this URL, with retries; signed with HMAC-SHA256 when "
                        "the environment variable SBG_WEBHOOK_SECRET is set")
    g.add_argument("--json", action="store_true",
                   help="alert events as JSON lines on stdout (messages go to stderr), for jq or a log shipper")


def _log_args(p):
    g = p.add_argument_group("logging")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log level of sbg's log on stderr (default info)")
    g.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="text, or json: one object per line (time, level, logger, message)")


def _dask_args(p, partitions: str):
    g = p.add_argument_group("Dask (scale out; needs the dask extra, see docs/scaling.md)")
    g.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this Dask cluster's workers")
    g.add_argument("--workers", type=int, metavar="N", help="start a local Dask cluster of N worker processes")
    g.add_argument("--partitions", type=int, metavar="N", help=partitions)


@contextlib.contextmanager
def _fan_out(args, echo):
    """A :class:`sbg.scale.cluster.FanOut` when ``--scheduler`` or ``--workers`` is given, else ``None``."""
    if not (args.scheduler or args.workers is not None):
        yield None
        return
    from .scale.cluster import FanOut, dask_client

    with dask_client(args.scheduler, args.workers, echo=echo) as client:
        yield FanOut(client, args.partitions)


def _inputs(files):
    from .io.inputs import expand_inputs

    return expand_inputs(files)


def _schema_options(args) -> dict:
    opts = {}
    if args.time:
        opts["time"] = args.time
    if args.wide:
        opts["entity"] = False
    elif args.entity:
        opts["entity"] = args.entity
    if args.signals:
        opts["signals"] = [s.strip() for s in args.signals.split(",") if s.strip()]
    if args.date:
        opts["date"] = args.date
    if args.time_format:
        opts["time_format"] = args.time_format
    if args.delimiter:
        opts["delimiter"] = args.delimiter
    if args.encoding and args.encoding.lower() not in ("utf-8", "utf8"):
        opts["encoding"] = args.encoding
    if args.max_signals is not None:
        opts["max_signals"] = args.max_signals
    if getattr(args, "reorder", None):
        opts["reorder"] = args.reorder
    return opts


#: ``sbg detect``'s default output: NAME.flags.csv in the current directory (see :func:`default_output`).
_FLAGS_SUFFIX = ".flags.csv"
_INPUT_SUFFIXES = (".gz", ".csv", ".tsv", ".txt", ".parquet", ".pq")


def default_output(specs, dataset: bool = False) -> Path:
    """``sbg detect``'s output when ``-o`` is not given: ``NAME.flags.csv`` in the current directory.

    ``NAME`` is the first input's name without its data suffixes (a glob's
    first match; a directory's own name); ``NAME.flags.parquet``, a Parquet
    dataset, when ``dataset`` (Dask runs write only those).

    >>> str(default_output(["data/battery_fleet.csv.gz", "more.csv"]))
    'battery_fleet.flags.csv'
    >>> str(default_output(["archive.parquet"], dataset=True))
    'archive.flags.parquet'
    """
    first = Path(specs[0])
    if not first.exists() and set(str(first)) & set("*?["):
        first = _inputs([specs[0]])[0]
    name = first.name if first.name not in ("", ".", "..") else first.resolve().name
    while (suffix := next((x for x in _INPUT_SUFFIXES if name.lower().endswith(x) and len(name) > len(x)), None)):
        name = name[: -len(suffix)]
    return Path(name + (".flags.parquet" if dataset else _FLAGS_SUFFIX))


def _speed(text):
    from .stream.replay import parse_speed

    if text.strip().lower() == "auto":
        return "auto"
    try:
        parse_speed(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbg",
        description="Smart Battery Guardian: replay telemetry files as live streams, "
                    "flag anomalies and raise alerts.",
        epilog="Run 'sbg COMMAND --help' for a command's options. "
               "Exit codes: 0 ok, 1 alerts at --fail-on, 2 usage, 3 bad input, 4 bad config, "
               "5 an output cannot be written.",
    )
    parser.add_argument("--version", action="version", version=f"sbg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help="the command to run")

    p = sub.add_parser("replay", help="replay files in the terminal, printing alerts as they fire",
                       description="Replay files on a simulated clock through the pipeline. Prints progress "
                                   "and alerts, and a summary whose counts reconcile. On a terminal, type "
                                   "start, pause, resume, stop, status, help or exit.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE",
                   help="CSV, CSV.gz or Parquet files, globs or directories")
    p.add_argument("--speed", default="max", type=_speed, help="speed over real time, e.g. 1, 10x, 1000x, auto (about 100 of the data's timestamps a second), "
                        "or max (default)")
    p.add_argument("--baseline", type=Path, metavar="REF", help="known-good reference file")
    _settings_args(p)
    p.add_argument("--alerts-db", type=Path, metavar="PATH", help="SQLite alert log to write")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the checkpoint in --alerts-db (same files and options)")
    p.add_argument("--loop", action="store_true", help="start again when the data ends")
    p.add_argument("--fail-on", choices=["warning", "critical"], help="exit 1 if an alert of this severity or worse fired")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--no-color", action="store_true", help="plain output even on a terminal")
    _hierarchy_args(p)
    _notify_args(p)
    _dask_args(p, "entity partitions, each with its state on one worker (default: one per worker)")
    _schema_args(p)

    p = sub.add_parser("watch", help="follow files that are still being written, headless, as a service",
                       description="Follow CSV files as lines are appended (like tail -F: rotation, truncation and "
                                   "new files matching a glob are handled, a half-written line waits), score them "
                                   "and raise alerts, with no end. With --alerts-db it carries on after a restart "
                                   "from its checkpoint: no row analysed twice, no alert lost or repeated. "
                                   "SIGTERM or Ctrl-C stop it cleanly (exit 0). See docs/service.md.")
    p.add_argument("files", nargs="+", metavar="FILE|GLOB",
                   help="files or quoted globs to follow (a glob picks up files that appear later)")
    _settings_args(p)
    p.add_argument("--baseline", type=Path, metavar="REF", help="known-good reference file")
    p.add_argument("--alerts-db", type=Path, metavar="PATH", help="SQLite alert log and checkpoint")
    p.add_argument("--fresh", action="store_true", help="ignore the checkpoint in --alerts-db and start over")
    p.add_argument("--port", type=int, metavar="N",
                   help="answer /metrics, /healthz and /readyz on this port (0: any free port)")
    p.add_argument("--address", default="127.0.0.1", help="interface for --port (default 127.0.0.1)")
    p.add_argument("--wait", type=float, default=60.0, metavar="S",
                   help="seconds to wait for a first file with a header and a data row (default 60)")
    p.add_argument("--poll", type=float, default=0.1, metavar="S", help="seconds between looks at the files (0.1)")
    p.add_argument("--quiet", action="store_true", help="no alert lines on stdout (the log and notifiers still get them)")
    p.add_argument("--no-color", action="store_true", help="plain output even on a terminal")
    _hierarchy_args(p)
    _notify_args(p)
    _log_args(p)
    _schema_args(p)

    p = sub.add_parser("detect", help="score files in batch and write flags per row",
                       description="Run the pipeline over files as fast as possible and write one output row "
                                   "per accepted input row: the input columns, then anomaly_score, is_anomaly, "
                                   "reason and quality. The output does not depend on --chunk-size and equals "
                                   "what the streaming pipeline computes. Several files (globs, directories) are "
                                   "read one after the other into one output. With --workers or --scheduler the "
                                   "work is split by entity over Dask workers, with the same result.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE",
                   help="CSV, CSV.gz or Parquet files, globs (quoted) or directories")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output CSV, or a Parquet dataset directory (a name ending in .parquet, or a directory); "
                        "'-' writes the CSV to stdout once scoring ends, messages to stderr. Default: "
                        f"NAME{_FLAGS_SUFFIX} in the current directory, NAME being the first FILE's name less "
                        ".csv, .gz or .parquet (NAME.flags.parquet with --workers or --scheduler)")
    p.add_argument("--baseline", type=Path, metavar="REF", help="known-good reference file")
    _settings_args(p)
    p.add_argument("--alerts-db", type=Path, metavar="PATH", help="SQLite alert log to write")
    p.add_argument("--chunk-size", type=int, default=65536, metavar="N", help="rows per pipeline chunk (default 65536)")
    p.add_argument("--quarantine", type=Path, metavar="Q.csv",
                   help="write quarantined rows as line,raw,reason (file,line,raw,reason for several files)")
    p.add_argument("--summary-json", type=Path, metavar="S.json", help="write counts, alerts and settings used")
    p.add_argument("--format", choices=["csv", "bdf"], default="csv",
                   help="output column names: the input's (csv, default), or the Battery Data Format's "
                        "(bdf: Test Time / s, Unix Time / s, Voltage / V, Current / A...; docs/battery.md)")
    p.add_argument("--fail-on", choices=["warning", "critical"],
                   help="exit 1 if an alert of this severity or worse fired")
    _hierarchy_args(p)
    _dask_args(p, "entity partitions, each a part file of the output (default: four per worker)")
    _schema_args(p)

    p = sub.add_parser("report", help="run files through the pipeline and write a self-contained HTML report",
                       description="Replay files headless at max speed, then write one HTML file (inline JS and "
                                   "CSS, no network) with the summary, plots, alerts, data quality and settings.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE",
                   help="CSV, CSV.gz or Parquet files, globs or directories")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="REPORT.html", help="HTML file to write")
    p.add_argument("--baseline", type=Path, metavar="REF", help="known-good reference file")
    _settings_args(p)
    p.add_argument("--alerts-db", type=Path, metavar="PATH", help="SQLite alert log to write")
    p.add_argument("--title", help="report title (default: sbg report: SOURCE)")
    _hierarchy_args(p)
    _dask_args(p, "entity partitions, each with its state on one worker (default: one per worker)")
    _schema_args(p)

    p = sub.add_parser("evaluate", help="score a run's flags against labelled fault windows",
                       description="Score the flags of 'sbg detect' (a CSV file or a Parquet dataset) against "
                                   "labelled windows: event recall, precision and median delay (a run of "
                                   "flagged rows that overlaps a window catches it), point-wise precision, "
                                   "recall, F1 and false-alarm rate, and the window score of the Numenta "
                                   "Anomaly Benchmark (NAB) under its profiles. Only is_anomaly counts: "
                                   "data-quality findings are not anomalies.")
    p.add_argument("flags", help="output of sbg detect: a CSV file or a Parquet dataset directory")
    p.add_argument("--labels", required=True, metavar="CSV",
                   help="labelled windows: start, end and an entity column (entity or *_id) when there are several")
    p.add_argument("--entity", metavar="COLUMN",
                   help="entity column of the flags (default: entity, else the labels' entity column, e.g. "
                        "battery_id, else the first *_id column; without one the flags are one entity)")
    p.add_argument("--entity-name", metavar="NAME",
                   help="entity of flags without an entity column (default: the labels' only entity, else the "
                        "flags file's stem), and of labels without one (default: the run's only entity)")
    p.add_argument("--time", metavar="COLUMN", help="timestamp column of the flags (default: timestamp, else the first)")
    p.add_argument("--profile", choices=["standard", "reward_low_fp", "reward_low_fn", "all"], default="all",
                   help="NAB scoring profile (default: all three)")
    p.add_argument("--skip-rows", type=int, default=0, metavar="N",
                   help="leave each entity's first N rows out of the point-wise counts (SKAB: 400)")
    p.add_argument("--probation", type=float, default=0.15, metavar="SHARE",
                   help="share of each series whose detections NAB ignores (default 0.15)")
    p.add_argument("--tolerance", default="0s", help="slack around label windows for the event view")
    p.add_argument("--date", default=None, help="date for HH:MM:SS label times (default 1970-01-01)")
    p.add_argument("--json", metavar="PATH", dest="json_path", help="also write the figures as JSON")

    p = sub.add_parser("validate", help="print the inferred schema and check every row",
                       description="Infer the schema, read the whole file and report quarantined rows.")
    p.add_argument("file", type=Path, metavar="FILE", help="CSV, CSV.gz or Parquet file to check")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--show", type=int, default=10, metavar="N", help="quarantined rows to list (default 10)")
    p.add_argument("--schema-only", action="store_true", help="do not read past the sample")
    _schema_args(p)

    p = sub.add_parser("serve", help="serve the live dashboard (wraps panel serve)",
                       description="Serve the dashboard with `panel serve`, one shared monitor per data source. "
                                   "Binds to 127.0.0.1 unless --address says otherwise; do not serve on a "
                                   "public interface without --basic-auth or OAuth. Extra arguments after -- "
                                   "go to panel serve unchanged (write them as --option=value).")
    p.add_argument("files", nargs="*", metavar="FILE", help="data files (default: the bundled battery fleet)")
    p.add_argument("--port", type=int, default=5006, help="port to listen on (default 5006)")
    p.add_argument("--address", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="directory the UI may choose files from and upload to")
    p.add_argument("--speed", default="auto", type=_speed,
                   help="initial replay speed: 1, 10x, 1000x, max, or auto (the default: about 100 of the data's "
                        "timestamps a second, 100x for 1 Hz data, 10000x for a 5-minute logger)")
    p.add_argument("--loop", action="store_true", help="start again when the data ends")
    p.add_argument("--autostart", action="store_true", help="start replaying as soon as the server is up")
    p.add_argument("--baseline", metavar="REF", help="known-good reference file")
    _settings_args(p)
    p.add_argument("--alerts-db", type=Path, metavar="PATH", help="SQLite alert log to write")
    p.add_argument("--basic-auth", metavar="PASSWORD|FILE", help="passed to panel serve: a password, or a JSON file of users")
    p.add_argument("--cookie-secret", metavar="SECRET", help="passed to panel serve (required with auth)")
    p.add_argument("--allow-websocket-origin", action="append", default=[], metavar="HOST[:PORT]",
                   help="passed to panel serve; may be repeated")
    p.add_argument("--oauth-provider", help="passed to panel serve")
    p.add_argument("--oauth-key", help="passed to panel serve")
    p.add_argument("--oauth-secret", help="passed to panel serve")
    p.add_argument("--oauth-encryption-key", help="passed to panel serve (needs the cryptography package)")
    p.add_argument("--oauth-redirect-uri", metavar="URL", help="passed to panel serve: this server's /login URL")
    p.add_argument("--oauth-extra-params", metavar="JSON", help="passed to panel serve (provider URLs, scope, ...)")
    p.add_argument("--admin-users", metavar="USER,...", help="with auth: only these users may change state")
    p.add_argument("--follow", action="store_true",
                   help="follow FILE (or a quoted glob) as it grows, like sbg watch, instead of replaying it")
    _hierarchy_args(p)
    p.add_argument("--print-command", action="store_true", help="print the panel serve command and exit")
    _notify_args(p)
    _log_args(p)
    _dask_args(p, "entity partitions, each with its state on one worker (default: one per worker)")

    p = sub.add_parser("data", help="sample datasets", description="Manage the bundled sample datasets.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", help="generate or list")
    g = dsub.add_parser("generate", help="regenerate the sample data byte for byte",
                        description="Rewrite the bundled datasets deterministically from the seed.")
    g.add_argument("--out", type=Path, default=None, metavar="DIR", help="output directory (default: the bundled data/)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: the bundled data's)")
    dsub.add_parser("list", help="list the bundled datasets")
    g = dsub.add_parser("fleet", help="write a labelled multi-site fleet (sites x racks x batteries)",
                        description="Write fleet_sites.csv.gz (with site and rack columns), its fault labels and a "
                                    "mapping file (battery_id,site,rack), seeded: the same options give the same bytes.")
    g.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: the bundled data's)")
    g.add_argument("--sites", type=int, default=3, help="sites (default 3)")
    g.add_argument("--racks", type=int, default=2, help="racks per site (default 2)")
    g.add_argument("--per-rack", type=int, default=4, help="batteries per rack (default 4)")
    g.add_argument("--hours", type=float, default=2.0, help="hours of data (default 2)")
    g.add_argument("--step", type=int, default=2, metavar="S", help="seconds between rows (default 2)")
    g.add_argument("--fault-share", type=float, default=0.25, help="share of batteries with a fault (default 0.25)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    # Options sbg serve does not know go to panel serve unchanged, wherever they stand.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.panel_args = extra
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        handler = {"replay": cmd_replay, "watch": cmd_watch, "detect": cmd_detect, "validate": cmd_validate, "data": cmd_data,
                   "serve": cmd_serve, "report": cmd_report, "evaluate": cmd_evaluate}
        return handler[args.command](args)
    except SbgError as exc:
        print(f"sbg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nsbg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _settings(args):
    """The settings file (``--config``) with the ``--set`` pairs over it."""
    from .config import Settings

    settings = Settings.from_yaml(args.config) if args.config else Settings()
    return settings.with_overrides(getattr(args, "overrides", []))


def _fail_code(alerts, fail_on) -> int:
    if not fail_on or alerts is None or alerts.empty:
        return 0
    worst = max(_SEV_RANK[s] for s in alerts["severity"])
    return 1 if worst >= _SEV_RANK[fail_on] else 0


def _summary_lines(monitor, out: _Out, elapsed: float):
    m = monitor.metrics
    alerts = monitor.alerts
    by_sev = alerts["severity"].value_counts().to_dict() if not alerts.empty else {}
    ok = m.reconciles
    lines = [
        out.paint("summary", "dim"),
        f"  rows in           {m.rows_in:>12,}",
        f"  rows ok           {m.rows_ok:>12,}",
        f"  rows quarantined  {m.rows_quarantined:>12,}",
        f"  reconciles        {'yes' if ok else 'NO':>12}   (rows in = ok + quarantined)",
        f"  entities          {m.entities:>12,}",
        f"  chunks analysed   {m.analyses:>12,}",
        f"  pipeline errors   {m.errors:>12,}",
        f"  alerts            {len(alerts):>12,}   "
        + ", ".join(f"{out.paint(str(by_sev.get(s, 0)) + ' ' + s, s)}" for s in ("critical", "warning", "info")),
        f"  wall time         {elapsed:>11.2f}s   ({m.rows_in / max(elapsed, 1e-9):,.0f} rows/s)",
    ]
    if monitor.quarantine:
        reasons = {}
        for q in monitor.quarantine:
            reasons[q.kind] = reasons.get(q.kind, 0) + 1
        lines.append("  quarantine reasons (recent " + str(len(monitor.quarantine)) + "):")
        lines += [f"    {n:>6}  {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:8]]
    return lines


def _group_lines(monitor) -> list[str]:
    """The fleet by site and rack at the end of a replay: worst state, lowest health, and who is unassigned."""
    groups = monitor.groups()
    if groups is None or groups.empty:
        return []
    lines = [f"  by site ({monitor.hierarchy.source})"]
    for rec in groups.to_dict("records"):
        where = rec["site"] + (f" / {rec['rack']}" if rec["rack"] and rec["rack"] != rec["site"] else "")
        low = rec["lowest_health"]
        health = f"lowest health {low:5.1f} ({rec['lowest_health_entity']})" if low == low else ""
        lines.append(f"    {where:<24} {int(rec['entities']):>5} entities  worst {rec['state']:<12} {health}")
    unassigned = monitor.hierarchy.unassigned(monitor.entity_states()[0].index)
    if unassigned:
        lines.append(f"    {len(unassigned)} entit{'ies' if len(unassigned) != 1 else 'y'} not in the mapping, "
                     f"grouped as (unassigned): {', '.join(unassigned[:10])}{' ...' if len(unassigned) > 10 else ''}")
    return lines


def _alert_line(out: _Out, event, alert):
    when = alert.start.strftime("%Y-%m-%d %H:%M:%S") if event != "resolved" else alert.end.strftime("%Y-%m-%d %H:%M:%S")
    tag = {"fired": "FIRE", "reopened": "AGAIN", "resolved": "CLEAR"}[event]
    sev = alert.severity if event != "resolved" else "ok"
    return f"{out.paint(f'{tag:<5} {alert.severity:<8}', sev)} {when}  {alert.entity:<12} {alert.message}"


def cmd_replay(args) -> int:
    out = _Out(sys.stderr if args.json else sys.stdout, colour=False if args.no_color or args.json else None)
    files = _inputs(args.files)
    with _fan_out(args, out.line) as fan_out:
        return _replay(args, out, files, fan_out)


def _replay(args, out: _Out, files, fan_out) -> int:
    from .stream.monitor import Monitor

    monitor = Monitor(files, baseline=args.baseline, settings=_settings(args),
                      alerts_db=args.alerts_db, speed=args.speed, loop=args.loop, resume=args.resume,
                      fan_out=fan_out, hierarchy=args.hierarchy, **_schema_options(args))
    notifiers = _notifiers(args, monitor.settings, on_error=lambda message: monitor.pipeline.emit_event(
        "notify", message, "warning"))
    if notifiers:
        notifiers.attach(monitor.engine)  # a resumed run's firing alerts are adopted, not sent again
    if not args.quiet and not args.json:
        monitor.engine.subscribe(lambda event, alert: out.line(_alert_line(out, event, alert)))
    names = ", ".join(str(p) for p in files) if len(files) <= 8 else f"{files[0]} ... {files[-1]} ({len(files)} files)"
    out.line(f"sbg {__version__}: replaying {names} at {args.speed}"
             + (f" with baseline {args.baseline}" if args.baseline else ""))
    if monitor.resumed_from is not None:
        at = monitor.resumed_from
        out.line(f"resuming from the checkpoint: {at['rows_emitted']:,} rows analysed, sim {at['sim_time'] or '-'}"
                 + ("; the run had finished" if at["finished"] else ""))
    t0 = time.monotonic()
    last = [0.0]

    def progress():
        now = time.monotonic()
        if now - last[0] < 0.2:
            return
        last[0] = now
        r = monitor.replay
        m = monitor.metrics
        out.status(f"{r.state:<8} {r.percent:5.1f}%  sim {str(r.sim_time or '-')[:19]}  rows {m.rows_in:,}  "
                   f"quarantined {m.rows_quarantined:,}  alerts firing {m.alerts_firing}")

    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if interactive:
        out.line(out.paint("commands: start, pause, resume, stop, status, help, exit", "dim"))
        asyncio.run(_interactive(monitor, out, progress))
    else:
        monitor.run_to_end(on_tick=None if args.quiet else progress)
    elapsed = time.monotonic() - t0
    for line in _summary_lines(monitor, out, elapsed):
        out.line(line)
    for line in _group_lines(monitor):
        out.line(line)
    if args.alerts_db:
        out.line(f"  alert log         {args.alerts_db}")
    code = _fail_code(monitor.alerts, args.fail_on)
    monitor.close()
    if notifiers:
        notifiers.close(timeout=5.0)
    _raise_log_failure(monitor)
    return code


def _notify_options(args, settings) -> dict:
    """The notifiers asked for: the settings file's notify: section, plus the command line's."""
    options = dict((settings.data.get("notify") or {}) if settings is not None else {})

    def listed(value):
        return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]

    options["alertmanager"] = listed(options.get("alertmanager")) + list(args.alertmanager)
    options["webhook"] = listed(options.get("webhook")) + list(args.webhook)
    options["jsonl"] = bool(options.get("jsonl")) or bool(getattr(args, "json", False))
    return options


def _notifiers(args, settings, on_error=None) -> list:
    options = _notify_options(args, settings)
    if not (options["alertmanager"] or options["webhook"] or options["jsonl"]):
        return []
    from .alerts.notify import notifiers_from

    return notifiers_from(options, on_error=on_error)


def cmd_watch(args) -> int:
    from .serve.watch import ProbeServer, Watch, configure_logging
    from .stream.monitor import Monitor

    configure_logging(args.log_level, args.log_format)
    # With --json stdout carries only JSON lines; everything for people goes to stderr.
    out = _Out(sys.stderr if args.json else sys.stdout, colour=False if args.no_color or args.json else None)
    settings = _settings(args)
    resume = False
    if args.alerts_db and not args.fresh and Path(args.alerts_db).exists():
        from .alerts.log import AlertLog

        log = AlertLog(args.alerts_db)
        resume = bool(log.checkpoint_sources())
        log.close()
    monitor = Monitor(args.files, baseline=args.baseline, settings=settings, alerts_db=args.alerts_db,
                      follow=True, follow_wait=args.wait, resume=resume, hierarchy=args.hierarchy,
                      **_schema_options(args))
    notifiers = _notifiers(args, settings, on_error=lambda message: monitor.pipeline.emit_event(
        "notify", message, "warning"))
    watch = Watch(monitor, notifiers)
    if not args.quiet and not args.json:
        monitor.engine.subscribe(lambda event, alert: out.line(_alert_line(out, event, alert)))
    probes = ProbeServer(watch, args.address, args.port).start() if args.port is not None else None
    out.line(f"sbg {__version__}: following {', '.join(args.files)}"
             + (f"; /metrics, /healthz, /readyz on http://{args.address}:{probes.port}" if probes else ""))
    if monitor.resumed_from is not None:
        out.line(f"resuming from the checkpoint: {monitor.resumed_from['rows_emitted']:,} rows analysed")
    monitor.replay.tick = args.poll
    t0 = time.monotonic()
    try:
        watch.run()
    finally:
        if probes is not None:
            probes.close()
    for line in _summary_lines(monitor, out, time.monotonic() - t0) + _group_lines(monitor):
        out.line(line)
    _raise_log_failure(monitor)
    return 0


async def _interactive(monitor, out: _Out, progress):
    loop = asyncio.get_running_loop()
    replay = monitor.replay
    done = asyncio.Event()
    help_text = ("start   start (again) from the beginning\npause   hold the clock\nresume  carry on\n"
                 "stop    end the run (start begins again)\nstatus  counts and progress\nhelp    this text\n"
                 "exit    leave, printing the summary")

    def on_input():
        line = sys.stdin.readline()
        if not line:
            done.set()
            return
        cmd = line.strip().lower()
        if cmd in ("exit", "quit", "q"):
            replay.stop()
            done.set()
        elif cmd == "start":
            replay.start()
        elif cmd == "pause":
            replay.pause()
        elif cmd == "resume":
            replay.resume()
        elif cmd == "stop":
            replay.stop()
        elif cmd == "status":
            out.line(json.dumps({**replay.progress, **{k: monitor.metrics.as_dict()[k] for k in (
                "rows_in", "rows_ok", "rows_quarantined", "alerts_firing", "errors")}}, default=str))
        elif cmd in ("help", "?"):
            out.line(help_text)
        elif cmd:
            out.line(f"unknown command {cmd!r}; type help")
        out.line(out.paint(f"[{replay.state}]", "dim"))

    loop.add_reader(sys.stdin.fileno(), on_input)
    replay.scan()
    replay.start()
    try:
        while not done.is_set():
            progress()
            if replay.state == "finished":
                out.line(out.paint("finished; type start to replay again or exit", "dim"))
                while replay.state == "finished" and not done.is_set():
                    await asyncio.sleep(0.2)
            await asyncio.sleep(0.1)
    finally:
        loop.remove_reader(sys.stdin.fileno())
        replay.stop()


def cmd_detect(args) -> int:
    import shutil
    import tempfile

    from .io.outputs import AtomicFile, output_errors
    from .stream.batch import run_detect

    if args.chunk_size < 1:
        raise SbgError("--chunk-size must be at least 1")
    dask = bool(args.scheduler or args.workers is not None)
    if not dask and args.partitions is not None:
        raise SbgError("--partitions needs --workers or --scheduler")
    to_stdout = args.output == "-"
    if to_stdout and dask:
        raise SbgError("-o - writes CSV to stdout, but with --workers or --scheduler the flags are a Parquet "
                       "dataset; give -o a directory such as flags.parquet")
    output = Path(args.output) if args.output else default_output(args.files, dataset=dask)
    # With -o -, stdout carries the CSV alone: every message goes to stderr.
    messages = sys.stderr if to_stdout else sys.stdout
    options = dict(baseline=args.baseline, settings=_settings(args), alerts_db=args.alerts_db,
                   chunk_size=args.chunk_size, quarantine_path=args.quarantine,
                   schema_options=_schema_options(args))
    if args.hierarchy is not None:
        from .io.hierarchy import load_hierarchy

        options["hierarchy"] = load_hierarchy(args.hierarchy)
    with contextlib.ExitStack() as stack:
        # Opened now, so a summary that cannot be written fails before the run, not after it.
        summary = (stack.enter_context(AtomicFile(args.summary_json, "w", encoding="utf-8"))
                   if args.summary_json else None)
        if dask:
            from .scale.cluster import run_detect_dask

            if args.format != "csv":
                raise SbgError("--format bdf is not available with --workers or --scheduler")
            if options.pop("hierarchy", None) is not None:
                raise SbgError("--hierarchy is not available with --workers or --scheduler")
            result = run_detect_dask(args.files, output, partitions=args.partitions, scheduler=args.scheduler,
                                     workers=args.workers, progress=sys.stdout.isatty(), **options)
        elif to_stdout:
            # The flags are written to a private file, then copied to stdout whole.
            with tempfile.TemporaryDirectory(prefix="sbg-detect-") as tmp:
                flags = Path(tmp) / "flags.csv"
                result = run_detect(args.files, flags, output_format=args.format, **options)
                with output_errors("stdout"):
                    sys.stdout.flush()
                    binary = getattr(sys.stdout, "buffer", None)
                    with open(flags, "rb") if binary else open(flags, encoding="utf-8", newline="") as fh:
                        shutil.copyfileobj(fh, binary or sys.stdout)
                    (binary or sys.stdout).flush()
        else:
            result = run_detect(args.files, output, output_format=args.format, **options)
        s = {**result["summary"], "output": "-" if to_stdout else str(output)}
        if summary is not None:
            summary.write(json.dumps(s, indent=1, default=str))
    where = "stdout" if to_stdout else str(output)
    print(f"{where}: {s['rows_ok']:,} rows scored, {s['rows_flagged']:,} flagged; "
          f"{s['rows_quarantined']:,} quarantined of {s['rows_in']:,}; {s['alerts']} alerts "
          f"({result['seconds']:.2f}s)", file=messages)
    first = s.get("first_quarantined")
    if first and not args.quarantine:
        print(f"first quarantined row: {first['file']}, line {first['line']}: {first['reason']} "
              "(--quarantine Q.csv writes every one with its line and reason)", file=messages)
    groups = s.get("groups")
    if groups and groups.get("unassigned_count"):
        n = groups["unassigned_count"]
        print(f"{n} entit{'ies' if n != 1 else 'y'} not in the mapping, grouped as (unassigned): "
              f"{', '.join(groups['unassigned'][:10])}{' ...' if n > 10 else ''}", file=messages)
    return _fail_code(result["alerts"], args.fail_on)


def cmd_report(args) -> int:
    from .io.outputs import AtomicFile
    from .report.build import build_report, check_output
    from .stream.monitor import Monitor

    t0 = time.monotonic()
    path = check_output(args.output)
    files = _inputs(args.files)
    # Opened before the replay, so a report that cannot be written fails at once; written whole or not at all.
    with AtomicFile(path, "w", encoding="utf-8") as out, _fan_out(args, print) as fan_out:
        monitor = Monitor(files, baseline=args.baseline, settings=_settings(args),
                          alerts_db=args.alerts_db, speed="max", fan_out=fan_out, hierarchy=args.hierarchy,
                          **_schema_options(args))
        try:
            monitor.run_to_end()
            _raise_log_failure(monitor)
            out.write(build_report(monitor, title=args.title))
        finally:
            monitor.close()
    m = monitor.metrics
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB; {m.rows_in:,} rows in, {m.rows_quarantined:,} quarantined; "
          f"{m.alerts_total} alerts ({time.monotonic() - t0:.2f}s)")
    return 0


def _raise_log_failure(monitor):
    """Raise the alert log's write failure, if the run counted one and went on (see ``AlertLog.failure``)."""
    if monitor.log is not None and monitor.log.failure is not None:
        raise monitor.log.failure


def _read_flags(path: Path, time_col=None, entity_col=None, entity_name=None, label_entity_col=None):
    """The rows of a flags file (CSV or Parquet dataset) as ``entity, timestamp, is_anomaly``.

    The entity column is ``entity_col``, else ``entity``, else the labels' own entity
    column, else the first ``*_id`` column (``sbg detect`` keeps a long file's entity
    column under its name, e.g. ``battery_id``); without one, every row belongs to
    ``entity_name`` (the output of a wide file).
    """
    import pandas as pd

    from .io.csvsafe import restore_cell
    from .stream.batch import is_dataset, read_dataset

    if not path.exists():
        raise SourceError(path, "no such file or directory")
    try:
        frame = read_dataset(path).to_pandas() if is_dataset(path) else pd.read_csv(path, low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise SourceError(path, f"cannot be read as sbg detect output: {_first_line(exc)}") from None
    if not is_dataset(path):  # the CSV's text was neutralised for spreadsheets (sbg.io.csvsafe): undo it
        frame.columns = [restore_cell(c) for c in frame.columns]
    if "is_anomaly" not in frame.columns:
        raise SourceError(path, "has no is_anomaly column: is it the output of sbg detect?")
    time_col = time_col or ("timestamp" if "timestamp" in frame.columns else frame.columns[0])
    if time_col not in frame.columns:
        raise SourceError(path, f"has no column {time_col!r}")
    if entity_col and entity_col not in frame.columns:
        raise SourceError(path, f"has no column {entity_col!r} (--entity)")
    try:
        ts = pd.to_datetime(frame[time_col], format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise SourceError(path, f"column {time_col!r}: not timestamps ({_first_line(exc)})") from None
    flag = frame["is_anomaly"]
    if flag.dtype != bool:
        text = flag.astype(str).str.strip().str.lower()
        bad = ~text.isin(["true", "false", "1", "0"])
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise SourceError(path, f"is_anomaly is {flag.iloc[i]!r}, not true or false", line=i + 2)
        flag = text.isin(["true", "1"])
    if not entity_col:
        candidates = ["entity", label_entity_col] + [c for c in frame.columns if str(c).endswith("_id")]
        entity_col = next((c for c in candidates if c and c in frame.columns), None)
    ent = frame[entity_col].astype(str) if entity_col else entity_name
    if entity_col and not is_dataset(path):
        ids = ent.unique()
        ent = ent.map(dict(zip(ids, map(restore_cell, ids), strict=True)))
    return pd.DataFrame({"entity": ent, "timestamp": ts, "is_anomaly": flag.to_numpy(dtype=bool)})


def _first_line(exc) -> str:
    """The first line of an exception's message (pandas explains at length)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _json_safe(value):
    """``value`` with NaN as ``None`` and numpy numbers as Python ones, for strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    return None if isinstance(value, float) and value != value else value


def _windows_without_rows(flags, labels) -> int:
    """How many of ``labels``' windows contain no timestamp of their entity in ``flags``."""
    import numpy as np

    times = {e: np.sort(g["timestamp"].to_numpy(dtype="datetime64[ns]"))
             for e, g in flags.groupby("entity", sort=False)}
    empty = 0
    for e, start, end in zip(labels["entity"].astype(str), labels["start"], labels["end"], strict=True):
        ts = times.get(e, np.array([], dtype="datetime64[ns]"))
        lo = np.searchsorted(ts, np.datetime64(start, "ns"), side="left")
        empty += int(lo >= np.searchsorted(ts, np.datetime64(end, "ns"), side="right"))
    return empty


def cmd_evaluate(args) -> int:
    import pandas as pd

    from .evaluate import PROFILES, load_labels, score_flags
    from .io.sources import DEFAULT_CLOCK_DATE

    if args.skip_rows < 0:
        raise SbgError("--skip-rows must be 0 or more")
    if not 0 <= args.probation < 1:
        raise SbgError("--probation must be a share of each series, at least 0 and below 1")
    try:
        pd.Timedelta(args.tolerance)
    except ValueError:
        raise SbgError(f"--tolerance {args.tolerance!r} is not a duration such as 0s, 30s or 5min") from None
    labels_path = Path(args.labels)
    if not labels_path.is_file():
        raise SourceError(labels_path, "no such file" if not labels_path.exists() else "is not a file")
    try:
        labels = load_labels(labels_path, entity=args.entity_name, date=args.date or DEFAULT_CLOCK_DATE)
    except KeyError as exc:
        raise SourceError(labels_path, f"labels need start and end columns (missing {exc})") from None
    except (OSError, UnicodeDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise SourceError(labels_path, f"cannot be read as a labels CSV: {_first_line(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise SourceError(labels_path, f"unreadable label times: {_first_line(exc)}") from None
    entities = labels["entity"].astype(str).unique()
    entity = args.entity_name or (entities[0] if len(entities) == 1 else Path(args.flags).stem)
    flags = _read_flags(Path(args.flags), args.time, args.entity, entity, labels.attrs.get("entity_column"))
    run_entities = flags["entity"].unique()
    if labels.attrs.get("entity_column") is None and not args.entity_name and len(run_entities) == 1:
        labels = labels.assign(entity=str(run_entities[0]))  # labels of the one series in the run
        entities = labels["entity"].astype(str).unique()
    unknown = sorted(set(entities) - set(run_entities))
    if unknown:
        # Their rows are not in the run: no view could score them.
        left_out = labels["entity"].astype(str).isin(unknown)
        names = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        print(f"sbg: warning: {labels_path}: {int(left_out.sum())} labelled windows are for entities not in "
              f"{args.flags} ({names}); left out (see --entity and --entity-name)", file=sys.stderr)
        labels = labels[~left_out]
    empty = _windows_without_rows(flags, labels)
    if empty:
        print(f"sbg: warning: {labels_path}: {empty} labelled windows hold no row of {args.flags} (check their "
              "dates and --date); point-wise and NAB counts leave them out",
              file=sys.stderr)
    profiles = list(PROFILES) if args.profile == "all" else [args.profile]
    r = score_flags(flags, labels, profiles, args.skip_rows, args.tolerance, args.probation)
    ev, pw = r["events"], r["pointwise"]

    def pct(x):
        return "n/a" if x != x else f"{100 * x:.1f} %"

    print(f"{args.flags}: {len(flags):,} rows, {int(flags['is_anomaly'].sum()):,} flagged; "
          f"{len(labels)} labelled windows in {labels_path}")
    print("events (a run of flagged rows overlapping a window catches it)")
    print(f"  recall            {pct(ev['recall']):>10}   ({ev['labels']} windows)")
    print(f"  precision         {pct(ev['precision']):>10}   ({ev['alerts']} runs of flagged rows)")
    delay = ev["median_delay_s"]
    print(f"  median delay      {'n/a' if delay != delay else f'{delay:,.0f} s':>10}")
    skip = f", first {args.skip_rows} rows of each entity left out" if args.skip_rows else ""
    print(f"point-wise{skip}")
    print(f"  precision         {pct(pw['precision']):>10}")
    print(f"  recall            {pct(pw['recall']):>10}")
    print(f"  F1                {'n/a' if pw['f1'] != pw['f1'] else format(pw['f1'], '.3f'):>10}")
    print(f"  false-alarm rate  {pct(pw['false_alarm_rate']):>10}   (TP {pw['tp']:,}, FP {pw['fp']:,}, "
          f"FN {pw['fn']:,}, TN {pw['tn']:,})")
    print(f"NAB window score (0 = no detections, 100 = every window at its start; probation {args.probation:g})")
    for p, n in r["nab"].items():
        print(f"  {p:<16}  {n['score']:>10.1f}   (TP {n['tp']}, FP {n['fp']}, FN {n['fn']})")
    if args.json_path:
        from .io.outputs import write_text_atomic

        write_text_atomic(args.json_path, json.dumps(_json_safe(r), indent=1) + "\n")
    return 0


def cmd_validate(args) -> int:
    from .io.sources import Source

    src = Source(args.file, **_schema_options(args))
    if args.schema_only:
        if args.json:
            print(json.dumps(src.schema.as_dict(), indent=1))
        else:
            print(src.schema.describe())
        return 0
    rows_in = rows_q = 0
    shown = []
    entities = set()
    first = last = None
    faults = []
    for batch in src.batches():
        rows_in += batch.rows_in
        rows_q += batch.rows_quarantined
        if batch.fault is not None:
            faults.append(f"{type(batch.fault).__name__}: {batch.fault}")
        if len(shown) < args.show:
            shown += batch.quarantined[: args.show - len(shown)]
        if len(batch.frame):
            entities.update(batch.frame["entity"].unique().tolist())
            lo, hi = batch.frame["timestamp"].min(), batch.frame["timestamp"].max()
            first = lo if first is None else min(first, lo)
            last = hi if last is None else max(last, hi)
    report = {"schema": src.schema.as_dict(), "rows_in": rows_in, "rows_ok": rows_in - rows_q,
              "rows_quarantined": rows_q, "entities": len(entities),
              "first": None if first is None else str(first), "last": None if last is None else str(last),
              "quarantined": [q.as_dict() for q in shown], "reader_errors": faults}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(src.schema.describe())
        print(f"rows:      {rows_in:,} in, {rows_in - rows_q:,} ok, {rows_q:,} quarantined")
        print(f"entities:  {len(entities):,}")
        print(f"span:      {first} .. {last}")
        for q in shown:
            print(f"  {Path(q.source).name}:{q.line}: {q.reason}\n      {q.raw[:200]}")
        if rows_q > len(shown):
            print(f"  ... {rows_q - len(shown):,} more quarantined rows (use sbg detect --quarantine Q.csv)")
        for text in faults:
            print(f"reader error (its block was quarantined): {text}", file=sys.stderr)
    return EXIT_INPUT if faults else 0


def _served_files(specs) -> list[Path]:
    """The files ``sbg serve`` replays: its arguments with globs and directories expanded, each one there."""
    from .io.inputs import expand_inputs

    paths = expand_inputs(specs) if specs else []
    for p in paths:
        if not p.exists():
            raise SourceError(p, "no such file")
    return paths


def serve_command(args) -> tuple[list[str], dict]:
    """The ``panel serve`` command line and environment for ``sbg serve``'s options."""
    from .io.datasets import DATA_DIR

    app = Path(__file__).resolve().parent / "ui" / "apps" / "monitor.py"
    if args.data_dir is None and not args.files:  # an installed sbg: its samples, made once
        from .io.datasets import ensure_samples

        ensure_samples(DATA_DIR, echo=lambda message: print(message, file=sys.stderr))
    data_dir = (args.data_dir or DATA_DIR).resolve()
    if not data_dir.is_dir():
        raise SbgError(f"{data_dir}: --data-dir is not a directory")
    if args.follow:  # followed files may not exist yet, and a glob stays a glob (it picks up new files)
        if not args.files:
            raise SbgError("--follow needs the files (or a quoted glob) to follow")
        files = [str(Path(f).absolute()) for f in args.files]
    else:
        files = [str(p.resolve()) for p in _served_files(args.files)]
    env = {"SBG_DATA_DIR": str(data_dir), "SBG_SPEED": args.speed, "SBG_FILES": os.pathsep.join(files),
           "SBG_LOOP": "1" if args.loop else "", "SBG_AUTOSTART": "1" if args.autostart else "",
           "SBG_FOLLOW": "1" if args.follow else "",
           "SBG_LOG_LEVEL": args.log_level, "SBG_LOG_FORMAT": args.log_format,
           "SBG_NOTIFY": json.dumps({"alertmanager": args.alertmanager, "webhook": args.webhook}),
           "SBG_BASELINE": str(Path(args.baseline).resolve()) if args.baseline else "",
           "SBG_CONFIG": str(args.config.resolve()) if args.config else "",
           "SBG_SET": json.dumps(args.overrides),
           "SBG_ALERTS_DB": str(args.alerts_db.resolve()) if args.alerts_db else "",
           "SBG_HIERARCHY": str(args.hierarchy.resolve()) if args.hierarchy else "",
           "SBG_ADMIN_USERS": args.admin_users or "",
           "SBG_SCHEDULER": args.scheduler or "", "SBG_WORKERS": "" if args.workers is None else str(args.workers),
           "SBG_PARTITIONS": "" if args.partitions is None else str(args.partitions)}
    # One process (the monitor lives in it). A closed tab asks for its session to go (see
    # Session.tick) and is freed at the next check, 2 s. A page not yet connected keeps its session
    # for 60 s: with a shorter lifetime a page slow to load on a busy server found its session gone,
    # and the one Bokeh made again on connect pointed the page's stylesheets at a CDN.
    # The setup script loads the compiled kernels and the dashboard's imports before the first request.
    # -P: `python -m` puts the working directory first on sys.path, where a folder named sbg (or panel)
    # shadowed the installed package ("cannot import name '__version__' from 'sbg' (unknown location)").
    cmd = [sys.executable, "-P", "-m", "panel", "serve", str(app), "--plugins", "sbg.serve.api", "--port", str(args.port),
           "--setup", str(app.parent / "setup.py"),
           "--address", args.address, "--num-procs", "1", "--check-unused-sessions", "2000",
           "--unused-session-lifetime", "60000"]
    origins = args.allow_websocket_origin or [f"{args.address}:{args.port}", f"localhost:{args.port}"]
    for origin in origins:
        cmd += ["--allow-websocket-origin", origin]
    for flag in ("basic_auth", "cookie_secret", "oauth_provider", "oauth_key", "oauth_secret", "oauth_encryption_key",
                 "oauth_redirect_uri", "oauth_extra_params"):
        value = getattr(args, flag)
        if value:
            cmd += ["--" + flag.replace("_", "-"), str(value)]
    extra = [a for a in args.panel_args if a != "--"]
    if any(a == "--num-procs" or a.startswith("--num-procs=") for a in extra):
        raise SbgError("sbg serve runs in one process: every session shares the monitor held in its memory")
    return cmd + extra, env


def cmd_serve(args) -> int:
    import subprocess

    if args.basic_auth and not args.cookie_secret:
        raise SbgError("--basic-auth needs --cookie-secret (a long random string) to sign the login cookie")
    public = args.address not in ("127.0.0.1", "localhost", "::1")
    if public and not (args.basic_auth or args.oauth_provider):
        print(f"sbg: warning: serving on {args.address} without --basic-auth or OAuth: anyone who can reach "
              "this port can watch and control the replay", file=sys.stderr)
    _settings(args)  # a bad settings file or --set is refused here (exit 4), not in the server's log
    if args.hierarchy:  # so is a bad mapping file (exit 3)
        from .io.hierarchy import load_hierarchy

        load_hierarchy(args.hierarchy)
    cmd, env = serve_command(args)
    if args.print_command:
        print(" ".join(cmd))
        return 0
    if args.alerts_db:  # an alert log that cannot be opened is refused here, not in the server's log
        from .alerts.log import AlertLog

        AlertLog(args.alerts_db).close()
    print(f"sbg {__version__}: dashboard on http://{args.address}:{args.port}/monitor "
          f"(status: /api/status, /api/alerts, /metrics)", flush=True)
    proc = subprocess.Popen(cmd, env={**os.environ, **env})
    return _supervise(proc)


#: Seconds a stopping server has to commit its alert log and free its port before it is killed.
STOP_GRACE = 20.0


def _supervise(proc) -> int:
    """Wait for the server child; SIGTERM, SIGINT or SIGHUP stop it cleanly, and stopping is exit 0.

    The signal is passed on as SIGTERM, on which the server stops its loop, and
    its exit hook stops the replays and commits and closes the alert logs
    (:mod:`sbg.serve.lifecycle`). A child still there after :data:`STOP_GRACE`
    seconds is killed, so the port is always freed for a restart.
    """
    import signal
    import subprocess

    asked = []

    def stop(signum, _frame):
        asked.append(signum)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    deadline = None
    while True:
        try:  # short waits: a signal handler runs between them, and then the grace period starts
            rc = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if asked and deadline is None:
                deadline = time.monotonic() + STOP_GRACE
            if deadline is not None and time.monotonic() > deadline:
                print(f"sbg: the server did not stop within {STOP_GRACE:g} s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
                return 1
    if asked:
        return 0 if rc in (0, -signal.SIGTERM, -signal.SIGINT) else rc
    return rc


def cmd_data(args) -> int:
    from .io import datasets

    if args.data_command == "generate":
        out_dir = args.out or datasets.DATA_DIR
        seed = datasets.DEFAULT_SEED if args.seed is None else args.seed
        t0 = time.monotonic()
        paths = datasets.generate(out_dir, seed)
        for p in paths:
            print(f"{p}  {p.stat().st_size:>10,} bytes")
        print(f"generated {len(paths)} files with seed {seed} in {time.monotonic() - t0:.1f}s")
        return 0
    if args.data_command == "fleet":
        seed = datasets.DEFAULT_SEED if args.seed is None else args.seed
        try:
            paths = datasets.write_fleet_sites(args.out, seed, sites=args.sites, racks=args.racks,
                                               per_rack=args.per_rack, hours=args.hours, step_s=args.step,
                                               fault_share=args.fault_share)
        except ValueError as exc:
            raise SbgError(str(exc)) from None
        for p in paths:
            print(f"{p}  {p.stat().st_size:>10,} bytes")
        n = args.sites * args.racks * args.per_rack
        print(f"{n} batteries at {args.sites} sites, seed {seed}")
        return 0
    if args.data_command == "list":
        datasets.ensure_samples(datasets.DATA_DIR, echo=lambda message: print(message, file=sys.stderr))
        for p in sorted(datasets.DATA_DIR.glob("*")):
            if p.is_file():
                print(f"{p}  {p.stat().st_size:>10,} bytes")
        return 0
    print("usage: sbg data {generate,list}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
