"""The iteration-based training loop: one entry point for 1 CPU, 1 GPU and N GPUs (torchrun)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NoReturn, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..config import Config, save_config
from ..data.domain import Domain, build_domains, eval_loader
from ..data.label_space import LabelSpace
from ..data.mapping import ClassMapping
from ..data.sampler import infinite_loader
from ..errors import (
    CheckpointError, ConfigError, DataError, StopRequested, TrainingDivergedError, TrainingStopped, UnivsegError,
    WorkDirError,
)
from ..losses import class_sums
from ..losses.centroids import all_reduce_sums
from ..methods import Method, RunContext, build_method
from ..models.universal import UniversalModel, build_model
from ..utils import dist
from ..utils.allocator import return_freed_memory
from ..utils.files import atomic_write_json, remove_stale_temporaries, strict_json
from ..utils.log import interval_line, peak_memory_gib
from .checkpoint import Checkpoint, init_from_checkpoint
from .evaluator import choose_head, evaluate, results_table, size_groups
from .hooks import TrainerHook
from .precision import autocast, resolve_amp, resolve_channels_last
from .predictor import Predictor
from .resume_check import resume_changes
from .tensorboard_hook import tensorboard_hooks
from .workdir import WorkDirLock, prepare_work_dir


def _same_size_batch(batch: dict[str, Any], domain: str, kind: str) -> dict[str, Any]:
    """``batch`` itself when its images were stacked; a DataError naming the domain's transforms otherwise."""
    if isinstance(batch["image"], list):
        raise DataError(
            f"domain '{domain}': {kind} images of one batch differ in size; add a random_crop or resize to its train_transforms",
            key=f"domains.{domain}.train_transforms",
        )
    return batch


class StopRequest:
    """SIGTERM / SIGINT while training: the first asks the loop to stop after the current step (or
    batch of an evaluation or centroid pass) and says so; a second one acts at once (the handlers in
    force before are restored after the first)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if dist.is_main():  # os.write: a print here could re-enter a print (a progress bar) it interrupted
            os.write(2, f"\n{signal.Signals(signum).name}: stopping after the current step or batch to write "
                     "latest.pt; send it again to stop at once\n".encode())
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def agreed(self, device: torch.device) -> int | None:
        """The signal any rank received (every rank gets the same answer), or None."""
        if dist.world_size() == 1:
            return self.signum
        flag = torch.tensor([float(self.signum or 0)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None

MODEL_OPTIMIZER = "model"
log = logging.getLogger(__name__)


def poly_lr(cfg, iteration: int, total: int, base: float | None = None) -> float:
    """Learning rate at ``iteration``: poly decay to ``min_lr`` with an optional linear warm-up.

    ``base`` (default: ``cfg.optimizer.lr``) schedules another optimizer on the same curve, its
    floor scaled by ``base / cfg.optimizer.lr``.
    """
    sched = cfg.schedule
    floor = sched.min_lr if base is None else sched.min_lr * base / cfg.optimizer.lr
    base = cfg.optimizer.lr if base is None else base
    lr = (base - floor) * (1 - min(iteration, total) / total) ** sched.power + floor
    if iteration < sched.warmup_iters:
        alpha = iteration / sched.warmup_iters
        lr *= sched.warmup_ratio + (1 - sched.warmup_ratio) * alpha
    return lr


def model_param_groups(model: UniversalModel, encoder_lr_factor: float) -> list[dict[str, Any]]:
    """The model's parameters as optimizer groups: one group, or with ``encoder_lr_factor`` != 1 the
    encoder's (``lr_factor`` = that share of the scheduled rate) and the rest's."""
    if encoder_lr_factor == 1.0:
        return [{"params": list(model.parameters())}]
    encoder = {id(p) for p in model.encoder.parameters()}
    return [
        {"params": list(model.encoder.parameters()), "lr_factor": encoder_lr_factor},
        {"params": [p for p in model.parameters() if id(p) not in encoder]},
    ]


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW from an OptimizerConfig; ``params`` may be groups with an
    ``lr_factor`` (their share of the scheduled learning rate)."""
    if cfg.type == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


class Trainer:
    """Trains the method of a Config and keeps checkpoints, metrics and evaluations in ``work_dir``.

    run(): for t in [start, iters): hooks.before_step -> step(t) -> hooks.after_step -> log every
    log_interval -> evaluate every eval_interval (hooks.after_eval; best.pt on a new best mean
    mIoU) -> latest.pt every checkpoint_interval; then a final evaluation, latest.pt,
    eval_results.json and a summary table; last (also after an exception) hooks.after_run.
    step(t): learning rates of every optimizer -> method.before_step(t) -> method.losses ->
    backward -> model step (both skipped for a loss without a graph, e.g. a method's stage that
    trains only its auxiliary networks) -> the method's auxiliary losses (under the model's autocast
    when it is bf16; fp32 otherwise, as fp16 would need a gradient scaler per optimizer) -> for each:
    backward -> its optimizer's step. The method is attached to the run (work dir, budget, class mappings, the
    model of model.init_from) once before training.
    """

    def __init__(
        self,
        cfg: Config,
        work_dir: str | Path,
        resume: bool = False,
        progress: bool = True,
        hooks: Iterable[TrainerHook] = (),
        overwrite: bool = False,
        allow_changes: Sequence[str] = (),
    ) -> None:
        if allow_changes and not resume:
            raise ConfigError("--allow-changes applies to --resume: it names the settings a resumed run may change",
                              key="--allow-changes")
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.lock = WorkDirLock(self.work_dir)
        self.progress = progress

        self.hooks = [*hooks, *tensorboard_hooks(cfg.train.tensorboard, self.work_dir)]
        self.device = dist.resolve_device(cfg.train.device)
        if cfg.train.return_freed_memory and not return_freed_memory():
            log.warning("train.return_freed_memory: the C library here is not glibc; its allocator is left as it is")
        self.amp = resolve_amp(cfg.train.amp, self.device)
        self.eval_amp = resolve_amp(cfg.inference_amp, self.device)
        for key, amp in (("train.amp", self.amp), ("eval.amp", self.eval_amp)):
            if amp == "fp16" and self.device.type != "cuda":
                raise ConfigError(f"{key}=fp16 needs a CUDA device; on CPU use {key}=bf16 or auto")
        dist.init_distributed(self.device)
        self._claim_work_dir(resume, overwrite)
        torch.manual_seed(cfg.seed)
        self.domains: dict[str, Domain] = {d.name: d for d in build_domains(cfg)}
        self.trained = cfg.trained_domains
        self.heads = {name: self.domains[name].label_space for name in self.trained}
        self.model: UniversalModel = build_model(cfg.model, {k: ls.num_classes for k, ls in self.heads.items()}).to(self.device)
        if cfg.model.init_from is not None:
            init_from_checkpoint(self.model, cfg.model.init_from, self.heads, cfg.model.init_norm_from)
        self.model.encoder.activation_checkpointing = cfg.train.activation_checkpointing
        self.channels_last = resolve_channels_last(cfg.train.channels_last, self.device, self.amp, self.model.encoder.depthwise)
        self.model.use_channels_last(self.channels_last)
        self.model.use_compile(cfg.train.compile, cfg.train.activation_memory_budget)
        if cfg.train.sync_bn and dist.world_size() > 1:
            if self.device.type != "cuda":
                raise ConfigError(
                    "train.sync_bn: torch's SyncBatchNorm runs on CUDA devices only; turn it off on CPU", key="train.sync_bn"
                )
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.method: Method = build_method(cfg.method, self.heads, cfg.model.embed_dim).to(self.device)
        self.method.attach(RunContext(self.work_dir, cfg.train.iters, self._class_mapping, self._init_model, self.model))
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            MODEL_OPTIMIZER: build_optimizer(cfg.train.optimizer, model_param_groups(self.model, cfg.train.optimizer.encoder_lr_factor))
        }
        self.base_lrs: dict[str, float | None] = {MODEL_OPTIMIZER: None}  # None: the model's own lr
        for name, aux in self.method.auxiliary_optimizers().items():
            if name == MODEL_OPTIMIZER:
                raise ValueError(f"method '{cfg.method.name}': '{MODEL_OPTIMIZER}' names the model's optimizer; rename its own")
            self.optimizers[name] = aux.build(aux.params)
            self.base_lrs[name] = aux.lr
        split = {"train.accumulate": (cfg.train.accumulate > 1, "1"), "train.backward": (cfg.train.backward != "step", "step")}
        for key, (active, plain) in split.items():
            if active and len(self.optimizers) > 1:
                raise ConfigError(
                    f"{key}: method '{cfg.method.name}' trains auxiliary networks ({', '.join(n for n in self.optimizers if n != MODEL_OPTIMIZER)}) "
                    f"from the last batch of a step; use {key}: {plain} with it",
                    key=key,
                )
        if cfg.train.backward == "pass" and cfg.method.unlabeled_forward == "separate" and not self.method.splits_by_pass:
            raise ConfigError(
                f"train.backward: pass with method.unlabeled_forward: separate runs each domain's labeled and unlabeled "
                f"images as two passes, but method '{cfg.method.name}' needs them in one call; use train.backward: domain, "
                "or method.unlabeled_forward: together",
                key="train.backward",
            )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.start_iter = 0
        self.best: dict[str, Any] = {"mean_mIoU": None, "iteration": None}
        self.config_changes: list[str] = []  # the settings changed on purpose (--allow-changes) when resuming
        self.saved_iteration: int | None = None  # the iteration latest.pt holds, once this run wrote it
        self.stop_request: StopRequest | None = None
        if resume:
            self._resume(allow_changes)
        self.net: torch.nn.Module = self.model
        if dist.world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

    def _class_mapping(self, src: str, dst: str) -> ClassMapping | None:
        """The class mapping evaluation would score domain ``src``'s label space on domain ``dst`` with
        (identity for equal label spaces), None when there is none."""
        src_space, dst_space = self.domains[src].label_space, self.domains[dst].label_space
        choice = choose_head({src: src_space}, dst, dst_space, self.cfg.eval.mappings)
        if choice is None:
            return None
        return choice.mapping or ClassMapping.builtin(src_space, dst_space)

    def _init_model(self) -> tuple[torch.nn.Module, Mapping[str, LabelSpace]]:
        """The model of ``model.init_from``, frozen in eval mode on this run's device, and its label spaces."""
        path = self.cfg.model.init_from
        if path is None:
            raise ConfigError(
                f"method '{self.cfg.method.name}' needs model.init_from: the checkpoint of the model it starts from",
                key="model.init_from",
            )
        predictor = Predictor.from_checkpoint(path, device=str(self.device), amp="none")
        return predictor.model.requires_grad_(False), predictor.label_spaces

    # ------------------------------------------------------------------ files
    def _claim_work_dir(self, resume: bool, overwrite: bool) -> None:
        """Refuse a folder holding another run (unless resuming / overwriting) or in use; all ranks agree."""
        problem = None
        if dist.is_main():
            try:
                moved = prepare_work_dir(self.work_dir, resume, overwrite)
                self.lock.check_free()
                if moved is not None:
                    log.info(f"--overwrite: the earlier run in {self.work_dir} was moved to {moved}")
            except UnivsegError as e:
                problem = e
        message = dist.broadcast_object(None if problem is None else str(problem))
        if problem is not None:
            raise problem
        if message is not None:
            raise WorkDirError(message, path=self.work_dir)

    @property
    def latest_path(self) -> Path:
        return self.work_dir / "latest.pt"

    @property
    def best_path(self) -> Path:
        return self.work_dir / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.work_dir / "metrics.jsonl"

    def _log(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` to metrics.jsonl as strict JSON (a non-finite number becomes null)."""
        if dist.is_main():
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(strict_json(record), allow_nan=False) + "\n")

    def checkpoint(self, iteration: int) -> Checkpoint:
        """The record of this run after ``iteration`` iterations."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return Checkpoint(
            config=self.cfg.to_dict(),
            label_spaces=dict(self.heads),
            model=self.model.state_dict(),
            method=self.method.state_dict(),
            optimizers={name: opt.state_dict() for name, opt in self.optimizers.items()},
            scaler=self.scaler.state_dict(),
            iteration=iteration,
            best=dict(self.best),
            rng=rng,
            data={"seed": self.cfg.seed, "world_size": dist.world_size()},
        )

    def _save(self, path: Path, iteration: int) -> None:
        """Write the checkpoint of ``iteration`` to ``path``; ``latest.pt`` keeps ``train.keep_checkpoints``
        versions in all (the previous ones as ``latest.pt.1``, ...). Weights that are not finite are
        never saved: TrainingDivergedError instead, the files on disk left as they are."""
        self._check_finite_weights(path, iteration)
        if dist.is_main():
            keep = self.cfg.train.keep_checkpoints if path == self.latest_path else None
            self.checkpoint(iteration).save(path, keep=keep)
        dist.barrier()
        if path == self.latest_path:
            self.saved_iteration = iteration

    def _check_finite_weights(self, path: Path, iteration: int) -> None:
        """TrainingDivergedError naming ``path`` when a weight or buffer of the model is NaN or infinite."""
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            last = "no checkpoint of this run was replaced" if self.saved_iteration is None \
                else f"{self.latest_path} (iteration {self.saved_iteration}) is the last good checkpoint"
            raise TrainingDivergedError(
                f"after iteration {iteration} the model's weights are not finite ({', '.join(bad[:3])}"
                f"{' ...' if len(bad) > 3 else ''}), so they were not saved as {path}; {last}. Lower "
                "train.optimizer.lr or set train.grad_clip, then continue with --resume --allow-changes "
                "train.optimizer.lr (or train.grad_clip), or start over with --overwrite",
                path=path, key="train.optimizer.lr", values={"iteration": iteration, "weights": bad},
            )

    def _resume_checkpoint(self) -> tuple[Checkpoint, Path]:
        """The checkpoint to continue from: latest.pt or its newest readable kept version; best.pt, with a
        note, when the run left none of these (stopped before its first checkpoint, or its write failed)."""
        if self.latest_path.is_file() or Checkpoint.kept_versions(self.latest_path):
            return Checkpoint.load_newest(self.latest_path, self.device, warn=dist.is_main())
        if self.best_path.is_file():
            ckpt = Checkpoint.load(self.best_path, self.device)
            if dist.is_main():
                print(f"note: {self.work_dir} has no latest.pt (the run stopped before writing it, or the write failed); "
                      f"continuing from {self.best_path} (iteration {ckpt.iteration}), which holds the same state")
            return ckpt, self.best_path
        raise CheckpointError(
            f"--resume: no checkpoint at {self.latest_path} (nor best.pt); start without --resume (the run had not "
            "written a checkpoint yet) or point --work-dir at the run",
            path=self.latest_path,
        )

    def _resume(self, allow_changes: Sequence[str]) -> None:
        """Continue from the work dir's checkpoint, once its config and state fit this run (nothing is written)."""
        ckpt, source = self._resume_checkpoint()
        ckpt.check_compatible(self.cfg.model.model_dump(mode="json"), self.heads, source)
        missing = sorted(set(self.optimizers) - set(ckpt.optimizers))
        if missing:
            raise CheckpointError(
                f"{source} has no state for the optimizer(s) {missing} of method '{self.cfg.method.name}'; "
                "it was written by another method: resume with the method that wrote it or start a new work dir",
                path=source,
            )
        self.config_changes, unused = resume_changes(ckpt.config, self.cfg, allow_changes, source, ckpt.iteration)
        if unused and dist.is_main():
            print(f"note: --allow-changes {' '.join(unused)}: not changed since {source}")
        ckpt.load_weights(self.model, source)
        try:
            self.method.load_state_dict(ckpt.method)
        except RuntimeError as e:
            raise CheckpointError(
                f"{source}: the method state does not fit method '{self.cfg.method.name}': {e}",
                path=source,
            ) from None
        for name, opt in self.optimizers.items():
            opt.load_state_dict(ckpt.optimizers[name])
        if ckpt.scaler:
            self.scaler.load_state_dict(ckpt.scaler)
        self.start_iter = ckpt.iteration
        self.best = dict(ckpt.best)
        torch.set_rng_state(ckpt.rng["torch"].cpu())
        if "cuda" in ckpt.rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt.rng["cuda"].cpu(), self.device)
        saved_world = ckpt.data.get("world_size", dist.world_size())
        if saved_world != dist.world_size() and dist.is_main():
            log.warning(
                f"{source} was written by {saved_world} process(es), this run has "
                f"{dist.world_size()}: the data order from here on differs from an uninterrupted run"
            )
        self.resumed_from = source

    def _truncate_metrics(self, iteration: int) -> None:
        """Drop metric records written after the checkpoint we resume from (they will be redone)."""
        if not dist.is_main() or not self.metrics_path.is_file():
            return
        kept = [ln for ln in self.metrics_path.read_text().splitlines() if ln and json.loads(ln).get("iter", 0) <= iteration]
        self.metrics_path.write_text("".join(ln + "\n" for ln in kept))

    # ------------------------------------------------------------------ data
    def _loaders(self, micro: int = 0) -> dict[str, dict[str, Iterator[dict]]]:
        """Loaders of the method's data domains for micro-batch ``micro`` of every step on this rank. With
        ``train.accumulate = k`` micro-batch m of rank r is the share of virtual rank r * k + m of
        k * world_size, so the images of a step do not depend on how they are split into
        processes and micro-batches."""
        t = self.cfg.train
        loaders: dict[str, dict[str, Iterator[dict]]] = {}
        order = [d.name for d in self.cfg.domains]
        k = t.accumulate
        for name in self.method.data_domains():
            d = self.domains[name]
            stream = 2 * order.index(name)
            args = dict(
                seed=self.cfg.seed, start_iter=self.start_iter, num_workers=t.num_workers,
                rank=dist.rank() * k + micro, world_size=dist.world_size() * k,
            )
            loaders[name] = {"labeled": infinite_loader(d.labeled, d.batch_size, stream=stream, **args)}
            m = self.method
            unlabeled = d.unlabeled_view(m.strong_views, m.geometric_weak, m.unlabeled_labels) if m.needs_unlabeled else None
            if unlabeled is not None and d.unlabeled_batch_size > 0:
                loaders[name]["unlabeled"] = infinite_loader(unlabeled, d.unlabeled_batch_size, stream=stream + 1, **args)
        return loaders

    def _next_batches(self, loaders: Mapping[str, Mapping[str, Iterator[dict]]]) -> dict[str, dict[str, torch.Tensor]]:
        batches = {}
        for name, its in loaders.items():
            lab = _same_size_batch(next(its["labeled"]), name, "labeled")
            b = {"image": lab["image"].to(self.device, non_blocking=True), "label": lab["label"].to(self.device, non_blocking=True)}
            if "unlabeled" in its:
                unl = _same_size_batch(next(its["unlabeled"]), name, "unlabeled")
                pairs = (("image", "unlabeled"), ("valid", "unlabeled_valid"), ("strong", "strong"), ("cutmix", "cutmix"),
                         ("label", "unlabeled_label"))
                for key, into in pairs:
                    if key in unl:
                        b[into] = unl[key].to(self.device, non_blocking=True)
            batches[name] = b
        return batches

    def centroid_sums(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-class embedding sums and counts over each trained domain's labeled set (eval mode).

        Each rank embeds its share of the images (under ``torch.inference_mode``, equal-size images
        in one forward pass); the sums are those of the embedding bilinearly upsampled to the label
        size, computed from the feature-resolution embedding (``class_sums``: no [B, D, H, W] tensor
        at input resolution). The sums and counts are then added over ranks. A stop signal ends the
        pass between batches (StopRequested).
        """

        was_training = self.model.training
        self.model.eval()
        out = {}
        try:
            with torch.inference_mode():
                for name in self.trained:
                    d = self.domains[name]
                    k = d.label_space.num_classes
                    sums = torch.zeros(k, self.cfg.model.embed_dim, device=self.device)
                    counts = torch.zeros(k, device=self.device)
                    shard = range(dist.rank(), len(d.centroid_view), dist.world_size())
                    for batch in eval_loader(d.centroid_view, self.cfg.eval.batch_size, indices=shard):
                        if self._stop_requested():
                            raise StopRequested
                        for img, lab in size_groups(batch):
                            img, lab = img.to(self.device), lab.to(self.device)
                            with autocast(self.device, self.eval_amp):
                                emb = self.model(img, heads=[], embed=True, domain=name)["embedding"]
                            s, c = class_sums(emb, lab, k, d.label_space.ignore_index)
                            sums += s
                            counts += c
                    out[name] = all_reduce_sums(sums, counts)
        finally:
            self.model.train(was_training)
        return {name: (s.clone(), c.clone()) for name, (s, c) in out.items()}  # normal tensors, not inference ones

    # ------------------------------------------------------------------ loop
    def step(
        self, iteration: int, batches: Mapping[str, Mapping[str, torch.Tensor]] | Sequence[Mapping[str, Mapping[str, torch.Tensor]]]
    ) -> dict[str, float]:
        """One optimisation step of the model and of the method's auxiliary networks over one batch
        or a list of micro-batches (gradients accumulated, each loss weighted 1/k; with
        ``train.backward: domain`` one backward per domain of each); returns the loss
        terms as floats (means over micro-batches) and the model's learning rate. A non-finite loss
        term on any rank skips the step: no update, the method's buffers restored, ``skipped`` set."""
        micro = [batches] if isinstance(batches, Mapping) else list(batches)
        passes = [part for mb in micro for part in self._backward_parts(mb)]
        lrs = self._set_learning_rates(iteration)
        self.method.before_step(iteration, self.centroid_sums)
        buffers = [(b, b.clone()) for module in (self.model, self.method) for b in module.buffers()]
        model_opt = self.optimizers[MODEL_OPTIMIZER]
        model_opt.zero_grad(set_to_none=True)
        means: dict[str, float] = {}
        stepped = False  # a loss without a graph (a constant) leaves the model alone: no backward, no step
        synced = False  # DistributedDataParallel averaged the gradients (in the last pass's backward)
        for m, part in enumerate(passes):
            last = m == len(passes) - 1
            with contextlib.nullcontext() if last or self.net is self.model else self.net.no_sync():
                with autocast(self.device, self.amp):
                    terms = self.method.losses(self.net, part)
                nonfinite = self._nonfinite_terms(terms)
                if nonfinite:
                    model_opt.zero_grad(set_to_none=True)
                    with torch.no_grad():  # undo what the step's passes updated (BatchNorm statistics, centroid EMA)
                        for b, saved in buffers:
                            b.copy_(saved)
                    return {"skipped": 1.0, **{f"nonfinite_{k}": 1.0 for k in nonfinite}, "lr": lrs[MODEL_OPTIMIZER]}
                if terms["loss"].requires_grad:
                    self.scaler.scale(terms["loss"] / len(micro)).backward()
                    stepped, synced = True, last
            for key, value in terms.items():
                means[key] = means.get(key, 0.0) + float(value.detach()) / len(micro)
        if stepped and not synced and self.net is not self.model:  # the last pass had nothing to learn from
            self._average_gradients(self.model.parameters())
        if stepped:
            if self.cfg.train.grad_clip is not None:
                self.scaler.unscale_(model_opt)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.scaler.step(model_opt)
            self.scaler.update()
        with autocast(self.device, self.amp if self.amp == "bf16" else "none"):  # fp16 would need a scaler of its own
            auxiliary = self.method.auxiliary_losses(iteration)
        for name, aux_terms in auxiliary.items():
            self._step_auxiliary(name, aux_terms["loss"])
            means.update({k: float(v.detach()) for k, v in aux_terms.items() if k != "loss"})
        return means | {"lr": lrs[MODEL_OPTIMIZER]}

    def _backward_parts(self, batches: Mapping[str, Mapping[str, torch.Tensor]]) -> list[Mapping[str, Mapping[str, torch.Tensor]]]:
        """The batches of one backward each: all domains together (``train.backward: step``), one
        domain at a time (``domain``: a domain's graph is freed before the next domain's forward;
        the methods' losses are sums over domains, so the gradients add up to the same step), or
        one encoder pass at a time (``pass``: the domains the model runs through one encoder pass
        together; with ``method.unlabeled_forward: separate`` first every labeled pass, then every
        unlabeled one, so ema centroids are updated from all labeled images before any entropy)."""
        mode = self.cfg.train.backward
        if mode == "domain":
            return [{name: b} for name, b in batches.items()]
        if mode == "step":
            return [batches]
        if self.cfg.method.unlabeled_forward == "together":
            kinds = [("image", None)]
        else:
            kinds = [("image", ("image", "label")), ("unlabeled", ("unlabeled",))]
        parts = []
        for key, keep in kinds:
            chosen = {d: b for d, b in batches.items() if key in b and b[key].shape[0] > 0}
            for names in self.model.encoder_passes({d: tuple(b[key].shape[1:]) for d, b in chosen.items()}):
                parts.append({d: chosen[d] if keep is None else {k: chosen[d][k] for k in keep if k in chosen[d]} for d in names})
        return parts

    def _set_learning_rates(self, iteration: int) -> dict[str, float]:
        """Put every optimizer on the schedule at ``iteration``; returns the rates by optimizer."""
        lrs = {}
        for name, opt in self.optimizers.items():
            lrs[name] = poly_lr(self.cfg.train, iteration, self.cfg.train.iters, self.base_lrs[name])
            for group in opt.param_groups:
                group["lr"] = lrs[name] * group.get("lr_factor", 1.0)
        return lrs

    def _nonfinite_terms(self, terms: Mapping[str, torch.Tensor]) -> list[str]:
        """Names of the loss terms that are NaN or infinite on any rank (every rank gets the same list)."""
        names = sorted(terms)
        bad = torch.stack([~torch.isfinite(terms[k].detach().float()) for k in names]).float()
        if dist.world_size() > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        return [k for k, flag in zip(names, bad.tolist()) if flag]

    @staticmethod
    def _average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks (every rank must hold the same set of them)."""
        for p in params:
            if p.grad is not None:
                dist.all_reduce_sum(p.grad).div_(dist.world_size())

    def _step_auxiliary(self, name: str, loss: torch.Tensor) -> None:
        """Minimise an auxiliary loss with its optimizer; gradients are averaged over ranks first."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if dist.world_size() > 1:
            self._average_gradients(p for group in opt.param_groups for p in group["params"])
        opt.step()

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the current model on every domain of the config; a stop signal ends it between
        batches (StopRequested)."""
        return evaluate(
            self.model, self.heads, list(self.domains.values()), self.cfg.eval, self.eval_amp, progress=self.progress,
            stop=self._stop_requested,
        )

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived during this run's long passes (evaluation, the centroid pass).
        Asked between their batches with one process only: under torchrun the ranks' passes have
        different batch counts and could not agree on every batch, so they stop after the pass."""
        return dist.world_size() == 1 and self.stop_request is not None and self.stop_request.signum is not None

    def _logged_eval(self, iteration: int) -> bool:
        """Whether metrics.jsonl holds the evaluation after ``iteration`` (every rank gets rank 0's answer)."""
        found = None
        if dist.is_main() and self.metrics_path.is_file():
            logged = [json.loads(ln) for ln in self.metrics_path.read_text().splitlines() if ln]
            found = any(r.get("iter") == iteration and "eval" in r for r in logged)
        return bool(dist.broadcast_object(found))

    def _after_eval(self, iteration: int, results: Mapping[str, Any]) -> None:
        for hook in self.hooks:
            hook.after_eval(self, iteration, results)
        per_domain = {k: v.get("mIoU") for k, v in results["domains"].items()}
        self._log({"iter": iteration, "eval": per_domain, "mean_mIoU": results["mean_mIoU"]})
        score = results["mean_mIoU"]
        if score is not None and (self.best["mean_mIoU"] is None or score > self.best["mean_mIoU"]):
            self.best = {"mean_mIoU": score, "iteration": iteration}
            self._save(self.best_path, iteration)

    def _skipped_step(self, done: int, terms: Mapping[str, float], bad_in_row: int) -> None:
        """Log a step skipped for a non-finite loss; stop the run after ``train.max_bad_steps`` in a row."""
        names = sorted(k[len("nonfinite_"):] for k in terms if k.startswith("nonfinite_"))
        self._log({"iter": done, "skipped_step": True, "nonfinite": names})
        if dist.is_main():
            log.warning(f"iteration {done}: non-finite loss term(s) {', '.join(names)}; step skipped ({bad_in_row} in a row)")
        if bad_in_row >= self.cfg.train.max_bad_steps:
            raise TrainingDivergedError(
                f"the loss was not finite for {bad_in_row} steps in a row (iterations {done - bad_in_row + 1}-{done}; "
                f"terms: {', '.join(names)}); stopped without writing a checkpoint, so {self.latest_path} is the last "
                "good one. Lower train.optimizer.lr, set train.grad_clip, or check the data; then --resume",
                path=self.work_dir, key="train.max_bad_steps", values={"iteration": done, "terms": names},
            )

    def _stop(self, done: int, signum: int, during: str | None = None) -> NoReturn:
        """Checkpoint iteration ``done`` (unless latest.pt holds it already) and raise :class:`TrainingStopped`;
        ``during``: the pass the signal interrupted (its work is redone or skipped on resume)."""
        if self.saved_iteration != done:
            self._save(self.latest_path, done)
        name = signal.Signals(signum).name
        where = f" during {during}" if during else ""
        raise TrainingStopped(
            f"stopped by {name}{where} after iteration {done}; checkpoint {self.latest_path} (iteration {done}). "
            f"Continue with the same command plus --resume (work dir {self.work_dir})",
            iteration=done, signal_name=name, path=self.latest_path,
        )

    def _evaluate_or_stop(self, done: int, stop: StopRequest, bar: tqdm) -> dict[str, Any]:
        """:meth:`evaluate` after iteration ``done``; a stop signal during it checkpoints ``done`` and
        raises TrainingStopped (the evaluation of ``done`` is skipped on resume, or redone at the end)."""
        try:
            return self.evaluate()
        except StopRequested:
            bar.close()
            self._stop(done, stop.signum, during="evaluation")

    def _start_files(self) -> None:
        """Before the first step (main process, work dir locked): remove temporary files that an
        interrupted write left, write config.yaml, drop metric records after the checkpoint this run
        starts from (they will be redone) and log the settings changed on resume."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temporaries(self.work_dir, ("latest.pt", "best.pt", "eval_results.json"))
        if stale:
            print(f"note: removed {len(stale)} temporary file(s) that an interrupted write left in {self.work_dir}: "
                  f"{', '.join(p.name for p in stale)}")
        save_config(self.cfg, self.work_dir / "config.yaml")
        self._truncate_metrics(self.start_iter)
        if self.config_changes:
            print(f"note: continuing from iteration {self.start_iter} with changed settings (--allow-changes): "
                  + "; ".join(self.config_changes))
            record = {"iter": self.start_iter, "config_changes": self.config_changes}
            self._log(record)
            with open(self.work_dir / "config_history.jsonl", "a") as f:
                f.write(json.dumps({**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")

    def run(self) -> dict[str, Any]:
        """Train to ``train.iters`` (from the resumed iteration), then evaluate; returns the final results.

        Holds the work dir's lock throughout. SIGTERM / SIGINT: the current step finishes, latest.pt
        is written and :class:`TrainingStopped` is raised (all ranks stop at the same iteration).
        A step whose loss is not finite is skipped (no update) and logged; ``train.max_bad_steps``
        of them in a row raise :class:`TrainingDivergedError` without writing a checkpoint.
        """
        with self.lock if dist.is_main() else contextlib.nullcontext(), StopRequest() as stop:
            self.stop_request = stop
            try:
                return self._run(stop)
            finally:
                self.stop_request = None
                for hook in self.hooks:
                    hook.after_run(self)

    def _run(self, stop: StopRequest) -> dict[str, Any]:
        t = self.cfg.train
        if dist.is_main():
            self._start_files()
        self.model.train()
        loaders = [self._loaders(m) for m in range(t.accumulate)] if self.start_iter < t.iters else []
        bar = tqdm(
            total=t.iters, initial=self.start_iter, desc=f"train {self.cfg.method.name}", disable=not (self.progress and dist.is_main()), dynamic_ncols=True
        )
        self._log_start()
        running: dict[str, float] = {}
        count, steps, bad_in_row, data_wait, tic = 0, 0, 0, 0.0, time.perf_counter()
        for it in range(self.start_iter, t.iters):
            for hook in self.hooks:
                hook.before_step(self, it)
            fetched = time.perf_counter()
            batches = [self._next_batches(micro) for micro in loaders]
            data_wait += time.perf_counter() - fetched
            try:
                terms = self.step(it, batches)
            except StopRequested:  # in the centroid pass of step it: iteration it is the last finished one
                bar.close()
                self._stop(it, stop.signum, during="the centroid pass")
            for hook in self.hooks:
                hook.after_step(self, it, terms)
            done = it + 1
            steps += 1
            bar.update(1)
            if terms.get("skipped"):
                bad_in_row += 1
                self._skipped_step(done, terms, bad_in_row)
            else:
                bad_in_row = 0
                for k, v in terms.items():
                    running[k] = running.get(k, 0.0) + v
                count += 1
                bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items() if k in ("loss", "sup", "unsup", "ent_cross", "ent_within")})
            if (done % t.log_interval == 0 or done == t.iters) and steps:
                elapsed = time.perf_counter() - tic
                means = {k: v / count for k, v in running.items()} if count else {}
                record = self.method.log_record(means)
                self._log({"iter": done, **record, "sec_per_iter": elapsed / steps, "data_sec_per_iter": data_wait / steps,
                           "peak_mem_gib": peak_memory_gib(self.device)})
                if dist.is_main():  # with a progress bar the line is a debug record (the bar shows the same)
                    log.log(logging.DEBUG if self.progress else logging.INFO,
                            interval_line(done, t.iters, record, elapsed / steps, data_wait / steps, self.device))
                running, count, steps, data_wait, tic = {}, 0, 0, 0.0, time.perf_counter()
            if t.eval_interval and done % t.eval_interval == 0 and done != t.iters:
                results = self._evaluate_or_stop(done, stop, bar)
                self._after_eval(done, results)
                if dist.is_main():
                    log.info(f"evaluation at iteration {done}:\n{results_table(results)}")
            if done % t.checkpoint_interval == 0 and done != t.iters:
                self._save(self.latest_path, done)
            signum = stop.agreed(self.device)
            if signum is not None:
                bar.close()
                self._stop(done, signum)
        bar.close()
        final_iter = max(self.start_iter, t.iters)
        results = self._evaluate_or_stop(final_iter, stop, bar)
        if self.start_iter < t.iters or not self._logged_eval(final_iter):  # not logged: the run stopped during it
            self._after_eval(final_iter, results)
        self._save(self.latest_path, final_iter)
        results = {**results, "iteration": final_iter, "best": self.best, "train_amp": self.amp, "train_channels_last": self.channels_last}
        if dist.is_main():
            atomic_write_json(self.work_dir / "eval_results.json", results)
            log.info(f"final evaluation at iteration {final_iter}:\n{results_table(results)}")
        return results

    def _log_start(self) -> None:
        """Say what the run does, or where it resumed: ``resumed at iteration N of M from latest.pt``."""
        if not dist.is_main():
            return
        total = self.cfg.train.iters
        if self.start_iter:
            log.info(f"resumed at iteration {self.start_iter} of {total} from {self.resumed_from.name} ({self.work_dir})")
        else:
            log.info(f"training {self.cfg.method.name} for {total} iterations on {self.device} (amp {self.amp}) in {self.work_dir}")
