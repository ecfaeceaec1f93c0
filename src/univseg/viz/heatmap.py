"""A labelled heatmap of a matrix (rows x columns of named classes), drawn with Pillow only.

    image = heatmap(values, ["road", "car"], ["ground", "vehicle", "sky"], title="city -> rural")
    image.save("city-to-rural.png")

Cells are coloured on a viridis-like scale from ``vmin`` to ``vmax`` (values outside are clipped),
NaN cells are grey, a colour bar with ticks sits on the right, and each cell shows its value when
the matrix is small enough to read them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Stops of the colour scale (viridis, sampled at 0, 1/8, ..., 1), interpolated linearly between.
SCALE_STOPS = np.array(
    [(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
     (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)],
    dtype=np.float64,
)
NAN_COLOR = (200, 200, 200)
BACKGROUND = "white"
TEXT = (0, 0, 0)
MARGIN = 8


def scale_colors(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """[..., 3] uint8 colours of ``values`` on the colour scale from ``vmin`` to ``vmax`` (NaN: grey)."""
    v = np.asarray(values, dtype=np.float64)
    t = np.clip((v - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    t = np.where(np.isnan(v), 0.0, t) * (len(SCALE_STOPS) - 1)
    lo = np.minimum(np.floor(t).astype(np.int64), len(SCALE_STOPS) - 2)
    frac = (t - lo)[..., None]
    rgb = SCALE_STOPS[lo] * (1 - frac) + SCALE_STOPS[lo + 1] * frac
    rgb[np.isnan(v)] = NAN_COLOR
    return rgb.round().astype(np.uint8)


def heatmap(
    values: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    subtitle: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
    annotate_max: int = 30,
    digits: int = 2,
) -> Image.Image:
    """An RGB image of ``values`` [R, C]: row labels on the left, column labels (vertical) on top,
    ``title`` and ``subtitle`` above, a colour bar from ``vmin`` to ``vmax`` on the right.

    Each cell shows its value with ``digits`` decimals when the matrix has at most ``annotate_max``
    rows and columns (``-`` for NaN); larger matrices are drawn with small cells and no numbers.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"values have shape {values.shape}, labels give {(len(row_labels), len(col_labels))}")
    font = ImageFont.load_default()
    annotate = max(values.shape) <= annotate_max
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda s: int(np.ceil(measure.textlength(s, font=font)))  # noqa: E731
    line_h = _line_height(font)
    cell = max(text_w(f"{-1:.{digits}f}") + 8, line_h + 8) if annotate else 12
    label_w = max([text_w(s) for s in row_labels] + [1]) + MARGIN
    col_label_h = max([text_w(s) for s in col_labels] + [1]) + MARGIN
    header_h = MARGIN + sum(line_h + 4 for s in (title, subtitle) if s)
    left, top = MARGIN + label_w, header_h + col_label_h
    rows, cols = values.shape
    bar_x = left + cols * cell + 2 * MARGIN
    ticks = [vmin, (vmin + vmax) / 2, vmax]
    width = bar_x + 14 + MARGIN + max(text_w(f"{t:.{digits}f}") for t in ticks) + MARGIN
    height = top + max(rows * cell, 3 * line_h) + MARGIN
    img = Image.new("RGB", (max(width, MARGIN + max(text_w(title), text_w(subtitle)) + MARGIN), height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    y = MARGIN
    for text in (title, subtitle):
        if text:
            draw.text((MARGIN, y), text, fill=TEXT, font=font)
            y += line_h + 4
    _draw_cells(draw, values, (left, top), cell, vmin, vmax, font if annotate else None, digits)
    for r, name in enumerate(row_labels):
        draw.text((left - MARGIN // 2 - text_w(name), top + r * cell + (cell - line_h) // 2), name, fill=TEXT, font=font)
    for c, name in enumerate(col_labels):
        _paste_vertical(img, name, font, (left + c * cell + (cell - line_h) // 2, top - MARGIN // 2), line_h, text_w(name))
    _draw_colour_bar(draw, (bar_x, top), max(rows * cell, 3 * line_h), ticks, font, digits, line_h)
    return img


def _line_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    """Height in pixels of one line of text in ``font``."""
    box = font.getbbox("Hgjy")
    return int(box[3]) + 1


def _draw_cells(
    draw: ImageDraw.ImageDraw,
    values: np.ndarray,
    origin: tuple[int, int],
    cell: int,
    vmin: float,
    vmax: float,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None,
    digits: int,
) -> None:
    """Fill one square per value from ``origin``; with ``font``, write each value in its cell."""
    colors = scale_colors(values, vmin, vmax)
    x0, y0 = origin
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            box = (x0 + c * cell, y0 + r * cell, x0 + (c + 1) * cell - 1, y0 + (r + 1) * cell - 1)
            color = tuple(int(v) for v in colors[r, c])
            draw.rectangle(box, fill=color)
            if font is None:
                continue
            v = values[r, c]
            text = "-" if np.isnan(v) else f"{v:.{digits}f}"
            ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else (255, 255, 255)
            draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), text, fill=ink, font=font, anchor="mm")


def _paste_vertical(
    img: Image.Image, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, bottom_left: tuple[int, int],
    line_h: int, length: int,
) -> None:
    """Write ``text`` rotated 90 degrees (read bottom to top), its baseline side at ``bottom_left``."""
    strip = Image.new("L", (max(length, 1), line_h), 0)
    ImageDraw.Draw(strip).text((0, 0), text, fill=255, font=font)
    rotated = strip.rotate(90, expand=True)
    x, y = bottom_left
    img.paste(Image.new("RGB", rotated.size, TEXT), (x, y - rotated.height), rotated)


def _draw_colour_bar(
    draw: ImageDraw.ImageDraw, origin: tuple[int, int], height: int, ticks: Sequence[float],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont, digits: int, line_h: int,
) -> None:
    """A vertical colour bar from ``ticks[0]`` (bottom) to ``ticks[-1]`` (top), with tick labels."""
    x, y = origin
    vmin, vmax = ticks[0], ticks[-1]
    levels = np.linspace(vmax, vmin, height)
    for i, color in enumerate(scale_colors(levels, vmin, vmax)):
        draw.line([(x, y + i), (x + 12, y + i)], fill=tuple(int(v) for v in color))
    draw.rectangle((x, y, x + 12, y + height - 1), outline=(120, 120, 120))
    for t in ticks:
        ty = y + (vmax - t) / max(vmax - vmin, 1e-12) * (height - 1)
        draw.line([(x + 12, ty), (x + 15, ty)], fill=TEXT)
        draw.text((x + 18, min(max(ty - line_h / 2, y), y + height - line_h)), f"{t:.{digits}f}", fill=TEXT, font=font)
