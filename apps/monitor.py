"""Serve the sbg dashboard: ``panel serve apps/monitor.py --plugins sbg.serve.api`` (or ``sbg serve``).

The source, speed and data directory come from ``sbg serve``'s options
(environment variables ``SBG_FILES``, ``SBG_SPEED``, ``SBG_DATA_DIR``...);
by default the bundled battery fleet.
"""

import panel as pn

from sbg.ui.dashboard import Dashboard

pn.extension("tabulator", notifications=True)

Dashboard().servable()
