"""What makes and scores pseudo-labels of the weak-to-strong methods: an exponential-moving-average
teacher and the per-class precision / recall / coverage diagnostics of the confident pseudo-labels.

Diagnostics travel as per-step pixel counts in the loss terms (``pl_kept_<d>_<class>``: confident
pseudo-labels of the class on labeled-on-disk pixels, ``pl_hits_...``: of those, correct,
``pl_covered_...``: pixels of the class that got a confident pseudo-label, ``pl_true_...``: pixels
of the class); :func:`diagnostic_record` turns an interval's mean counts into ratios, so a logged
precision is the ratio of the interval's sums, not a mean of per-step ratios.
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from ..data.label_space import LabelSpace
from ..utils import dist

COUNTS = ("kept", "hits", "covered", "true")


def pseudo_label_counts(
    pseudo: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int
) -> dict[str, torch.Tensor]:
    """Per-class pixel counts [K] of pseudo-labels ``pseudo`` [B,H,W] kept where ``keep`` against ``label``,
    over the ``valid`` pixels whose label is known (not ``ignore_index``): kept (confident, by pseudo-label
    class), hits (kept and correct), covered (confident, by true class) and true (by true class)."""
    known = valid & (label != ignore_index)
    kept = keep & known

    def count(values: torch.Tensor) -> torch.Tensor:
        return torch.bincount(values.flatten(), minlength=num_classes)[:num_classes].float()

    return {
        "kept": count(pseudo[kept]),
        "hits": count(pseudo[kept & (pseudo == label)]),
        "covered": count(label[kept]),
        "true": count(label[known]),
    }


def count_terms(domain: str, space: LabelSpace, counts: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The loss terms ``pl_<count>_<domain>_<class>`` of one domain's :func:`pseudo_label_counts`."""
    return {f"pl_{kind}_{domain}_{name}": counts[kind][c] for kind in COUNTS for c, name in enumerate(space.names)}


def diagnostic_record(means: Mapping[str, float], spaces: Mapping[str, LabelSpace]) -> dict[str, float | None]:
    """``means`` with the count terms replaced by ``pl_precision_<d>_<class>`` = hits / kept (the
    confident pseudo-labels of the class that are right), ``pl_recall_<d>_<class>`` = hits / true (the
    class's pixels that get a right confident pseudo-label) and ``pl_coverage_<d>_<class>`` = covered /
    true (the class's pixels that get any confident pseudo-label), and by the same over all classes
    as ``pl_precision_<d>`` / ``pl_recall_<d>`` / ``pl_coverage_<d>``; None where the denominator is 0."""
    out = {k: v for k, v in means.items() if not any(k.startswith(f"pl_{kind}_") for kind in COUNTS)}

    def ratio(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    for d, space in spaces.items():
        if f"pl_true_{d}_{space.names[0]}" not in means:
            continue
        total = {kind: 0.0 for kind in COUNTS}
        for name in space.names:
            value = {kind: means[f"pl_{kind}_{d}_{name}"] for kind in COUNTS}
            out[f"pl_precision_{d}_{name}"] = ratio(value["hits"], value["kept"])
            out[f"pl_recall_{d}_{name}"] = ratio(value["hits"], value["true"])
            out[f"pl_coverage_{d}_{name}"] = ratio(value["covered"], value["true"])
            for kind in COUNTS:
                total[kind] += value[kind]
        out[f"pl_precision_{d}"] = ratio(total["hits"], total["kept"])
        out[f"pl_recall_{d}"] = ratio(total["hits"], total["true"])
        out[f"pl_coverage_{d}"] = ratio(total["covered"], total["true"])
    return out


def loss_ratio(means: Mapping[str, float], unlabeled_term: str, weight: float = 1.0) -> dict[str, float]:
    """``{"unsup_to_sup": weight * unlabeled_term / sup}`` from an interval's mean terms ({} when either
    is missing or sup is 0)."""
    if means.get("sup", 0.0) > 0 and unlabeled_term in means:
        return {"unsup_to_sup": weight * means[unlabeled_term] / means["sup"]}
    return {}


class EmaTeacher(nn.Module):
    """A frozen eval-mode copy of the student whose weights and floating-point buffers follow it as an
    exponential moving average (Mean Teacher; UniMatch V2): before step t,
    teacher <- r * teacher + (1 - r) * student with r = min(1 - 1/(t + 1), momentum), so at t = 0 it
    is the student. Under torchrun the BatchNorm statistics (rank-local in the student) are averaged
    over ranks, so every rank holds the same teacher."""

    def __init__(self, student: nn.Module, momentum: float) -> None:
        super().__init__()
        self.model = copy.deepcopy(student).requires_grad_(False).eval()
        if hasattr(self.model, "use_compile"):
            self.model.use_compile(False)
        self.momentum = momentum

    def rate(self, iteration: int) -> float:
        """The teacher's share of its own weights at ``iteration``."""
        return min(1.0 - 1.0 / (iteration + 1), self.momentum)

    @torch.no_grad()
    def update(self, student: nn.Module, iteration: int) -> None:
        """Move the teacher toward ``student`` by the rate of ``iteration``."""
        r = self.rate(iteration)
        for t, s in zip(self.model.parameters(), student.parameters()):
            t.mul_(r).add_(s.detach(), alpha=1 - r)
        for t, s in zip(self.model.buffers(), student.buffers()):
            if t.is_floating_point():
                t.mul_(r).add_(s, alpha=1 - r)
                if dist.world_size() > 1:
                    dist.all_reduce_sum(t).div_(dist.world_size())
            else:
                t.copy_(s)

    def train(self, mode: bool = True) -> "EmaTeacher":
        """Stays in eval mode: the teacher predicts with its running BatchNorm statistics."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, images: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each domain's logits of its own head on ``images`` ({domain: [B,3,H,W]})."""
        outputs = self.model(dict(images))
        return {d: out[d].detach() for d, out in outputs.items()}
