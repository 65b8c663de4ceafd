"""Files and paths as a page may name them: never where the server keeps its files.

Also what bad input to a page's callbacks raises (:data:`BAD_INPUT`): most of it
is a file name, crafted or gone.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pandas as pd

from ..errors import SbgError

__all__ = ["BAD_INPUT", "relative_to", "report_filename", "safe_name", "without_paths"]

#: What bad input to a page's callbacks raises besides SbgError (a NUL byte in a name, a crafted value, a
#: file the server cannot read): shown in the page like an SbgError, never raised into the server's log.
BAD_INPUT = (SbgError, ValueError, OSError, TypeError)


def safe_name(text: str, limit: int = 120) -> str:
    """``text`` cut down to a file name without spaces, slashes or markup.

    >>> safe_name("my run <1>.csv")
    'my_run_1_.csv'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))[:limit]


def relative_to(path, data_dir) -> str:
    """``path`` relative to ``data_dir`` when it lies inside it, as given otherwise."""
    try:
        return str(Path(path).resolve().relative_to(Path(data_dir).resolve()))
    except ValueError:
        return str(path)


def without_paths(message, data_dir, named=()) -> str:
    """``message`` as a page may show it: the server's paths replaced by the names the user knows.

    Each ``(path, label)`` of ``named`` becomes its label; any other path
    inside ``data_dir`` becomes its name relative to it, and ``data_dir``
    itself "the data directory". Served pages never show where the server
    keeps its files.

    >>> without_paths("/srv/data/uploads/a.csv: is empty", "/srv/data")
    'uploads/a.csv: is empty'
    >>> without_paths("No such file: '/srv/data/.9f.a.csv'", "/srv/data", [("/srv/data/.9f.a.csv", "a.csv")])
    "No such file: 'a.csv'"
    >>> without_paths("cannot write /srv/data", "/srv/data")
    'cannot write the data directory'
    """
    text = str(message)
    for path, label in named:
        for form in _path_forms(path):
            text = text.replace(form, label)
    root = _path_forms(data_dir)
    for form in root:
        text = text.replace(form.rstrip(os.sep) + os.sep, "")
    for form in root:
        text = text.replace(form, "the data directory")
    return text


def _path_forms(path) -> list[str]:
    """The ways a message may spell ``path``, longest first.

    A bare relative name ("data") is left out: it could stand for a plain word.
    """
    path = Path(path)
    forms = {str(path)} if os.sep in str(path) else set()
    with contextlib.suppress(OSError, ValueError):  # a NUL byte, a loop of links
        forms |= {str(path.resolve()), str(path.absolute())}
    return sorted(forms, key=len, reverse=True)


def report_filename(source: str, made_at: pd.Timestamp) -> str:
    """The name a downloaded report is saved under: the source and the UTC time it was made.

    >>> report_filename("fleet a+b", pd.Timestamp("2024-06-03 08:00:05", tz="UTC"))
    'sbg_report_fleet_a_b_20240603T080005Z.html'
    """
    return f"sbg_report_{safe_name(source, 80)}_{made_at.tz_convert('UTC'):%Y%m%dT%H%M%SZ}.html"
