"""Serve the sbg dashboard: ``panel serve apps/monitor.py --plugins sbg.serve.api`` (or ``sbg serve``).

The source, speed and data directory come from ``sbg serve``'s options
(environment variables ``SBG_FILES``, ``SBG_SPEED``, ``SBG_DATA_DIR``...);
by default the bundled battery fleet. ``sbg serve`` runs the same page from
the installed package (``sbg/ui/apps/monitor.py``).
"""

from sbg.ui.dashboard import serve_page

serve_page()
