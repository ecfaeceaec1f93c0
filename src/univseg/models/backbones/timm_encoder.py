"""Any timm model as an encoder: backbone names ``timm/<model name>`` (optional extra ``univseg[timm]``).

``timm/resnet18``, ``timm/efficientnet_b0``, ``timm/convnext_atto``, ... build
``timm.create_model(name, features_only=True, output_stride=s)`` (the pattern of
segmentation_models_pytorch's ``tu-`` encoders and mmseg's ``TIMMBackbone``). Of the feature maps
timm returns, the decoders get the last one at stride 4 (``"low"``) and the deepest (``"out"``).
``output_stride`` 8 or 16 dilates the later stages (timm's own implementation; models whose
constructor has no ``output_stride`` offer only 32, their native stride).

``model.pretrained: imagenet`` loads the model's default pretrained tag through timm's own
mechanism (its cache: the Hugging Face Hub cache, or torch.hub's for URL-only weights); when the
file is neither cached nor downloadable the error names the Hub repository and file and how to
place them. ``model.pretrained: /path/to/model.safetensors`` (or ``.pth``/``.bin``) loads a file in
timm's own key names: read without executing code (safetensors, or ``torch.load(weights_only=True)``),
then given to timm's loader as a state dict (timm's key remapping, classifier dropped). The units that activation checkpointing can recompute are the stages and blocks timm
lists its features under (``body.layer1``, ``body.blocks.3``, ``body.stages.0``, ...).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import CheckpointError, ConfigError, UnknownNameError
from ..activation_checkpoint import checkpoint_in_place
from .dilation import OUTPUT_STRIDES, check_output_stride
from .registry import BACKBONES, Backbone, BackboneSpec, read_weights_file, unwrap_state_dict

PREFIX = "timm/"
INSTALL_HINT = 'pip install "univseg[timm]"'
TIMM_OUTPUT_STRIDES = (*OUTPUT_STRIDES, 32)
"""Output strides of timm encoders: 8 and 16 where the model dilates, 32 (no dilation) for every model."""


def _timm() -> Any:
    """The ``timm`` module; a ConfigError saying how to install it when it is missing."""
    if importlib.util.find_spec("timm") is None:
        raise ConfigError(
            f"model.backbone: timm encoders ({PREFIX}<name>) need the timm package: {INSTALL_HINT}",
            key="model.backbone",
            hint=INSTALL_HINT,
        )
    import timm

    return timm


def _is_depthwise(net: nn.Module) -> bool:
    """Whether most spatial convolutions of ``net`` are depthwise (MobileNets, EfficientNets, ConvNeXts)."""
    spatial = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    depthwise = [m for m in spatial if m.groups > 1 and m.groups == m.in_channels]
    return 2 * len(depthwise) > len(spatial)


def _units(net: nn.Module, feature_modules: list[str]) -> list[nn.Module]:
    """The stages / blocks of a timm feature extractor: the children (holding a convolution) of the
    modules that contain the feature taps, e.g. ``layer1``..``layer4``, ``blocks.0``..``blocks.6``
    or ``stages_0``..``stages_3``."""
    modules = dict(net.named_modules())
    # timm's FeatureListNet flattens nested names: "stages.0" becomes its child "stages_0"
    found = [name if name in modules else name.replace(".", "_") for name in feature_modules]
    parents = {name.rpartition(".")[0] for name in found if name in modules}
    units = []
    for parent in sorted(parents):
        for name, child in modules[parent].named_children():
            full = f"{parent}.{name}" if parent else name
            if full not in parents and any(isinstance(m, nn.Conv2d) for m in child.modules()):
                units.append(child)
    return units


class TimmEncoder(Backbone):
    """A timm ``features_only`` model as a :class:`Backbone` (see the module docstring).

    Args:
        body: the timm feature extractor (``features_only=True``).
        name: the timm model name (for messages).
    """

    ignored_checkpoint_prefixes = ("fc.", "classifier.", "head.", "conv_head.", "global_pool.")

    def __init__(self, body: nn.Module, name: str) -> None:
        super().__init__()
        self.body = body
        info = body.feature_info
        reductions = info.reduction()
        if 4 not in reductions:
            raise ConfigError(
                f"model.backbone: timm model '{name}' has no stride-4 feature map (its feature strides: "
                f"{reductions}), which the decoders need; pick a hierarchical CNN or transformer (resnet*, "
                "efficientnet*, mobilenetv3*, convnext*, ...)",
                key="model.backbone",
                values=reductions,
            )
        self.low_index = max(i for i, r in enumerate(reductions) if r == 4)
        self.output_stride = reductions[-1]
        self.low_level_channels = info.channels()[self.low_index]
        self.out_channels = info.channels()[-1]
        self.depthwise = _is_depthwise(body)
        for unit in _units(body, info.module_name()):
            checkpoint_in_place(unit)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"low": the last stride-4 feature map, "out": the deepest}`` of timm's features."""
        feats = self.body(x)
        return {"low": feats[self.low_index], "out": feats[-1]}


def _output_stride_error(name: str, output_stride: int, why: str) -> ConfigError:
    return ConfigError(
        f"model.backbone_args.output_stride: timm model '{name}' {why}; use output_stride 32 (no dilation) "
        "or a model whose constructor takes output_stride (resnet*, efficientnet*, mobilenetv3*, convnext*, ...)",
        key="model.backbone_args.output_stride",
        values=[output_stride],
    )


def _create(name: str, output_stride: int, pretrained: str | os.PathLike | None = None) -> nn.Module:
    """``timm.create_model(name, features_only=True, ...)`` with random weights, timm's ImageNet weights
    (``pretrained="imagenet"``) or the state dict of a local weights file in timm's layout (read here
    without executing code, then given to timm's loader for its key remapping); output-stride,
    download and file errors made clear."""
    timm = _timm()
    check_output_stride(output_stride, TIMM_OUTPUT_STRIDES, " for timm encoders")
    kwargs: dict[str, Any] = {} if output_stride == 32 else {"output_stride": output_stride}
    file = None if pretrained is None or str(pretrained).lower() == "imagenet" else Path(pretrained).expanduser()
    state = None
    if file is not None:
        state = _read_weights(file)
        kwargs["pretrained_cfg_overlay"] = {"state_dict": state}
    try:
        body = timm.create_model(name, pretrained=pretrained is not None, features_only=True, **kwargs)
    except TypeError as e:
        if "output_stride" in str(e):
            raise _output_stride_error(name, output_stride, "cannot dilate (its constructor has no output_stride)") from None
        raise
    except (AssertionError, NotImplementedError) as e:  # timm asserts supported output strides
        if "output_stride" in kwargs:
            raise _output_stride_error(name, output_stride, f"does not offer output_stride {output_stride} ({e})") from None
        raise
    except Exception as e:  # noqa: BLE001 - the download stack (OSError, huggingface_hub, urllib) raises many types
        if pretrained is None:
            raise
        if file is not None:
            raise CheckpointError(
                f"could not load {file} into timm model '{name}' (timm's loader, weights_only=True: a state dict of that "
                f"architecture in timm's key names, .safetensors, .pth or .bin): {type(e).__name__}: {str(e)[:300]}",
                path=file,
                key="model.pretrained",
            ) from None
        raise _weights_error(name, e) from None
    if file is not None:
        _check_loaded(body, state, file, name)
    return body


def _read_weights(file: Path) -> dict[str, Tensor]:
    """The tensors of a weights file: ``.safetensors`` (a format without code), else
    ``torch.load(weights_only=True)`` (:func:`.registry.read_weights_file`, wrappers and ``module.`` removed)."""
    if not file.is_file():
        raise CheckpointError(f"backbone weights file not found: {file}", path=file, key="model.pretrained")
    if file.suffix != ".safetensors":
        return unwrap_state_dict(read_weights_file(file))
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"could not read the safetensors file {file}: {e}", path=file, key="model.pretrained") from None


def _check_loaded(body: nn.Module, state: dict[str, Tensor], file: Path, name: str) -> None:
    """Raise CheckpointError unless every tensor of ``body`` came from ``state`` (read from ``file``): timm
    loads a features-only model non-strictly (the classifier is dropped), so a file of another
    architecture would otherwise leave the encoder random with only a log line."""
    by_shape: dict[tuple[int, ...], list[Tensor]] = {}
    for value in state.values():
        by_shape.setdefault(tuple(value.shape), []).append(value)
    missing = [
        key for key, value in body.state_dict().items()
        if not key.endswith("num_batches_tracked") and not any(torch.equal(value, v) for v in by_shape.get(tuple(value.shape), []))
    ]
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise CheckpointError(
            f"{file} does not hold the weights of timm model '{name}': {len(missing)} of its tensors are not in the "
            f"file ({shown}); give a state dict of that architecture in timm's key names (.safetensors, .pth or .bin)",
            path=file,
            key="model.pretrained",
            values=missing,
        )


def _weights_error(name: str, err: Exception) -> CheckpointError:
    """What to do when timm could not find or fetch the pretrained weights of ``name``."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return CheckpointError(
            f"model.pretrained: timm has no pretrained weights for '{name}' ({err}); use pretrained: null or a weights file",
            key="model.pretrained",
        )
    if cfg.hf_hub_id:
        from huggingface_hub.constants import HF_HUB_CACHE

        repo = cfg.hf_hub_id
        where = f"Hugging Face Hub repository {repo} (file {cfg.hf_hub_filename or 'model.safetensors'})"
        folder = f"{HF_HUB_CACHE}/models--{repo.replace('/', '--')}"
        place = (
            f"on a machine with internet run `huggingface-cli download {repo}` (or create the model once with "
            f"pretrained=True) and copy its cache folder models--{repo.replace('/', '--')} to {folder} here "
            "(HF_HOME or HF_HUB_CACHE move that cache)"
        )
    else:
        import torch.hub

        filename = (cfg.url or "").rsplit("/", 1)[-1]
        where = f"{cfg.url}"
        folder = f"{torch.hub.get_dir()}/checkpoints/{filename}"
        place = f"download {cfg.url} on a machine with internet and copy it to {folder}"
    return CheckpointError(
        f"model.pretrained: the ImageNet weights of timm model '{name}' ({where}) are not in timm's cache and could "
        f"not be downloaded ({type(err).__name__}: {str(err)[:200]}); {place}; or set model.pretrained to the path "
        "of the downloaded weights file (.safetensors, .pth or .bin)",
        path=folder,
        key="model.pretrained",
        hint=place,
    )


def _imagenet_norm(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input mean and std (0..255 scale) of ``name``'s default pretrained weights, None when timm has none."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    return tuple(255 * m for m in cfg.mean), tuple(255 * s for s in cfg.std)


def timm_backbone(name: str) -> BackboneSpec:
    """The backbone spec of ``timm/<name>`` (the resolver of the ``timm/`` family of :data:`BACKBONES`)."""
    timm = _timm()
    if not timm.is_model(name):
        from ...registry import suggest

        raise UnknownNameError(
            f"unknown timm model '{name}'.{suggest(name, timm.list_models())} List them with "
            "`python -c \"import timm; print(timm.list_models('PATTERN*'))\"`",
            key="model.backbone",
        )

    def build(output_stride: int = 8) -> TimmEncoder:
        """timm model ``name`` at ``output_stride`` 8, 16 or 32, random weights."""
        return TimmEncoder(_create(name, output_stride), name)

    def pretrained_build(pretrained: str | os.PathLike, output_stride: int = 8) -> TimmEncoder:
        return TimmEncoder(_create(name, output_stride, pretrained), name)

    return BackboneSpec(build=build, pretrained_build=pretrained_build, input_norm=lambda: _imagenet_norm(name))


BACKBONES.register_family(PREFIX, timm_backbone)
