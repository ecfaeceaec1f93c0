"""TensorBoard scalars of a training run, written by a trainer hook into ``<work_dir>/tensorboard/``.

``train.tensorboard`` (auto | true | false) decides whether the trainer adds the hook: auto when
the ``tensorboard`` package is installed (``pip install "univseg[tensorboard]"``). Tags, by the
number of iterations done (the ``iter`` of metrics.jsonl):

* ``train/<term>``: every loss term of each step and the learning rate ``train/lr`` (per step;
  metrics.jsonl holds their means over ``train.log_interval`` steps, the same values when it is 1);
* ``eval/mIoU/<domain>`` and ``eval/mean_mIoU``: each evaluation's mIoU per domain and their mean.

Only rank 0 writes. A resumed run drops the events after its checkpoint's iteration (as
metrics.jsonl does), so its curves hold each iteration once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

from ..errors import ConfigError
from ..utils import dist
from .hooks import TrainerHook

TENSORBOARD_HINT = 'pip install "univseg[tensorboard]"'


def tensorboard_installed() -> bool:
    """Whether ``import tensorboard`` succeeds."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def tensorboard_hooks(setting: Literal["auto", True, False], work_dir: str | Path) -> list[TrainerHook]:
    """The hooks ``train.tensorboard`` = ``setting`` asks for: a :class:`TensorBoardHook` writing to
    ``<work_dir>/tensorboard`` (auto: only when tensorboard is installed), or none.

    Raises ConfigError when ``setting`` is true and tensorboard is not installed.
    """
    if setting is False:
        return []
    if not tensorboard_installed():
        if setting is True:
            raise ConfigError(
                f"train.tensorboard: true needs the 'tensorboard' package, which is not installed: {TENSORBOARD_HINT}, "
                "or set train.tensorboard: auto",
                key="train.tensorboard", hint=TENSORBOARD_HINT,
            )
        return []
    return [TensorBoardHook(Path(work_dir) / "tensorboard")]


class TensorBoardHook(TrainerHook):
    """Writes the loss terms, learning rate and evaluations of a run to ``log_dir`` (rank 0 only)."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def _writer(self, trainer: Any) -> Any:
        """The SummaryWriter, opened at the first event; events after the resumed iteration are purged."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            purge = trainer.start_iter + 1 if trainer.start_iter else None
            self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)
        return self.writer

    def after_step(self, trainer: Any, iteration: int, terms: Mapping[str, float]) -> None:
        """``train/<term>`` of the step, at iteration + 1 (iterations done)."""
        if dist.is_main():
            writer = self._writer(trainer)
            for key, value in terms.items():
                writer.add_scalar(f"train/{key}", value, iteration + 1)

    def after_eval(self, trainer: Any, iteration: int, results: Mapping[str, Any]) -> None:
        """``eval/mIoU/<domain>`` and ``eval/mean_mIoU`` (domains without a score are left out)."""
        if not dist.is_main():
            return
        writer = self._writer(trainer)
        for name, domain in results["domains"].items():
            if domain.get("mIoU") is not None:
                writer.add_scalar(f"eval/mIoU/{name}", domain["mIoU"], iteration)
        if results["mean_mIoU"] is not None:
            writer.add_scalar("eval/mean_mIoU", results["mean_mIoU"], iteration)

    def after_run(self, trainer: Any) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
