"""Trainer hooks: callbacks at fixed points of the training loop."""
from __future__ import annotations

from typing import Any, Mapping


class TrainerHook:
    """Called by the trainer at fixed points of its loop; override what you need (all no-ops here).

    Hooks observe (logging, profiling, stopping a run in a test); they must not change what a
    run computes. ``trainer`` is the calling :class:`~univseg.engine.trainer.Trainer` (typed Any:
    this module must not import the trainer, which imports it).
    """

    def before_step(self, trainer: Any, iteration: int) -> None:
        """Before the optimisation step of ``iteration`` (0-based)."""

    def after_step(self, trainer: Any, iteration: int, terms: Mapping[str, float]) -> None:
        """After the step of ``iteration``, with its loss terms and learning rate."""

    def after_eval(self, trainer: Any, iteration: int, results: Mapping[str, Any]) -> None:
        """After an evaluation of the model trained for ``iteration`` iterations."""

    def after_run(self, trainer: Any) -> None:
        """When ``run`` ends, normally or by an exception (a stop, a divergence, an error): release what the hook holds."""
