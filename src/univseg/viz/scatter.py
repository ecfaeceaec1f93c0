"""Scatter plots of 2-D points drawn with Pillow (no plotting library): colour and marker shape per
point, one or more panels side by side, one legend on the right.

    image = scatter_plot([ScatterPanel("joint", xy, colors, markers)], legend)
    image.save("tsne.png")

Each panel scales its points to a square box with equal x and y scale (t-SNE / UMAP axes carry no
units, so there are no ticks). Points are drawn in a fixed shuffled order, so no group is always
painted over another. The result is a PIL image: save it, or embed it in a report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]

#: Marker shapes, by index (indices past the end wrap around).
MARKERS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "triangle_down")
LEGEND_GREY: RGB = (110, 110, 110)


@dataclass(frozen=True)
class ScatterPanel:
    """One panel: ``xy`` [M, 2] float points, ``colors`` [M, 3] uint8 RGB and ``markers`` [M] int
    (indices into :data:`MARKERS`), under ``title``."""

    title: str
    xy: np.ndarray
    colors: np.ndarray
    markers: np.ndarray


@dataclass(frozen=True)
class LegendEntry:
    """One legend line: a marker of ``color`` and ``label``."""

    label: str
    color: RGB
    marker: int = 1


def darker(color: Sequence[int], factor: float = 0.6) -> RGB:
    """``color`` scaled towards black (the outline of a marker, visible even for white classes)."""
    r, g, b = (int(c * factor) for c in color)
    return r, g, b


def draw_marker(draw: ImageDraw.ImageDraw, marker: int, x: float, y: float, radius: float, fill: Sequence[int]) -> None:
    """Draw marker ``marker`` (index into :data:`MARKERS`) centred at (x, y), filled with ``fill``."""
    shape = MARKERS[marker % len(MARKERS)]
    r = radius
    fill_rgb = tuple(int(c) for c in fill)
    outline = darker(fill_rgb)
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill_rgb, outline=outline)
    elif shape == "square":
        s = 0.85 * r
        draw.rectangle([x - s, y - s, x + s, y + s], fill=fill_rgb, outline=outline)
    elif shape == "triangle":
        draw.polygon([(x, y - 1.2 * r), (x - 1.1 * r, y + 0.8 * r), (x + 1.1 * r, y + 0.8 * r)], fill=fill_rgb, outline=outline)
    elif shape == "diamond":
        draw.polygon([(x, y - 1.2 * r), (x + 1.2 * r, y), (x, y + 1.2 * r), (x - 1.2 * r, y)], fill=fill_rgb, outline=outline)
    else:  # triangle_down
        draw.polygon([(x, y + 1.2 * r), (x - 1.1 * r, y - 0.8 * r), (x + 1.1 * r, y - 0.8 * r)], fill=fill_rgb, outline=outline)


def to_box(xy: np.ndarray, size: int, pad: int) -> np.ndarray:
    """``xy`` [M, 2] mapped into a ``size`` x ``size`` pixel box (y pointing down), same scale on both
    axes, centred, ``pad`` pixels from the edges."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) == 0:
        return xy
    lo, hi = xy.min(0), xy.max(0)
    span = float((hi - lo).max()) or 1.0
    scale = (size - 2 * pad) / span
    centred = (xy - (lo + hi) / 2) * scale
    return np.stack([size / 2 + centred[:, 0], size / 2 - centred[:, 1]], axis=1)


def scatter_plot(
    panels: Sequence[ScatterPanel], legend: Sequence[LegendEntry], panel_size: int = 520, radius: float = 3.0
) -> Image.Image:
    """The panels side by side (titles above) and ``legend`` in a column on the right, on white."""
    font = ImageFont.load_default()
    margin, title_h, gap, line_h, legend_w = 12, 22, 16, 15, 190
    top = margin + title_h
    legend_x = margin + len(panels) * (panel_size + gap)
    width = legend_x + legend_w
    height = max(top + panel_size, top + line_h * len(legend)) + margin
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, panel in enumerate(panels):
        x0 = margin + i * (panel_size + gap)
        draw.text((x0, margin), panel.title, fill="black", font=font)
        draw.rectangle([x0, top, x0 + panel_size, top + panel_size], outline=(190, 190, 190))
        points = to_box(panel.xy, panel_size, pad=int(3 * radius) + 4)
        for j in np.random.default_rng(0).permutation(len(points)):
            draw_marker(draw, int(panel.markers[j]), x0 + points[j, 0], top + points[j, 1], radius, panel.colors[j])
    for k, entry in enumerate(legend):
        y = top + k * line_h + line_h / 2
        draw_marker(draw, entry.marker, legend_x + 6, y, 4.5, entry.color)
        draw.text((legend_x + 16, y - 6), entry.label[:28], fill="black", font=font)
    return img
