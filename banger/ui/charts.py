"""SVG charts drawn on the server (no script, no asset from the internet): a build's steps as a
bar per step (ran vs cached, seconds), and sizes by kind as one stacked bar."""
from __future__ import annotations

from html import escape

from banger.core.progress import human_bytes

RAN, CACHED = "#d9822b", "#5b9bd5"
KIND_COLOURS = ("#5b9bd5", "#70ad47", "#d9822b", "#a5a5a5", "#9e480e", "#7f6084")


def steps_chart(steps: list[dict], width: int = 640) -> str:
    """One row per step: its name, a bar as long as its seconds (ran: orange, cached: blue)."""
    rows = [s for s in steps if isinstance(s, dict)]
    label_w, value_w, row_h = 170, 80, 22
    bar_w = max(width - label_w - value_w, 50)
    longest = max((_seconds(s) for s in rows), default=0.0) or 1.0
    height = row_h * len(rows) + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="steps-chart" width="{width}" height="{height}" '
           f'role="img" aria-label="build steps">']
    for i, s in enumerate(rows):
        y = i * row_h + 4
        sec = _seconds(s)
        status = str(s.get("status", ""))
        w = max(bar_w * sec / longest, 2)
        colour = RAN if status == "ran" else CACHED
        name = escape(str(s.get("step", "?")))
        out.append(f'<g class="step {escape(status)}" data-step="{name}">'
                   f'<title>{name}: {escape(status)}, {sec:.2f} s</title>'
                   f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" font-size="12">{name}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{row_h - 6}" fill="{colour}"/>'
                   f'<text x="{label_w + w + 4:.1f}" y="{y + 14}" font-size="11">{sec:.2f} s {escape(status)}</text></g>')
    total = sum(_seconds(s) for s in rows)
    ran = sum(1 for s in rows if s.get("status") == "ran")
    y = row_h * len(rows) + 18
    out.append(f'<text x="{label_w}" y="{y}" font-size="11">total {total:.2f} s; {ran} ran '
               f'(<tspan fill="{RAN}">■</tspan>), {len(rows) - ran} cached (<tspan fill="{CACHED}">■</tspan>)</text>')
    out.append("</svg>")
    return "".join(out)


def kinds_chart(kinds: dict[str, int], width: int = 640) -> str:
    """The cache's bytes by kind, as one stacked bar with a legend."""
    total = sum(kinds.values()) or 1
    out = []
    x = 0.0
    legend_x = 0
    for i, (kind, size) in enumerate(kinds.items()):
        if kind == "other" and not size:
            continue
        colour = KIND_COLOURS[i % len(KIND_COLOURS)]
        w = width * size / total
        if w > 0:
            out.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="22" fill="{colour}">'
                       f'<title>{escape(kind)}: {human_bytes(size)}</title></rect>')
        x += w
        label = f"{kind} {human_bytes(size)}"
        out.append(f'<rect x="{legend_x}" y="34" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{legend_x + 14}" y="43" font-size="11">{escape(label)}</text>')
        legend_x += 14 + 7 * len(label) + 12
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="kinds-chart" width="{max(width, legend_x)}" '
            f'height="60" role="img" aria-label="cache by kind">')
    return head + "".join(out) + "</svg>"


def _seconds(step: dict) -> float:
    try:
        return max(float(step.get("seconds", 0)), 0.0)
    except (TypeError, ValueError):
        return 0.0
