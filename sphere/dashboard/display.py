"""Turning what the dashboard read into what its pages show: telemetry charts and the device's
reported facts. No queries here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sphere.dashboard.charts import Series, line_chart_svg
from sphere.dashboard.queries import TelemetrySeries

WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
DEFAULT_WINDOW = "24h"


@dataclass(frozen=True)
class ChartSpec:
    key: str
    title: str
    unit: str
    lines: tuple[tuple[str, str, str], ...]  # (telemetry field, legend name, colour)
    y_range: tuple[float, float] | None = None


CHARTS = (
    ChartSpec("cpu", "CPU", "%", (("cpu_percent", "CPU", "#3d6fd9"),), (0, 100)),
    ChartSpec("memory", "Memory", "%", (("memory_percent", "memory", "#6a2fb0"),), (0, 100)),
    ChartSpec("temperature", "Temperature", "°C", (("temperature_c", "temperature", "#ef6c00"),)),
    ChartSpec(
        "latency",
        "Inference latency",
        " ms",
        (("latency_p50_ms", "p50", "#1a7f37"), ("latency_p95_ms", "p95", "#cf222e")),
    ),
)


def window_key(value: str | None) -> str:
    return value if value in WINDOWS else DEFAULT_WINDOW


def telemetry_charts(series: TelemetrySeries, heartbeat_period_s: float, last_telemetry: dict) -> list[dict]:
    # Heartbeats further apart than a few periods (or buckets) are an outage: the line breaks.
    gap_s = 2.5 * max(series.bucket_s, heartbeat_period_s)
    start, end = series.start.timestamp(), series.end.timestamp()
    return [
        {
            "key": spec.key,
            "title": spec.title,
            "legend": [(name, colour) for _, name, colour in spec.lines],
            "latest": [(field, _number(last_telemetry.get(field)), spec.unit) for field, _, _ in spec.lines],
            "svg": line_chart_svg(
                spec.title,
                spec.unit,
                [Series(name, colour, series.points[field]) for field, name, colour in spec.lines],
                start,
                end,
                gap_s=gap_s,
                y_range=spec.y_range,
            ),
        }
        for spec in CHARTS
    ]


def _number(value) -> str:
    # The last heartbeat's value (Device.last_telemetry); device.js replaces it on each heartbeat.
    return f"{value:.3g}" if isinstance(value, int | float) and not isinstance(value, bool) else "—"


def reported(facts: dict) -> list[tuple[str, str]]:
    """A device's runtime or bundle outcome (JSON as it reported it) as name/value pairs."""
    if not isinstance(facts, dict):
        return []
    return [(str(name), _text(value)) for name, value in facts.items()]


def _text(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{name}={_text(inner)}" for name, inner in value.items())
    if isinstance(value, list):
        return ", ".join(_text(inner) for inner in value)
    return "—" if value is None or value == "" else str(value)
