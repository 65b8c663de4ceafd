"""Run once by ``panel serve --setup`` (``sbg serve`` passes it) before the server takes requests.

What the first page and the first replayed chunk would otherwise do on the
server's event loop, while other sessions wait: import the dashboard's stack
(Panel, HoloViews, Bokeh's models) and load the compiled kernels. Then the
headless start (``--autostart``) and the clean end (:mod:`sbg.serve.lifecycle`).
"""

import logging

import sbg.ui.dashboard  # noqa: F401  (the import is the work)
from sbg.serve.lifecycle import prepare
from sbg.stream.monitor import warm_up

logging.getLogger("sbg").info("kernels loaded in %.2f s", warm_up())
prepare()
