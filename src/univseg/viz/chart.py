"""A grouped bar chart of a results table and a line chart with error bars, drawn with Pillow (no plotting library needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from ..data.label_space import default_palette


def bar_chart(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: str | Path, title: str = "mIoU (%)") -> None:
    """One group of bars per method (row), one bar per column (domain / average), saved as PNG."""
    font = ImageFont.load_default()
    bar_w, gap, group_gap = 18, 2, 28
    group_w = len(columns) * (bar_w + gap) - gap
    left, top, bottom, plot_h = 50, 40, 110, 300
    width = left + len(rows) * (group_w + group_gap) + 20
    height = top + plot_h + bottom
    img = Image.new("RGB", (max(width, 360), height), "white")
    draw = ImageDraw.Draw(img)
    colors = [tuple(c) for c in default_palette(len(columns) + 1)[1:]]
    draw.text((left, 10), title, fill="black", font=font)
    for tick in range(0, 101, 20):
        y = top + plot_h - tick * plot_h / 100
        draw.line([(left - 4, y), (img.width - 10, y)], fill=(225, 225, 225))
        draw.text((8, y - 6), f"{tick:3d}", fill="black", font=font)
    for g, row in enumerate(rows):
        x0 = left + g * (group_w + group_gap) + group_gap // 2
        for c, col in enumerate(columns):
            v = row.get(col)
            if v is None:
                continue
            x = x0 + c * (bar_w + gap)
            y = top + plot_h - max(0.0, min(100.0, v)) * plot_h / 100
            draw.rectangle([x, y, x + bar_w, top + plot_h], fill=colors[c])
        label = str(row["method"])
        for k, part in enumerate([label[i : i + 12] for i in range(0, len(label), 12)][:3]):
            draw.text((x0, top + plot_h + 6 + 12 * k), part, fill="black", font=font)
    for c, col in enumerate(columns):
        y = top + plot_h + 50 + 14 * (c % 4)
        x = left + 140 * (c // 4)
        draw.rectangle([x, y, x + 10, y + 10], fill=colors[c])
        draw.text((x + 14, y - 1), col, fill="black", font=font)
    img.save(path, format="PNG")


def line_chart(
    lines: Mapping[str, Sequence[tuple[float | None, float | None]]], x_labels: Sequence[str], path: str | Path, title: str,
    x_title: str = "",
) -> None:
    """One line per name of ``lines`` through its ``(value, spread)`` points at the evenly spaced
    ``x_labels``, the spread (e.g. std over seeds; None: none) drawn as an error bar; saved as PNG.
    The y axis spans the values and bars, padded, so that small differences stay visible."""
    font = ImageFont.load_default()
    left, top, right, plot_w, plot_h = 50, 40, 190, max(240, 110 * len(x_labels)), 300
    img = Image.new("RGB", (left + plot_w + right, top + plot_h + 50), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 10), title, fill="black", font=font)
    ends = [v + sign * (s or 0.0) for pts in lines.values() for v, s in pts if v is not None for sign in (-1, 1)]
    lo, hi = (min(ends), max(ends)) if ends else (0.0, 100.0)
    pad = max(1.0, 0.1 * (hi - lo))
    lo, hi = lo - pad, hi + pad

    def y_of(v: float) -> float:
        return top + plot_h - (v - lo) * plot_h / (hi - lo)

    def x_of(i: int) -> float:
        return left + plot_w * (i + 0.5) / len(x_labels)

    for k in range(6):
        v = lo + k * (hi - lo) / 5
        draw.line([(left - 4, y_of(v)), (left + plot_w, y_of(v))], fill=(225, 225, 225))
        draw.text((6, y_of(v) - 6), f"{v:5.1f}", fill="black", font=font)
    for i, label in enumerate(x_labels):
        draw.text((x_of(i) - 3 * len(label), top + plot_h + 8), label, fill="black", font=font)
    draw.text((left + plot_w / 2 - 3 * len(x_title), top + plot_h + 28), x_title, fill="black", font=font)
    colors = [tuple(c) for c in default_palette(len(lines) + 1)[1:]]
    for (name, points), color in zip(lines.items(), colors):
        drawn = [(x_of(i), v, s) for i, (v, s) in enumerate(points) if v is not None]
        if len(drawn) > 1:
            draw.line([(x, y_of(v)) for x, v, _ in drawn], fill=color, width=2)
        for x, v, s in drawn:
            if s:
                draw.line([(x, y_of(v - s)), (x, y_of(v + s))], fill=color, width=1)
                for end in (v - s, v + s):
                    draw.line([(x - 4, y_of(end)), (x + 4, y_of(end))], fill=color, width=1)
            draw.ellipse([x - 3, y_of(v) - 3, x + 3, y_of(v) + 3], fill=color)
    for k, (name, color) in enumerate(zip(lines, colors)):
        y = top + 14 * k
        draw.rectangle([left + plot_w + 12, y, left + plot_w + 22, y + 10], fill=color)
        draw.text((left + plot_w + 26, y - 1), name, fill="black", font=font)
    img.save(path, format="PNG")
