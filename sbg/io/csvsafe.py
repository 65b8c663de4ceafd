"""Spreadsheet-safe CSV: no cell sbg writes for people runs as a formula.

A CSV opened in Excel or LibreOffice evaluates a cell such as
``=HYPERLINK("http://x","click")`` or ``+cmd|' /C calc'!A0`` as a formula,
quoted or not. Entity ids, carried text columns, headers and quarantined raw
lines come from the input, so every CSV writer of sbg (``sbg detect``'s
flags, its ``--quarantine`` file, :meth:`sbg.alerts.log.AlertLog.to_csv`, the
dashboard's "Alerts CSV") passes its cells through this rule (OWASP, "CSV
injection"):

* a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab (``\\t``) or a
  carriage return (``\\r``) gets a leading single quote ``'``, which the
  spreadsheet shows as text and does not evaluate;
* numbers are never touched: only text cells are neutralised, and a text
  cell that is a plain decimal number (``-1.5``, ``+3``, ``-2e-3``) is left
  as it is, so negative values keep their sign;
* column headers follow the same rule.

Parquet and JSON outputs are not spreadsheets' input: they keep the exact text.
A program reading a CSV sbg wrote (``sbg evaluate`` reads the flags) takes the
quote off again with :func:`restore_cell`.

>>> [neutralise_cell(v) for v in ["=1+1", "@SUM(1)", "-2+3", "-1.5", "+3", "\\tx", "a=b", -1.5, None]]
["'=1+1", "'@SUM(1)", "'-2+3", '-1.5', '+3', "'\\tx", 'a=b', -1.5, None]
"""

from __future__ import annotations

import re

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["DANGEROUS", "neutralise_cell", "restore_cell", "neutralise_frame", "neutralise_table"]

#: First characters that make a spreadsheet read a cell as a formula.
DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
_DANGEROUS_RE = r"^[=+\-@\t\r]"
#: A plain decimal number: left alone even with a sign.
_NUMBER_RE = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_NUMBER = re.compile(_NUMBER_RE)


def neutralise_cell(value):
    """``value`` with a leading ``'`` if it is text a spreadsheet would take for a formula; else unchanged."""
    if isinstance(value, str) and value.startswith(DANGEROUS) and not _NUMBER.match(value):
        return "'" + value
    return value


def restore_cell(value):
    """The text :func:`neutralise_cell` was given: ``value`` without the ``'`` it added; else unchanged.

    Text that itself began with a quote and then one of :data:`DANGEROUS` reads back without
    its quote: the one case the rule cannot tell apart.

    >>> [restore_cell(neutralise_cell(v)) for v in ["-cell7", "=1+1", "'quoted", "-1.5", "@a", None]]
    ['-cell7', '=1+1', "'quoted", '-1.5', '@a', None]
    """
    if isinstance(value, str) and value.startswith("'") and neutralise_cell(value[1:]) != value[1:]:
        return value[1:]
    return value


def neutralise_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` for ``to_csv``: text cells (object and string columns) and headers neutralised."""
    out = df.copy()
    for i, dtype in enumerate(out.dtypes):
        if dtype.kind == "O" or isinstance(dtype, pd.StringDtype):
            out.isetitem(i, out.iloc[:, i].map(neutralise_cell, na_action="ignore"))
    out.columns = [neutralise_cell(c) for c in out.columns]
    return out


def neutralise_table(table: pa.Table) -> pa.Table:
    """``table`` for a CSV writer: its string columns and column names neutralised (vectorised)."""
    cols = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            # Most columns have no cell with a dangerous first character: the number test is then not needed.
            dangerous = pc.fill_null(pc.match_substring_regex(col, _DANGEROUS_RE), False)
            if pc.any(dangerous).as_py():
                risky = pc.fill_null(pc.and_(dangerous, pc.invert(pc.match_substring_regex(col, _NUMBER_RE))), False)
                if pc.any(risky).as_py():
                    col = pc.if_else(risky, pc.binary_join_element_wise("'", col, ""), col)
        cols.append(col)
    return pa.Table.from_arrays(cols, names=[neutralise_cell(n) for n in table.column_names])
