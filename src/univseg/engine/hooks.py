"""Trainer hooks: callbacks at fixed points of the training loop."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .trainer import Trainer


class TrainerHook:
    """Called by the trainer at fixed points of its loop; override what you need (all no-ops here).

    Hooks observe (logging, profiling, stopping a run in a test); they must not change what a
    run computes.
    """

    def before_step(self, trainer: "Trainer", iteration: int) -> None:
        """Before the optimisation step of ``iteration`` (0-based)."""

    def after_step(self, trainer: "Trainer", iteration: int, terms: Mapping[str, float]) -> None:
        """After the step of ``iteration``, with its loss terms and learning rate."""

    def after_eval(self, trainer: "Trainer", iteration: int, results: Mapping[str, Any]) -> None:
        """After an evaluation of the model trained for ``iteration`` iterations."""

    def after_run(self, trainer: "Trainer") -> None:
        """When ``run`` ends, normally or by an exception (a stop, a divergence, an error): release what the hook holds."""
