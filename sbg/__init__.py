"""sbg, the Smart Battery Guardian.

Replays telemetry files (CSV, CSV.gz, Parquet) as live streams, computes
rolling statistics and anomaly scores in a chunk-invariant streamz pipeline,
raises alerts into a SQLite log, and shows it all in Panel.

The headless engine is importable without Panel installed:

>>> import sbg
>>> sbg.__version__
'0.1.0'
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sbg")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.1.0"

__all__ = ["__version__"]
