"""Backbone registry, the ``Backbone`` base class, ``build_backbone`` and safe weight loading.

Every backbone is a shared encoder: it maps a normalised image batch ``[B, 3, H, W]`` to a
feature map ``[B, out_channels, ~H/s, ~W/s]`` (s = ``output_stride``: 8 by default, 16 where a
backbone offers it). Any ``H, W`` is accepted; the caller upsamples its logits back to the
exact input size.

Weights come from one of three places (``pretrained`` argument of :func:`build_backbone`):

* ``None``: random initialisation;
* ``"imagenet"``: the ImageNet weight file of that architecture from the catalogue
  :mod:`univseg.models.weights`: read from the torch.hub cache, verified by its hash, and
  downloaded from the official URL when absent (offline: ``univseg weights fetch NAME``);
* a path to a local file: loaded with ``torch.load(..., weights_only=True)`` so no code stored
  in the file is ever executed.
"""
from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ...errors import CheckpointError, ConfigError
from ...registry import Registry, suggest
from ..activation_checkpoint import run_unit

#: Checkpoint keys ending like this are BatchNorm counters; old checkpoints lack them and
#: their absence changes nothing (they only matter for ``momentum=None``).
_BN_COUNTER = "num_batches_tracked"


class Backbone(nn.Module):
    """Base class of the encoders built by :func:`build_backbone`.

    Attributes:
        out_channels: channels of the returned feature map.
        low_level_channels: channels of the stride-4 feature map (``forward_features(x)["low"]``).
        output_stride: ratio between input and feature-map size.
        ignored_checkpoint_prefixes: checkpoint keys starting with one of these (after wrapper
            prefixes are stripped) belong to parts the backbone drops, e.g. an ImageNet
            classifier ``fc.``; they are skipped silently when loading weights.
        checkpoint_prefixes: wrapper prefixes under which a full-model checkpoint stores the
            backbone (e.g. ``encoder.`` for a whole ERFNet). When a file has keys under one of
            them, only those keys are used, with the prefix removed.
        activation_checkpointing: in training, keep only a unit's input and recompute the unit in
            the backward pass (subclasses run their units through :meth:`unit`): True for every
            unit, False for none, or a tuple of submodule names (``named_modules`` paths, e.g.
            ``("layer0", "layer1")``): the units that are, or lie inside, one of them.
    """

    out_channels: int
    low_level_channels: int
    output_stride: int = 8
    ignored_checkpoint_prefixes: tuple[str, ...] = ("fc.",)
    checkpoint_prefixes: tuple[str, ...] = ()
    _activation_checkpointing: bool | tuple[str, ...] = False
    #: built mostly of depthwise convolutions (train.channels_last: auto keeps bf16 training NCHW on CPU)
    depthwise: bool = False

    @property
    def activation_checkpointing(self) -> bool | tuple[str, ...]:
        """Which units are activation-checkpointed in training: all (True), none (False) or those under the named submodules."""
        return self._activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, spec: bool | tuple[str, ...] | list[str]) -> None:
        modules = dict(self.named_modules())
        if not isinstance(spec, bool):
            spec = tuple(spec)
            unknown = [name for name in spec if not name or name not in modules]
            if unknown:
                stages = [name for name, _ in self.named_children()]
                raise ConfigError(
                    f"train.activation_checkpointing: {type(self).__name__} has no submodule {unknown[0]!r}.{suggest(unknown[0], list(modules))} "
                    f"Name submodules of the encoder (its stages: {', '.join(stages)}), or use true for every unit",
                    key="train.activation_checkpointing",
                )
        for name, module in modules.items():
            module._univseg_checkpointed = spec if isinstance(spec, bool) else any(name == s or name.startswith(s + ".") for s in spec)
        self._activation_checkpointing = spec

    def unit(self, unit: nn.Module, x: Tensor) -> Tensor:
        """``unit(x)`` for one unit (stage or block) of ``forward_features``, activation-checkpointed when selected."""
        return run_unit(unit, x, getattr(unit, "_univseg_checkpointed", False))

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """``{"low": [B, low_level_channels, ~H/4, ~W/4], "out": [B, out_channels, ~H/s, ~W/s]}``
        (s = ``output_stride``): the stride-4 features a decoder's skip connection uses, and the last."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """The last feature map (``forward_features(x)["out"]``)."""
        return self.forward_features(x)["out"]


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one registered backbone.

    Attributes:
        build: ``build(**kwargs) -> Backbone`` with random weights.
        imagenet: ``imagenet() -> weights file or state_dict`` giving the ImageNet weights
            (``univseg.models.weights.imagenet_loader(name)``), or None when there are none.
        no_imagenet_reason: why ``imagenet`` is None (put in the error message).
        pretrained_build: ``pretrained_build(pretrained, **kwargs) -> Backbone`` already holding the
            weights ``pretrained`` names (``"imagenet"`` or a file path), for backbones whose library
            loads weights itself (timm); used instead of ``build`` + ``imagenet`` / a file when set.
        input_norm: ``input_norm() -> (mean, std)`` (0..255 scale) the ImageNet weights expect, or
            None; for backbones outside the weights catalogue :mod:`univseg.models.weights`.
    """

    build: Callable[..., Backbone]
    imagenet: Callable[[], Path | Mapping[str, Any]] | None = None
    no_imagenet_reason: str = ""
    pretrained_build: Callable[..., Backbone] | None = None
    input_norm: Callable[[], tuple[tuple[float, ...], tuple[float, ...]] | None] | None = None


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(
    name: str,
    imagenet: Callable[[], Path | Mapping[str, Any]] | None = None,
    no_imagenet_reason: str = "",
):
    """Decorator registering ``build(**kwargs) -> Backbone`` as backbone ``name``."""

    def deco(build: Callable[..., Backbone]) -> Callable[..., Backbone]:
        BACKBONES.register(
            name, BackboneSpec(build=build, imagenet=imagenet, no_imagenet_reason=no_imagenet_reason)
        )
        return build

    return deco


def build_backbone(name: str, pretrained: str | os.PathLike | None = None, **kwargs: Any) -> Backbone:
    """Build backbone ``name`` with options ``kwargs`` and optionally load weights.

    Args:
        name: a registered name (see ``BACKBONES.names()``); unknown names raise
            :class:`univseg.registry.UnknownNameError` with a suggestion.
        pretrained: None (random init), ``"imagenet"`` (the catalogue's ImageNet weights: cached
            file, else official download) or the path of a local weights file.
        **kwargs: options of that backbone (e.g. ``width`` and ``dropout`` for ``erfnet``).

    Raises:
        ConfigError: an option the backbone does not accept (the accepted ones are listed), or
            ``"imagenet"`` for a backbone without ImageNet weights.
        CheckpointError: ``pretrained`` is a weights file that does not exist, cannot be read, or
            does not fit (no matching key, or shape mismatches); or the ImageNet file is neither
            cached nor downloadable (the message says to run ``univseg weights fetch NAME``).
    """
    spec = BACKBONES.get(name)
    params = inspect.signature(spec.build).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not takes_any:
        accepted = ", ".join(params) or "none"
        raise ConfigError(
            f"model.backbone_args: backbone '{name}' got unknown option(s) {unknown}; accepted options: {accepted}",
            key="model.backbone_args",
            values=unknown,
        )
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError(
            f"model.pretrained must be None, 'imagenet' or a file path, got {type(pretrained).__name__}",
            key="model.pretrained",
        )
    if pretrained is not None and spec.pretrained_build is not None:
        return spec.pretrained_build(pretrained, **kwargs)
    model = spec.build(**kwargs)
    if pretrained is None:
        return model
    if isinstance(pretrained, str) and pretrained.lower() == "imagenet":
        if spec.imagenet is None:
            reason = f" ({spec.no_imagenet_reason})" if spec.no_imagenet_reason else ""
            raise ConfigError(
                f"model.pretrained: backbone '{name}' has no ImageNet weights to download{reason}; use "
                f"pretrained=None for random initialisation, or pretrained='/path/to/weights.pth' "
                f"to load a local weights file",
                key="model.pretrained",
            )
        load_backbone_weights(model, spec.imagenet(), source=f"ImageNet weights of '{name}'")
    else:
        load_backbone_weights(model, pretrained)
    return model


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did.

    Attributes:
        loaded: model keys set from the checkpoint.
        missing: model keys the checkpoint lacks (left at their initial values; BatchNorm
            ``num_batches_tracked`` counters are not counted).
        unexpected: checkpoint keys the model does not have (ignored).
        skipped: checkpoint keys dropped on purpose (classifier, parts outside the backbone).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _preview(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"


def read_weights_file(path: str | os.PathLike) -> Mapping[str, Any]:
    """Load a weights file without executing code (``torch.load(weights_only=True)``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"backbone weights file not found: {path}", path=path, key="model.pretrained")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors for files holding arbitrary objects, corrupt files
        raise CheckpointError(
            f"could not read backbone weights file {path} with torch.load(weights_only=True) "
            f"(only tensors and plain containers are accepted, no code is executed): {err}",
            path=path,
            key="model.pretrained",
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"backbone weights file {path} holds a {type(obj).__name__}, not a state dict", path=path, key="model.pretrained"
        )
    return obj


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """Find the tensors: accept a raw state dict or ``{"state_dict": ...}`` / ``{"model": ...}``."""
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}; a few levels at most
        inner = next(
            (obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None
        )
        if inner is None:
            break
        obj = inner
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not (isinstance(key, str) and isinstance(value, Tensor)):
            continue
        while key.startswith("module."):  # nn.DataParallel / DistributedDataParallel
            key = key[len("module."):]
        state[key] = value
    return state


def load_backbone_weights(
    model: Backbone,
    weights: str | os.PathLike | Mapping[str, Any],
    source: str | None = None,
) -> LoadReport:
    """Load ``weights`` (a file path or a state dict) into ``model``, tolerantly but loudly.

    The checkpoint may be a raw state dict or wrap it under ``state_dict`` / ``model``;
    ``module.`` prefixes are stripped, classifier keys (``model.ignored_checkpoint_prefixes``)
    are skipped. Missing and unexpected keys are reported with a ``UserWarning`` listing them.

    Raises:
        CheckpointError: ``weights`` is a path that does not exist or cannot be read, no key of the checkpoint matches the model (both key sets are shown), or
            some matching keys have a different shape (listed).
    """
    if isinstance(weights, (str, os.PathLike)):
        source = source or str(weights)
        weights = read_weights_file(weights)
    source = source or "state dict"
    state = unwrap_state_dict(weights)
    report = LoadReport()

    own = model.state_dict()
    for prefix in model.checkpoint_prefixes:
        if not any(k in own for k in state) and any(k.startswith(prefix) for k in state):
            report.skipped += [k for k in state if not k.startswith(prefix)]
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    ignored = model.ignored_checkpoint_prefixes
    report.skipped += [k for k in state if k.startswith(ignored)]
    state = {k: v for k, v in state.items() if not k.startswith(ignored)}

    name = type(model).__name__
    matched = [k for k in state if k in own]
    if not matched:
        raise CheckpointError(
            f"no key of {source} matches backbone {name}: it has {len(state)} tensor(s) "
            f"{_preview(sorted(state))}, the backbone expects e.g. {_preview(list(own))}",
            key="model.pretrained",
        )
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in matched if state[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(
            f"{len(bad)} tensor(s) of {source} have the wrong shape for backbone {name} "
            f"(another architecture or width?): {_preview(bad)}",
            key="model.pretrained",
        )
    result = model.load_state_dict({k: state[k] for k in matched}, strict=False)
    report.loaded = matched
    report.missing = [k for k in result.missing_keys if not k.endswith(_BN_COUNTER)]
    report.unexpected = [k for k in state if k not in own]
    if report.missing or report.unexpected:
        warnings.warn(
            f"loaded {len(matched)} tensor(s) of {source} into backbone {name}; "
            f"{len(report.missing)} missing key(s) keep their initial values "
            f"{_preview(report.missing)}; {len(report.unexpected)} unexpected key(s) ignored "
            f"{_preview(report.unexpected)}",
            UserWarning,
            stacklevel=2,
        )
    return report
