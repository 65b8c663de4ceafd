"""Settings: YAML (or a dict) onto the ``param`` declarations of stats, detectors, rules and history.

Every error is a :class:`~sbg.errors.ConfigError` (exit 4) naming where it is:
the file (or ``settings`` for a dict), the section and the key.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from sbg.alerts.engine import Rule, default_rules
from sbg.config import Settings, describe, settings_table
from sbg.detect.detectors import Baseline, Gap, Limits, ZScore, default_detectors, detector_classes
from sbg.errors import EXIT_CONFIG, ConfigError
from sbg.stream.history import History

from .test_monitor import fleet_csv


def detector(settings, label, **kwargs):
    (found,) = [d for d in settings.make_detectors(**kwargs) if d.label == label]
    return found


def config_error(data) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_dict(data)
    assert info.value.exit_code == EXIT_CONFIG
    return str(info.value)


# ----------------------------------------------------------------------------- loading


def test_defaults():
    s = Settings()
    assert s.data == {} and s.origin == "settings"
    assert [r.name for r in s.make_rules()] == [r.name for r in default_rules()]
    assert [d.label for d in s.make_detectors()] == [d.label for d in default_detectors()]
    assert s.make_stats().window == 120 and s.make_history().max_rows == History().max_rows
    assert s.replay_options() == {}
    assert not any(row["changed"] for row in describe(s)["rows"])


def test_from_dict_reaches_each_object():
    s = Settings.from_dict({
        "stats": {"window": "60s", "ewm_alpha": 0.2},
        "detectors": {"zscore": {"threshold": 4.5}, "robust": {"enabled": True},
                      "limits": {"limits": {"temperature_c": [5, 45]}}},
        "history": {"max_rows": 1234},
        "replay": {"max_chunk_rows": 50},
    })
    stats = s.make_stats()
    assert stats.window == "60s" and stats.ewm_alpha == 0.2
    assert detector(s, "zscore").threshold == 4.5 and detector(s, "robust").enabled is True
    assert detector(s, "limits").limits == {"temperature_c": [5, 45]}
    assert detector(s, "spike").threshold == 8.0  # untouched: the default
    assert s.make_history().max_rows == 1234
    assert s.replay_options() == {"max_chunk_rows": 50}


def test_each_make_builds_fresh_objects():
    s = Settings.from_dict({"detectors": {"zscore": {"threshold": 4.5}}})
    one, two = detector(s, "zscore"), detector(s, "zscore")
    assert one is not two
    one.threshold = 9.0
    assert two.threshold == 4.5 and detector(s, "zscore").threshold == 4.5
    assert s.make_rules()[0] is not s.make_rules()[0]
    options = s.replay_options()
    options["speed"] = "1x"
    assert "speed" not in s.replay_options()


def test_baseline_options_apply_when_a_reference_is_given():
    s = Settings.from_dict({"detectors": {"baseline": {"window": 50, "check_rows": 20}}})
    assert "baseline" not in [d.label for d in s.make_detectors()]
    t = pd.date_range("2024-01-01", periods=100, freq="s")
    reference = pd.DataFrame({"timestamp": t, "entity": "a", "v": np.linspace(0, 1, 100)})
    base = detector(s, "baseline", reference=reference)
    assert isinstance(base, Baseline) and base.window == 50 and base.check_rows == 20


def test_from_yaml_reads_every_section(tmp_path):
    path = tmp_path / "sbg.yaml"
    path.write_text(
        "stats: {window: 90, ewm_alpha: 0.1}\n"
        "detectors:\n"
        "  zscore: {threshold: 5}\n"
        "  gap: {factor: 20, min_gap: 30s}\n"
        "rules:\n"
        "  - {name: hot, detectors: [limits], severity: critical, pending_rows: 3, clear_rows: 30}\n"
        "  - {name: quiet, detectors: [gap]}\n"
        "history: {max_rows: 500}\n"
        "replay: {tick: 0.05}\n"
        "notify: {webhook: 'http://127.0.0.1:9/hook'}\n")
    s = Settings.from_yaml(path)
    assert s.origin == str(path)
    assert s.make_stats().window == 90 and s.make_stats().ewm_alpha == 0.1
    assert detector(s, "zscore").threshold == 5
    gap = detector(s, "gap")
    assert isinstance(gap, Gap) and gap.factor == 20 and gap.min_gap == "30s"
    hot, quiet = s.make_rules()
    assert (hot.name, hot.detectors, hot.severity, hot.pending_rows, hot.clear_rows) == (
        "hot", ["limits"], "critical", 3, 30)
    assert (quiet.name, quiet.title, quiet.severity, quiet.clear_rows) == ("quiet", "quiet", "warning", 10)
    assert s.make_history().max_rows == 500
    assert s.replay_options() == {"tick": 0.05}
    assert s.data["notify"] == {"webhook": "http://127.0.0.1:9/hook"}


def test_an_empty_yaml_file_means_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set yet\n")
    s = Settings.from_yaml(path)
    assert s.data == {} and describe(s)["rows"] == describe(Settings())["rows"]


def test_given_rules_replace_the_defaults():
    s = Settings.from_dict({"rules": [{"name": "hot", "detectors": ["limits"], "signals": "^temp",
                                       "severity": "critical"}]})
    (hot,) = s.make_rules()
    assert hot.matches("limits", "temperature_c") and not hot.matches("limits", "voltage_v")
    assert not hot.matches("zscore", "temperature_c")
    assert Settings.from_dict({"rules": []}).make_rules() == []  # an empty list: no rules at all
    assert [r.name for r in Settings.from_dict({"rules": None}).make_rules()] == [r.name for r in default_rules()]


# ----------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file$"):
        Settings.from_yaml(tmp_path / "nope.yaml")


def test_invalid_yaml_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("stats: {window: 60}\ndetectors:\n  zscore: {threshold: 3\nrules: []\n")
    with pytest.raises(ConfigError) as info:
        Settings.from_yaml(path)
    assert str(info.value).startswith(f"{path}:4:6: invalid YAML: ")


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- stats\n- detectors\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping of sections$"):
        Settings.from_yaml(path)


def test_unknown_keys_are_named_with_the_file(tmp_path):
    cases = {
        "sections.yaml": ("detectorz: {}\n",
                          "unknown section(s) ['detectorz']; known: stats, detectors, rules, history, replay, notify"),
        "detector.yaml": ("detectors:\n  psychic: {threshold: 3}\n", "unknown detector 'psychic'; known: "),
        "option.yaml": ("detectors:\n  zscore:\n    thresh: 3\n",
                        "detectors.zscore: unknown setting(s) ['thresh']; known: beyond_range, confirm, enabled, "),
        "stats.yaml": ("stats: {windw: 60}\n", "stats: unknown setting(s) ['windw']; known: band_k, ewm_alpha, "),
        "rule.yaml": ("rules:\n  - {name: hot, pending: 3}\n", "rules[0]: unknown setting(s) ['pending']; known: "),
        "history.yaml": ("history: {rows: 5}\n", "history: unknown setting(s) ['rows']; known: max_rows"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            Settings.from_yaml(path)
        assert str(info.value).startswith(f"{path}: {message}"), str(info.value)
    # Every known detector is listed for an unknown one.
    assert config_error({"detectors": {"psychic": {}}}).endswith(", ".join(sorted(detector_classes())))


@pytest.mark.parametrize(("data", "message"), [
    ({"detectors": {"zscore": {"threshold": -1}}},
     "settings: detectors.zscore: Number parameter 'ZScore.threshold' must be greater than 0, not -1."),
    ({"detectors": {"zscore": {"enabled": "yes"}}},
     "settings: detectors.zscore: Boolean parameter 'Detector.enabled' must be True or False, not 'yes'."),
    ({"detectors": {"gap": {"factor": 1}}}, "settings: detectors.gap: Number parameter 'Gap.factor' must be greater "
                                            "than 1, not 1."),
    ({"stats": {"window": 0}}, "settings: stats: a row window needs at least one row"),
    ({"stats": {"window": "soon"}}, "settings: stats: window 'soon' is neither a row count nor a duration like '60s'"),
    ({"stats": {"ewm_alpha": 0}}, "settings: stats: Number parameter 'Stats.ewm_alpha' must be greater than 0.0, "
                                  "not 0."),
    ({"history": {"max_rows": 0}}, "settings: history: Integer parameter 'History.max_rows' must be at least 1, "
                                   "not 0."),
    ({"rules": [{"name": "a"}, {"name": "b", "pending_rows": 0}]},
     "settings: rules[1]: Integer parameter 'Rule.pending_rows' must be at least 1, not 0."),
    ({"rules": [{"name": "a", "severity": "fatal"}]},
     "settings: rules[0]: Selector parameter 'Rule.severity' does not accept 'fatal'"),
    ({"rules": [{"name": "a", "min_score": 2}]},
     "settings: rules[0]: Number parameter 'Rule.min_score' must be at most 1, not 2."),
    ({"rules": [{"name": "a", "dedup": "soon"}]}, "settings: rules[0]: "),
    ({"detectors": {"limits": {"limits": [0, 45]}}}, "settings: detectors.limits: Dict parameter 'Limits.limits' "
                                                     "value must be an instance of dict"),
])
def test_out_of_bounds_values_name_the_section_and_parameter(data, message):
    assert config_error(data).startswith(message)


@pytest.mark.parametrize(("data", "message"), [
    ({"stats": "fast"}, "settings: stats must be a mapping"),
    ({"detectors": {"zscore": 5}}, "settings: detectors.zscore must be a mapping"),
    ({"rules": {"name": "hot"}}, "settings: rules must be a list"),
    ({"rules": ["hot"]}, "settings: rules[0] must be a mapping"),
    ({"rules": [{"name": "hot"}, {"name": "hot", "severity": "critical"}]}, "settings: rule names must be unique"),
])
def test_wrong_shapes_are_config_errors(data, message):
    assert config_error(data) == message


# ----------------------------------------------------------------------------- describe


def test_describe_marks_exactly_what_changed():
    s = Settings.from_dict({"detectors": {"zscore": {"threshold": 4.5}, "limits": {"limits": {"t": [0, 1]}}}})
    summary = describe(s)
    assert summary["origin"] == "settings"
    rows = summary["rows"]
    assert set(rows[0]) == {"object", "parameter", "value", "default", "changed", "doc"}
    changed = {(r["object"], r["parameter"]): (r["value"], r["default"]) for r in rows if r["changed"]}
    assert changed == {("zscore", "threshold"): (4.5, 6.0), ("limits", "limits"): ("{'t': [0, 1]}", "{}")}
    # Every parameter has its doc string, and the whole summary is JSON (it goes into --summary-json).
    assert all(r["doc"] for r in rows)
    assert json.loads(json.dumps(summary)) == summary
    objects = list(dict.fromkeys(r["object"] for r in rows))
    assert objects == ["Stats", *[d.label for d in default_detectors()], *[f"rule {r.name}" for r in default_rules()],
                       "HealthScore"]


def test_describe_compares_a_default_rule_with_its_own_defaults():
    s = Settings.from_dict({"rules": [{"name": "limit_breach", "detectors": ["limits"], "severity": "critical",
                                       "title": "limit breached", "pending_rows": 5, "clear_rows": 30,
                                       "clear_for": "30s"}]})
    changed = [(r["object"], r["parameter"], r["value"], r["default"]) for r in describe(s)["rows"] if r["changed"]]
    assert changed == [("rule limit_breach", "pending_rows", 5, 3)]


def test_describe_does_not_report_a_derived_title_as_changed():
    s = Settings.from_dict({"rules": [{"name": "hot", "detectors": ["limits"]}]})
    changed = [r["parameter"] for r in describe(s)["rows"] if r["changed"]]
    assert changed == ["detectors"]


def test_settings_table_of_plain_objects():
    rows = settings_table([ZScore(threshold=3.0), Rule(name="hot", severity="critical")])
    by_key = {(r["object"], r["parameter"]): r for r in rows}
    assert by_key[("zscore", "threshold")]["value"] == 3.0 and by_key[("zscore", "threshold")]["changed"]
    assert by_key[("rule hot", "severity")]["value"] == "critical" and by_key[("rule hot", "severity")]["changed"]
    assert not by_key[("zscore", "window")]["changed"]


def test_every_default_written_out_round_trips_through_yaml(tmp_path):
    """The defaults, written out in full as a YAML file, load back to exactly the defaults."""
    s = Settings()
    data = {
        "stats": {k: getattr(s.make_stats(), k) for k in s.make_stats().param if k != "name"},
        "detectors": {d.label: {k: getattr(d, k) for k in d.param if k != "name"} for d in s.make_detectors()},
        "rules": [{k: getattr(r, k) for k in r.param} for r in s.make_rules()],
        "history": {"max_rows": s.make_history().max_rows},
    }
    path = tmp_path / "defaults.yaml"
    path.write_text(yaml.safe_dump(data))
    loaded = Settings.from_yaml(path)
    assert describe(loaded)["rows"] == describe(s)["rows"]
    assert not any(r["changed"] for r in describe(loaded)["rows"])
    assert Settings.from_yaml(path).data == yaml.safe_load(path.read_text())


# ----------------------------------------------------------------------------- bugs: errors not caught at load time


def test_a_detectors_list_is_a_config_error():
    assert config_error({"detectors": ["zscore"]}).startswith("settings: detectors must be a mapping")


def test_a_bad_signals_pattern_is_a_config_error():
    assert config_error({"rules": [{"name": "hot", "signals": "(temp"}]}).startswith("settings: rules[0]: ")


@pytest.mark.parametrize("replay", [{"max_chunk_rows": 0}, {"max_chunk_row": 50}, [50]])
def test_a_bad_replay_section_is_a_config_error_at_load(replay):
    assert config_error({"replay": replay}).startswith("settings: replay")


def test_a_speed_in_the_replay_section_does_not_crash_the_monitor(tmp_path):
    from sbg.stream.monitor import Monitor

    path = fleet_csv(tmp_path / "fleet.csv", n=20)
    try:
        Monitor([path], settings=Settings.from_dict({"replay": {"speed": "10x"}}))
    except ConfigError:
        pass  # refusing it clearly is as good as taking it


def test_a_bad_detector_duration_is_a_config_error_at_load():
    assert config_error({"detectors": {"gap": {"min_gap": "soon"}}}).startswith("settings: detectors.gap: ")


def test_a_limit_that_is_not_a_pair_is_a_config_error_at_load():
    assert config_error({"detectors": {"limits": {"limits": {"temperature_c": [45]}}}}).startswith(
        "settings: detectors.limits: ")


def test_a_rule_naming_an_unknown_detector_is_a_config_error():
    assert "limts" in config_error({"rules": [{"name": "hot", "detectors": ["limts"]}]})


def test_limits_from_the_settings_fire_alerts_as_configured(tmp_path):
    """The positive twin of the rule check above: a rule on a known detector fires."""
    from sbg.stream.batch import run_detect

    path = fleet_csv(tmp_path / "fleet.csv")
    s = Settings.from_dict({"detectors": {"limits": {"limits": {"temperature_c": [0, 45]}}},
                            "rules": [{"name": "hot", "detectors": ["limits"], "severity": "critical",
                                       "pending_rows": 30, "clear_rows": 5}]})
    result = run_detect(path, tmp_path / "out.csv", settings=s)
    alerts = result["alerts"]
    assert list(alerts["rule"]) == ["hot"] * 3 and set(alerts["severity"]) == {"critical"}
    assert isinstance(detector(s, "limits"), Limits)
    # pending_rows 30: each 40-row episode fires; the start is its first flagged row.
    assert sorted(alerts["start"].dt.strftime("%H:%M:%S")) == ["00:03:20", "00:04:10", "00:05:00"]


def test_set_lays_settings_over_the_file_and_names_what_is_wrong(tmp_path):
    cfg = tmp_path / "sbg.yaml"
    cfg.write_text("detectors:\n  zscore: {threshold: 4}\n  limits: {preset: none}\n")
    base = Settings.from_yaml(cfg)
    s = base.with_overrides(["zscore.threshold=7", "limits.limits={v: [0, 10]}", "history.max_rows=5000"])
    dets = {d.label: d for d in s.make_detectors()}
    assert dets["zscore"].threshold == 7 and dets["limits"].limits == {"v": [0, 10]}
    assert dets["limits"].preset == "none"  # the file's setting stays where --set says nothing
    assert s.make_history().max_rows == 5000 and s.origin == f"{cfg} with --set"
    assert base.data["detectors"]["zscore"]["threshold"] == 4  # the file's settings are not changed
    for bad, words in (("zscore.treshold=5", "unknown setting(s) ['treshold']"),
                       ("zscor.threshold=5", "'zscor' is neither a detector nor a section"),
                       ("zscore=5", "expected SECTION.NAME=VALUE"),
                       ("zscore.threshold=-1", "must be greater than 0"),
                       ("limits.limits={v: [5]}", "limits.v must be [low, high]"),
                       ("zscore.threshold=[1", "the value is not YAML")):
        with pytest.raises(ConfigError) as info:
            base.with_overrides([bad])
        assert words in str(info.value), (bad, str(info.value))
