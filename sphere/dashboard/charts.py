"""Telemetry over time as small inline SVG line charts (no JavaScript, no CDN), in the manner of
drift.charts' histograms: numbers formatted here, everything else escaped by format_html.

A series is a list of ``(epoch seconds, value)`` points, already downsampled by the query
(sphere.dashboard.queries.telemetry_series). A gap longer than ``gap_s`` breaks the line, so a
device that was offline shows as a hole, not as a straight line across the outage; a point with
no neighbour is drawn as a dot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.utils import timezone
from django.utils.html import format_html, format_html_join

WIDTH, HEIGHT = 560, 150
LEFT, RIGHT, TOP, BOTTOM = 56, 10, 8, 20
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    points: list[tuple[float, float]]


def line_chart_svg(
    title: str,
    unit: str,
    series: list[Series],
    start: float,
    end: float,
    *,
    gap_s: float,
    y_range: tuple[float, float] | None = None,
) -> str:
    values = [value for line in series for _, value in line.points]
    low, high = y_range or _auto_range(values)
    scale = _Scale(start, end, low, high)
    lines = format_html_join("", "{}", ((_series(line, scale, gap_s),) for line in series))
    return format_html(
        '<svg class="telemetry-chart" width="{}" height="{}" viewBox="0 0 {} {}" role="img" aria-label="{}">'
        "{}{}{}</svg>",
        WIDTH,
        HEIGHT,
        WIDTH,
        HEIGHT,
        title,
        _axes(scale, unit),
        lines,
        "" if values else _no_data(),
    )


class _Scale:
    def __init__(self, start: float, end: float, low: float, high: float):
        self.start, self.span = start, max(end - start, 1e-9)
        self.low, self.high = low, high
        self.height = max(high - low, 1e-9)

    def x(self, t: float) -> float:
        return LEFT + (t - self.start) / self.span * PLOT_W

    def y(self, value: float) -> float:
        clamped = min(max(value, self.low), self.high)
        return TOP + PLOT_H - (clamped - self.low) / self.height * PLOT_H


def _auto_range(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or max(abs(high) * 0.1, 1.0)
    return (0.0 if low >= 0 and low - pad < 0 else low - pad), high + pad


def _series(line: Series, scale: _Scale, gap_s: float) -> str:
    segments = _segments(line.points, gap_s)
    path = " ".join(
        "M" + " L".join(f"{scale.x(t):.1f},{scale.y(v):.1f}" for t, v in segment)
        for segment in segments
        if len(segment) > 1
    )
    dots = [segment[0] for segment in segments if len(segment) == 1]
    return format_html(
        '<g class="series" data-series="{}" data-points="{}"><title>{}: {} points</title>'
        '<path d="{}" fill="none" stroke="{}" stroke-width="1.5" stroke-linejoin="round"/>{}</g>',
        line.name,
        len(line.points),
        line.name,
        len(line.points),
        path,
        line.colour,
        format_html_join(
            "",
            '<circle cx="{}" cy="{}" r="2" fill="{}"/>',
            ((f"{scale.x(t):.1f}", f"{scale.y(v):.1f}", line.colour) for t, v in dots),
        ),
    )


def _segments(points: list[tuple[float, float]], gap_s: float) -> list[list[tuple[float, float]]]:
    segments: list[list[tuple[float, float]]] = []
    for point in points:
        if segments and point[0] - segments[-1][-1][0] <= gap_s:
            segments[-1].append(point)
        else:
            segments.append([point])
    return segments


def _axes(scale: _Scale, unit: str) -> str:
    y_ticks = (scale.low, (scale.low + scale.high) / 2, scale.high)
    x_ticks = ((scale.start, "start"), (scale.start + scale.span / 2, "middle"), (scale.start + scale.span, "end"))
    return format_html(
        '<rect x="{}" y="{}" width="{}" height="{}" class="plot"/>{}{}',
        LEFT,
        TOP,
        PLOT_W,
        PLOT_H,
        format_html_join("", "{}", ((_y_tick(scale, value, unit),) for value in y_ticks)),
        format_html_join(
            "",
            '<text x="{}" y="{}" text-anchor="{}" class="tick">{}</text>',
            ((f"{scale.x(t):.1f}", HEIGHT - 5, anchor, _clock(t, scale.span)) for t, anchor in x_ticks),
        ),
    )


def _y_tick(scale: _Scale, value: float, unit: str) -> str:
    y = scale.y(value)
    return format_html(
        '<text x="{}" y="{}" text-anchor="end" class="tick">{}</text>'
        '<line x1="{}" x2="{}" y1="{}" y2="{}" class="grid"/>',
        LEFT - 4,
        f"{y + 3:.1f}",
        f"{value:.3g}{unit}",
        LEFT,
        WIDTH - RIGHT,
        f"{y:.1f}",
        f"{y:.1f}",
    )


def _clock(t: float, span: float) -> str:
    moment = timezone.localtime(datetime.fromtimestamp(t, tz=UTC))
    return moment.strftime("%H:%M" if span <= 86_400 else "%m-%d %H:%M")


def _no_data() -> str:
    return format_html(
        '<text x="{}" y="{}" text-anchor="middle" class="no-data">no telemetry in this window</text>',
        LEFT + PLOT_W / 2,
        TOP + PLOT_H / 2,
    )
