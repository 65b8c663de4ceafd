"""How the dashboard's pieces look: its stylesheet, its HTML pane and the small text formats they share.

Colours come from :mod:`sbg.report.style`, the one owner of what each state looks like.
"""

from __future__ import annotations

import html

import panel as pn

from ..report.style import STATE_COLORS

__all__ = ["CSS", "HTML", "TABLE_CSS", "choices", "error_html", "fmt_duration", "fmt_int", "kpi_size",
           "rows_label", "title"]

_STATE_VARS = "".join(f"--sbg-{state}: {color}; " for state, color in STATE_COLORS.items())
CSS = ":host, :root { " + _STATE_VARS + "}\n" + """
.sbg-live { display: inline-flex; align-items: center; gap: 8px; font-weight: 600; font-size: 14px;
            color: inherit; padding: 4px 10px; border-radius: 14px; background: rgba(255,255,255,0.12); }
.sbg-dot { width: 12px; height: 12px; border-radius: 50%; background: var(--sbg-stale); }
.sbg-live.running .sbg-dot { background: var(--sbg-normal); animation: sbg-pulse 1.4s ease-in-out infinite; }
.sbg-live.error .sbg-dot { background: var(--sbg-critical); animation: none; }
.sbg-readonly { display: inline-block; font-weight: 600; font-size: 13px; padding: 4px 10px; border-radius: 14px;
                background: rgba(255,255,255,0.18); color: #fff; }
.sbg-settings { font-size: 12px; border-collapse: collapse; width: 100%; }
.sbg-settings th { text-align: left; font-weight: 500; color: #6b7280; padding: 2px 6px 2px 0; }
.sbg-live.stale .sbg-dot { background: var(--sbg-warning); animation: none; }
@keyframes sbg-pulse { 0% { box-shadow: 0 0 0 0 rgba(22,163,74,0.7); } 70% { box-shadow: 0 0 0 10px rgba(22,163,74,0); }
                       100% { box-shadow: 0 0 0 0 rgba(22,163,74,0); } }
.sbg-kpiwrap { container-type: inline-size; width: 100%; }
.sbg-kpis { display: grid; grid-template-columns: repeat(auto-fit, minmax(92px, 1fr)); gap: 7px; width: 100%; }
/* Narrow (a notebook beside its sidebar): one row of the seven cards a watcher reads; analyses and
   uptime step aside (they stay in /api/status), and the values keep every digit. */
@container (max-width: 900px) {
  .sbg-kpiwrap .sbg-kpis { grid-template-columns: repeat(7, minmax(0, 1fr)); gap: 4px; }
  .sbg-kpiwrap .sbg-kpi[data-kpi="analyses"], .sbg-kpiwrap .sbg-kpi[data-kpi="uptime"] { display: none; }
  .sbg-kpiwrap .sbg-kpi { padding: 5px 6px; border-radius: 8px; }
  .sbg-kpiwrap .sbg-kpi .label { font-size: 9px; letter-spacing: 0; }
  .sbg-kpiwrap .sbg-kpi .value { font-size: 14px; }
  .sbg-kpiwrap .sbg-kpi .value.small { font-size: 12px; padding-top: 2px; }
  .sbg-kpiwrap .sbg-kpi .value.tiny { font-size: 10.5px; padding-top: 3px; }
}
.sbg-kpi { background: var(--panel-surface-color, #fff); border: 1px solid #e5e7eb; border-radius: 10px;
           padding: 7px 10px; min-width: 0; }
.sbg-kpi .label { font-size: 10.5px; text-transform: uppercase; letter-spacing: .02em; color: #6b7280;
                  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.sbg-kpi .value.small { font-size: 14.5px; padding-top: 4px; }
.sbg-kpi .value.tiny { font-size: 12.5px; padding-top: 6px; }
.sbg-kpi .value { font-size: 18px; font-weight: 650; font-variant-numeric: tabular-nums; color: #111827;
                  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.sbg-kpi.warning { border-color: var(--sbg-warning); } .sbg-kpi.warning .value { color: var(--sbg-warning); }
.sbg-kpi.critical { border-color: var(--sbg-critical); background: #fef2f2; }
.sbg-kpi.critical .value { color: var(--sbg-critical); }
.sbg-feed { font-size: 12.5px; line-height: 1.45; max-height: 330px; overflow-y: auto; }
.sbg-feed .ev { padding: 4px 8px; border-left: 4px solid var(--sbg-info); margin-bottom: 4px;
                background: #f9fafb; border-radius: 4px; overflow-wrap: anywhere; }
.sbg-feed .ev.warning { border-left-color: var(--sbg-warning); background: #fffbeb; }
.sbg-feed .ev.critical { border-left-color: var(--sbg-critical); background: #fef2f2; }
.sbg-feed .ev.error { border-left-color: var(--sbg-critical); background: #fee2e2; font-weight: 600; }
.sbg-feed .ev .t { color: #6b7280; font-variant-numeric: tabular-nums; margin-right: 6px; }
.sbg-empty { border: 2px dashed #d1d5db; border-radius: 12px; padding: 28px; text-align: center; color: #4b5563;
             font-size: 15px; background: #f9fafb; }
.sbg-empty b { color: #111827; }
.sbg-banner { border-radius: 8px; padding: 8px 14px; font-size: 13.5px; }
.sbg-banner.paused { background: #f3f4f6; color: #374151; border: 1px solid #d1d5db; }
.sbg-banner.error { background: #fef2f2; color: #991b1b; border: 1px solid #fecaca; }
.sbg-banner.finished { background: #ecfdf5; color: #065f46; border: 1px solid #a7f3d0; }
.sbg-plot-title { font-weight: 650; font-size: 13.5px; color: #111827; }
.sbg-note { font-size: 11.5px; color: #6b7280; }
.sbg-legend { font-size: 12px; color: #4b5563; display: flex; gap: 14px; flex-wrap: wrap; }
.sbg-legend span::before { content: ""; display: inline-block; width: 10px; height: 10px; border-radius: 2px;
                           margin-right: 5px; vertical-align: -1px; background: var(--c); }
"""


class HTML(pn.pane.HTML):
    """An HTML pane whose updates send its new text and nothing else.

    Panel re-resolves a pane's stylesheets on every change of its object,
    and in a notebook it points them at its CDN, although they were inlined
    when the pane was first drawn: every KPI refresh would then send a
    request out of the machine (and fail on an air-gapped one). The
    stylesheets of these panes never change after they are drawn.
    """

    def _update(self, ref, model):
        props = self._get_properties(model.document)
        props.pop("stylesheets", None)
        model.update(**props)


def title(text: str, margin=(0, 10)) -> HTML:
    """A plot's or a section's title in the page's style (``text`` is HTML)."""
    return HTML(f'<div class="sbg-plot-title">{text}</div>', stylesheets=[CSS], margin=margin)


def kpi_size(value: str) -> str:
    """The KPI value's font class: cards are about 90 px wide at 1366 px, room for 6 characters at full size."""
    return "" if len(value) <= 6 else "small" if len(value) <= 9 else "tiny"


def choices(labels) -> dict:
    """Options for a choice widget, escaped: Bokeh's MultiChoice (choices.js) renders labels as HTML,
    so an entity id such as ``<img onerror=...>`` would run in every viewer's browser."""
    return {html.escape(label, quote=False): label for label in labels}


def fmt_int(n) -> str:
    return f"{int(n):,}"


def fmt_duration(seconds: float) -> str:
    """``'1:02:03'`` or ``'2:03'``.

    >>> fmt_duration(3723), fmt_duration(123)
    ('1:02:03', '2:03')
    """
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def rows_label(rows: int | None) -> str:
    """``'10,800 rows'``, or what is known when the rows cannot be counted."""
    return "rows not counted" if rows is None else f"{fmt_int(rows)} rows"


def error_html(message: str) -> str:
    """A message in the sidebar's error style (escaped)."""
    return f'<span style="color:{STATE_COLORS["critical"]}">{html.escape(message)}</span>'


#: The alert table in the page's text size: in Tabulator's own (16 px, wide padding) the fixed columns
#: clipped their headers ("seve…", "ent…") and values ("06-03 13:57…", "temperat…") at 1366 px.
TABLE_CSS = """
:host .tabulator { font-size: 13px; }
:host .tabulator .tabulator-header .tabulator-col .tabulator-col-content { padding: 5px 6px; }
:host .tabulator .tabulator-row .tabulator-cell { padding: 5px 6px; }
"""  # ``:host`` outranks the theme's stylesheet, which Panel links after these
