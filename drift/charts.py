"""Reference-vs-current histograms as small inline SVG bar charts for the report page (no
JavaScript, no CDN): reference bars grey, current bars orange, shares of each window."""

from __future__ import annotations

from django.utils.html import format_html, format_html_join

WIDTH, HEIGHT, GAP = 360, 90, 1


def histogram_svg(histogram: dict) -> str:
    reference, current = _shares(histogram["reference_counts"]), _shares(histogram["current_counts"])
    bins = max(len(reference), 1)
    top = max([*reference, *current, 1e-9])
    slot = WIDTH / bins
    bars = []
    for i, (ref, cur) in enumerate(zip(reference, current, strict=True)):
        x = i * slot
        bars.append(_bar(x + GAP, slot / 2 - GAP, ref / top, "#9e9e9e", _label(histogram, i, "reference", ref)))
        bars.append(_bar(x + slot / 2, slot / 2 - GAP, cur / top, "#ef6c00", _label(histogram, i, "current", cur)))
    return format_html(
        '<svg class="drift-histogram" width="{}" height="{}" viewBox="0 0 {} {}" role="img">{}</svg>',
        WIDTH,
        HEIGHT,
        WIDTH,
        HEIGHT,
        format_html_join("", "{}", ((bar,) for bar in bars)),
    )


def _shares(counts: list[int]) -> list[float]:
    total = sum(counts) or 1
    return [count / total for count in counts]


def _bar(x: float, width: float, height_share: float, colour: str, title: str) -> str:
    height = max(height_share * (HEIGHT - 2), 0)
    # format_html escapes its arguments to strings first, so numbers are formatted here.
    return format_html(
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
        f"{x:.1f}",
        f"{HEIGHT - height:.1f}",
        f"{max(width, 0.5):.1f}",
        f"{height:.1f}",
        colour,
        title,
    )


def _label(histogram: dict, i: int, window: str, share: float) -> str:
    if histogram.get("categories") is not None:
        where = str(histogram["categories"][i])
    else:
        edges = histogram["edges"]
        where = f"{edges[i]:.3g} – {edges[i + 1]:.3g}"
    return f"{window} {where}: {share:.1%}"
