"""A grouped bar chart of a results table, drawn with Pillow (no plotting library needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

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
