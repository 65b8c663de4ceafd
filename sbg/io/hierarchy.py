"""Where each entity stands in a fleet: site, then rack (or string), then the battery itself.

A hierarchy comes from the data's own columns (text columns named ``site``
and ``rack`` or ``string``, carried along by the readers) or from a mapping
file, a CSV of ``entity,site,rack`` (the entity column may also be named as
the data's, e.g. ``battery_id``; ``string`` may stand for ``rack``; ``rack``
may be left out). Every entity belongs to exactly one group: one the mapping
does not know goes to :data:`UNASSIGNED`, which is shown and counted, never
dropped.

:func:`rollup` turns per-entity states and health scores into one row per
group: the worst state, the lowest health and which battery has it, and
counts. The dashboard, ``/api/status`` and the report all use it, so the
three agree.

>>> h = Hierarchy({"B1": ("north", "R1"), "B2": ("north", "R2")})
>>> h.group_of("B1"), h.group_of("B9")
(('north', 'R1'), ('(unassigned)', '(unassigned)'))
>>> rollup(pd.Series({"B1": "warning", "B2": "normal", "B9": "normal"}), pd.Series({"B1": 80.0, "B2": 55.5}),
...        h)[["site", "rack", "entities", "state", "lowest_health", "lowest_health_entity"]].values.tolist()
[['north', 'R1', 1, 'warning', 80.0, 'B1'], ['north', 'R2', 1, 'normal', 55.5, 'B2'], ['(unassigned)', '(unassigned)', 1, 'normal', nan, None]]
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SourceError

__all__ = ["Hierarchy", "UNASSIGNED", "LEVELS", "STATE_RANK", "load_hierarchy", "hierarchy_columns", "rollup",
           "worst_states", "group_summary", "MAX_MAPPING_ROWS", "MAX_NAME_LENGTH"]

#: The group of an entity the hierarchy does not place.
UNASSIGNED = "(unassigned)"
#: The levels above the battery, outermost first.
LEVELS = ("site", "rack")
#: Column names that give each level, in the data or in a mapping file (compared without case).
LEVEL_NAMES = {"site": ("site",), "rack": ("rack", "string")}
#: Entity column names a mapping file may use (also any name ending in ``_id``).
ENTITY_NAMES = ("entity", "battery", "battery_id", "cell", "cell_id")
#: How bad each state is, worst highest: the dashboard's states (normal, data quality, stale, warning,
#: critical) and the report's (normal, stale, info, warning, critical) on one scale.
STATE_RANK = {"normal": 0, "info": 1, "data quality": 2, "stale": 3, "warning": 4, "critical": 5}
#: A mapping file longer than this is refused (a fleet of a million batteries is not a mapping file).
MAX_MAPPING_ROWS = 1_000_000
#: A site, rack or entity name longer than this is refused: names are labels, not payloads.
MAX_NAME_LENGTH = 200


class Hierarchy:
    """Each entity's ``(site, rack)``, from a mapping file or learnt from the data's columns.

    Parameters
    ----------
    groups : dict, optional
        ``entity -> (site, rack)``; ``rack`` may be ``""`` when the level is unused.
    columns : dict, optional
        ``level -> column``: learn the groups from these columns of the rows as they
        arrive (:meth:`learn`); an entity's newest row wins.
    source : str
        Where the groups come from, for messages (a file, or ``columns site, rack``).
    """

    def __init__(self, groups: dict | None = None, columns: dict | None = None, source: str = "mapping"):
        self.groups: dict[str, tuple[str, str]] = {str(k): (str(v[0]), str(v[1])) for k, v in (groups or {}).items()}
        self.columns = dict(columns or {})
        self.source = source
        self._version = 0  # counts changes of the groups, for the cached frame
        self._frame_cache: tuple | None = None

    def __repr__(self):
        return f"Hierarchy({len(self.groups)} entities from {self.source})"

    @property
    def levels(self) -> tuple[str, ...]:
        """The levels in use: ``("site", "rack")``, or ``("site",)`` when no entity has a rack."""
        if self.columns:
            return tuple(level for level in LEVELS if level in self.columns)
        return LEVELS if any(r for _, r in self.groups.values()) else LEVELS[:1]

    def group_of(self, entity) -> tuple[str, str]:
        """``(site, rack)`` of ``entity``; :data:`UNASSIGNED` twice when it is not placed."""
        return self.groups.get(str(entity), (UNASSIGNED, UNASSIGNED))

    def learn(self, frame: pd.DataFrame) -> None:
        """Take the groups of a chunk's rows (for a hierarchy from columns; otherwise nothing).

        A row whose site is empty leaves its entity where it was (or unassigned).
        """
        if not self.columns or frame is None or frame.empty:
            return
        site_col, rack_col = self.columns.get("site"), self.columns.get("rack")
        if site_col not in frame.columns:
            return
        cols = ["entity", site_col] + ([rack_col] if rack_col in frame.columns else [])
        rows = frame[cols]
        site = rows[site_col].astype("string").str.strip()
        rows = rows[site.notna() & (site != "")]
        if rows.empty:
            return
        last = rows.groupby("entity", sort=False).last()
        for entity, rec in zip(last.index, last.itertuples(index=False), strict=True):
            site_name = _clean(rec[0])
            rack_name = _clean(rec[1]) if len(rec) > 1 else ""
            group = (site_name, rack_name or UNASSIGNED if rack_col else "")
            if self.groups.get(str(entity)) != group:
                self.groups[str(entity)] = group
                self._version += 1

    def frame(self, entities) -> pd.DataFrame:
        """``entity, site, rack`` for ``entities``, ordered by site, rack and entity (unassigned last)."""
        entities = [str(e) for e in entities]
        # Asked every second per page for the same fleet: the last answer is kept until the groups change.
        key = (self._version, len(self.groups), tuple(entities))
        if self._frame_cache is not None and self._frame_cache[0] == key:
            return self._frame_cache[1].copy()
        pairs = [self.group_of(e) for e in entities]
        out = pd.DataFrame({"entity": pd.Series(entities, dtype=object),
                            "site": pd.Series([p[0] for p in pairs], dtype=object),
                            "rack": pd.Series([p[1] for p in pairs], dtype=object)})
        out = _ordered(out, ["site", "rack", "entity"])
        self._frame_cache = (key, out)
        return out.copy()

    def sites(self, entities=None) -> list[str]:
        """The sites, sorted (:data:`UNASSIGNED` last when some of ``entities`` are not placed)."""
        found = {s for s, _ in self.groups.values()}
        if entities is not None:
            found = {self.group_of(e)[0] for e in entities}
        return sorted(found, key=lambda s: (s == UNASSIGNED, s))

    def unassigned(self, entities) -> list[str]:
        """Those of ``entities`` the hierarchy does not place, sorted."""
        return sorted(str(e) for e in entities if str(e) not in self.groups)

    def describe(self) -> dict:
        """Where the groups come from and how many entities they place (for ``/api/status``)."""
        return {"source": self.source, "levels": list(self.levels), "mapped_entities": len(self.groups),
                "columns": dict(self.columns)}


def _clean(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()[:MAX_NAME_LENGTH]


def _ordered(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rows sorted by ``by``, an unassigned site or rack after the named ones."""
    keys = {}
    for c in by:
        values = frame[c].astype(str).to_numpy(dtype=object)
        if c in ("site", "rack"):
            keys[f"_{c}_out"] = values == UNASSIGNED
        keys[f"_{c}"] = values
    order = pd.DataFrame(keys).sort_values(list(keys), kind="stable").index
    return frame.iloc[order].reset_index(drop=True)


def hierarchy_columns(columns) -> dict:
    """The columns that give the levels, among ``columns`` (case-insensitive); empty without a site column.

    >>> hierarchy_columns(["timestamp", "battery_id", "Site", "string", "voltage_v"])
    {'site': 'Site', 'rack': 'string'}
    >>> hierarchy_columns(["timestamp", "rack"])
    {}
    """
    lower = {str(c).strip().lower(): c for c in columns}
    found = {}
    for level in LEVELS:
        name = next((lower[n] for n in LEVEL_NAMES[level] if n in lower), None)
        if name is not None:
            found[level] = name
    return found if "site" in found else {}


def load_hierarchy(path) -> Hierarchy:
    """Read a mapping file: a CSV with an entity column, ``site`` and optionally ``rack`` (or ``string``).

    Every problem is a :class:`~sbg.errors.SourceError` naming the file, and the
    line and column where it is: no such file, not UTF-8 text, no header, no
    entity or site column, a row with the wrong number of fields, an empty
    entity or site, an entity mapped twice to different groups, a name longer
    than :data:`MAX_NAME_LENGTH`. Columns other than these are ignored.
    Names are kept as text, exactly (less surrounding spaces); they are
    escaped wherever they are shown.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(path, "no such mapping file") from None
    except IsADirectoryError:
        raise SourceError(path, "is a directory, not a mapping file") from None
    except OSError as exc:
        raise SourceError(path, f"cannot read the mapping file: {exc.strerror or exc}") from None
    if b"\x00" in raw[:65536]:
        raise SourceError(path, "not a text CSV file (it holds NUL bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SourceError(path, f"not UTF-8 text (byte {raw[exc.start]:#04x})", line=line) from None
    if not text.strip():
        raise SourceError(path, "empty mapping file: expected a header such as entity,site,rack")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise SourceError(path, f"unreadable header: {exc}", line=1) from None
    names = [h.strip().lower() for h in header]
    entity_at = next((i for n in ENTITY_NAMES for i, h in enumerate(names) if h == n), None)
    if entity_at is None:
        entity_at = next((i for i, h in enumerate(names) if h.endswith("_id")), None)
    levels = hierarchy_columns(header)
    if entity_at is None or not levels:
        missing = " and ".join(w for w, ok in (("an entity column (entity, battery_id, ...)", entity_at is not None),
                                               ("a site column", bool(levels))) if not ok)
        raise SourceError(path, f"the header has no {missing}; expected entity,site,rack (got "
                                f"{','.join(h[:40] for h in header[:10])})", line=1)
    site_at = header.index(levels["site"])
    rack_at = header.index(levels["rack"]) if "rack" in levels else None
    groups: dict[str, tuple[str, str]] = {}
    first_line: dict[str, int] = {}
    line = 1
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(groups) >= MAX_MAPPING_ROWS:
                raise SourceError(path, f"more than {MAX_MAPPING_ROWS:,} entities: not a mapping file", line=line)
            if len(row) != len(header):
                raise SourceError(path, f"{len(row)} fields, the header has {len(header)}", line=line,
                                  column=min(len(row), len(header)) + 1)
            entity = row[entity_at].strip()
            site = row[site_at].strip()
            rack = row[rack_at].strip() if rack_at is not None else ""
            for value, at, what in ((entity, entity_at, "entity"), (site, site_at, "site"), (rack, rack_at, "rack")):
                if at is None:
                    continue
                if len(value) > MAX_NAME_LENGTH:
                    raise SourceError(path, f"{what} longer than {MAX_NAME_LENGTH} characters", line=line,
                                      column=at + 1)
                if not value and what != "rack":
                    raise SourceError(path, f"empty {what} ({header[at]!r})", line=line, column=at + 1)
                if value == UNASSIGNED:
                    raise SourceError(path, f"{UNASSIGNED!r} is reserved for entities the mapping leaves out",
                                      line=line, column=at + 1)
            group = (site, rack or (UNASSIGNED if rack_at is not None else ""))
            if entity in groups:
                if groups[entity] != group:
                    raise SourceError(path, f"entity {entity[:60]!r} mapped again, to another group (first on line "
                                            f"{first_line[entity]})", line=line, column=entity_at + 1)
                continue
            groups[entity] = group
            first_line[entity] = line
    except csv.Error as exc:
        raise SourceError(path, f"malformed CSV: {exc}", line=reader.line_num or line) from None
    if not groups:
        raise SourceError(path, "no entity mapped: the file has a header and no rows")
    return Hierarchy(groups, source=str(path))


def worst_states(health: pd.DataFrame, names: dict | None = None) -> pd.Series:
    """Each entity's worst state over its signals, by name, from a :meth:`Monitor.health` frame.

    >>> worst_states(pd.DataFrame({"entity": ["a", "a", "b"], "signal": ["v", "t", "v"], "state": [0, 1, 3]}),
    ...              {0: "normal", 1: "warning", 3: "stale"}).to_dict()
    {'a': 'warning', 'b': 'stale'}
    """
    if health is None or health.empty:
        return pd.Series(dtype=object)
    names = names or {0: "normal", 1: "warning", 2: "critical", 3: "stale", 4: "data quality"}
    named = health["state"].map(names)
    rank = named.map(STATE_RANK)
    frame = pd.DataFrame({"entity": health["entity"].astype(str).to_numpy(dtype=object), "rank": rank.to_numpy(),
                          "name": named.to_numpy(dtype=object)})
    best = frame.sort_values("rank", kind="stable").groupby("entity", sort=False).last()
    return pd.Series(best["name"].to_numpy(dtype=object), index=best.index.astype(object), dtype=object)


#: The roll-up's columns, one row per group.
ROLLUP_COLUMNS = ["site", "rack", "entities", "state", "critical", "warning", "stale", "data quality", "info", "normal",
                  "lowest_health", "lowest_health_entity"]


def rollup(states: pd.Series, health: pd.Series | None, hierarchy: Hierarchy, level: str = "rack") -> pd.DataFrame:
    """One row per group: how many entities, the worst state, counts per state, the lowest health and whose.

    ``states`` is each entity's (worst) state by name; ``health`` each
    battery's health score (may be empty: not battery data). ``level`` is
    ``"rack"`` (a row per site and rack) or ``"site"`` (a row per site,
    ``rack`` empty). Entities the hierarchy does not place form the
    :data:`UNASSIGNED` group. Groups come sorted by site and rack,
    unassigned last.
    """
    entities = list(dict.fromkeys([str(e) for e in states.index]
                                  + ([str(e) for e in health.index] if health is not None else [])))
    if not entities:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("site", "rack", "state", "lowest_health_entity")
                                          else float) for c in ROLLUP_COLUMNS})
    places = hierarchy.frame(entities)
    by_name = {str(k): v for k, v in states.items()}
    scores = {str(k): float(v) for k, v in (health.items() if health is not None else ()) if pd.notna(v)}
    names = places["entity"].to_numpy(dtype=object)
    places["state"] = pd.Series([by_name.get(e, "normal") for e in names], dtype=object)
    places["health"] = np.array([scores.get(e, np.nan) for e in names], dtype=float)
    places["rank"] = places["state"].map(STATE_RANK).fillna(0).astype(int)
    if level == "site":
        places["rack"] = ""
    # Column-wise over the groups: a fleet of 500 is rolled up every second for every open page.
    grouped = places.groupby(["site", "rack"], sort=False)
    worst = places.loc[grouped["rank"].idxmax(), ["site", "rack", "state"]].set_index(["site", "rack"])["state"]
    counts = places.groupby(["site", "rack", "state"], sort=False).size().unstack("state", fill_value=0)
    scored = places.dropna(subset=["health"])
    low = scored.loc[scored.groupby(["site", "rack"], sort=False)["health"].idxmin()].set_index(["site", "rack"]) \
        if len(scored) else None
    keys = list(dict.fromkeys(zip(places["site"], places["rack"], strict=True)))
    sizes = grouped.size()
    rows = []
    for key in keys:
        has_low = low is not None and key in low.index
        rows.append({"site": key[0], "rack": key[1], "entities": int(sizes[key]), "state": worst[key],
                     **{s: int(counts.at[key, s]) if s in counts.columns else 0
                        for s in ("critical", "warning", "stale", "data quality", "info", "normal")},
                     "lowest_health": float(low.at[key, "health"]) if has_low else np.nan,
                     "lowest_health_entity": str(low.at[key, "entity"]) if has_low else None})
    out = pd.DataFrame(rows, columns=ROLLUP_COLUMNS)
    for c in ("site", "rack", "state", "lowest_health_entity"):
        out[c] = pd.Series([r[c] for r in rows], dtype=object)
    return out


def group_summary(states: pd.Series, health: pd.Series | None, hierarchy: Hierarchy) -> dict:
    """The roll-up as plain data (``/api/status``'s ``groups``): sites, each with its racks, and the unassigned.

    Each group has ``entities``, ``state`` (the worst), ``counts`` per state,
    ``lowest_health`` and ``lowest_health_entity``; a site also lists its
    ``racks``. ``unassigned`` names the entities no group places.
    """
    def record(rec) -> dict:
        low = rec["lowest_health"]
        return {"entities": int(rec["entities"]), "state": rec["state"],
                "counts": {s: int(rec[s]) for s in STATE_RANK if int(rec[s])},
                "lowest_health": None if pd.isna(low) else round(float(low), 1),
                "lowest_health_entity": rec["lowest_health_entity"]}

    sites = rollup(states, health, hierarchy, level="site")
    racks = rollup(states, health, hierarchy, level="rack") if "rack" in hierarchy.levels else None
    out = []
    for rec in sites.to_dict("records"):
        item = {"site": rec["site"], **record(rec)}
        if racks is not None:
            item["racks"] = [{"rack": r["rack"], **record(r)} for r in racks.to_dict("records")
                             if r["site"] == rec["site"]]
        out.append(item)
    entities = list(dict.fromkeys([str(e) for e in states.index]
                                  + ([str(e) for e in health.index] if health is not None else [])))
    unassigned = hierarchy.unassigned(entities)
    return {**hierarchy.describe(), "sites": out, "unassigned": unassigned[:100],
            "unassigned_count": len(unassigned)}
