"""Input sets: the files a command reads, from paths, globs and directories.

``sbg detect``, ``sbg report`` and ``sbg replay`` take several inputs at
once. A glob (``'archive/2024-*.csv.gz'``) expands to its matches and a
directory (a partitioned Parquet dataset, a folder of CSVs) to the data files
under it, each in sorted name order, so the same command line always reads
the same files in the same order. A glob that matches nothing, or a
directory without data files, is an error, never an empty run.

Files read together must agree on their schema (time, entity, signals and
carried columns): one output dataset has one set of columns. An entity's
rows are read file after file, so its rows must not go back in time from
one file to the next; :class:`FileOrder` checks that.

Each file has a name: its file name without suffixes (``0`` for
``valve1/0.csv``). It is the entity of every row of a wide file (one
without an entity column), and the names joined by ``+`` name the run
(:func:`source_name`). When files read together share a name, each of those
takes the shortest end of its path, from the files' common folder, that no
other file has (``valve1/0`` and ``valve2/0``; the file name with its
suffix if only that differs): two runs never merge into one entity.
A long-format file's entities come from its entity column, and the same
entity in two files is the same entity, read file after file.

>>> import pathlib, tempfile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> for day in (2, 1):
...     _ = (d / f"day{day}.csv").write_text(f"time,id,v\\n2024-01-0{day}T00:00:00,a,1\\n")
>>> [p.name for p in expand_inputs([str(d / "day*.csv")])]
['day1.csv', 'day2.csv']
>>> source_name(open_inputs(expand_inputs([d])))
'day1+day2'
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SbgError, SourceError
from .sources import Source, check_regular_file, with_schema

__all__ = ["DATA_SUFFIXES", "expand_inputs", "open_inputs", "name_sources", "distinct_names", "source_name",
           "FileOrder"]

#: File names a directory or glob contributes (case-insensitive).
#: What a glob or a directory picks up: text tables, Parquet, and the binary cycler files of sbg.io.cyclers.
DATA_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt", ".parquet", ".pq", ".mpr", ".nda", ".ndax")
_GLOB_CHARS = set("*?[")


def _is_data_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(DATA_SUFFIXES) and not name.startswith((".", "_"))


def _in_skipped_folder(path: Path, pattern: str = "") -> bool:
    """Whether ``path`` lies in a folder that inputs skip (``.``/``_``, as a dataset's ``_sbg_tmp``
    scratch) and that the glob ``pattern`` did not name itself. A directory's files are judged by
    their path inside it, with no pattern.

    >>> _in_skipped_folder(Path("d/_sbg_tmp/p.csv"), "d/**/*.csv"), _in_skipped_folder(Path("d/_x/p.csv"), "d/_x/*.csv")
    (True, False)
    """
    named = set(Path(pattern).parts)
    return any(part.startswith((".", "_")) and part not in named for part in path.parts[:-1])


def expand_inputs(specs: Sequence) -> list[Path]:
    """The data files named by ``specs``: paths, globs (``**`` recurses) and directories.

    Each glob and directory contributes its files in sorted order; a file
    named twice is read once, where it first appears. Both skip files in
    folders whose names start with ``.`` or ``_`` (a dataset's scratch), unless
    the path or pattern names that folder.
    """
    if isinstance(specs, (str, Path)):
        specs = [specs]
    out: list[Path] = []
    for spec in specs:
        text = str(spec)
        if _GLOB_CHARS & set(text) and not Path(text).exists():
            found = sorted(Path(p) for p in glob.glob(text, recursive=True))
            files = [p for p in found if _is_data_file(p) and not _in_skipped_folder(p, text)]
            if not files:
                what = "no data file (.csv, .csv.gz, .parquet, a cycler file)" if found else "nothing"
                raise SbgError(f"{text}: the pattern matches {what}")
        elif Path(text).is_dir():
            files = sorted(p for p in Path(text).rglob("*")
                           if _is_data_file(p) and not _in_skipped_folder(p.relative_to(text)))
            if not files:
                raise SourceError(text, "directory holds no data files (.csv, .csv.gz, .parquet, cycler files)")
        else:
            check_regular_file(text)  # a named pipe or a device would block the read, maybe for ever
            files = [Path(text)]
        out += files
    if not out:
        raise SbgError("no data file given")
    seen: set = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _shape(schema) -> dict:
    return {"time": schema.time, "entity": schema.entity, "signals": list(schema.signals),
            "carried": list(schema.carried)}


def distinct_names(sources: Sequence[Source]) -> list[str]:
    """A name per source, all different: its own name, or more of its path where names collide.

    A source keeps its name (the file name without suffixes) unless another
    source has the same one; those that share a name take more and more of
    their path, relative to the common folder of all the sources, until no
    other source has it (``/`` between folders, whatever the system). Where
    the paths differ only in the file's suffix, the name is the file name.

    >>> from types import SimpleNamespace as S
    >>> def names(*paths):
    ...     return distinct_names([S(path=Path(p), name=Path(p).name.split(".")[0]) for p in paths])
    >>> names("runs/valve1/0.csv", "runs/valve2/0.csv", "runs/valve2/1.csv")
    ['valve1/0', 'valve2/0', '1']
    >>> names("x/a/0.csv", "y/a/0.csv", "a/0.csv", "a/0.parquet")
    ['x/a/0', 'y/a/0', 'a/0.csv', 'a/0.parquet']
    >>> names("day1.csv", "day2.csv")
    ['day1', 'day2']
    """
    own = [src.name for src in sources]
    if len(set(own)) == len(own):
        return own
    full = [Path(os.path.normpath(Path(src.path).absolute())) for src in sources]
    try:
        root = Path(os.path.commonpath(full))
    except ValueError:  # different drives: no common folder
        root = None
    parts = [(p.relative_to(root).parts if root is not None else p.parts) or (p.name,) for p in full]
    depth = [1] * len(sources)  # path components in the name, the file's own name counting as one
    with_suffix = [False] * len(sources)

    def name(i):
        if with_suffix[i]:
            return "/".join(parts[i][-depth[i]:])
        return "/".join((*parts[i][-depth[i]:-1], own[i]))

    while True:
        names = [name(i) for i in range(len(sources))]
        counts = Counter(names)
        clashes = [i for i, n in enumerate(names) if counts[n] > 1]
        if not clashes:
            return names
        moved = False
        for group in {names[i] for i in clashes}:
            members = [i for i in clashes if names[i] == group]
            deeper = [i for i in members if depth[i] < len(parts[i])]
            if deeper:  # more of the path where there is more of it
                for i in deeper:
                    depth[i] += 1
                moved = True
            else:  # the whole path is named already: only the suffix can tell them apart
                for i in members:
                    if not with_suffix[i]:
                        with_suffix[i] = moved = True
        if not moved:  # the same file twice: number the repeats
            seen: Counter = Counter()
            for i, n in enumerate(names):
                seen[n] += 1
                if seen[n] > 1:
                    names[i] = f"{n} ({seen[n]})"
            return names


def name_sources(sources: Iterable[Source]) -> list[Source]:
    """The sources, those whose names collide with another's renamed by :func:`distinct_names`."""
    sources = list(sources)
    names = distinct_names(sources)
    return [src if name == src.name else
            Source(src.path, block_bytes=src.block_bytes, schema=with_schema(src.schema, label=name))
            for src, name in zip(sources, names, strict=True)]


def open_inputs(paths: Sequence, **schema_options) -> list[Source]:
    """A :class:`~sbg.io.sources.Source` per file, refusing files whose schema differs from the first's.

    Every source has a different name (see :func:`distinct_names`), so no
    two wide files become one entity.
    """
    sources = name_sources(Source(p, **schema_options) for p in paths)
    first = _shape(sources[0].schema)
    for src in sources[1:]:
        shape = _shape(src.schema)
        if shape != first:
            diff = "; ".join(f"{k} {shape[k]!r}, not {first[k]!r}" for k in first if shape[k] != first[k])
            raise SourceError(src.path, f"has a different schema from {sources[0].path}: {diff}")
    return sources


def source_name(sources: Sequence[Source]) -> str:
    """The name alerts are filed under: the sources' names joined by ``+`` (as ``sbg replay`` names them).

    A long list is shortened to its ends and a hash of the whole, so the
    name stays readable and still differs between inputs.
    """
    names = [src.name for src in sources]
    joined = "+".join(names)
    if len(joined) <= 200:
        return joined
    digest = hashlib.sha1(joined.encode()).hexdigest()[:12]
    return f"{names[0]}+...+{names[-1]} ({len(names)} files, {digest})"


class FileOrder:
    """Checks that no entity goes back in time from one file to the next.

    Feed it each file's rows in order (:meth:`start` a file, then
    :meth:`update` with its rows' entities and int64 ns timestamps, in any
    number of pieces). A file whose rows of an entity start before an
    earlier file's rows of that entity ended raises :class:`SourceError`.

    >>> order = FileOrder()
    >>> order.start("a.csv"); order.update(np.array(["x"], dtype=object), np.array([10]))
    >>> order.start("b.csv"); order.update(np.array(["x"], dtype=object), np.array([5]))
    Traceback (most recent call last):
    ...
    sbg.errors.SourceError: b.csv: entity 'x' starts at 1970-01-01 00:00:00.000000005, before a.csv ends (1970-01-01 00:00:00.000000010); an entity's files must be given in time order
    """

    def __init__(self):
        self._done: dict[str, tuple[int, str]] = {}  # entity -> (last ns, file) of the finished files
        self._current: dict[str, int] = {}
        self._path = None

    def start(self, path):
        """Begin the next file."""
        for entity, last in self._current.items():
            self._done[entity] = (last, str(self._path))
        self._current = {}
        self._path = path

    def update(self, entities: np.ndarray, ns: np.ndarray):
        """Rows of the current file (entities as text, times as int64 ns)."""
        if len(ns) == 0:
            return
        frame = pd.DataFrame({"e": entities, "t": ns})
        bounds = frame.groupby("e", sort=False)["t"].agg(["min", "max"])
        for entity, lo, hi in zip(bounds.index.tolist(), bounds["min"].tolist(), bounds["max"].tolist(), strict=True):
            before = self._done.get(entity)
            if before is not None and lo < before[0]:
                raise SourceError(self._path, f"entity {entity!r} starts at {pd.Timestamp(lo)}, before {before[1]} "
                                              f"ends ({pd.Timestamp(before[0])}); an entity's files must be given "
                                              "in time order")
            self._current[entity] = max(hi, self._current.get(entity, hi))
