"""The served dashboard (``/monitor``): ``panel serve`` runs this file once per session."""

from sbg.ui.dashboard import serve_page

serve_page()
