"""The iteration-based training loop: one entry point for 1 CPU, 1 GPU and N GPUs (torchrun)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..config import Config, save_config
from ..data.domain import Domain, build_domains, eval_loader, iter_images
from ..data.sampler import infinite_loader
from ..errors import CheckpointError, ConfigError, DataError
from ..losses import class_sums
from ..losses.centroids import all_reduce_sums
from ..methods import Method, build_method
from ..models.universal import UniversalModel, build_model, upsample
from ..utils import dist
from ..utils.files import atomic_write_json
from .checkpoint import Checkpoint, init_from_checkpoint
from .evaluator import evaluate, results_table
from .precision import autocast, resolve_amp

MODEL_OPTIMIZER = "model"


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


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW from an OptimizerConfig."""
    if cfg.type == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


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


class Trainer:
    """Trains the method of a Config and keeps checkpoints, metrics and evaluations in ``work_dir``.

    run(): for t in [start, iters): hooks.before_step -> step(t) -> hooks.after_step -> log every
    log_interval -> evaluate every eval_interval (hooks.after_eval; best.pt on a new best mean
    mIoU) -> latest.pt every checkpoint_interval; then a final evaluation, latest.pt,
    eval_results.json and a summary table.
    step(t): learning rates of every optimizer -> method.before_step(t) -> method.losses ->
    backward -> model step -> each auxiliary loss of the method -> backward -> its optimizer's step.
    """

    def __init__(
        self,
        cfg: Config,
        work_dir: str | Path,
        resume: bool = False,
        progress: bool = True,
        hooks: Iterable[TrainerHook] = (),
    ) -> None:
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.progress = progress
        self.hooks = list(hooks)
        self.device = dist.resolve_device(cfg.train.device)
        self.amp = resolve_amp(cfg.train.amp, self.device)
        if self.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs a CUDA device; on CPU use train.amp=bf16 or auto")
        dist.init_distributed(self.device)
        torch.manual_seed(cfg.seed)
        self.domains: dict[str, Domain] = {d.name: d for d in build_domains(cfg)}
        self.trained = cfg.trained_domains
        self.heads = {name: self.domains[name].label_space for name in self.trained}
        self.model: UniversalModel = build_model(cfg.model, {k: ls.num_classes for k, ls in self.heads.items()}).to(self.device)
        if cfg.model.init_from is not None:
            init_from_checkpoint(self.model, cfg.model.init_from, self.heads, cfg.model.init_norm_from)
        self.method: Method = build_method(cfg.method, self.heads, cfg.model.embed_dim).to(self.device)
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            MODEL_OPTIMIZER: build_optimizer(cfg.train.optimizer, self.model.parameters())
        }
        self.base_lrs: dict[str, float | None] = {MODEL_OPTIMIZER: None}  # None: the model's own lr
        for name, aux in self.method.auxiliary_optimizers().items():
            if name == MODEL_OPTIMIZER:
                raise ValueError(f"method '{cfg.method.name}': '{MODEL_OPTIMIZER}' names the model's optimizer; rename its own")
            self.optimizers[name] = aux.build(aux.params)
            self.base_lrs[name] = aux.lr
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.start_iter = 0
        self.best: dict[str, Any] = {"mean_mIoU": None, "iteration": None}
        if resume:
            self._resume()
        self.net: torch.nn.Module = self.model
        if dist.world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

    # ------------------------------------------------------------------ files
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
        if dist.is_main():
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

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
        if dist.is_main():
            self.checkpoint(iteration).save(path)
        dist.barrier()

    def _resume(self) -> None:
        if not self.latest_path.is_file():
            raise CheckpointError(
                f"--resume: no checkpoint at {self.latest_path}; start without --resume or point --work-dir at the run",
                path=self.latest_path,
            )
        ckpt = Checkpoint.load(self.latest_path, map_location=self.device)
        ckpt.check_compatible(self.cfg.model.model_dump(mode="json"), self.heads, self.latest_path)
        missing = sorted(set(self.optimizers) - set(ckpt.optimizers))
        if missing:
            raise CheckpointError(
                f"{self.latest_path} has no state for the optimizer(s) {missing} of method '{self.cfg.method.name}'; "
                "it was written by another method: resume with the method that wrote it or start a new work dir",
                path=self.latest_path,
            )
        self.model.load_state_dict(ckpt.model)
        try:
            self.method.load_state_dict(ckpt.method)
        except RuntimeError as e:
            raise CheckpointError(
                f"{self.latest_path}: the method state does not fit method '{self.cfg.method.name}': {e}",
                path=self.latest_path,
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
            print(
                f"note: {self.latest_path} was written by {saved_world} process(es), this run has "
                f"{dist.world_size()}: the data order from here on differs from an uninterrupted run"
            )
        self._truncate_metrics(self.start_iter)

    def _truncate_metrics(self, iteration: int) -> None:
        """Drop metric records written after the checkpoint we resume from (they will be redone)."""
        if not dist.is_main() or not self.metrics_path.is_file():
            return
        kept = [ln for ln in self.metrics_path.read_text().splitlines() if ln and json.loads(ln).get("iter", 0) <= iteration]
        self.metrics_path.write_text("".join(ln + "\n" for ln in kept))

    # ------------------------------------------------------------------ data
    def _loaders(self) -> dict[str, dict[str, Iterator[dict]]]:
        t = self.cfg.train
        loaders: dict[str, dict[str, Iterator[dict]]] = {}
        order = [d.name for d in self.cfg.domains]
        for name in self.trained:
            d = self.domains[name]
            stream = 2 * order.index(name)
            args = dict(seed=self.cfg.seed, start_iter=self.start_iter, num_workers=t.num_workers, rank=dist.rank(), world_size=dist.world_size())
            loaders[name] = {"labeled": infinite_loader(d.labeled, d.batch_size, stream=stream, **args)}
            unlabeled = d.unlabeled_view(self.method.strong_views) if self.method.needs_unlabeled else None
            if unlabeled is not None and d.unlabeled_batch_size > 0:
                loaders[name]["unlabeled"] = infinite_loader(unlabeled, d.unlabeled_batch_size, stream=stream + 1, **args)
        return loaders

    def _next_batches(self, loaders: Mapping[str, Mapping[str, Iterator[dict]]]) -> dict[str, dict[str, torch.Tensor]]:
        batches = {}
        for name, its in loaders.items():
            lab = next(its["labeled"])
            if isinstance(lab["image"], list):
                raise DataError(
                    f"domain '{name}': labeled images of one batch differ in size; add a random_crop or resize "
                    "to its train_transforms",
                    key=f"domains.{name}.train_transforms",
                )
            b = {"image": lab["image"].to(self.device, non_blocking=True), "label": lab["label"].to(self.device, non_blocking=True)}
            if "unlabeled" in its:
                unl = next(its["unlabeled"])
                if isinstance(unl["image"], list):
                    raise DataError(
                        f"domain '{name}': unlabeled images of one batch differ in size; add a random_crop or resize "
                        "to its train_transforms",
                        key=f"domains.{name}.train_transforms",
                    )
                for key, into in (("image", "unlabeled"), ("valid", "unlabeled_valid"), ("strong", "strong"), ("cutmix", "cutmix")):
                    if key in unl:
                        b[into] = unl[key].to(self.device, non_blocking=True)
            batches[name] = b
        return batches

    @torch.no_grad()
    def centroid_sums(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-class embedding sums and counts over each trained domain's labeled set (eval mode).

        Each rank embeds its share of the images; the sums and counts are then added over ranks.
        """
        was_training = self.model.training
        self.model.eval()
        out = {}
        for name in self.trained:
            d = self.domains[name]
            sums = torch.zeros(d.label_space.num_classes, self.cfg.model.embed_dim, device=self.device)
            counts = torch.zeros(d.label_space.num_classes, device=self.device)
            shard = range(dist.rank(), len(d.centroid_view), dist.world_size())
            for batch in eval_loader(d.centroid_view, self.cfg.eval.batch_size, indices=shard):
                for img, lab in iter_images(batch):
                    img, lab = img.to(self.device), lab.to(self.device)
                    with autocast(self.device, self.amp):
                        emb = upsample(self.model(img, heads=[], embed=True, domain=name)["embedding"], tuple(lab.shape[-2:]))
                    s, c = class_sums(emb, lab, d.label_space.num_classes, d.label_space.ignore_index)
                    sums += s
                    counts += c
            out[name] = all_reduce_sums(sums, counts)
        self.model.train(was_training)
        return out

    # ------------------------------------------------------------------ loop
    def step(self, iteration: int, batches: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, float]:
        """One optimisation step of the model and of the method's auxiliary networks; returns the
        loss terms as floats and the model's learning rate."""
        lrs = self._set_learning_rates(iteration)
        self.method.before_step(iteration, self.centroid_sums)
        with autocast(self.device, self.amp):
            terms = self.method.losses(self.net, batches)
        self._check_finite(terms, iteration)
        model_opt = self.optimizers[MODEL_OPTIMIZER]
        model_opt.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        if self.cfg.train.grad_clip is not None:
            self.scaler.unscale_(model_opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(model_opt)
        self.scaler.update()
        for name, aux_terms in self.method.auxiliary_losses(iteration).items():
            self._step_auxiliary(name, aux_terms["loss"])
            terms = {**terms, **{k: v for k, v in aux_terms.items() if k != "loss"}}
        return {k: float(v.detach()) for k, v in terms.items()} | {"lr": lrs[MODEL_OPTIMIZER]}

    def _set_learning_rates(self, iteration: int) -> dict[str, float]:
        """Put every optimizer on the schedule at ``iteration``; returns the rates by optimizer."""
        lrs = {}
        for name, opt in self.optimizers.items():
            lrs[name] = poly_lr(self.cfg.train, iteration, self.cfg.train.iters, self.base_lrs[name])
            for group in opt.param_groups:
                group["lr"] = lrs[name]
        return lrs

    @staticmethod
    def _check_finite(terms: Mapping[str, torch.Tensor], iteration: int) -> None:
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at iteration {iteration} ({ {k: float(v) for k, v in terms.items()} }); "
                "lower the learning rate, enable train.grad_clip, or check the data"
            )

    def _step_auxiliary(self, name: str, loss: torch.Tensor) -> None:
        """Minimise an auxiliary loss with its optimizer; gradients are averaged over ranks first."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if dist.world_size() > 1:
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        dist.all_reduce_sum(p.grad).div_(dist.world_size())
        opt.step()

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the current model on every domain of the config."""
        return evaluate(
            self.model, self.heads, list(self.domains.values()), self.cfg.eval, self.amp, progress=self.progress
        )

    def _after_eval(self, iteration: int, results: Mapping[str, Any]) -> None:
        for hook in self.hooks:
            hook.after_eval(self, iteration, results)
        per_domain = {k: v.get("mIoU") for k, v in results["domains"].items()}
        self._log({"iter": iteration, "eval": per_domain, "mean_mIoU": results["mean_mIoU"]})
        score = results["mean_mIoU"]
        if score is not None and (self.best["mean_mIoU"] is None or score > self.best["mean_mIoU"]):
            self.best = {"mean_mIoU": score, "iteration": iteration}
            self._save(self.best_path, iteration)

    def run(self) -> dict[str, Any]:
        """Train to ``train.iters`` (from the resumed iteration), then evaluate; returns the final results."""
        t = self.cfg.train
        if dist.is_main():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.work_dir / "config.yaml")
        self.model.train()
        loaders = self._loaders() if self.start_iter < t.iters else {}
        bar = tqdm(
            total=t.iters, initial=self.start_iter, desc=f"train {self.cfg.method.name}", disable=not (self.progress and dist.is_main()), dynamic_ncols=True
        )
        running: dict[str, float] = {}
        count, tic = 0, time.perf_counter()
        for it in range(self.start_iter, t.iters):
            for hook in self.hooks:
                hook.before_step(self, it)
            terms = self.step(it, self._next_batches(loaders))
            for hook in self.hooks:
                hook.after_step(self, it, terms)
            done = it + 1
            for k, v in terms.items():
                running[k] = running.get(k, 0.0) + v
            count += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items() if k in ("loss", "sup", "ent_cross", "ent_within")})
            if done % t.log_interval == 0 or done == t.iters:
                elapsed = time.perf_counter() - tic
                self._log({"iter": done, **{k: v / count for k, v in running.items()}, "sec_per_iter": elapsed / count})
                running, count, tic = {}, 0, time.perf_counter()
            if t.eval_interval and done % t.eval_interval == 0 and done != t.iters:
                self._after_eval(done, self.evaluate())
            if done % t.checkpoint_interval == 0 and done != t.iters:
                self._save(self.latest_path, done)
        bar.close()
        final_iter = max(self.start_iter, t.iters)
        results = self.evaluate()
        if self.start_iter < t.iters:
            self._after_eval(final_iter, results)
        self._save(self.latest_path, final_iter)
        results = {**results, "iteration": final_iter, "best": self.best}
        if dist.is_main():
            atomic_write_json(self.work_dir / "eval_results.json", results)
            if self.progress:
                print(results_table(results))
        return results
