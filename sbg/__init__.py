"""sbg, the Smart Battery Guardian.

Replays telemetry files (CSV, CSV.gz, Parquet) as live streams, computes
rolling statistics and anomaly scores in a chunk-invariant streamz pipeline,
raises alerts into a SQLite log, and shows it all in Panel.

The headless engine is importable without Panel installed:

>>> import sbg
>>> sbg.__version__
'0.1.0'
"""

import logging
from importlib.metadata import PackageNotFoundError, version

# A library logs, the application decides where it goes: the served app's log
# gets the tracebacks of faults the flow survived; the CLI prints its own summary.
logging.getLogger("sbg").addHandler(logging.NullHandler())

try:
    __version__ = version("sbg")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.1.0"

__all__ = ["__version__"]
