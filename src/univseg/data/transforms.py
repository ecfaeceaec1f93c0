"""Joint image + label augmentation, configured from plain dicts (YAML).

Data convention (what every transform takes and returns):

* image: ``torch.Tensor`` float32 ``[3, H, W]`` with values in ``0..255`` (not normalised;
  the model normalises);
* label: ``torch.Tensor`` int64 ``[H, W]`` of train ids with :data:`IGNORE_INDEX` (255) for
  void, or ``None`` for unlabeled images.

Every transform is called as ``transform(image, label, g) -> (image, label)`` and draws all of
its randomness from the ``torch.Generator`` ``g``, so a sample's augmentation is a pure function
of the generator's seed. Labels are only ever resampled with nearest-neighbour lookups, so they
keep their dtype and never gain values other than the input's plus :data:`IGNORE_INDEX`.

A pipeline is configured as a list of dicts ``{"type": name, **params}``::

    pipeline = build_transforms([
        {"type": "random_scale", "range": [0.5, 2.0]},
        {"type": "random_crop", "size": [512, 1024], "cat_max_ratio": 0.75},
        {"type": "hflip"},
        {"type": "color_jitter", "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05},
    ])
    image, label = load_arrays(image_uint8_hwc, label_uint8_hw)
    g = torch.Generator().manual_seed(seed)
    image, label = pipeline(image, label, g)

Every transform is either geometric (it moves pixels: resize, crop, flip, pad) or photometric (it
changes pixel values, not their positions); ``Transform.geometric`` says which.

Adding a transform type: subclass :class:`Transform`, set ``geometric``, give it a ``Params``
model derived from :class:`TransformParams` and decorate it with ``@register_transform("name")``.
"""
from __future__ import annotations

import abc
import math
from typing import Annotated, Any, Callable, ClassVar, Optional, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator, model_validator
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError
from ..registry import Registry
from ..validation import validate_typed
from .label_space import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "TRANSFORMS",
    "Compose",
    "Transform",
    "TransformParams",
    "build_transform",
    "build_transforms",
    "cutmix_box",
    "load_arrays",
    "register_transform",
]

Label = Optional[torch.Tensor]


# --------------------------------------------------------------------------------------------
# Parameter models and field types
# --------------------------------------------------------------------------------------------


class TransformParams(BaseModel):
    """Base of every transform's parameter model: unknown keys are rejected, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _int_to_pair(value: Any) -> Any:
    # ``size: 512`` means a 512x512 square; anything else is left to the tuple validator.
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return value


PosInt = Annotated[int, Strict(), Field(gt=0)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0)]
PosFloat = Annotated[float, Strict(), Field(gt=0)]
Probability = Annotated[float, Strict(), Field(ge=0, le=1)]
Size = Annotated[tuple[PosInt, PosInt], BeforeValidator(_int_to_pair)]


def _ordered(rng: tuple[float, float]) -> tuple[float, float]:
    if rng[0] > rng[1]:
        raise ValueError(f"expected [low, high] with low <= high, got {list(rng)}")
    return rng


def _within(lo: float, hi: float) -> Callable[[tuple[float, float]], tuple[float, float]]:
    def check(rng: tuple[float, float]) -> tuple[float, float]:
        if rng[0] < lo or rng[1] > hi:
            want = f">= {lo}" if hi == math.inf else f"within [{lo}, {hi}]"
            raise ValueError(f"expected values {want}, got {list(rng)}")
        return rng

    return check


FloatRange = Annotated[tuple[Annotated[float, Strict()], Annotated[float, Strict()]], AfterValidator(_ordered)]
PosFloatRange = Annotated[tuple[PosFloat, PosFloat], AfterValidator(_ordered)]


def _draw(g: torch.Generator) -> float:
    """One uniform sample in [0, 1) from ``g``."""
    return float(torch.rand((), generator=g))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _draw(g)


def _randint(g: torch.Generator, high: int) -> int:
    """Uniform integer in ``[0, high]`` (inclusive)."""
    return int(torch.randint(0, high + 1, (), generator=g))


# --------------------------------------------------------------------------------------------
# Transform base, registry
# --------------------------------------------------------------------------------------------


class Transform(abc.ABC):
    """One joint image/label transform built from a validated :class:`TransformParams`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[TransformParams]] = TransformParams
    #: True if the transform moves pixels (resize, crop, flip, pad), False if it only changes
    #: their values (photometric); every registered transform sets it.
    geometric: ClassVar[bool]

    def __init__(self, params: TransformParams) -> None:
        if not isinstance(params, self.Params):
            raise TypeError(f"{type(self).__name__} expects {self.Params.__name__}, got {type(params).__name__}")
        self.params = params

    @abc.abstractmethod
    def __call__(self, image: torch.Tensor, label: Label, g: torch.Generator) -> tuple[torch.Tensor, Label]:
        """Apply to ``image`` (float32 [3,H,W], 0..255) and ``label`` (int64 [H,W] or None)."""

    def track_padding(self, image: torch.Tensor, pad: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply to an unlabeled ``image`` exactly as ``self(image, None, g)`` does (same output, same
        draws from ``g``), moving ``pad`` (int64 [H,W]) like a label alongside it.

        Transforms whose draws depend on the label override this so that ``pad`` never steers them.
        """
        image, moved = self(image, pad, g)
        assert moved is not None
        return image, moved

    @property
    def config(self) -> dict[str, Any]:
        """The full validated config (defaults filled in, JSON/YAML-friendly)."""
        return {"type": self.name, **self.params.model_dump(mode="json")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{self.name}({args})"


TRANSFORMS: Registry[type[Transform]] = Registry("transform")

_T = TypeVar("_T", bound=type[Transform])


def register_transform(name: str) -> Callable[[_T], _T]:
    """Class decorator registering a :class:`Transform` subclass as transform type ``name``."""

    def deco(cls: _T) -> _T:
        if not isinstance(getattr(cls, "geometric", None), bool):
            raise TypeError(f"transform '{name}' ({cls.__name__}) must set the class attribute 'geometric' (True or False)")
        cls.name = name
        TRANSFORMS.register(name, cls)
        return cls

    return deco


# --------------------------------------------------------------------------------------------
# Geometry helpers (shared by several transforms)
# --------------------------------------------------------------------------------------------


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    # Bilinear weights are non-negative, so values stay inside the input's range.
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    # Pixel-centre aligned nearest neighbour (== PIL NEAREST / torch "nearest-exact"), which
    # lines up with bilinear align_corners=False resampling of the image.
    idx = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out)).floor_().long()
    return idx.clamp_(0, n_in - 1)


def _resize_label(label: Label, size: tuple[int, int]) -> Label:
    if label is None or tuple(label.shape) == tuple(size):
        return label
    rows = _nearest_index(label.shape[0], size[0])
    cols = _nearest_index(label.shape[1], size[1])
    return label[rows[:, None], cols[None, :]]


def _resize_pair(image: torch.Tensor, label: Label, size: tuple[int, int]) -> tuple[torch.Tensor, Label]:
    return _resize_image(image, size), _resize_label(label, size)


def _scaled_size(h: int, w: int, sh: float, sw: float) -> tuple[int, int]:
    return max(1, int(round(h * sh))), max(1, int(round(w * sw)))


def _pad_bottom_right(image: torch.Tensor, label: Label, ph: int, pw: int) -> tuple[torch.Tensor, Label]:
    """Pad ``ph`` rows at the bottom and ``pw`` columns on the right (image 0, label ignore)."""
    if ph <= 0 and pw <= 0:
        return image, label
    ph, pw = max(ph, 0), max(pw, 0)
    image = F.pad(image, (0, pw, 0, ph), value=0.0)
    if label is not None:
        label = F.pad(label, (0, pw, 0, ph), value=IGNORE_INDEX)
    return image, label


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


class ResizeParams(TransformParams):
    size: Optional[Size] = Field(default=None, description="[height, width] as 2 positive integers")
    short_side: Optional[PosInt] = Field(default=None, description="a positive integer (pixels)")
    scale: Optional[PosFloat] = Field(default=None, description="a positive number")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ResizeParams":
        given = [k for k in ("size", "short_side", "scale") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'size' ([h, w]), 'short_side' (int) or 'scale' (float)"
                + (f"; got {', '.join(given)}" if given else "")
            )
        return self


@register_transform("resize")
class Resize(Transform):
    """Deterministic resize: to ``size`` [h, w], so the short side is ``short_side`` (aspect
    ratio kept), or by factor ``scale``. Image bilinear with antialias, label nearest."""

    geometric = True
    Params = ResizeParams
    params: ResizeParams

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        p = self.params
        if p.size is not None:
            return p.size
        if p.short_side is not None:
            s = p.short_side / min(h, w)
            return (p.short_side, max(1, int(round(w * s)))) if h <= w else (max(1, int(round(h * s))), p.short_side)
        assert p.scale is not None
        return _scaled_size(h, w, p.scale, p.scale)

    def __call__(self, image, label, g):
        return _resize_pair(image, label, self.target_size(*image.shape[-2:]))


class RandomScaleParams(TransformParams):
    range: PosFloatRange = Field(description="[low, high] scale factors, e.g. [0.5, 2.0]")
    aspect_range: Optional[PosFloatRange] = Field(
        default=None, description="[low, high] width/height aspect-ratio multipliers, e.g. [0.75, 1.33]"
    )


@register_transform("random_scale")
class RandomScale(Transform):
    """Resize by a factor ``s ~ U(range)``. With ``aspect_range``, an aspect multiplier
    ``a ~ U(aspect_range)`` is drawn too and the height/width scale by ``s/sqrt(a)`` and
    ``s*sqrt(a)`` (area scales by ``s**2`` either way)."""

    geometric = True
    Params = RandomScaleParams
    params: RandomScaleParams

    def __call__(self, image, label, g):
        p = self.params
        s = _uniform(g, *p.range)
        sh = sw = s
        if p.aspect_range is not None:
            a = math.sqrt(_uniform(g, *p.aspect_range))
            sh, sw = s / a, s * a
        h, w = image.shape[-2:]
        return _resize_pair(image, label, _scaled_size(h, w, sh, sw))


class RandomCropParams(TransformParams):
    size: Size = Field(description="[height, width] as 2 positive integers")
    cat_max_ratio: Annotated[float, Strict(), Field(gt=0, le=1)] = Field(
        default=1.0, description="a number in (0, 1]"
    )


@register_transform("random_crop")
class RandomCrop(Transform):
    """Crop a random ``size`` window. Inputs smaller than ``size`` are first padded at the
    bottom/right (image with 0, label with 255). With ``cat_max_ratio < 1`` (as in mmseg), up to
    10 windows are tried until no single class covers ``cat_max_ratio`` or more of the crop's
    labeled (non-ignore) pixels; the last try is kept otherwise."""

    geometric = True
    Params = RandomCropParams
    params: RandomCropParams
    max_tries: ClassVar[int] = 10

    def __call__(self, image, label, g):
        return self._crop(image, label, g, balance=self.params.cat_max_ratio < 1.0)

    def track_padding(self, image, pad, g):
        # the padding map is no label: it must not trigger the class-balance retries
        image, pad = self._crop(image, pad, g, balance=False)
        assert pad is not None
        return image, pad

    def _crop(self, image: torch.Tensor, label: Label, g: torch.Generator, balance: bool) -> tuple[torch.Tensor, Label]:
        """The crop; ``balance`` enables the ``cat_max_ratio`` retries (which need a real label)."""
        ch, cw = self.params.size
        h, w = image.shape[-2:]
        image, label = _pad_bottom_right(image, label, ch - h, cw - w)
        h, w = image.shape[-2:]

        def window() -> tuple[int, int]:
            return _randint(g, h - ch), _randint(g, w - cw)

        top, left = window()
        if balance and label is not None:
            for _ in range(self.max_tries - 1):
                crop = label[top : top + ch, left : left + cw]
                _, counts = torch.unique(crop[crop != IGNORE_INDEX], return_counts=True)
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.params.cat_max_ratio:
                    break
                top, left = window()
        image = image[:, top : top + ch, left : left + cw]
        if label is not None:
            label = label[top : top + ch, left : left + cw]
        return image, label


class HFlipParams(TransformParams):
    p: Probability = Field(default=0.5, description="a probability in [0, 1]")


@register_transform("hflip")
class HFlip(Transform):
    """Mirror left-right with probability ``p``."""

    geometric = True
    Params = HFlipParams
    params: HFlipParams

    def __call__(self, image, label, g):
        if _draw(g) < self.params.p:
            image = image.flip(-1)
            label = None if label is None else label.flip(-1)
        return image, label


def _jitter_factor(name: str, center: float, bound: float | None) -> Callable[[Any], Any]:
    """torchvision ColorJitter semantics: a number ``v`` means ``[center - v, center + v]``
    (clipped at 0 for the multiplicative factors); a pair is taken as ``[low, high]``."""

    def convert(value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"{name} must be a non-negative number or [low, high], got {value}")
            if bound is not None and value > bound:
                raise ValueError(f"{name} must be at most {bound}, got {value}")
            return (max(0.0, center - value) if bound is None else center - value, center + value)
        return value

    return convert


FactorRange = Annotated[FloatRange, AfterValidator(_within(0.0, math.inf))]
HueRange = Annotated[FloatRange, AfterValidator(_within(-0.5, 0.5))]


class ColorJitterParams(TransformParams):
    brightness: Annotated[FactorRange, BeforeValidator(_jitter_factor("brightness", 1.0, None))] = Field(
        default=(1.0, 1.0), description="a non-negative number b (factor in [1-b, 1+b]) or [low, high]"
    )
    contrast: Annotated[FactorRange, BeforeValidator(_jitter_factor("contrast", 1.0, None))] = Field(
        default=(1.0, 1.0), description="a non-negative number c (factor in [1-c, 1+c]) or [low, high]"
    )
    saturation: Annotated[FactorRange, BeforeValidator(_jitter_factor("saturation", 1.0, None))] = Field(
        default=(1.0, 1.0), description="a non-negative number s (factor in [1-s, 1+s]) or [low, high]"
    )
    hue: Annotated[HueRange, BeforeValidator(_jitter_factor("hue", 0.0, 0.5))] = Field(
        default=(0.0, 0.0), description="a number h in [0, 0.5] (shift in [-h, h]) or [low, high] within [-0.5, 0.5]"
    )
    p: Probability = Field(default=1.0, description="a probability in [0, 1]")


@register_transform("color_jitter")
class ColorJitter(Transform):
    """torchvision ``ColorJitter`` on the image only, applied with probability ``p``: brightness,
    contrast, saturation and hue are adjusted in a random order by factors drawn from their
    ranges (identity ranges are skipped). The label is untouched; values stay in 0..255."""

    geometric = False
    Params = ColorJitterParams
    params: ColorJitterParams

    def __call__(self, image, label, g):
        p = self.params
        if _draw(g) >= p.p:
            return image, label
        ops = {
            0: (p.brightness, (1.0, 1.0), TF.adjust_brightness_image),
            1: (p.contrast, (1.0, 1.0), TF.adjust_contrast_image),
            2: (p.saturation, (1.0, 1.0), TF.adjust_saturation_image),
            3: (p.hue, (0.0, 0.0), TF.adjust_hue_image),
        }
        x = (image / 255.0).clamp_(0.0, 1.0)
        for i in torch.randperm(4, generator=g).tolist():
            rng, identity, fn = ops[i]
            if tuple(rng) == identity:
                continue
            x = fn(x, _uniform(g, *rng))
        return x.mul_(255.0).clamp_(0.0, 255.0), label


class GaussianBlurParams(TransformParams):
    sigma: PosFloatRange = Field(default=(0.1, 2.0), description="[low, high] positive standard deviations (pixels)")
    kernel_size: Optional[PosInt] = Field(
        default=None, description="an odd positive integer, or null for 2*ceil(3*sigma)+1"
    )
    p: Probability = Field(default=0.5, description="a probability in [0, 1]")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, k: int | None) -> int | None:
        if k is not None and k % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {k}")
        return k


@register_transform("gaussian_blur")
class GaussianBlur(Transform):
    """Gaussian blur of the image (not the label) with probability ``p`` and
    ``sigma ~ U(sigma)``; reflect padding at the borders."""

    geometric = False
    Params = GaussianBlurParams
    params: GaussianBlurParams

    def __call__(self, image, label, g):
        p = self.params
        if _draw(g) >= p.p:
            return image, label
        sigma = _uniform(g, *p.sigma)
        k = p.kernel_size if p.kernel_size is not None else 2 * math.ceil(3 * sigma) + 1
        # reflect padding needs pad < size: shrink the kernel on tiny images
        max_half = min(image.shape[-2:]) - 1
        k = min(k, 2 * max_half + 1)
        if k <= 1:
            return image, label
        return TF.gaussian_blur_image(image, kernel_size=[k, k], sigma=[sigma, sigma]), label


class RandomGrayscaleParams(TransformParams):
    p: Probability = Field(default=0.1, description="a probability in [0, 1]")


@register_transform("random_grayscale")
class RandomGrayscale(Transform):
    """torchvision ``RandomGrayscale``: with probability ``p`` every channel becomes the luma
    ``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601-2, as PIL's ``convert("L")``). The label is untouched."""

    geometric = False
    Params = RandomGrayscaleParams
    params: RandomGrayscaleParams

    def __call__(self, image, label, g):
        if _draw(g) >= self.params.p:
            return image, label
        luma = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).clamp_(0.0, 255.0)
        return luma.expand(3, -1, -1).contiguous(), label


class PadToMultipleParams(TransformParams):
    multiple: PosInt = Field(description="a positive integer")


@register_transform("pad_to_multiple")
class PadToMultiple(Transform):
    """Pad bottom/right so height and width are multiples of ``multiple`` (image 0, label 255)."""

    geometric = True
    Params = PadToMultipleParams
    params: PadToMultipleParams

    def __call__(self, image, label, g):
        m = self.params.multiple
        h, w = image.shape[-2:]
        return _pad_bottom_right(image, label, -h % m, -w % m)


# --------------------------------------------------------------------------------------------
# Compose and building from config
# --------------------------------------------------------------------------------------------


class Compose:
    """Transforms applied in order; ``config`` is the validated list of dicts (for saving)."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    @property
    def config(self) -> list[dict[str, Any]]:
        return [t.config for t in self.transforms]

    def __call__(self, image: torch.Tensor, label: Label, g: torch.Generator) -> tuple[torch.Tensor, Label]:
        _check_pair(image, label)
        for t in self.transforms:
            image, label = t(image, label, g)
        return image, label

    def track_padding(
        self, image: torch.Tensor, g: torch.Generator, label: Label = None
    ) -> tuple[torch.Tensor, torch.Tensor, Label]:
        """Apply to an unlabeled ``image`` exactly as ``self(image, None, g)`` does (same output, same
        draws from ``g``); also return the bool [H,W] mask of the output's pixels that come from the
        image (False where a crop or pad added padding) and ``label`` moved alongside (None without
        one; :data:`IGNORE_INDEX` at padding). The label never steers the draws: it travels inside
        the padding map, shifted past :data:`IGNORE_INDEX`."""
        _check_pair(image, label)
        shift = IGNORE_INDEX + 1
        pad = torch.zeros(image.shape[-2:], dtype=torch.int64) if label is None else label + shift
        for t in self.transforms:
            image, pad = t.track_padding(image, pad, g)
        valid = pad != IGNORE_INDEX
        return image, valid, None if label is None else torch.where(valid, pad - shift, IGNORE_INDEX)

    def geometric(self) -> "Compose":
        """The geometric transforms of this pipeline alone (crops, flips, scales), in order."""
        return Compose([t for t in self.transforms if t.geometric])

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self):
        return iter(self.transforms)

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


def _check_pair(image: torch.Tensor, label: Label) -> None:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.float32 or image.ndim != 3 or image.shape[0] != 3:
        desc = f"{image.dtype} tensor of shape {list(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a float32 tensor [3, H, W] with values 0..255 (see load_arrays), got {desc}")
    if label is None:
        return
    if not isinstance(label, torch.Tensor) or label.dtype != torch.int64 or label.ndim != 2:
        desc = f"{label.dtype} tensor of shape {list(label.shape)}" if isinstance(label, torch.Tensor) else type(label).__name__
        raise ValueError(f"label must be an int64 tensor [H, W] or None (see load_arrays), got {desc}")
    if tuple(label.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"label shape {list(label.shape)} does not match image size {list(image.shape[-2:])}")


def build_transform(cfg: dict[str, Any], where: str = "transform") -> Transform:
    """Validate one ``{"type": name, ...params}`` dict and build the transform.

    Raises ConfigError (a ValueError) whose lines start with the key path (e.g. ``transform.size: ...``).
    """
    entry = validate_typed(cfg, TRANSFORMS, lambda cls: cls.Params, where)
    return entry.item(entry.params)


def build_transforms(cfg: list[dict[str, Any]] | None, where: str = "transforms") -> Compose:
    """Validate a list of transform configs and build the pipeline.

    All problems are reported at once in one ConfigError (a ValueError), one line each, each
    starting with its key path, e.g. ``transforms[1].size: ...``. ``None`` or ``[]`` is the
    identity pipeline.
    """
    if cfg is None:
        return Compose([])
    if not isinstance(cfg, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of transform configs, got {type(cfg).__name__}", key=where)
    transforms: list[Transform] = []
    errors: list[str] = []
    for i, entry in enumerate(cfg):
        try:
            transforms.append(build_transform(entry, f"{where}[{i}]"))
        except ConfigError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError("\n".join(errors), key=where)
    return Compose(transforms)


# --------------------------------------------------------------------------------------------
# CutMix boxes
# --------------------------------------------------------------------------------------------


def cutmix_box(
    size: tuple[int, int], p: float, area: tuple[float, float], ratio: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """A bool [H,W] mask (``size`` = (H, W)) holding one CutMix box with probability ``p``, else all False.

    As UniMatch's ``obtain_cutmix_box``: the box covers ``a ~ U(area)`` of the image with aspect
    ratio height/width ``r ~ U(ratio)``, at a uniform position where it lies inside the image; a
    box taller or wider than the image is clipped to it (and so covers less). Draws only from ``g``.
    """
    h, w = size
    box = torch.zeros(h, w, dtype=torch.bool)
    if _draw(g) >= p:
        return box
    pixels = _uniform(g, *area) * h * w
    r = _uniform(g, *ratio)
    bh = min(h, max(1, round(math.sqrt(pixels * r))))
    bw = min(w, max(1, round(math.sqrt(pixels / r))))
    top, left = _randint(g, h - bh), _randint(g, w - bw)
    box[top : top + bh, left : left + bw] = True
    return box


# --------------------------------------------------------------------------------------------
# numpy -> tensors
# --------------------------------------------------------------------------------------------


def load_arrays(image_uint8_hwc: np.ndarray, label_uint8_hw: np.ndarray | None) -> tuple[torch.Tensor, Label]:
    """Convert a HxWx3 uint8 RGB array (and optional HxW integer label array) to the transform
    convention: float32 [3,H,W] in 0..255 and int64 [H,W] (or None). The outputs own their memory."""
    image = np.asarray(image_uint8_hwc)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be a HxWx3 uint8 array, got {image.dtype} array of shape {image.shape}")
    img_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32).contiguous()
    if label_uint8_hw is None:
        return img_t, None
    label = np.asarray(label_uint8_hw)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must be a HxW integer array, got {label.dtype} array of shape {label.shape}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[:2]}")
    lbl_t = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64, copy=True))
    return img_t, lbl_t
