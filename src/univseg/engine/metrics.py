"""Dataset-level confusion matrix and the segmentation metrics derived from it."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..data.label_space import IGNORE_INDEX


class ConfusionMatrix:
    """Rows = ground-truth class, columns = predicted class, accumulated over a whole dataset.

    An extra last column counts pixels whose prediction has no counterpart in this label space
    (a model scored through a class mapping that sends some of its classes nowhere): they are
    errors for the ground-truth class but a false positive for none.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one batch; ``pred`` may hold -1 for 'no counterpart'; ignore pixels of ``target`` are skipped."""
        pred = torch.as_tensor(pred).reshape(-1).long().cpu()
        target = torch.as_tensor(target).reshape(-1).long().cpu()
        if pred.shape != target.shape:
            raise ValueError(f"prediction has {pred.numel()} pixels but target has {target.numel()}")
        keep = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        pred, target = pred[keep], target[keep]
        pred = torch.where((pred < 0) | (pred >= self.num_classes), torch.full_like(pred, self.num_classes), pred)
        k = self.num_classes + 1
        self.mat += torch.bincount(target * k + pred, minlength=self.num_classes * k).view(self.num_classes, k)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.mat += other.mat

    @property
    def square(self) -> torch.Tensor:
        """The K x K matrix without the no-counterpart column."""
        return self.mat[:, : self.num_classes]

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (GT + Pred - TP); NaN for classes absent from both prediction and ground truth."""
        tp = self.square.diag().double()
        gt = self.mat.sum(1).double()
        pr = self.square.sum(0).double()
        union = gt + pr - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan"))).numpy()

    def miou(self) -> float:
        """Mean IoU over classes present in prediction or ground truth (NaN when none is)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = int(self.mat.sum())
        return float(self.square.diag().sum()) / total if total else float("nan")

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall (NaN for classes absent from the ground truth)."""
        gt = self.mat.sum(1).double()
        return torch.where(gt > 0, self.square.diag().double() / gt.clamp(min=1), torch.full_like(gt, float("nan"))).numpy()

    def summary(self, class_names: Sequence[str]) -> dict[str, Any]:
        """Plain-data summary: mIoU, pixel accuracy, mean class accuracy and per-class IoU (in [0, 1])."""
        iou, acc = self.iou(), self.class_accuracy()
        return {
            "mIoU": _clean(self.miou()),
            "pixel_acc": _clean(self.pixel_accuracy()),
            "mean_class_acc": _clean(float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")),
            "per_class_iou": {n: _clean(float(v)) for n, v in zip(class_names, iou)},
            "pixels": int(self.mat.sum()),
        }


def _clean(v: float) -> float | None:
    """JSON-safe float: NaN becomes None."""
    return None if v != v else v
