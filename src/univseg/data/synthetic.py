"""A built-in synthetic multi-domain segmentation dataset: street-like scenes in several styles.

Scenes are drawn on the fly with vectorised numpy (no files): a horizon, sky, buildings along
the horizon, a perspective road with sidewalks, vegetation, poles, cars, trucks, people and
animals, drawn far to near so that nearer objects occlude farther ones. A *style* (the domain)
sets the appearance (palette, textures, haze, illumination, noise) and the content statistics
(e.g. ``rural`` has animals, few buildings and much vegetation; ``city`` never has animals).

Two taxonomies label the same scenes differently:

* ``fine`` (label space ``synthetic-fine``): sky, building, road, sidewalk, vegetation, pole,
  car, truck, person. Animal pixels are void.
* ``coarse`` (label space ``synthetic-coarse``): sky, building, ground (road + sidewalk),
  vegetation, pole, vehicle (car + truck), person, animal.

Sample ``i`` of a split is a pure function of (seed, style, split, i, height, width); the
taxonomy only changes the labels, never the image.

Example:
    >>> from univseg.data.registry import build_dataset
    >>> ds = build_dataset("synthetic", SyntheticParams(style="rural", taxonomy="coarse"), "train")
    >>> image, label = ds.load_pair(0)      # (96, 128, 3) uint8, (96, 128) uint8 train ids
"""
from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from ..registry import Registry
from .base import SegDataset
from .label_space import IGNORE_INDEX, LabelSpace, register_label_space
from .mapping import register_mapping
from .registry import DatasetParams, register_dataset

__all__ = [
    "SCENE_CLASSES",
    "STYLES",
    "LABEL_SPACES",
    "FINE_TO_COARSE",
    "COARSE_TO_FINE",
    "Style",
    "register_style",
    "render_scene",
    "scene_to_labels",
    "SyntheticParams",
    "SyntheticDataset",
]

RGB = tuple[float, float, float]

# --------------------------------------------------------------------------------------------
# Classes and label spaces
# --------------------------------------------------------------------------------------------

#: Classes drawn by :func:`render_scene`; its label map holds these ids (0..9). Ids 0..8 equal
#: the train ids of the ``fine`` taxonomy; id 9 (animal) has no fine counterpart.
SCENE_CLASSES: tuple[str, ...] = (
    "sky", "building", "road", "sidewalk", "vegetation", "pole", "car", "truck", "person", "animal",
)
SKY, BUILDING, ROAD, SIDEWALK, VEGETATION, POLE, CAR, TRUCK, PERSON, ANIMAL = range(10)

_FINE_COLORS = {
    "sky": (70, 130, 180), "building": (70, 70, 70), "road": (128, 64, 128), "sidewalk": (244, 35, 232),
    "vegetation": (107, 142, 35), "pole": (153, 153, 153), "car": (0, 0, 142), "truck": (0, 60, 100),
    "person": (220, 20, 60),
}
_COARSE_COLORS = {
    "sky": (70, 130, 180), "building": (70, 70, 70), "ground": (160, 100, 160), "vegetation": (107, 142, 35),
    "pole": (153, 153, 153), "vehicle": (0, 0, 142), "person": (220, 20, 60), "animal": (255, 165, 0),
}

#: The label space of each taxonomy, by the ``taxonomy`` parameter value. Both are registered by
#: name (``synthetic-fine``, ``synthetic-coarse``) in :data:`univseg.data.label_space.LABEL_SPACES`.
LABEL_SPACES: dict[str, LabelSpace] = {
    "fine": register_label_space(LabelSpace.from_names(
        "synthetic-fine", list(_FINE_COLORS), list(_FINE_COLORS.values()), void_ids=(IGNORE_INDEX,)
    )),
    "coarse": register_label_space(LabelSpace.from_names(
        "synthetic-coarse", list(_COARSE_COLORS), list(_COARSE_COLORS.values()), void_ids=(IGNORE_INDEX,)
    )),
}

#: Built-in class mapping fine -> coarse (registered with :func:`register_mapping`).
FINE_TO_COARSE: dict[str, str | None] = {
    "sky": "sky", "building": "building", "road": "ground", "sidewalk": "ground", "vegetation": "vegetation",
    "pole": "pole", "car": "vehicle", "truck": "vehicle", "person": "person",
}
#: Built-in class mapping coarse -> fine (animal has no fine counterpart).
COARSE_TO_FINE: dict[str, str | None] = {
    "sky": "sky", "building": "building", "ground": "road", "vegetation": "vegetation", "pole": "pole",
    "vehicle": "car", "person": "person", "animal": None,
}
register_mapping("synthetic-fine", "synthetic-coarse", FINE_TO_COARSE)
register_mapping("synthetic-coarse", "synthetic-fine", COARSE_TO_FINE)


def _scene_lut(taxonomy: str) -> np.ndarray:
    """256-entry uint8 table: scene class id -> train id of ``taxonomy`` (void for the rest)."""
    space = LABEL_SPACES[taxonomy]
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for sid, name in enumerate(SCENE_CLASSES):
        target = name if taxonomy == "fine" else FINE_TO_COARSE.get(name, name)
        if target in space.names:
            lut[sid] = space.index(target)
    return lut


_SCENE_LUTS = {t: _scene_lut(t) for t in LABEL_SPACES}


def scene_to_labels(scene_label: np.ndarray, taxonomy: str) -> np.ndarray:
    """Convert a :func:`render_scene` label map to train ids of ``taxonomy`` ('fine' or 'coarse')."""
    return _SCENE_LUTS[taxonomy][scene_label]


# --------------------------------------------------------------------------------------------
# Styles (domains)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """Appearance and content statistics of one domain.

    Colours are RGB in 0..255; tuples of colours are palettes one instance draws from. Count
    ranges ``(lo, hi)`` are inclusive. ``texture`` gives per class the amplitude of the smooth
    (``lo``) and fine-grained (``hi``) luminance texture, by class name.
    """

    name: str
    description: str
    # appearance: per-class palettes
    sky_top: RGB
    sky_bottom: RGB
    facade: tuple[RGB, ...]
    window: tuple[RGB, ...]
    lit_window: RGB | None
    lit_prob: float
    roof: tuple[RGB, ...] | None
    roof_prob: float
    road: RGB
    marking: RGB | None  # dashed centre line (None: no markings)
    ruts: bool  # darker tyre tracks on the road
    sidewalk: RGB
    kerb: RGB
    grass: RGB
    foliage: tuple[RGB, ...]
    trunk: RGB
    pole: tuple[RGB, ...]
    car: tuple[RGB, ...]
    truck: tuple[RGB, ...]
    glass: RGB
    clothes: tuple[RGB, ...]
    trousers: tuple[RGB, ...]
    skin: tuple[RGB, ...]
    animal: tuple[RGB, ...]
    lights: bool  # head/tail lights and lamp glow (night)
    # content statistics
    building_gap: float  # probability that a building slot is left empty
    building_height: tuple[float, float]  # fraction of the image height above the horizon
    horizon: tuple[float, float]  # horizon row as a fraction of the image height
    road_halfwidth: tuple[float, float]  # at the bottom row, fraction of the width
    sidewalk_width: tuple[float, float]  # at the bottom row, fraction of the width
    sidewalk_prob: float  # probability of a sidewalk on each side
    n_trees: tuple[int, int]
    n_bushes: tuple[int, int]
    n_poles: tuple[int, int]
    n_cars: tuple[int, int]
    n_trucks: tuple[int, int]
    n_people: tuple[int, int]
    n_animals: tuple[int, int]
    # image formation
    jitter: float  # per-instance colour jitter (std, levels)
    texture: dict[str, tuple[float, float]]
    noise: float  # pixel noise std (levels)
    haze: float  # strength of the haze near the horizon (0..1)
    haze_color: RGB
    illumination: float  # strength of a random linear illumination gradient
    gain_jitter: float  # per-image brightness / white-balance jitter (relative)
    contrast: float  # global contrast around the image mean (1 = unchanged)
    _tex: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.texture) - set(SCENE_CLASSES))
        if unknown:
            raise ValueError(f"style '{self.name}': unknown classes in texture: {unknown}")
        tex = np.zeros((2, 256), dtype=np.float32)  # row 0: smooth texture, row 1: fine texture
        for k, name in enumerate(SCENE_CLASSES):
            tex[:, k] = self.texture.get(name, (0.0, 0.0))
        object.__setattr__(self, "_tex", tex)


#: Registered styles (domains) by name.
STYLES: Registry[Style] = Registry("synthetic style")


def register_style(style: Style) -> Style:
    """Add a style to :data:`STYLES` under ``style.name``."""
    STYLES.register(style.name, style)
    return style


register_style(Style(
    name="city",
    description="daylight city street, saturated colours, asphalt road with markings, paved sidewalks",
    sky_top=(60, 120, 225), sky_bottom=(150, 195, 240),
    facade=((150, 150, 155), (200, 185, 160), (175, 120, 100), (120, 125, 140), (225, 220, 205)),
    window=((50, 70, 100), (80, 110, 150), (40, 45, 60)), lit_window=None, lit_prob=0.0,
    roof=None, roof_prob=0.0,
    road=(75, 75, 82), marking=(235, 235, 235), ruts=False,
    sidewalk=(185, 160, 170), kerb=(215, 215, 210),
    grass=(70, 150, 50), foliage=((40, 120, 35), (60, 140, 40), (30, 100, 45)), trunk=(90, 65, 45),
    pole=((130, 130, 140), (95, 95, 105), (200, 170, 40)),
    car=((200, 30, 30), (30, 60, 190), (230, 230, 235), (25, 25, 30), (160, 165, 175), (230, 180, 20)),
    truck=((240, 240, 240), (220, 110, 20), (40, 110, 60), (60, 80, 170)),
    glass=(40, 55, 75),
    clothes=((200, 40, 40), (40, 80, 200), (240, 240, 240), (230, 200, 40), (40, 160, 80), (30, 30, 30)),
    trousers=((30, 30, 60), (50, 50, 50), (90, 70, 50), (20, 20, 25)),
    skin=((235, 190, 160), (190, 140, 100), (120, 80, 55)),
    animal=((150, 100, 60),),
    lights=False,
    building_gap=0.08, building_height=(0.15, 0.55), horizon=(0.35, 0.55),
    road_halfwidth=(0.30, 0.55), sidewalk_width=(0.18, 0.45), sidewalk_prob=0.9,
    n_trees=(0, 3), n_bushes=(0, 2), n_poles=(2, 5), n_cars=(1, 5), n_trucks=(0, 2), n_people=(1, 5),
    n_animals=(0, 0),
    jitter=10.0,
    texture={"sky": (8, 0), "building": (10, 4), "road": (6, 4), "sidewalk": (6, 8), "vegetation": (18, 14),
             "car": (4, 2), "truck": (4, 2), "person": (4, 3)},
    noise=4.0, haze=0.15, haze_color=(190, 205, 225), illumination=0.08, gain_jitter=0.07, contrast=1.0,
))

register_style(Style(
    name="rural",
    description="hazy dusty countryside: pale sky, brown dirt road, olive vegetation, farm animals",
    sky_top=(200, 200, 185), sky_bottom=(235, 225, 200),
    facade=((165, 80, 55), (95, 70, 50), (150, 145, 135), (185, 120, 70)),
    window=((60, 45, 35), (90, 80, 60)), lit_window=None, lit_prob=0.0,
    roof=((150, 55, 40), (90, 70, 60), (110, 90, 50)), roof_prob=0.85,
    road=(150, 115, 75), marking=None, ruts=True,
    sidewalk=(200, 185, 145), kerb=(175, 160, 125),
    grass=(150, 150, 70), foliage=((105, 120, 45), (125, 115, 55), (85, 105, 50)), trunk=(80, 60, 40),
    pole=((95, 65, 40), (120, 90, 60)),
    car=((170, 45, 35), (205, 200, 190), (60, 80, 115), (45, 45, 40), (120, 130, 140)),
    truck=((160, 45, 30), (50, 100, 50), (60, 80, 130), (215, 205, 175)),
    glass=(70, 70, 60),
    clothes=((175, 60, 40), (60, 80, 145), (225, 220, 205), (40, 40, 40), (200, 150, 50)),
    trousers=((55, 50, 40), (50, 60, 90), (30, 30, 30)),
    skin=((215, 170, 130), (170, 120, 85), (120, 85, 60)),
    animal=((110, 65, 35), (235, 230, 215), (40, 35, 30), (175, 130, 80)),
    lights=False,
    building_gap=0.5, building_height=(0.08, 0.25), horizon=(0.38, 0.6),
    road_halfwidth=(0.15, 0.3), sidewalk_width=(0.08, 0.2), sidewalk_prob=0.6,
    n_trees=(2, 6), n_bushes=(1, 4), n_poles=(1, 3), n_cars=(1, 3), n_trucks=(0, 2), n_people=(1, 4),
    n_animals=(1, 4),
    jitter=14.0,
    texture={"sky": (8, 0), "building": (12, 8), "road": (12, 8), "sidewalk": (6, 12), "vegetation": (15, 12),
             "car": (4, 3), "truck": (4, 3), "person": (3, 3), "animal": (8, 6)},
    noise=7.0, haze=0.3, haze_color=(225, 215, 190), illumination=0.2, gain_jitter=0.1, contrast=0.9,
))

register_style(Style(
    name="night",
    description="city street at night: dark, low contrast, lit windows, lamps and vehicle lights, noisy",
    sky_top=(8, 10, 25), sky_bottom=(30, 32, 55),
    facade=((38, 36, 42), (48, 42, 38), (30, 32, 40)),
    window=((20, 20, 28),), lit_window=(200, 170, 80), lit_prob=0.35,
    roof=None, roof_prob=0.0,
    road=(28, 28, 32), marking=(110, 105, 90), ruts=False,
    sidewalk=(50, 46, 52), kerb=(70, 68, 70),
    grass=(18, 34, 22), foliage=((14, 30, 18), (20, 38, 24)), trunk=(25, 20, 18),
    pole=((60, 60, 66), (45, 45, 50)),
    car=((80, 20, 20), (25, 30, 70), (95, 95, 100), (15, 15, 18), (70, 70, 75)),
    truck=((100, 100, 105), (90, 55, 20), (30, 55, 35)),
    glass=(15, 18, 25),
    clothes=((70, 25, 25), (25, 35, 75), (95, 95, 95), (20, 20, 20)),
    trousers=((15, 15, 25), (25, 25, 25)),
    skin=((110, 85, 70), (80, 60, 45)),
    animal=((60, 45, 30),),
    lights=True,
    building_gap=0.1, building_height=(0.15, 0.55), horizon=(0.35, 0.55),
    road_halfwidth=(0.30, 0.55), sidewalk_width=(0.18, 0.45), sidewalk_prob=0.9,
    n_trees=(0, 3), n_bushes=(0, 2), n_poles=(1, 4), n_cars=(1, 5), n_trucks=(0, 2), n_people=(1, 4),
    n_animals=(0, 0),
    jitter=5.0,
    texture={"sky": (3, 0), "building": (4, 2), "road": (3, 2), "sidewalk": (3, 4), "vegetation": (6, 5),
             "car": (2, 1), "truck": (2, 1), "person": (2, 2)},
    noise=7.0, haze=0.0, haze_color=(0, 0, 0), illumination=0.15, gain_jitter=0.12, contrast=0.9,
))


# --------------------------------------------------------------------------------------------
# Drawing primitives
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _grids(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates: column vector of rows, row vector of columns (float32)."""
    ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


@lru_cache(maxsize=32)
def _interp_index(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights that linearly resample ``n_in`` control points to ``n_out`` samples."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.clip(np.floor(pos).astype(np.intp), 0, n_in - 2)
    frac = (pos - lo).astype(np.float32)
    lo.flags.writeable = False
    frac.flags.writeable = False
    return lo, frac


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Zero-mean, roughly unit-std value noise with feature size ``cell`` pixels (bilinear)."""
    gh, gw = max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    iy, fy = _interp_index(height, gh)
    ix, fx = _interp_index(width, gw)
    rows = g[iy] * (1.0 - fy)[:, None] + g[iy + 1] * fy[:, None]  # (H, gw)
    return (rows[:, ix] * (1.0 - fx) + rows[:, ix + 1] * fx) * 1.4


_NOISE_BANK_SIZE = 1 << 19


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed block of standard-normal float32 values (same in every process)."""
    bank = np.random.default_rng(20190927).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
    bank.flags.writeable = False
    return bank


def _pixel_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit Gaussian noise of ``shape``: a random window of the noise bank (much faster than
    drawing fresh normals), or fresh normals when the image is too large for the bank."""
    n = int(np.prod(shape))
    if 2 * n > _NOISE_BANK_SIZE:
        return rng.standard_normal(shape, dtype=np.float32)
    off = int(rng.integers(0, _NOISE_BANK_SIZE - n))
    return _noise_bank()[off:off + n].reshape(shape)


class _Canvas:
    """A palette-indexed image plus its scene-class label map, painted with masks in bounding boxes."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.ys, self.xs = _grids(height, width)
        # colours are painted as indices into a growing palette (cheap int16 writes); the first
        # ``height`` entries are the sky gradient, one per row
        self.cid = np.empty((height, width), dtype=np.int16 if height < 16384 else np.int32)
        self.cid[:] = np.arange(height)[:, None]
        self.palette: list[np.ndarray] = []
        self.lab = np.zeros((height, width), dtype=np.uint8)

    def color(self, rgb) -> int:
        """Palette index of a new colour (any 3-sequence)."""
        self.palette.append(np.asarray(rgb, dtype=np.float32).reshape(3))
        return len(self.palette) - 1

    def fill(self, mask: np.ndarray, cls: int | None, rgb) -> None:
        """Paint the full-frame boolean ``mask`` with a colour and (unless None) a class."""
        self.cid[mask] = self.color(rgb)
        if cls is not None:
            self.lab[mask] = cls

    def image(self) -> np.ndarray:
        """The painted image as HxWx3 float32."""
        return np.stack(self.palette)[self.cid]

    def _box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int] | None:
        a, b = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), self.w)
        c, d = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), self.h)
        return None if a >= b or c >= d else (a, c, b, d)

    def rect(self, x0: float, y0: float, x1: float, y1: float, cls: int | None, color) -> None:
        """Fill the pixels whose centres lie in [x0, x1) x [y0, y1); at least one pixel wide/high."""
        if x1 - x0 < 1:
            x0 = x1 = (x0 + x1) / 2
            x0, x1 = x0 - 0.5, x0 + 0.5
        if y1 - y0 < 1:
            y0 = y1 = (y0 + y1) / 2
            y0, y1 = y0 - 0.5, y0 + 0.5
        a, c = max(int(round(x0)), 0), max(int(round(y0)), 0)
        b, d = min(int(round(x1)), self.w), min(int(round(y1)), self.h)
        if a >= b or c >= d:
            return
        self.cid[c:d, a:b] = self.color(color)
        if cls is not None:
            self.lab[c:d, a:b] = cls

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, cls: int | None, color,
                wobble: float = 0.0, lobes: int = 5, phase: float = 0.0) -> None:
        """Fill an axis-aligned ellipse; ``wobble`` > 0 makes the outline bumpy (foliage)."""
        rx, ry = max(rx, 0.6), max(ry, 0.6)
        k = 1.0 + wobble
        box = self._box(cx - rx * k, cy - ry * k, cx + rx * k, cy + ry * k)
        if box is None:
            return
        a, c, b, d = box
        dx = (self.xs[:, a:b] - cx) / rx
        dy = (self.ys[c:d] - cy) / ry
        r2 = dx * dx + dy * dy
        if wobble > 0:
            thr = 1.0 + wobble * np.sin(lobes * np.arctan2(dy, dx) + phase)
            mask = r2 <= thr * thr
        else:
            mask = r2 <= 1.0
        self.cid[c:d, a:b][mask] = self.color(color)
        if cls is not None:
            self.lab[c:d, a:b][mask] = cls

    def triangle_roof(self, x0: float, x1: float, base_y: float, height: float, cls: int, color) -> None:
        """Fill an isosceles triangle standing on the segment [x0, x1] at row ``base_y``."""
        cx, half = (x0 + x1) / 2, (x1 - x0) / 2
        box = self._box(x0, base_y - height, x1, base_y)
        if box is None or half <= 0:
            return
        a, c, b, d = box
        rel = np.abs(self.xs[:, a:b] - cx) / half
        mask = self.ys[c:d] >= base_y - height * (1.0 - rel)
        self.cid[c:d, a:b][mask] = self.color(color)
        self.lab[c:d, a:b][mask] = cls


def _pick(rng: np.random.Generator, palette, jitter: float) -> np.ndarray:
    """A colour from ``palette`` with per-instance Gaussian jitter."""
    base = np.asarray(palette[int(rng.integers(len(palette)))], dtype=np.float32)
    return base + rng.normal(0.0, jitter, 3).astype(np.float32)


def _count(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    """A count drawn uniformly from the inclusive range ``lo_hi``."""
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


# --------------------------------------------------------------------------------------------
# Scene rendering
# --------------------------------------------------------------------------------------------


#: A lamp or vehicle light to glow in the final image: (x, y, radius, RGB colour).
_Glow = tuple[float, float, float, tuple[int, int, int]]


@dataclass
class _Scene:
    """What the drawing stages of one scene share: style, generator, canvas and light glows."""

    style: Style
    rng: np.random.Generator
    canvas: _Canvas
    glows: list[_Glow] = field(default_factory=list)

    @property
    def scale(self) -> float:
        """Pixel-size factor: the drawing constants are given for 96-row images."""
        return self.canvas.h / 96.0


@dataclass(frozen=True)
class _RoadLayout:
    """The ground plan: a straight road from a vanishing point on the horizon, with sidewalks.

    Widths are measured at the bottom row and shrink linearly to zero at the horizon.
    """

    horizon: float  # row of the horizon
    span: float  # rows from the horizon to the bottom of the image (at least 1)
    width: float  # image width in pixels
    vanish_x: float  # road centre at the horizon
    bottom_x: float  # road centre at the bottom row
    halfwidth: float  # road half-width
    sidewalk_left: float  # sidewalk widths (0: no sidewalk on that side)
    sidewalk_right: float

    def centre(self, t: float | np.ndarray) -> float | np.ndarray:
        """Column of the road centre at depth fraction ``t`` (0 at the horizon, 1 at the bottom)."""
        return self.vanish_x + (self.bottom_x - self.vanish_x) * t

    def bottom_row(self, rng: np.random.Generator, lo: float, hi: float) -> float:
        """Bottom row of an object: uniform in depth fraction, biased a bit toward the camera."""
        return self.horizon + self.span * float(rng.uniform(lo, hi)) ** 1.15

    def ground_x(self, rng: np.random.Generator, yb: float, where: str) -> float:
        """A column for an object standing at row ``yb`` on the ``road``, ``roadside``, ``off`` the road
        or ``any`` where."""
        W, hw, swl, swr = self.width, self.halfwidth, self.sidewalk_left, self.sidewalk_right
        tt = max(yb - self.horizon, 0.0) / self.span
        c = self.centre(tt)
        lft, rgt = c - hw * tt, c + hw * tt
        if where == "road":
            return float(rng.uniform(lft + 0.1 * hw * tt, rgt - 0.1 * hw * tt))
        if where == "roadside":  # on the sidewalk (or at the road edge when there is none)
            if rng.random() < 0.5:
                return float(rng.uniform(lft - max(swl, 0.04 * W) * tt, lft + 0.02 * W * tt))
            return float(rng.uniform(rgt - 0.02 * W * tt, rgt + max(swr, 0.04 * W) * tt))
        if where == "off":  # beyond the sidewalks, else anywhere off the road
            if rng.random() < 0.5:
                return float(rng.uniform(-0.1 * W, max(lft - swl * tt, -0.05 * W)))
            return float(rng.uniform(min(rgt + swr * tt, 1.05 * W), 1.1 * W))
        return float(rng.uniform(0, W))


def _draw_sky(scene: _Scene) -> float:
    """Pick the horizon row and paint the whole frame with the vertical sky gradient; returns the horizon."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    j = st.jitter
    hz = float(rng.uniform(*st.horizon)) * cv.h
    t_sky = np.clip(cv.ys / max(hz, 1.0), 0.0, 1.0)[:, :, None]  # (H,1,1)
    sky_top = np.asarray(st.sky_top, np.float32) + rng.normal(0, j * 0.6, 3).astype(np.float32)
    sky_bot = np.asarray(st.sky_bottom, np.float32) + rng.normal(0, j * 0.6, 3).astype(np.float32)
    cv.palette.extend(sky_top * (1 - t_sky[:, 0]) + sky_bot * t_sky[:, 0])
    cv.lab[:] = SKY
    return hz


def _draw_buildings(scene: _Scene, hz: float) -> None:
    """Draw a row of buildings (with gaps) standing on the horizon, left to right."""
    st, rng = scene.style, scene.rng
    W = scene.canvas.w
    x = float(rng.uniform(-0.1, 0.0)) * W
    while x < W:
        bw = float(rng.uniform(0.07, 0.24)) * W
        if rng.random() >= st.building_gap:
            _draw_building(scene, x, bw, hz)
        x += bw * float(rng.uniform(0.85, 1.0)) if rng.random() < 0.7 else bw + float(rng.uniform(0.0, 0.08)) * W


def _draw_building(scene: _Scene, x: float, bw: float, hz: float) -> None:
    """Draw one building of width ``bw`` from column ``x``: facade, windows and maybe a roof."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    j = st.jitter
    hmin, hmax = st.building_height
    bh = float(rng.uniform(hmin, hmax)) * cv.h
    top = hz - bh
    bottom = hz + 1.0
    facade = _pick(rng, st.facade, j)
    cv.rect(x, top, x + bw, bottom, BUILDING, facade)
    if rng.random() < 0.9:
        _draw_windows(scene, x, bw, top, hz)
    if st.roof is not None and rng.random() < st.roof_prob:
        rh = float(rng.uniform(0.25, 0.6)) * bw
        cv.triangle_roof(x - 1, x + bw + 1, top + 0.5, rh, BUILDING, _pick(rng, st.roof, j))


def _draw_windows(scene: _Scene, x: float, bw: float, top: float, hz: float) -> None:
    """Paint a grid of darker (or, at night, randomly lit) windows on a facade."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    ys, xs, sc = cv.ys, cv.xs, scene.scale
    px, py = float(rng.uniform(4.0, 7.0)) * sc, float(rng.uniform(4.5, 7.5)) * sc
    mx, my = 1.5 * sc, 2.0 * sc  # facade margins
    fx, fy = float(rng.uniform(0.4, 0.65)), float(rng.uniform(0.4, 0.65))
    box = cv._box(x + mx, top + my, x + bw - mx, hz - my)
    if box is None:
        return
    a, c, b, d = box
    u = (xs[:, a:b] - x - mx) % px
    v = (ys[c:d] - top - my) % py
    wmask = (u < px * fx) & (v < py * fy)
    wcol = _pick(rng, st.window, st.jitter * 0.5)
    sub = cv.cid[c:d, a:b]
    if st.lit_window is not None:
        # per-window random lighting: index windows by their grid cell
        cell = np.floor((xs[:, a:b] - x - mx) / px) * 31 + np.floor((ys[c:d] - top - my) / py) * 7
        lit_seed = float(rng.uniform(0, 1000))
        lit = (np.sin(cell * 12.9898 + lit_seed) * 43758.5453) % 1.0 < st.lit_prob
        sub[wmask & ~lit] = cv.color(wcol)
        sub[wmask & lit] = cv.color(np.asarray(st.lit_window, np.float32) + rng.normal(0, 15, 3))
    else:
        sub[wmask] = cv.color(wcol)


def _road_layout(scene: _Scene, hz: float) -> _RoadLayout:
    """Pick the road's vanishing point, direction and width and the sidewalk widths."""
    st, rng = scene.style, scene.rng
    H, W = scene.canvas.h, scene.canvas.w
    vx = float(rng.uniform(0.35, 0.65)) * W
    cxb = vx + float(rng.uniform(-0.15, 0.15)) * W
    hw = float(rng.uniform(*st.road_halfwidth)) * W
    swl = float(rng.uniform(*st.sidewalk_width)) * W if rng.random() < st.sidewalk_prob else 0.0
    swr = float(rng.uniform(*st.sidewalk_width)) * W if rng.random() < st.sidewalk_prob else 0.0
    return _RoadLayout(horizon=hz, span=max(H - hz, 1.0), width=W, vanish_x=vx, bottom_x=cxb, halfwidth=hw,
                       sidewalk_left=swl, sidewalk_right=swr)


def _draw_ground(scene: _Scene, road: _RoadLayout) -> None:
    """Paint grass, sidewalks with kerbs and the road below the horizon, then the road's markings or ruts."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    ys, xs, sc, j = cv.ys, cv.xs, scene.scale, st.jitter
    hz, hw = road.horizon, road.halfwidth
    t = np.maximum(ys - hz, 0.0) / road.span  # 0 at the horizon, 1 at the bottom row  (H,1)
    below = ys >= hz  # (H,1)
    centre = road.centre(t)
    left, right = centre - hw * t, centre + hw * t
    on_road = below & (xs >= left) & (xs < right)
    side = below & ~on_road & (xs >= left - road.sidewalk_left * t) & (xs < right + road.sidewalk_right * t)
    grass = below & ~on_road & ~side
    cv.fill(grass, VEGETATION, np.asarray(st.grass, np.float32) + rng.normal(0, j, 3))
    cv.fill(side, SIDEWALK, np.asarray(st.sidewalk, np.float32) + rng.normal(0, j, 3))
    # kerb: a light edge of the sidewalk along the road
    kw = (0.5 + 2.0 * t) * sc
    kerb = side & (((xs >= left - kw) & (xs < left)) | ((xs >= right) & (xs < right + kw)))
    cv.fill(kerb, None, st.kerb)
    road_col = np.asarray(st.road, np.float32) + rng.normal(0, j, 3).astype(np.float32)
    cv.fill(on_road, ROAD, road_col)
    if st.marking is not None and rng.random() < 0.85:
        lw = (0.3 + 1.3 * t) * sc
        off = float(rng.uniform(-0.1, 0.1)) * hw * t
        dash = ((1.0 / (t + 0.06)) * float(rng.uniform(1.5, 2.5)) + float(rng.uniform(0, 1))) % 1.0 < 0.5
        mark = on_road & (np.abs(xs - centre - off) < lw) & dash
        cv.fill(mark, None, np.asarray(st.marking, np.float32) + rng.normal(0, j * 0.5, 3))
    if st.ruts:
        rw = (0.06 + 0.04 * float(rng.random())) * hw * t
        for side_sign in (-1.0, 1.0):
            rc = centre + side_sign * 0.45 * hw * t
            rut = on_road & (np.abs(xs - rc) < rw)
            cv.fill(rut, None, road_col * 0.8)


def _draw_tree(scene: _Scene, ox: float, yb: float, s: float, flip: bool) -> None:
    """A tree: trunk and a bumpy canopy."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    th = s * float(rng.uniform(1.4, 2.8))
    tw = max(0.8, s * 0.12)
    cv.rect(ox - tw / 2, yb - th, ox + tw / 2, yb, VEGETATION, np.asarray(st.trunk, np.float32))
    r = s * float(rng.uniform(0.7, 1.3))
    cv.ellipse(ox, yb - th - r * 0.5, r, r * float(rng.uniform(0.8, 1.3)), VEGETATION,
               _pick(rng, st.foliage, st.jitter), wobble=0.15, lobes=int(rng.integers(4, 8)),
               phase=float(rng.uniform(0, 6.28)))


def _draw_bush(scene: _Scene, ox: float, yb: float, s: float, flip: bool) -> None:
    """A bush: one wide bumpy blob."""
    st, rng = scene.style, scene.rng
    r = s * float(rng.uniform(0.3, 0.7))
    scene.canvas.ellipse(ox, yb - r * 0.6, r * 1.4, r * 0.8, VEGETATION, _pick(rng, st.foliage, st.jitter),
                         wobble=0.12, lobes=int(rng.integers(5, 9)), phase=float(rng.uniform(0, 6.28)))


def _draw_pole(scene: _Scene, ox: float, yb: float, s: float, flip: bool) -> None:
    """A pole with a lamp arm (which glows at night) or a sign plate."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    ph = s * float(rng.uniform(3.0, 5.0))
    pw = max(2.0 * scene.scale, s * 0.14)
    col = _pick(rng, st.pole, st.jitter * 0.5)
    cv.rect(ox - pw / 2, yb - ph, ox + pw / 2, yb, POLE, col)
    top = yb - ph
    if rng.random() < 0.5:  # lamp arm
        arm = s * 0.5 * (-1 if flip else 1)
        cv.rect(min(ox, ox + arm), top, max(ox, ox + arm), top + max(1.0, pw * 0.8), POLE, col)
        scene.glows.append((ox + arm, top + pw, s * 0.8, (255, 220, 140)))
    else:  # sign plate / crossbar
        sw_ = s * float(rng.uniform(0.25, 0.5))
        cv.rect(ox - sw_, top + s * 0.1, ox + sw_, top + s * 0.1 + max(1.0, sw_ * 0.8), POLE, col * 0.8 + 40)


def _wheel_color(st: Style) -> np.ndarray:
    """Tyre colour (darker at night)."""
    return np.asarray((20, 20, 22), np.float32) if not st.lights else np.asarray((6, 6, 8), np.float32)


def _draw_car(scene: _Scene, ox: float, yb: float, s: float, flip: bool) -> None:
    """A car: body, cabin with windows, wheels and, at night, head or tail lights."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    w = s * float(rng.uniform(1.1, 1.5))
    body_h = s * float(rng.uniform(0.45, 0.6))
    wr = s * 0.16
    col = _pick(rng, st.car, st.jitter)
    x0 = ox - w / 2
    body_bot = yb - wr * 0.9
    cv.rect(x0, body_bot - body_h, x0 + w, body_bot, CAR, col)
    cab_w = w * float(rng.uniform(0.55, 0.75))
    cab_x = x0 + (w - cab_w) * float(rng.uniform(0.2, 0.8))
    cab_h = s * float(rng.uniform(0.3, 0.42))
    cv.rect(cab_x + 0.08 * cab_w, body_bot - body_h - cab_h, cab_x + 0.92 * cab_w, body_bot - body_h + 0.5,
            CAR, col)
    cv.rect(cab_x + 0.15 * cab_w, body_bot - body_h - cab_h * 0.8, cab_x + 0.85 * cab_w,
            body_bot - body_h, CAR, np.asarray(st.glass, np.float32))
    wheel = _wheel_color(st)
    for fx in (0.2, 0.8):
        cv.ellipse(x0 + fx * w, yb - wr, wr * 1.1, wr, CAR, wheel)
    if st.lights:
        lc = (255, 240, 190) if flip else (230, 30, 25)
        for fx in (0.08, 0.92):
            cv.rect(x0 + fx * w - s * 0.07, body_bot - body_h * 0.75, x0 + fx * w + s * 0.07,
                    body_bot - body_h * 0.5, CAR, np.asarray(lc, np.float32))
            scene.glows.append((x0 + fx * w, body_bot - body_h * 0.6, s * 0.35, lc))


def _draw_truck(scene: _Scene, ox: float, yb: float, s: float, flip: bool) -> None:
    """A truck: tall cargo box, cab (facing left when flipped), chassis, wheels and, at night, marker lights."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    j = st.jitter
    w = s * float(rng.uniform(1.6, 2.3))
    box_h = s * float(rng.uniform(1.5, 2.1))
    wr = s * 0.2
    col = _pick(rng, st.truck, j)
    x0 = ox - w / 2
    bot = yb - wr * 0.9
    cab_w = w * float(rng.uniform(0.25, 0.32))
    cargo_x0, cab_x0 = (x0 + cab_w, x0) if flip else (x0, x0 + w - cab_w)
    cv.rect(cargo_x0, bot - box_h, cargo_x0 + w - cab_w + 0.5, bot, TRUCK, col)
    cab_col = _pick(rng, st.truck, j)
    cab_h = box_h * float(rng.uniform(0.6, 0.8))
    cv.rect(cab_x0, bot - cab_h, cab_x0 + cab_w, bot, TRUCK, cab_col)
    cv.rect(cab_x0 + 0.15 * cab_w, bot - cab_h * 0.9, cab_x0 + 0.85 * cab_w, bot - cab_h * 0.55, TRUCK,
            np.asarray(st.glass, np.float32))
    cv.rect(x0, bot - s * 0.12, x0 + w, bot, TRUCK, col * 0.5)  # chassis
    wheel = _wheel_color(st)
    for fx in (0.15, 0.55, 0.85):
        cv.ellipse(x0 + fx * w, yb - wr, wr, wr, TRUCK, wheel)
    if st.lights:
        lc = np.asarray((255, 200, 80), np.float32)
        cv.rect(x0, bot - box_h, x0 + s * 0.1, bot - box_h + s * 0.1, TRUCK, lc)
        cv.rect(x0 + w - s * 0.1, bot - box_h, x0 + w, bot - box_h + s * 0.1, TRUCK, lc)


def _draw_person(scene: _Scene, ox: float, yb: float, s: float, flip: bool) -> None:
    """A person: legs, torso, arms and head."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    j = st.jitter
    h = s * float(rng.uniform(1.0, 1.3))
    bw = h * float(rng.uniform(0.24, 0.32))
    shirt = _pick(rng, st.clothes, j)
    pants = _pick(rng, st.trousers, j)
    skin = _pick(rng, st.skin, j * 0.5)
    leg_top = yb - h * 0.47
    lw = max(0.7, bw * 0.38)
    stride = bw * float(rng.uniform(0.0, 0.35))
    cv.rect(ox - bw * 0.45 - stride, leg_top, ox - bw * 0.45 - stride + lw, yb, PERSON, pants)
    cv.rect(ox + bw * 0.45 + stride - lw, leg_top, ox + bw * 0.45 + stride, yb, PERSON, pants)
    torso_top = yb - h * 0.83
    cv.rect(ox - bw / 2, torso_top, ox + bw / 2, leg_top + 0.5, PERSON, shirt)
    aw = max(0.7, bw * 0.2)
    cv.rect(ox - bw / 2 - aw, torso_top + h * 0.02, ox - bw / 2, leg_top + h * 0.05, PERSON, shirt * 0.85)
    cv.rect(ox + bw / 2, torso_top + h * 0.02, ox + bw / 2 + aw, leg_top + h * 0.05, PERSON, shirt * 0.85)
    hr = h * 0.085
    cv.ellipse(ox, torso_top - hr * 0.9, hr, hr * 1.1, PERSON, skin)


def _draw_animal(scene: _Scene, ox: float, yb: float, s: float, flip: bool) -> None:
    """A four-legged animal: horizontal body, legs, and a head on a neck (facing left when flipped)."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    L = s * float(rng.uniform(0.5, 0.75))
    body_h = s * float(rng.uniform(0.22, 0.32))
    leg_h = s * float(rng.uniform(0.25, 0.4))
    col = _pick(rng, st.animal, st.jitter)
    cy = yb - leg_h - body_h * 0.6
    lw = max(0.7, L * 0.09)
    for fx in (-0.75, -0.45, 0.45, 0.75):
        cv.rect(ox + fx * L - lw / 2, cy, ox + fx * L + lw / 2, yb, ANIMAL, col * 0.85)
    cv.ellipse(ox, cy, L, body_h, ANIMAL, col)
    d = -1.0 if flip else 1.0
    hx, hy = ox + d * L * 1.05, cy - body_h * 0.9
    cv.ellipse(ox + d * L * 0.85, cy - body_h * 0.45, L * 0.14, body_h * 0.6, ANIMAL, col)  # neck
    cv.ellipse(hx, hy, L * 0.22, body_h * 0.45, ANIMAL, col * 0.92)


#: Draws one object standing at column ``ox`` on row ``yb``, ``s`` pixels per ~1.5 m, maybe mirrored.
_Drawer = Callable[[_Scene, float, float, float, bool], None]


def _place_objects(scene: _Scene, road: _RoadLayout) -> list[tuple[float, _Drawer, float]]:
    """Pick the style's number of each object kind and where each stands; ``(bottom row, drawer, x)``
    sorted far to near."""
    st, rng = scene.style, scene.rng
    objects: list[tuple[float, _Drawer, float]] = []
    for _ in range(_count(rng, st.n_trees)):
        yb = road.bottom_row(rng, 0.02, 0.9)
        objects.append((yb, _draw_tree, road.ground_x(rng, yb, "off" if rng.random() < 0.7 else "roadside")))
    for _ in range(_count(rng, st.n_bushes)):
        yb = road.bottom_row(rng, 0.05, 1.0)
        objects.append((yb, _draw_bush, road.ground_x(rng, yb, "off")))
    for _ in range(_count(rng, st.n_poles)):
        yb = road.bottom_row(rng, 0.05, 0.9)
        objects.append((yb, _draw_pole, road.ground_x(rng, yb, "roadside")))
    for _ in range(_count(rng, st.n_cars)):
        yb = road.bottom_row(rng, 0.08, 1.0)
        objects.append((yb, _draw_car, road.ground_x(rng, yb, "road")))
    for _ in range(_count(rng, st.n_trucks)):
        yb = road.bottom_row(rng, 0.08, 0.85)
        objects.append((yb, _draw_truck, road.ground_x(rng, yb, "road")))
    for _ in range(_count(rng, st.n_people)):
        yb = road.bottom_row(rng, 0.15, 1.05)
        objects.append((yb, _draw_person, road.ground_x(rng, yb, "roadside" if rng.random() < 0.8 else "road")))
    for _ in range(_count(rng, st.n_animals)):
        yb = road.bottom_row(rng, 0.12, 1.0)
        objects.append((yb, _draw_animal, road.ground_x(rng, yb, "off" if rng.random() < 0.6 else "any")))
    objects.sort(key=lambda o: o[0])
    return objects


def _draw_objects(scene: _Scene, objects: list[tuple[float, _Drawer, float]], hz: float) -> None:
    """Draw the placed objects in order (far to near, so nearer ones occlude farther ones)."""
    for yb, draw, ox in objects:
        s = max(0.62 * (yb - hz), 1.0)  # pixels per ~1.5 m at this depth (camera ~2.4 m high)
        flip = scene.rng.random() < 0.5
        draw(scene, ox, yb, s, flip)


def _add_texture(scene: _Scene, img: np.ndarray) -> None:
    """Add the style's smooth and fine per-class luminance texture to ``img`` in place."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    H, W, sc = cv.h, cv.w, scene.scale
    lum = st._tex[0][cv.lab] * _smooth_noise(rng, H, W, 10.0 * sc)
    lum += st._tex[1][cv.lab] * _smooth_noise(rng, H, W, 2.5 * sc)
    img += lum[..., None]


def _add_glows(scene: _Scene, img: np.ndarray) -> None:
    """Add a Gaussian glow around the first lamps and vehicle lights to ``img`` in place."""
    cv = scene.canvas
    for gx, gy_, r, c in scene.glows[:12]:
        box = cv._box(gx - 2.5 * r, gy_ - 2.5 * r, gx + 2.5 * r, gy_ + 2.5 * r)
        if box is None:
            continue
        a, c0, b, d = box
        d2 = ((cv.xs[:, a:b] - gx) ** 2 + (cv.ys[c0:d] - gy_) ** 2) * (1.0 / (r * r + 1e-3))
        img[c0:d, a:b] += np.exp(-d2)[..., None] * (np.asarray(c, np.float32) * 0.35)


def _apply_camera(scene: _Scene, img: np.ndarray, hz: float, pivot: float) -> None:
    """Apply haze toward the horizon, an illumination ramp, per-image gain / white balance, contrast
    around ``pivot`` and pixel noise to ``img`` in place, then clip it to 0..255."""
    st, rng, cv = scene.style, scene.rng, scene.canvas
    ys, xs, H, W = cv.ys, cv.xs, cv.h, cv.w
    # folded into one multiply-add: img * mult * gain + offset
    mult = np.ones((H, 1), np.float32)
    haze_w = None
    if st.haze > 0:
        haze_w = st.haze * float(rng.uniform(0.6, 1.2)) * np.exp(-np.abs(ys - hz) * (1.0 / (0.22 * H)))  # (H,1)
        mult = 1.0 - haze_w
    ramp = None
    if st.illumination > 0:
        ang = float(rng.uniform(0, 2 * np.pi))
        ramp = 1.0 + st.illumination * float(rng.uniform(0.3, 1.0)) * 2.0 * (
            np.cos(ang) * (xs / W - 0.5) + np.sin(ang) * (ys / H - 0.5))  # (H,W)
        mult = mult * ramp
    gain = ((1.0 + rng.normal(0, st.gain_jitter)) * (1.0 + rng.normal(0, st.gain_jitter * 0.4, 3))).astype(np.float32)
    img *= mult[..., None]
    if haze_w is not None:
        hw_ = haze_w if ramp is None else haze_w * ramp
        img += hw_[..., None] * np.asarray(st.haze_color, np.float32)
    img *= gain * st.contrast
    img += _pixel_noise(rng, img.shape) * st.noise + (pivot * (1.0 - st.contrast)) * gain
    np.clip(img, 0, 255, out=img)


def render_scene(style: str | Style, rng: np.random.Generator, height: int = 96, width: int = 128
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene in ``style``.

    The stages run in this order, all drawing from ``rng``::

        hz = _draw_sky(scene)                    # horizon row and sky gradient
        _draw_buildings(scene, hz)               # facades, windows, roofs along the horizon
        road = _road_layout(scene, hz)           # vanishing point, road and sidewalk widths
        _draw_ground(scene, road)                # grass, sidewalks, kerbs, road, markings / ruts
        objects = _place_objects(scene, road)    # trees, bushes, poles, cars, trucks, people, animals
        _draw_objects(scene, objects, hz)        # far to near, one _draw_<kind> each
        _add_texture(scene, img)                 # image formation: per-class texture,
        _add_glows(scene, img)                   #   light glows (night),
        _apply_camera(scene, img, hz, pivot)     #   haze, illumination, gain, contrast, noise

    Args:
        style: a name in :data:`STYLES` or a :class:`Style`.
        rng: the only source of randomness; the same generator state gives the same scene.
        height, width: image size in pixels.

    Returns:
        ``(image, label)``: HxWx3 uint8 RGB and HxW uint8 ids of :data:`SCENE_CLASSES` (ids 0..8
        are the ``fine`` train ids, 9 is animal); see :func:`scene_to_labels` for the taxonomies.
    """
    st = STYLES.get(style) if isinstance(style, str) else style
    scene = _Scene(st, rng, _Canvas(int(height), int(width)))
    hz = _draw_sky(scene)
    _draw_buildings(scene, hz)
    road = _road_layout(scene, hz)
    _draw_ground(scene, road)
    _draw_objects(scene, _place_objects(scene, road), hz)
    img = scene.canvas.image()
    pivot = float(img.mean())  # contrast pivot
    _add_texture(scene, img)
    if st.lights and scene.glows:
        _add_glows(scene, img)
    _apply_camera(scene, img, hz, pivot)
    return img.astype(np.uint8), scene.canvas.lab

# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def _style_code(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


class SyntheticParams(DatasetParams):
    """Parameters of the built-in ``synthetic`` dataset (scenes generated on the fly)."""

    style: str = Field("city", description="appearance domain, one of the registered styles (city, rural, night)")
    taxonomy: Literal["fine", "coarse"] = Field("fine", description="label set: fine (9 classes) or coarse (8)")
    num_train: int = Field(200, ge=0, description="number of labelled training images")
    num_val: int = Field(40, ge=0, description="number of labelled validation images")
    num_test: int = Field(0, ge=0, description="number of unlabelled extra images (split 'test')")
    height: int = Field(96, ge=16, le=4096, description="image height in pixels")
    width: int = Field(128, ge=16, le=4096, description="image width in pixels")
    seed: int = Field(0, ge=0, description="generator seed; sample i of a split depends only on seed, style, split, i")

    @field_validator("style")
    @classmethod
    def _known_style(cls, v: str) -> str:
        if v not in STYLES:
            raise ValueError(f"unknown synthetic style '{v}'; styles: {', '.join(STYLES.names())}")
        return v


class SyntheticDataset(SegDataset):
    """One split of a synthetic domain; samples are rendered on demand and LRU-cached.

    ``load_image`` / ``load_label`` return fresh arrays, so callers may modify them.
    """

    def __init__(self, params: SyntheticParams, split: str, cache_size: int = 32) -> None:
        if split not in _SPLIT_CODES:
            raise ValueError(f"synthetic dataset has no split '{split}'; splits: {', '.join(_SPLIT_CODES)}")
        self.params = params
        self.split = split
        self.style = STYLES.get(params.style)
        self.label_space = LABEL_SPACES[params.taxonomy]
        self._lut = _SCENE_LUTS[params.taxonomy]
        self._n = {"train": params.num_train, "val": params.num_val, "test": params.num_test}[split]
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # do not ship cached samples to data-loader workers
        return state

    def __repr__(self) -> str:
        p = self.params
        return (f"SyntheticDataset(style={p.style!r}, taxonomy={p.taxonomy!r}, split={self.split!r}, "
                f"n={self._n}, size={p.height}x{p.width}, seed={p.seed})")

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self._n:
            raise IndexError(f"sample {i} out of range for {self!r}")
        return i

    def sample_id(self, i: int) -> str:
        return f"{self.params.style}_{self.split}_{self._check(i):05d}"

    @property
    def has_labels(self) -> bool:
        return self.split != "test"

    def rng(self, i: int) -> np.random.Generator:
        """The generator that draws sample ``i`` (a pure function of seed, split, i and style)."""
        p = self.params
        return np.random.default_rng([p.seed, _SPLIT_CODES[self.split], self._check(i), _style_code(p.style)])

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image, scene-class label)`` of sample ``i``; cached, do not modify the arrays."""
        i = self._check(i)
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        out = render_scene(self.style, self.rng(i), self.params.height, self.params.width)
        if self._cache_size > 0:
            self._cache[i] = out
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def load_image(self, i: int) -> np.ndarray:
        return self.render(i)[0].copy()

    def load_label(self, i: int) -> np.ndarray | None:
        if not self.has_labels:
            self._check(i)
            return None
        return self._lut[self.render(i)[1]]


@register_dataset("synthetic", params=SyntheticParams, splits=("train", "val", "test"))
def build_synthetic(params: SyntheticParams, split: str) -> SyntheticDataset:
    """Build split ``split`` of the synthetic dataset (``test`` is unlabelled)."""
    return SyntheticDataset(params, split)
