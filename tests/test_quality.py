"""Detection quality of the default settings on the bundled labelled faults.

Targets: event recall >= 95 % and precision >= 90 % on every bundled dataset;
the median detection delay is printed (run with -s) and kept in the README.
"""

import pytest

from sbg.evaluate import evaluate, load_labels
from sbg.io.datasets import DATA_DIR
from sbg.stream.monitor import Monitor

CASES = {
    "battery_fleet": ("battery_fleet.csv.gz", "battery_fleet_labels.csv", None),
    "site_power_24h": ("site_power_24h.csv.gz", "site_power_24h_labels.csv", None),
    "machine_monitor": ("machine_monitor.csv", "machine_monitor_labels.csv", "machine_baseline.csv"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_default_detectors_catch_the_labelled_faults(name):
    data, labels, baseline = CASES[name]
    monitor = Monitor([DATA_DIR / data], baseline=DATA_DIR / baseline if baseline else None)
    monitor.run_to_end()
    result = evaluate(monitor.alerts, load_labels(DATA_DIR / labels, entity=monitor.sources[0].name))
    missed = result["labels"].loc[~result["labels"]["caught"], "fault"].tolist()
    false = result["alerts"].loc[~result["alerts"]["true"], "message"].tolist()
    print(f"\n{name}: recall {result['recall']:.2f}, precision {result['precision']:.2f}, "
          f"median delay {result['median_delay_s']:.0f} s, alerts {len(result['alerts'])}")
    assert result["recall"] >= 0.95, f"missed {missed}"
    assert result["precision"] >= 0.90, f"false alerts {false}"
    assert monitor.metrics.reconciles and monitor.metrics.errors == 0
