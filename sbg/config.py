"""Settings from YAML, loaded into the ``param`` objects they configure.

One declaration serves everywhere: a detector's ``param`` parameters are its
YAML keys, its dashboard widgets and its row in the "settings used" table.

.. code-block:: yaml

    stats:
      window: 120          # rows, or a duration such as 60s
    detectors:
      zscore: {threshold: 6}
      robust: {enabled: true}
      limits: {limits: {temperature_c: [5, 45]}}
    rules:                 # given rules replace the defaults
      - {name: hot, detectors: [limits], severity: critical, pending_rows: 3}
    history: {max_rows: 500000}
    health: {nameplate_ah: 5.0, capacity_weight: 0.4}   # sbg.battery.health.HealthScore

>>> s = Settings.from_dict({"detectors": {"zscore": {"threshold": 4.5}}})
>>> [d.threshold for d in s.make_detectors() if d.label == "zscore"]
[4.5]
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import param
import yaml

from .alerts.engine import Rule, default_rules
from .battery.health import HealthScore
from .detect.detectors import Baseline, default_detectors, detector_classes, for_schema
from .detect.features import Stats
from .errors import ConfigError
from .stream.history import History

__all__ = ["Settings", "settings_table"]

_SECTIONS = ("stats", "detectors", "rules", "history", "replay", "notify", "health")


class Settings:
    """Parsed configuration; builds fresh step objects on demand."""

    def __init__(self, data: dict | None = None, origin: str = "settings"):
        self.data = data or {}
        self.origin = origin
        unknown = set(self.data) - set(_SECTIONS)
        if unknown:
            raise ConfigError(f"{origin}: unknown section(s) {sorted(unknown)}; known: {', '.join(_SECTIONS)}")
        labels = detector_classes()
        for label in self.data.get("detectors") or {}:
            if label not in labels:
                raise ConfigError(f"{origin}: unknown detector {label!r}; known: {', '.join(sorted(labels))}")
        # Build once now so that every error shows up at load time.
        self.make_stats()
        self.make_detectors()
        self.make_rules()
        self.make_history()
        self.make_health()
        self.replay_options()
        if self.data.get("notify") is not None:  # where alerts go: checked now, started by the commands
            from .alerts.notify import notify_specs

            notify_specs(self.data["notify"])

    @classmethod
    def from_yaml(cls, path) -> Settings:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        return cls(data, origin=str(path))

    @classmethod
    def from_dict(cls, data) -> Settings:
        return cls(data)

    def with_overrides(self, pairs) -> Settings:
        """These settings with ``SECTION.NAME=VALUE`` pairs (``--set``) laid over them; VALUE is YAML.

        SECTION is a detector (``zscore.threshold=5``, ``limits.limits={v: [0, 10]}``) or one of
        ``stats``, ``history`` and ``replay``. The same declarations check them as the settings file's.

        >>> Settings().with_overrides(["zscore.threshold=5"]).make_detectors()[3].threshold
        5
        """
        pairs = list(pairs or [])
        if not pairs:
            return self
        data = copy.deepcopy(self.data)
        labels = detector_classes()
        for text in pairs:
            key, sep, raw = str(text).partition("=")
            head, dot, name = key.strip().partition(".")
            if not sep or not dot or not name:
                raise ConfigError(f"--set {text!r}: expected SECTION.NAME=VALUE, e.g. zscore.threshold=5")
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as exc:
                raise ConfigError(f"--set {text!r}: the value is not YAML ({getattr(exc, 'problem', exc)})") from None
            if head in ("stats", "history", "replay", "health"):
                section = data.setdefault(head, {})
            elif head in labels:
                section = data.setdefault("detectors", {}).setdefault(head, {})
            else:
                raise ConfigError(f"--set {text!r}: {head!r} is neither a detector nor a section; detectors: "
                                  f"{', '.join(sorted(labels))}; sections: stats, history, replay, health")
            if not isinstance(section, dict):
                raise ConfigError(f"--set {text!r}: {head} in {self.origin} is not a mapping")
            section[name] = value
        origin = "--set" if self.origin == "settings" else f"{self.origin} with --set"
        return Settings(data, origin=origin)

    def _build(self, cls, where, values, **extra):
        values = values or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{self.origin}: {where} must be a mapping")
        unknown = set(values) - set(cls.param) - {"name"}
        if unknown:
            known = ", ".join(sorted(p for p in cls.param if p != "name"))
            raise ConfigError(f"{self.origin}: {where}: unknown setting(s) {sorted(unknown)}; known: {known}")
        try:
            obj = cls(**extra, **values)
        except (ValueError, TypeError, re.error) as exc:  # re.error: a rule's signals pattern
            raise ConfigError(f"{self.origin}: {where}: {exc}") from None
        check = getattr(obj, "check", None)
        if check is not None:  # settings only a whole object can judge (limits, durations)
            try:
                check()
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{self.origin}: {where}: {exc}") from None
        return obj

    def make_stats(self) -> Stats:
        stats = self._build(Stats, "stats", self.data.get("stats"))
        return stats

    def make_detectors(self, reference=None, entity_column: str | None = None, battery: bool = False):
        """Fresh detectors with these settings; ``entity_column`` and ``battery`` are the input's (see
        :func:`~sbg.detect.detectors.for_schema`)."""
        conf = self.data.get("detectors") or {}
        if not isinstance(conf, dict):
            raise ConfigError(f"{self.origin}: detectors must be a mapping of detector to settings, "
                              f"e.g. {{zscore: {{threshold: 5}}}}")
        dets = []
        for det in default_detectors(reference):
            values = conf.get(det.label)
            if values:
                extra = {"reference": reference} if isinstance(det, Baseline) else {}
                det = self._build(type(det), f"detectors.{det.label}", values, **extra)
            dets.append(det)
        return for_schema(dets, entity_column, battery)

    def make_rules(self):
        rules = self.data.get("rules")
        if rules is None:
            return default_rules()
        if not isinstance(rules, list):
            raise ConfigError(f"{self.origin}: rules must be a list")
        out = [self._build(Rule, f"rules[{i}]", r) for i, r in enumerate(rules)]
        labels = detector_classes()
        for i, rule in enumerate(out):
            unknown = [d for d in rule.detectors if d not in labels]
            if unknown:
                raise ConfigError(f"{self.origin}: rules[{i}] ({rule.name}): unknown detector(s) {unknown}; "
                                  f"known: {', '.join(sorted(labels))}")
        names = [r.name for r in out]
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.origin}: rule names must be unique")
        return out

    def make_history(self) -> History:
        return self._build(History, "history", self.data.get("history"))

    def make_health(self) -> HealthScore:
        """The per-battery health score with these settings (its weights and references)."""
        return self._build(HealthScore, "health", self.data.get("health"))

    def replay_options(self) -> dict:
        """Options of the replay (``tick``, ``max_chunk_rows``), checked; speed and loop are the caller's."""
        values = self.data.get("replay") or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{self.origin}: replay must be a mapping")
        allowed = {"tick", "max_chunk_rows"}
        unknown = set(values) - allowed
        if unknown:
            raise ConfigError(f"{self.origin}: replay: unknown or misplaced setting(s) {sorted(unknown)}; "
                              f"known: {', '.join(sorted(allowed))} (the speed is --speed)")
        # Checked here by hand: building a Replay would import streamz (and with it Dask) for every command.
        tick, rows = values.get("tick", 0.1), values.get("max_chunk_rows", 1000)
        if isinstance(tick, bool) or not isinstance(tick, (int, float)) or not 0.005 <= tick <= 5:
            raise ConfigError(f"{self.origin}: replay: tick must be a number of seconds from 0.005 to 5, not {tick!r}")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ConfigError(f"{self.origin}: replay: max_chunk_rows must be a whole number of 1 or more, "
                              f"not {rows!r}")
        return dict(values)


def settings_table(objects) -> list[dict]:
    """Every parameter of the given param objects as rows: object, parameter, value, default, changed, doc."""
    rows = []
    known_rules = {r.name: r for r in default_rules()}
    for obj in objects:
        owner = getattr(obj, "label", None) or type(obj).__name__
        if isinstance(obj, Rule):
            owner = f"rule {obj.name}"
        # A default rule's own settings are its defaults, not the bare Rule class's.
        model = known_rules.get(obj.name) if isinstance(obj, Rule) else None
        for name, p in obj.param.objects("existing").items():
            if name == "name":
                continue
            value = _plain(getattr(obj, name))
            default = _plain(getattr(model, name) if model is not None else p.default)
            if isinstance(obj, Rule) and model is None and name == "title":
                default = obj.name.replace("_", " ")  # a rule's title defaults to its name
            rows.append({"object": owner, "parameter": name, "value": value, "default": default,
                         "changed": value != default, "doc": p.doc or ""})
    return rows


def _plain(value):
    """A JSON-ready parameter value: scalars as they are, anything else as text."""
    return value if isinstance(value, (int, float, bool, str)) or value is None else str(value)


def describe(settings: Settings) -> dict:
    """A JSON-ready summary of the settings in force."""
    return {"origin": settings.origin, "rows": settings_table(
        [settings.make_stats(), *settings.make_detectors(), *settings.make_rules(), settings.make_health()])}


param.parameterized.docstring_signature = False
