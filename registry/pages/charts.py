"""Small inline SVG charts for the registry pages (no JavaScript, no CDN): accuracy of a candidate
against its champion, and a rollout's devices per assignment state as one stacked bar."""

from __future__ import annotations

from django.utils.html import format_html, format_html_join

from registry.models import AssignmentState

CANDIDATE, CHAMPION = "#3d6fd9", "#9e9e9e"
STATE_COLOURS = {
    AssignmentState.ASSIGNED: "#9aa3b2",
    AssignmentState.DOWNLOADING: "#6f9cf0",
    AssignmentState.ACTIVE: "#1a7f37",
    AssignmentState.FAILED: "#cf222e",
    AssignmentState.ROLLED_BACK: "#bf8700",
    AssignmentState.EXCLUDED: "#d0d7de",
}
LABEL_W, BAR_W, ROW_H = 150, 260, 22
STATE_BAR_W, STATE_BAR_H = 320, 14


def comparison_svg(rows: list[dict]) -> str:
    """One pair of bars per row with accuracies in [0, 1]: candidate blue above, champion grey."""
    rows = [row for row in rows if row["candidate"] is not None or row["champion"] is not None]
    if not rows:
        return ""
    height = ROW_H * len(rows) + 4
    width = LABEL_W + BAR_W + 60
    parts = []
    for i, row in enumerate(rows):
        y = i * ROW_H + 2
        parts.append(_text(LABEL_W - 6, y + 14, row["name"], anchor="end"))
        for offset, key, colour in ((0, "candidate", CANDIDATE), (9, "champion", CHAMPION)):
            value = row[key]
            if value is not None:
                parts.append(_rect(LABEL_W, y + offset, BAR_W * value, 8, colour, f"{key} {row['name']}: {value:.3f}"))
        parts.append(_text(LABEL_W + BAR_W + 6, y + 14, row["difference_text"], anchor="start"))
    return format_html(
        '<svg class="registry-comparison" width="{}" height="{}" viewBox="0 0 {} {}" role="img" '
        'aria-label="Accuracy: candidate against champion">{}</svg>',
        width,
        height,
        width,
        height,
        format_html_join("", "{}", ((part,) for part in parts)),
    )


def state_bar_svg(counts: dict[str, int]) -> str:
    """Devices per assignment state as one bar, in the state machine's order."""
    total = sum(counts.get(state, 0) for state in STATE_COLOURS)
    parts = [_rect(0, 0, STATE_BAR_W, STATE_BAR_H, "#eceff4", "no devices yet")] if not total else []
    x = 0.0
    for state, colour in STATE_COLOURS.items():
        n = counts.get(state, 0)
        if n:
            width = STATE_BAR_W * n / total
            parts.append(_rect(x, 0, width, STATE_BAR_H, colour, f"{AssignmentState(state).label}: {n}"))
            x += width
    return format_html(
        '<svg class="registry-states" width="{}" height="{}" viewBox="0 0 {} {}" role="img" aria-label="{}">{}</svg>',
        STATE_BAR_W,
        STATE_BAR_H,
        STATE_BAR_W,
        STATE_BAR_H,
        ", ".join(f"{state} {n}" for state, n in counts.items() if n) or "no devices",
        format_html_join("", "{}", ((part,) for part in parts)),
    )


def _rect(x: float, y: float, width: float, height: float, colour: str, title: str) -> str:
    # format_html escapes its arguments to strings first, so numbers are formatted here.
    return format_html(
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
        f"{x:.1f}",
        f"{y:.1f}",
        f"{max(width, 0.5):.1f}",
        f"{height:.1f}",
        colour,
        title,
    )


def _text(x: float, y: float, text: str, *, anchor: str) -> str:
    return format_html(
        '<text x="{}" y="{}" text-anchor="{}" font-size="12" fill="#1d2330">{}</text>', f"{x:.1f}", y, anchor, text
    )
