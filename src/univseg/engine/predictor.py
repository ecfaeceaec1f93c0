"""Prediction from a checkpoint alone: no config file needed.

    from univseg import Predictor
    predictor = Predictor.from_checkpoint("work_dirs/demo/best.pt")
    mask = predictor.predict("street.jpg", label_space="city")   # HxW uint8 class ids

Sliding-window inference and test-time augmentation: pass ``inference=InferenceSettings(...)`` to
``from_checkpoint`` or set ``predictor.inference``; ``logits``, ``predict`` and ``predict_all`` use it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import ModelConfig
from ..data.base import image_to_rgb, read_image
from ..data.label_space import LabelSpace
from ..errors import DataError, UnknownNameError
from ..models.universal import UniversalModel, build_model
from ..utils.dist import resolve_device
from .checkpoint import Checkpoint
from .inference import InferenceSettings, infer_logits
from .precision import autocast, resolve_amp


class Predictor:
    """A trained universal model plus its label spaces, ready to segment images in any of them.

    ``inference`` (an attribute, may be replaced) says how logits are computed: whole image or
    sliding window, flip and multi-scale test-time augmentation (default: one whole-image pass).
    """

    def __init__(
        self,
        model: UniversalModel,
        label_spaces: dict[str, LabelSpace],
        amp: str = "none",
        inference: InferenceSettings = InferenceSettings(),
    ) -> None:
        self.model = model.eval()
        self.label_spaces = label_spaces
        self.amp = amp
        self.inference = inference

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", amp: str = "auto", inference: InferenceSettings = InferenceSettings()
    ) -> "Predictor":
        """Load a checkpoint written by training (safely: tensors only); ``inference`` as in the class.
        The model takes the memory layout its run trained in on this device type, so that it
        predicts exactly as the run's own evaluations did."""
        dev = resolve_device(device)
        ckpt = Checkpoint.load(path, map_location=dev)
        spaces = ckpt.label_spaces
        model_cfg = ModelConfig.model_validate({**ckpt.model_config, "pretrained": None, "init_from": None})
        model = build_model(model_cfg, {k: ls.num_classes for k, ls in spaces.items()})
        ckpt.load_weights(model, path)
        model.to(dev).use_channels_last(ckpt.trained_channels_last(dev, model.encoder.depthwise))
        return cls(model, spaces, resolve_amp(amp, dev), inference)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def resolve(self, label_space: str | None) -> str:
        """Head name for a head name or label-space name (default: the first head)."""
        if label_space is None:
            return next(iter(self.label_spaces))
        if label_space in self.label_spaces:
            return label_space
        for head, ls in self.label_spaces.items():
            if ls.name == label_space:
                return head
        names = [f"{h} ({ls.name})" for h, ls in self.label_spaces.items()]
        raise UnknownNameError(f"the model has no label space '{label_space}'; available: {', '.join(names)}", key="--label-space")

    def _batch(self, image: Any) -> torch.Tensor:
        """[1, 3, H, W] float tensor (0..255) on the model's device."""
        return torch.tensor(as_array(image)).permute(2, 0, 1).float().unsqueeze(0).to(self.device)

    @torch.no_grad()
    def _logits(self, image: Any, heads: list[str]) -> dict[str, torch.Tensor]:
        """``{head: [K, H, W] float logits}`` of one image, computed as ``self.inference`` says."""
        with autocast(self.device, self.amp):
            out = infer_logits(self.model, self._batch(image), heads, self.inference)
        return {h: t[0] for h, t in out.items()}

    def logits(self, image: Any, label_space: str | None = None) -> torch.Tensor:
        """[K, H, W] float logits of one image in one label space."""
        head = self.resolve(label_space)
        return self._logits(image, [head])[head]

    def predict(self, image: Any, label_space: str | None = None) -> np.ndarray:
        """HxW uint8 class ids of ``image`` (array HxWx3 uint8, PIL image or path) in ``label_space``."""
        return self.logits(image, label_space).argmax(0).to(torch.uint8).cpu().numpy()

    def predict_all(self, image: Any) -> dict[str, np.ndarray]:
        """Class ids in every label space of the model; the heads share each encoder pass (one pass
        per head under per-domain BatchNorm)."""
        out = self._logits(image, list(self.label_spaces))
        return {h: t.argmax(0).to(torch.uint8).cpu().numpy() for h, t in out.items()}


def as_array(image: Any) -> np.ndarray:
    """HxWx3 uint8 RGB array from an array, a PIL image or a path."""
    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        return image_to_rgb(image)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"expected an HxWx3 RGB image, got an array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise DataError(f"expected uint8 pixel values 0..255, got dtype {arr.dtype}")
    return arr
