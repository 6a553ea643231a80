"""Charts drawn on the server as inline SVG: no script, no external file, no network.

:func:`stacked_bars` draws one bar per time bucket, stacked by series, each segment a link
(to the audit rows behind it) with its numbers in a tooltip and an ``aria-label``. The SVG
has a ``<title>`` and a ``<desc>``; pages show the same numbers in a table too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

#: Colours readable on white and told apart in the legend (and in the tables' text).
PALETTE = ["#c62828", "#ef6c00", "#6a1b9a", "#1565c0", "#00838f", "#ad1457", "#5d4037", "#827717"]
SUCCESS_COLOUR = "#2e7d32"
OTHER_COLOUR = "#757575"
LABEL_FORMATS = {"minute": "%H:%M", "hour": "%m-%d %H:00", "day": "%Y-%m-%d"}


@dataclass
class Series:
    name: str
    colour: str
    values: list[int]
    #: One link per bucket (the rows behind the segment), or none.
    links: list[str] = field(default_factory=list)


def label(bucket: datetime, unit: str) -> str:
    return bucket.strftime(LABEL_FORMATS[unit])


def nice_ceiling(value: int) -> int:
    """The top of the y axis: the smallest 2, 4 or 10 times a power of ten that holds ``value``
    (so that half of it, the middle grid line, is a whole number too)."""
    power = 1
    while True:
        for step in (2, 4, 10):
            if step * power >= value:
                return step * power
        power *= 10


def stacked_bars(
    *,
    ident: str,
    title: str,
    desc: str,
    buckets: Sequence[datetime],
    unit: str,
    series: Sequence[Series],
    width: int = 960,
    height: int = 220,
) -> SafeString:
    left, right, top, bottom = 56, 8, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(s.values[i] for s in series) for i in range(len(buckets))]
    ceiling = nice_ceiling(max(totals, default=0))
    slot = plot_w / max(len(buckets), 1)
    bar = max(slot * 0.8, 1.0)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(ident)}" role="group"'
        f' viewBox="0 0 {width} {height}" width="100%" aria-labelledby="{escape(ident)}-title"'
        f' aria-describedby="{escape(ident)}-desc" data-total="{sum(totals)}">',
        f'<title id="{escape(ident)}-title">{escape(title)}</title>',
        f'<desc id="{escape(ident)}-desc">{escape(desc)}</desc>',
    ]
    for fraction in (0, 0.5, 1):  # the y axis: 0, half, the top, with grid lines
        y = top + plot_h * (1 - fraction)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11"'
            f' fill="#444">{round(ceiling * fraction):,}</text>'
        )
    every = max(1, math.ceil(len(buckets) / 8))
    for i, bucket in enumerate(buckets):
        x = left + i * slot + (slot - bar) / 2
        if i % every == 0:
            out.append(
                f'<text x="{x:.1f}" y="{height - 8}" font-size="11" fill="#444">'
                f"{escape(label(bucket, unit))}</text>"
            )
        y = top + plot_h
        for s in series:
            n = s.values[i]
            if not n:
                continue
            h = plot_h * n / ceiling
            y -= h
            # The title names the segment (its tooltip, and the link's accessible name).
            title = f"<title>{escape(f'{label(bucket, unit)}: {s.name} {n:,}')}</title>"
            rect = (
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{max(h, 0.5):.1f}"'
                f' fill="{s.colour}" data-series="{escape(s.name)}" data-n="{n}"/>'
            )
            if s.links:
                out.append(f'<a href="{escape(s.links[i])}">{title}{rect}</a>')
            else:
                out.append(f"<g>{title}{rect}</g>")
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#888"/>'
    )
    out.append("</svg>")
    return mark_safe("".join(out))  # noqa: S308 (every text above is escaped)
