"""Serve the sbg dashboard: ``panel serve apps/monitor.py --plugins sbg.server`` (or ``sbg serve``).

The source, speed and data directory come from ``sbg serve``'s options
(environment variables ``SBG_FILES``, ``SBG_SPEED``, ``SBG_DATA_DIR``...);
by default the bundled battery fleet.
"""

import panel as pn

from sbg.app import Dashboard

pn.extension("tabulator", notifications=True)

Dashboard().servable()
