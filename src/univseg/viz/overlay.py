"""Turn class-id maps into colour images and blend them over the input image."""
from __future__ import annotations

import numpy as np

from ..data.label_space import LabelSpace


def colorize(mask: np.ndarray, space: LabelSpace, ignore_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """HxWx3 uint8 colours of a class-id map (ignore / unknown ids get ``ignore_color``)."""
    lut = np.tile(np.array(ignore_color, dtype=np.uint8), (256, 1))
    lut[: space.num_classes] = space.palette
    return lut[np.asarray(mask).astype(np.int64).clip(0, 255)]


def overlay(image: np.ndarray, mask: np.ndarray, space: LabelSpace, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised ``mask`` over an HxWx3 uint8 ``image`` (alpha = weight of the colours)."""
    colors = colorize(mask, space).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * colors
    return out.round().clip(0, 255).astype(np.uint8)
