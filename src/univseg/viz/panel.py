"""Pictures to look at (Pillow only): overlays with a colour legend, and "image | ground truth |
prediction per head" panels.

A legend lists the classes a picture shows (label-space order), each as a colour swatch and its
name, under a title naming the label space; it wraps into as many columns as the picture's width
holds. :func:`overlay_with_legend` puts it under an overlay kept at the input's resolution (or a
chosen width); :func:`sample_panel` puts titled tiles side by side, each overlay with its legend.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.label_space import LabelSpace
from .overlay import overlay

FONT_SIZE = 14
PAD = 4
SWATCH = 12
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` (scalable with FreeType, the fixed bitmap font without)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def _text_width(font: ImageFont.ImageFont, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def present_classes(masks: Sequence[np.ndarray], space: LabelSpace) -> list[int]:
    """Train ids of ``space`` that occur in any of ``masks`` (ignore and unknown ids left out), in order."""
    seen = np.zeros(space.num_classes, dtype=bool)
    for mask in masks:
        ids = np.unique(np.asarray(mask))
        seen[ids[ids < space.num_classes]] = True
    return [int(i) for i in np.flatnonzero(seen)]


def legend(space: LabelSpace, classes: Sequence[int], width: int, title: str | None = None) -> Image.Image:
    """The legend of ``classes`` of ``space``: a title line, then swatch + name entries in as many
    columns as ``width`` pixels hold (at least one; the legend is wider than ``width`` when one
    entry is)."""
    font = _font()
    line = FONT_SIZE + PAD
    title = space.name if title is None else title
    entries = [space.names[i] for i in classes] or ["(no class)"]
    column = SWATCH + PAD + max(_text_width(font, name) for name in entries) + 2 * PAD
    columns = max(1, min(len(entries), (width - PAD) // column))
    rows = -(-len(entries) // columns)
    size = (max(width, PAD + columns * column, _text_width(font, title) + 2 * PAD), PAD + line * (rows + 1))
    picture = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(picture)
    draw.text((PAD, PAD), title, fill=TEXT, font=font)
    for k, name in enumerate(entries):
        x, y = PAD + (k // rows) * column, PAD + line * (1 + k % rows)
        if classes:
            color = tuple(int(c) for c in space.palette[classes[k]])
            draw.rectangle([x, y + 1, x + SWATCH, y + 1 + SWATCH], fill=color, outline=TEXT)
        draw.text((x + SWATCH + PAD, y), name, fill=TEXT, font=font)
    return picture


def _resize(image: np.ndarray, width: int | None, resample: int) -> np.ndarray:
    """``image`` scaled to ``width`` pixels wide (aspect kept); unchanged for None or its own width."""
    h, w = image.shape[:2]
    if width is None or width == w:
        return image
    return np.asarray(Image.fromarray(image).resize((width, max(1, round(h * width / w))), resample))


def _stack(top: Image.Image, bottom: Image.Image) -> Image.Image:
    """``top`` above ``bottom`` on a white background, left-aligned."""
    out = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), BACKGROUND)
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height))
    return out


def overlay_with_legend(image: np.ndarray, mask: np.ndarray, space: LabelSpace, width: int | None = None,
                        title: str | None = None, alpha: float = 0.5) -> np.ndarray:
    """The colours of ``mask`` over ``image`` at the image's resolution (or ``width`` pixels wide), with
    the legend of the classes it shows underneath; HxWx3 uint8."""
    image = _resize(image, width, Image.BILINEAR)
    mask = _resize(np.asarray(mask, dtype=np.uint8), width, Image.NEAREST)
    picture = Image.fromarray(overlay(image, mask, space, alpha))
    return np.asarray(_stack(picture, legend(space, present_classes([mask], space), picture.width, title)))


def _titled(tile: np.ndarray, title: str) -> Image.Image:
    """``tile`` with ``title`` written above it."""
    font = _font()
    head = Image.new("RGB", (tile.shape[1], FONT_SIZE + 2 * PAD), BACKGROUND)
    ImageDraw.Draw(head).text((PAD, PAD), title, fill=TEXT, font=font)
    return _stack(head, Image.fromarray(tile))


def sample_panel(
    image: np.ndarray,
    label: np.ndarray | None,
    label_space: LabelSpace,
    predictions: Mapping[str, tuple[np.ndarray, LabelSpace]],
    width: int | None = None,
) -> np.ndarray:
    """``image | ground truth | prediction of each head`` side by side, each titled, every overlay with its
    legend; ``width`` is each tile's width (default: the image's). ``predictions``: head -> (mask, label
    space). ``label`` None: no ground-truth tile. HxWx3 uint8."""
    tiles = [_titled(_resize(image, width, Image.BILINEAR), "image")]
    shown = [] if label is None else [("ground truth", label, label_space)]
    shown += [(f"head {head}", mask, space) for head, (mask, space) in predictions.items()]
    for title, mask, space in shown:
        tiles.append(_titled(overlay_with_legend(image, mask, space, width, title=f"{space.name} classes"), f"{title} ({space.name})"))
    panel = Image.new("RGB", (sum(t.width for t in tiles) + PAD * (len(tiles) - 1), max(t.height for t in tiles)), BACKGROUND)
    x = 0
    for tile in tiles:
        panel.paste(tile, (x, 0))
        x += tile.width + PAD
    return np.asarray(panel)
