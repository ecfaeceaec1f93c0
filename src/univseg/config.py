"""Experiment configuration: YAML files validated into typed objects, with dotted overrides.

Every key is declared once with a one-line description: below, or for a domain in
:mod:`univseg.data.domain_config` (re-exported here). Unknown keys and wrong types are rejected
with the dotted path of the offending key and, for typos, the closest valid key.
Strings may reference environment variables as ``${NAME}`` or ``${NAME:-default}`` (the default also
when NAME is set but empty, as in a shell). Non-finite numbers (``.inf``, ``.nan``) are refused everywhere.
"""
from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import Field, PositiveFloat, PositiveInt, ValidationError, ValidationInfo, field_validator, model_validator

from .data.domain_config import DomainConfig, LabeledConfig, UnlabeledConfig  # noqa: F401  (the domain schema, re-exported)
from .data.registry import check_split, resolve_dataset
from .errors import ConfigError, UnknownNameError
from .registry import suggest
from .validation import StrictModel, check_yaml_size, dotted, error_lines, load_yaml_file


class ModelConfig(StrictModel):
    """The universal model: shared encoder, one head per domain, shared embedding head."""

    backbone: str = Field("erfnet", description="registered backbone name")
    backbone_args: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the backbone")
    pretrained: Optional[str] = Field(None, description="null, 'imagenet' (downloads) or a local weights file")
    init_from: Optional[Path] = Field(
        None, description="univseg checkpoint initialising the encoder, embedding and same-named heads (fine-tuning)"
    )
    decoder: str = Field("none", description="registered decoder between encoder and heads: none | deeplabv3plus | lraspp")
    decoder_args: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the decoder")
    norm: Literal["shared", "domain"] = Field(
        "shared", description="BatchNorm statistics and affine parameters shared by all domains, or one set per domain"
    )
    freeze_bn: bool = Field(
        False, description="BatchNorm normalises with its running statistics and never updates them (affine parameters "
        "still train): for very small per-process batches; a step then does not depend on how the batch is split"
    )
    init_norm_from: Optional[str] = Field(
        None, description="per-domain norm: the domain of model.init_from whose BatchNorm starts new domains (default: its first)"
    )
    embed_dim: int = Field(100, ge=1, description="dimension of the shared embedding (paper: 100)")
    head_channels: int = Field(0, ge=0, description="hidden channels of a 3x3 conv before each classifier (0: 1x1 only)")
    mean: tuple[float, float, float] = Field(
        (123.675, 116.28, 103.53),
        description="input normalisation mean (0..255 scale); with pretrained: imagenet, unless set, the weights' own",
    )
    std: tuple[float, float, float] = Field(
        (58.395, 57.12, 57.375),
        description="input normalisation std (0..255 scale); with pretrained: imagenet, unless set, the weights' own",
    )


class CentroidConfig(StrictModel):
    """The class-centroid bank used by the entropy alignment losses."""

    mode: Literal["frozen", "ema"] = Field("ema", description="frozen after warm-up (paper) or EMA-updated every step")
    momentum: float = Field(0.99, ge=0, lt=1, description="EMA momentum (ema mode)")


class AdversarialConfig(StrictModel):
    """The 'adversarial' baseline (Hung et al., BMVC 2018); defaults are the paper's (Sec. 4.2) and its code."""

    lambda_adv: float = Field(0.01, ge=0, description="weight of the adversarial loss on labeled images (lambda_adv)")
    lambda_adv_unlabeled: float = Field(0.001, ge=0, description="weight of the adversarial loss on unlabeled images")
    lambda_semi: float = Field(0.1, ge=0, description="weight of the self-training loss on unlabeled images (lambda_semi)")
    t_semi: float = Field(0.2, ge=0, le=1, description="discriminator confidence above which unlabeled pixels self-train (T_semi)")
    semi_start: int = Field(5000, ge=0, description="iterations before the self-training loss starts")
    ndf: int = Field(64, ge=1, description="discriminator width: its convs have ndf, 2ndf, 4ndf, 8ndf channels")
    lr: float = Field(1e-4, gt=0, description="discriminator Adam learning rate at iteration 0 (follows train.schedule)")
    betas: tuple[float, float] = Field((0.9, 0.99), description="discriminator Adam betas")


class SoulyConfig(StrictModel):
    """The 'souly' method (Souly, Spampinato, Shah, ICCV 2017): a DCGAN generator per domain and the
    segmentation network as a (K+1)-way discriminator; defaults follow DCGAN where the paper is silent."""

    lambda_gan: float = Field(
        1.0, ge=0, description="weight of the GAN terms -log(1 - p_fake) (real pixels) + -log p_fake (generated "
        "pixels) against the labeled CE (1: the three terms summed with equal weight, Souly et al. Sec. 3.1)"
    )
    nz: int = Field(100, ge=1, description="noise dimension; z ~ U(-1, 1)^nz (DCGAN, Radford et al. 2016, Sec. 4: 100)")
    ngf: int = Field(
        32, ge=1, description="generator width: its transposed convs have ..., 4ngf, 2ngf, ngf channels "
        "(DCGAN Fig. 1: 128; smaller here for CPU)"
    )
    image_size: Union[int, tuple[int, int]] = Field(
        32, description="size of the generated images: a square side 4 * 2^k (DCGAN Fig. 1: 64), or [H, W] such "
        "as the training crop (DCGAN's layout with a first map of about H/2^k x W/2^k, cropped at its centre); "
        "they are resized (bilinear) to each domain's training crop where it differs"
    )
    batch_size: Optional[int] = Field(
        None, ge=1, description="generated images per domain and step on each process (null: as many as the "
        "domain's unlabeled images in the step, its labeled ones without: Salimans et al. 2016 pair generated "
        "and unlabeled batches)"
    )
    lr: float = Field(
        2e-4, gt=0, description="Adam learning rate of the generators and fake heads at iteration 0, following "
        "train.schedule (DCGAN Sec. 4: 0.0002)"
    )
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of the generators and fake heads (DCGAN Sec. 4: beta1 = 0.5)")
    generator_loss: Literal["feature_matching", "fool"] = Field(
        "feature_matching", description="how a generator learns to fool the segmentation network: "
        "feature_matching = squared distance between the mean embeddings of real and generated images (Salimans "
        "et al. 2016, Sec. 3.1, whose K+1 scheme Souly et al. follow); fool = -log(1 - p_fake) on the generated "
        "pixels (the non-saturating GAN generator loss, Goodfellow et al. 2014, Sec. 3)"
    )

    @field_validator("image_size")
    @classmethod
    def _generator_size(cls, v: Union[int, tuple[int, int]]) -> Union[int, tuple[int, int]]:
        if isinstance(v, int) and (v < 8 or v % 4 or (v // 4) & (v // 4 - 1)):
            raise ValueError(f"a square side must be 4 * 2^k (8, 16, 32, 64, ...), got {v}; or give [H, W]")
        if not isinstance(v, int) and min(v) < 8:
            raise ValueError(f"[H, W] must be at least 8 on each side, got {list(v)}")
        return v


class ConsistencyConfig(StrictModel):
    """Weak-to-strong consistency of 'fixmatch', 'unimatch' and 'univ-match'. Defaults are UniMatch's
    (Yang et al., CVPR 2023, and its code: conf_thresh 0.95, Dropout2d(0.5), loss weights 0.5 / 0.25 / 0.25)."""

    threshold: float = Field(
        0.95, ge=0, le=1, description="weak-view confidence a pixel's pseudo-label needs (FixMatch / UniMatch: 0.95)"
    )
    weight: float = Field(1.0, ge=0, description="weight of the unlabeled loss against the supervised one (lambda_u)")
    feature_dropout: float = Field(
        0.5, ge=0, lt=1, description="unimatch / univ-match: channel dropout of the encoder features (UniMatch: 0.5)"
    )
    fp_weight: float = Field(
        0.5, ge=0, le=1,
        description="unimatch / univ-match: share of the unlabeled loss taken by the feature-perturbed view; "
        "the strong image views share the rest equally (UniMatch: 0.5, i.e. 0.5 fp + 0.25 + 0.25)",
    )
    weak_view: Literal["train", "geometric"] = Field(
        "train",
        description="the weak view of an unlabeled image: the domain's train_transforms (train) or only their "
        "geometric ones (geometric: UniMatch's weak view, crops and flips without colour jitter)",
    )
    teacher: Literal["student", "ema"] = Field(
        "student",
        description="the model whose weak-view predictions are the pseudo-labels: the student itself, in the "
        "training pass (FixMatch / UniMatch), or ema: an exponential moving average of its weights and BatchNorm "
        "statistics, run in eval mode (Mean Teacher, Tarvainen & Valpola 2017; UniMatch V2, Yang et al. 2025)",
    )
    teacher_momentum: float = Field(
        0.999, ge=0, lt=1,
        description="ema teacher: its share of its own weights at each step, ramped as min(1 - 1/(t + 1), "
        "momentum) from the student's weights at t = 0 (UniMatch V2: 0.996; Mean Teacher: 0.99-0.999)",
    )
    diagnostics: bool = Field(
        False,
        description="log the per-class precision, recall and coverage of the confident pseudo-labels, scored against the "
        "unlabeled images' own labels where the dataset has them on disk (benchmark splits; read for this log only, "
        "never for training); the confident share and the unsupervised/supervised loss ratio are always logged",
    )
    cross_domain: bool = Field(
        False, description="univ-match only (ours, no paper default): also pseudo-label each domain's unlabeled "
        "pixels in every other domain's label space, from that domain's head on the weak view where it is confident "
        "(threshold) and names the class of the nearest of that domain's centroids; CE of that head on the strong views",
    )
    cross_domain_weight: float = Field(
        0.5, ge=0, description="weight of the cross-domain pseudo-label loss, summed over ordered domain pairs "
        "(ours; 0.5: half the weight of a domain's own unlabeled loss)",
    )


class CycadaConfig(StrictModel):
    """'cycada' (Hoffman et al., "CyCADA: Cycle-Consistent Adversarial Domain Adaptation", ICML 2018): a CycleGAN
    (Zhu et al., ICCV 2017) with CyCADA's semantic-consistency loss, then the model trained on the translated source
    images plus output-level adversarial alignment. Defaults: the papers' and their code's, the networks narrowed
    for CPU where noted."""

    source: Optional[str] = Field(None, description="labeled source domain A; its labels are mapped to the target's classes")
    target: Optional[str] = Field(
        None, description="target domain B, the model's one head (method.domains: [B]); its labels are never read"
    )
    pixel_iters: int = Field(
        500, ge=1, description="iterations of the pixel stage (the CycleGAN trains, the model is left alone) before the "
        "segmentation stage; CyCADA trains the stages one after the other"
    )
    downscale: int = Field(
        2, ge=1, description="the CycleGAN works on images downscaled by this factor (sides rounded to multiples of 4), "
        "translations are resized back (CyCADA translates GTA5 at reduced resolution; here also for CPU)"
    )
    ngf: int = Field(32, ge=1, description="generator width: c7s1-ngf, d2ngf, d4ngf, residual blocks, u2ngf, ungf, c7s1-3 (CycleGAN: 64)")
    res_blocks: int = Field(3, ge=0, description="residual blocks per generator (CycleGAN: 6 at 128 px, 9 at 256 px)")
    ndf: int = Field(32, ge=1, description="PatchGAN image discriminator width (CycleGAN: 64)")
    d_layers: int = Field(3, ge=1, description="stride-2 convs of the PatchGAN image discriminators (CycleGAN: 3, the 70x70 PatchGAN)")
    lr: float = Field(2e-4, gt=0, description="Adam learning rate of generators and image discriminators at iteration 0 (CycleGAN: 0.0002)")
    betas: tuple[float, float] = Field((0.5, 0.999), description="their Adam betas (CycleGAN: 0.5, 0.999)")
    lambda_cycle: float = Field(10.0, ge=0, description="weight of the L1 cycle loss of each direction (CycleGAN: lambda_A = lambda_B = 10)")
    lambda_identity: float = Field(
        0.5, ge=0, description="identity loss weight, relative to lambda_cycle (CycleGAN code: 0.5; CyCADA's GTA5 script: 1)"
    )
    lambda_sem: float = Field(1.0, ge=0, description="weight of the semantic-consistency loss (CyCADA Eq. 4 and code: 1)")
    lambda_adv: float = Field(
        0.1, ge=0, description="weight of the model's output-level adversarial loss on target images (CyCADA code: lambda_g = 0.1)"
    )
    feat_ndf: int = Field(64, ge=1, description="width of the output-level discriminator (Hung et al.'s FCN discriminator: 64)")
    feat_lr: float = Field(1e-4, gt=0, description="its Adam learning rate at iteration 0 (Hung et al. / AdaptSegNet: 1e-4)")
    feat_betas: tuple[float, float] = Field((0.9, 0.99), description="its Adam betas (Hung et al. / AdaptSegNet: 0.9, 0.99)")
    samples: int = Field(
        4, ge=0, description="images per domain in the translation grids written to <work_dir>/translations/ at the end "
        "of the pixel stage and of training (0: none)"
    )

    def check(self, domains: list[str], trained: list[str], iters: int, init_from: Optional[Path]) -> None:
        """Raise ValueError naming the key when the cycada settings do not fit the rest of the config."""
        for key in ("source", "target"):
            name = getattr(self, key)
            if name not in domains:
                what = "needed" if name is None else f"no domain '{name}'"
                raise ValueError(f"method.cycada.{key}: {what} with method.name=cycada; domains: {', '.join(domains)}")
        if self.source == self.target:
            raise ValueError(f"method.cycada.source: the source must differ from the target ('{self.target}')")
        if trained != [self.target]:
            raise ValueError(
                f"method.domains: cycada trains one head, the target's: set method.domains=[{self.target}] (got {trained})"
            )
        if self.pixel_iters >= iters:
            raise ValueError(
                f"method.cycada.pixel_iters: {self.pixel_iters} leaves none of train.iters={iters} for the segmentation stage"
            )
        if init_from is None:
            raise ValueError(
                f"model.init_from: cycada needs the checkpoint of a model trained on the source '{self.source}' "
                f"(e.g. the single-{self.source} run): it is the frozen segmenter of the semantic-consistency loss"
            )


class MethodConfig(StrictModel):
    """The training method and its loss weights."""

    name: str = Field(
        "univ-full", description="registered method: single | joint | univ-cross | univ-full | adversarial | souly | fixmatch | unimatch | univ-match | cycada"
    )
    domains: Optional[list[str]] = Field(None, description="domains to train on (default: all; 'single' needs one)")
    lambda_cross: float = Field(0.1, ge=0, description="weight of the cross-domain entropy term (lambda_1)")
    lambda_within: float = Field(0.1, ge=0, description="weight of the within-domain entropy term (lambda_2)")
    similarity: Literal["cosine", "dot"] = Field("cosine", description="embedding-centroid similarity")
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the similarity (paper: 1 with dot)")
    warmup_iters: int = Field(100, ge=0, description="supervised-only iterations before the entropy terms start")
    entropy_resolution: Literal["input", "feature"] = Field(
        "input", description="entropy over unlabeled pixels at image resolution (paper) or encoder resolution (faster)"
    )
    cosine_upsample: Literal["exact", "scores"] = Field(
        "exact",
        description="cosine similarity at entropy_resolution: input, never materialising the upsampled embedding: "
        "exact (cosine of the bilinearly upsampled embedding, as the paper; its norm from neighbouring feature "
        "pixels) or scores (cosine at encoder resolution, then the scores upsampled: an approximation, cheaper); "
        "dot is always exact",
    )
    unlabeled_forward: Literal["together", "separate"] = Field(
        "together",
        description="unlabeled images concatenated with the labeled ones in one encoder pass (together: shared "
        "BatchNorm batch statistics, as UniMatch/FixMatch do) or in their own pass (separate)",
    )
    centroids: CentroidConfig = Field(default_factory=CentroidConfig, description="centroid bank settings")
    adversarial: AdversarialConfig = Field(
        default_factory=AdversarialConfig, description="settings of the 'adversarial' method (Hung et al. 2018)"
    )
    souly: SoulyConfig = Field(
        default_factory=SoulyConfig, description="settings of the 'souly' method (Souly et al. 2017)"
    )
    consistency: ConsistencyConfig = Field(
        default_factory=ConsistencyConfig, description="settings of 'fixmatch', 'unimatch' and 'univ-match'"
    )
    cycada: CycadaConfig = Field(default_factory=CycadaConfig, description="settings of the 'cycada' method (Hoffman et al. 2018)")


class OptimizerConfig(StrictModel):
    type: Literal["sgd", "adamw"] = Field("sgd", description="optimizer")
    lr: float = Field(0.01, gt=0, description="base learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    encoder_lr_factor: float = Field(
        1.0, gt=0,
        description="the encoder's learning rate as a share of lr (decoder, heads and embedding keep lr): below 1 "
        "for a pretrained encoder under new heads (UniMatch: the heads at 10x the backbone's, i.e. 0.1)",
    )

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"each AdamW beta must be in [0, 1), got {list(v)}")
        return v


class ScheduleConfig(StrictModel):
    power: float = Field(0.9, ge=0, description="poly decay power: lr * (1 - t/T)^power")
    warmup_iters: int = Field(0, ge=0, description="linear LR warm-up iterations")
    warmup_ratio: float = Field(0.1, gt=0, le=1, description="LR factor at the start of the warm-up")
    min_lr: float = Field(0.0, ge=0, description="floor of the decayed learning rate")


class TrainConfig(StrictModel):
    iters: int = Field(1000, ge=1, description="training iterations (one labeled + unlabeled batch per domain each)")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="optimizer settings")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="learning-rate schedule")
    amp: Literal["auto", "none", "bf16", "fp16"] = Field(
        "auto", description="autocast precision; auto = bf16 where the device runs it natively, else fp32"
    )
    eval_interval: int = Field(500, ge=0, description="evaluate every N iterations (0: only at the end)")
    checkpoint_interval: int = Field(500, ge=1, description="write the 'latest' checkpoint every N iterations")
    keep_checkpoints: int = Field(
        2, ge=1, description="'latest' checkpoints kept: latest.pt, then the previous ones as latest.pt.1, latest.pt.2, ..."
    )
    log_interval: int = Field(10, ge=1, description="append metrics every N iterations")
    num_workers: int = Field(2, ge=0, description="data-loading worker processes per loader")
    grad_clip: Optional[float] = Field(None, gt=0, description="clip the gradient norm to this value")
    accumulate: int = Field(
        1, ge=1, description="micro-batches per optimisation step (gradient accumulation); the global batch is "
        "batch_size x processes x accumulate"
    )
    backward: Literal["step", "domain", "pass"] = Field(
        "step", description="one backward over every domain's losses; one forward and backward per domain (domain: "
        "gradients accumulated, one domain's graph alive at a time: less memory; same step where each domain has its "
        "own encoder passes (model.norm: domain, or domains of different image sizes); with ema centroids a domain's "
        "entropy sees the banks of the domains after it before their update of this step); or one per encoder pass "
        "(pass: the least memory; always the same step: every labeled pass before every unlabeled one; with "
        "method.unlabeled_forward: separate a domain's labeled and unlabeled images are two passes, for the methods "
        "single, joint, univ-cross and univ-full)"
    )
    activation_checkpointing: bool | list[str] = Field(
        False, description="keep only each encoder unit's input for the backward pass and recompute the unit there "
        "(torch.utils.checkpoint): less memory for about one more encoder forward per step; same numbers. true: every "
        "unit; a list of encoder submodule names (e.g. [layer0, layer1, layer2, layer3] for DRN): only the units inside "
        "them -- the high-resolution early stages hold much of the memory for little of the compute"
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="weights and activations in channels-last (NHWC) memory layout; same numbers up to rounding. "
        "auto: on CPU (a training step of every encoder took 0.53-0.97x the NCHW time in fp32 and of the others "
        "0.69-0.88x in bf16; depthwise encoders -- mobilenet_v2, efficientnet_lite0 -- gain little or lose in bf16 and "
        "stay NCHW there; benchmarks/bench_layout.py) and on CUDA with bf16/fp16 autocast (tensor cores); NCHW otherwise"
    )
    compile: bool = Field(
        False, description="run the encoder and decoder through torch.compile (TorchInductor; on CPU it needs a C++ "
        "compiler, on CUDA Triton): BatchNorm, activations and additions fused around the convolutions; the first "
        "pass of each image size, train/eval mode and domain compiles (a minute or more), later ones run faster; "
        "same numbers up to rounding"
    )
    activation_memory_budget: float = Field(
        1.0, ge=0.0, le=1.0, description="with train.compile: the share of the activations the compiled passes may keep "
        "for the backward pass (torch's min-cut partitioner then recomputes the cheapest operations -- BatchNorm, "
        "activations first, convolutions last -- to stay under it; 1.0: as fast as it can, 0.0: recompute everything, like checkpointing "
        "the whole compiled pass); less memory for more recomputation, same numbers up to rounding. The budget is read when "
        "a pass compiles: runs in one process share compiled passes, so the first run's budget holds for the others"
    )
    return_freed_memory: bool = Field(
        False, description="Linux/glibc: CPU tensor memory of 128 KiB or more goes back to the OS as soon as it is freed "
        "(a fixed malloc mmap threshold instead of glibc's dynamic one, under which freed activations stay in the "
        "process): a lower peak resident memory for a page fault per page of each new large tensor; same numbers"
    )
    sync_bn: bool = Field(False, description="under torchrun on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm)")
    max_bad_steps: int = Field(
        5, ge=1, description="steps with a non-finite loss are skipped; this many in a row stop the run"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    tensorboard: Literal["auto", True, False] = Field(
        "auto", description="TensorBoard scalars (loss terms, lr, eval mIoU) in <work_dir>/tensorboard/: auto = when "
        "the tensorboard package is installed; true needs it (pip install \"univseg[tensorboard]\")"
    )

    @model_validator(mode="after")
    def _check_memory_budget(self) -> "TrainConfig":
        if self.activation_memory_budget < 1.0 and not self.compile:
            raise ValueError(
                "activation_memory_budget applies to compiled passes only: set train.compile: true, or leave the "
                "budget at 1.0 (train.activation_checkpointing saves memory without compiling)"
            )
        return self


class InferenceConfig(StrictModel):
    """How logits are computed at test time: whole image or sliding window, and test-time augmentation
    (logits averaged over flips and scales). The keys of ``eval``; ``univseg predict`` takes them as flags."""

    mode: Literal["whole", "slide"] = Field(
        "whole", description="whole: one pass over the whole image; slide: windows of 'crop' every 'stride' pixels, "
        "logits averaged where windows overlap"
    )
    crop: Optional[tuple[PositiveInt, PositiveInt]] = Field(
        None, validate_default=True, description="sliding-window size [height, width] in pixels (mode: slide)"
    )
    stride: Optional[tuple[PositiveInt, PositiveInt]] = Field(
        None, validate_default=True,
        description="sliding-window step [height, width] in pixels, at most the crop (mode: slide)",
    )
    flip: bool = Field(False, description="also predict the horizontally flipped image and average the logits")
    scales: list[PositiveFloat] = Field(
        default_factory=lambda: [1.0], min_length=1,
        description="resize factors of the input; the logits of every scale, resized back, are averaged",
    )

    @field_validator("crop", "stride")
    @classmethod
    def _check_window(cls, value: Optional[tuple[int, int]], info: ValidationInfo) -> Optional[tuple[int, int]]:
        """Sliding windows need a crop and a stride, and a stride larger than the crop would skip pixels."""
        if value is None and info.data.get("mode") == "slide":
            raise ValueError(f"needed with mode 'slide': the window {info.field_name} [height, width] in pixels")
        crop = info.data.get("crop")
        if info.field_name == "stride" and value is not None and crop is not None and any(s > c for s, c in zip(value, crop)):
            raise ValueError(
                f"{list(value)} is larger than the crop {list(crop)}: pixels between windows would get no prediction; "
                "use a stride of at most the crop"
            )
        return value


    @model_validator(mode="after")
    def _window_needs_slide(self) -> "InferenceConfig":
        """A crop or stride with whole-image inference would be ignored without a word: refused instead."""
        given = [k for k in ("crop", "stride") if getattr(self, k) is not None]
        if given and self.mode != "slide":
            raise ValueError(
                f"{' and '.join(given)} given with mode '{self.mode}', which does not use them: add mode: slide "
                f"(--mode slide) for sliding windows, or leave out {' and '.join(given)}"
            )
        return self


class EvalConfig(InferenceConfig):
    """Evaluation settings: the inference keys (mode, crop, stride, flip, scales) plus the ones below."""

    batch_size: int = Field(4, ge=1, description="images per evaluation batch")
    amp: Literal["train", "auto", "none", "bf16", "fp16"] = Field(
        "train", description="autocast precision of the passes without gradients (evaluation, the centroid pass of the "
        "univ-* methods): train = as train.amp; auto = bf16 where the device runs it natively, else fp32"
    )
    max_images: Optional[int] = Field(None, ge=1, description="evaluate only the first N val images of each domain")
    mappings: dict[str, Path] = Field(
        default_factory=dict, description="'SRC->DST' label-space names -> YAML class-mapping file"
    )


class ExperimentConfig(StrictModel):
    """What 'univseg experiment' compares (rows of the results table)."""

    methods: Optional[list[str]] = Field(
        None, description="method keys: single-<domain>, finetune-<A>-to-<B>, joint, univ-cross, univ-full, adversarial (default: all)"
    )
    seeds: list[int] = Field(default_factory=list, description="seeds to repeat every method with (default: [seed])")
    labels: list[PositiveInt] = Field(
        default_factory=list,
        description="labeled images per domain to repeat the comparison at (label efficiency: labels-<N>/ each and "
        "label_efficiency.png); empty: each domain's own 'labeled' rule",
    )


class Config(StrictModel):
    """A whole experiment."""

    name: str = Field("experiment", description="experiment name")
    seed: int = Field(0, description="seed of everything random: init, sampling, augmentation, splits")
    domains: list[DomainConfig] = Field(..., min_length=1, description="the domains")
    model: ModelConfig = Field(default_factory=ModelConfig, description="model settings")
    method: MethodConfig = Field(default_factory=MethodConfig, description="method settings")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training settings")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="evaluation settings")
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig, description="method comparison settings")

    @model_validator(mode="after")
    def _check_domains(self) -> "Config":
        names = [d.name for d in self.domains]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"domain names must be unique; repeated: {dupes}")
        for n in self.method.domains or []:
            if n not in names:
                raise ValueError(f"method.domains: unknown domain '{n}'; domains: {', '.join(names)}")
        if self.train.sync_bn and self.model.freeze_bn:
            raise ValueError("train.sync_bn and model.freeze_bn exclude each other: frozen BatchNorm has no batch statistics to sync")
        return self

    @model_validator(mode="after")
    def _check_cycada(self) -> "Config":
        if self.method.name == "cycada":
            self.method.cycada.check([d.name for d in self.domains], self.trained_domains, self.train.iters, self.model.init_from)
        return self

    def domain(self, name: str) -> DomainConfig:
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(f"no domain '{name}'; domains: {', '.join(d.name for d in self.domains)}")

    @property
    def trained_domains(self) -> list[str]:
        """Names of the domains the method trains on (= the model's heads)."""
        return list(self.method.domains or [d.name for d in self.domains])

    @property
    def inference_amp(self) -> str:
        """The autocast setting of the passes without gradients: ``eval.amp``, or ``train.amp`` where it says 'train'."""
        return self.train.amp if self.eval.amp == "train" else self.eval.amp

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------- loading

def packaged_configs() -> list[str]:
    """Names of the configs shipped inside the package (usable as ``univseg train NAME``)."""
    folder = resources.files("univseg") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(name: str) -> Path:
    """A config file path, or the packaged config called ``name`` (with or without .yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if stem in packaged_configs() and len(path.parts) <= 2:
        return Path(str(resources.files("univseg") / "configs" / f"{stem}.yaml"))
    raise ConfigError(
        f"config file not found: {name}.{suggest(stem, packaged_configs())} Built-in configs: {', '.join(packaged_configs())}"
    )



_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, source: str = "config", loc: tuple[str | int, ...] = ()) -> Any:
    """``value`` with every ``${NAME}`` / ``${NAME:-default}`` in its strings replaced, recursively.

    An unset variable without a default raises ConfigError naming ``source`` (the config file) and
    the key path (``loc``, e.g. ``domains[0].dataset.root``) where it occurs.
    """
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            value = os.environ.get(name)
            if value or (value is not None and default is None):  # ${NAME:-default}: set but empty takes the default
                return value
            if default is None:
                key = dotted(loc)
                raise ConfigError(
                    f"{source}: {key}: environment variable {name} is not set (used as ${{{name}}}); "
                    f"set it, or give a default: ${{{name}:-...}}",
                    key=key, values={"variable": name},
                )
            return default
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, source, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, source, (*loc, i)) for i, v in enumerate(value)]
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing files and the problems :func:`~univseg.validation.load_yaml_file`
    finds (not UTF-8 text, invalid YAML, aliases expanding too far) become ConfigErrors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = load_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place (value parsed as YAML).

    List items are addressed by index (``domains.0.batch_size``) or, for lists of named
    items, by name (``domains.camvid.batch_size``).
    """
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like key.path=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            idx = _list_index(node, part, where)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"override '{key}': '{'.'.join(parts[:i])}' is a value, not a section")


def _list_index(items: list, part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(items) <= idx < len(items):
            raise ConfigError(f"override '{where}': index {idx} out of range (list has {len(items)} items)")
        return idx
    names = [it.get("name") for it in items if isinstance(it, dict)]
    if part in names:
        return names.index(part)
    raise ConfigError(f"override '{where}': no item named '{part}'; items: {names}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None) -> Config:
    """Load, override and validate a config; raises ConfigError naming the offending key."""
    raw = read_yaml(path) if path is not None else dict(data or {})
    source = str(path) if path else "config"
    for assignment in overrides or []:
        apply_override(raw, assignment)
    if overrides:
        check_yaml_size(raw, f"{source} with --set {' '.join(overrides)}")
    return validate_config(_expand_env(raw, source), source=source)


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate plain data into a Config, then the registry-typed parts (datasets, transforms)."""
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_invalid(source, "\n".join(error_lines(e, Config)))) from None
    _validate_registered_parts(cfg, source)
    return cfg


def _invalid(source: str, problems: str) -> str:
    """The message of an invalid config: the file, then one indented ``key: problem`` line per problem."""
    return f"{source}: invalid configuration:\n  " + problems.replace("\n", "\n  ")


def _validate_registered_parts(cfg: Config, source: str) -> None:
    from .methods import METHODS

    try:
        METHODS.get(cfg.method.name)
    except UnknownNameError as e:
        raise ConfigError(f"{source}: method.name: {e}") from None
    for i, d in enumerate(cfg.domains):
        try:
            _validate_domain_parts(d, f"domains[{i}]")
        except ConfigError as e:
            raise ConfigError(_invalid(source, str(e)), key=e.key) from None
    _resolve_model_parts(cfg.model, source)


def _resolve_model_parts(model: ModelConfig, source: str) -> None:
    """Check the backbone and decoder names; with ``pretrained: imagenet``, ``mean`` and ``std``
    not set in the config take the input normalisation the backbone's ImageNet weights expect."""
    from .models.backbones import BACKBONES
    from .models.decoders import DECODERS
    from .models.weights import WEIGHTS

    for key, registry in (("backbone", BACKBONES), ("decoder", DECODERS)):
        try:
            registry.get(getattr(model, key))
        except (UnknownNameError, ConfigError) as e:
            raise ConfigError(f"{source}: model.{key}: {e}", key=f"model.{key}") from None
    if model.pretrained != "imagenet":
        return
    input_norm = BACKBONES.get(model.backbone).input_norm
    norm = input_norm() if input_norm is not None else None
    if norm is None and model.backbone in WEIGHTS:
        norm = WEIGHTS.get(model.backbone).mean, WEIGHTS.get(model.backbone).std
    if norm is not None:
        for key, value in zip(("mean", "std"), norm):
            if key not in model.model_fields_set:
                setattr(model, key, tuple(value))


def _validate_domain_parts(d: DomainConfig, where: str) -> None:
    """Validate the registry-typed parts of domain ``d`` (at key path ``where``): its dataset entry,
    the split names it uses and its transforms; raises ConfigError naming the key."""
    from .data.domain import build_strong_transforms  # imports torch: only when validating
    from .data.transforms import build_transforms

    dataset = resolve_dataset(d.dataset, f"{where}.dataset")
    uses = [("train_split", d.train_split), ("val_split", d.val_split)]
    uses += [(f"unlabeled.extra_splits[{k}]", split) for k, split in enumerate(d.unlabeled.extra_splits)]
    for key, split in uses:
        try:
            check_split(dataset.type_name, split)
        except ConfigError as e:
            raise ConfigError(f"{where}.{key}: {e}", key=f"{where}.{key}") from None
    for key in ("train_transforms", "val_transforms"):
        build_transforms(getattr(d, key), where=f"{where}.{key}")
    build_strong_transforms(d.strong_transforms, where=f"{where}.strong_transforms", key=f"{where}.strong_transforms")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# Keys that change neither what a run learns nor its evaluation (where the data lives, how fast
# it is loaded, how often progress is logged or saved, the run's display name, what is logged).
RESULT_NEUTRAL_KEYS = re.compile(
    r"^(name|experiment(\..*)?|train\.(num_workers|log_interval|checkpoint_interval|device|tensorboard)|eval\.batch_size"
    r"|domains\[\d+\]\.dataset\.root|method\.consistency\.diagnostics)$"
)


# The settings section under ``method`` that each method reads; the other methods ignore it.
METHOD_SECTIONS = {
    "adversarial": ("adversarial",), "souly": ("souly",), "cycada": ("cycada",),
    "fixmatch": ("consistency",), "unimatch": ("consistency",), "univ-match": ("consistency",),
}


def config_changes(old: Config, new: Config) -> list[str]:
    """``'key: old -> new'`` for every setting that differs and could change a run's results (not the
    settings sections of methods other than the run's own, e.g. ``method.souly`` of a joint run)."""
    return [f"{key}: {a!r} -> {b!r}" for key, a, b in config_differences(old, new)]


def config_differences(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` of every difference :func:`config_changes` lists."""
    changes: list[tuple[str, Any, Any]] = []
    unread = {s for sections in METHOD_SECTIONS.values() for s in sections} - set(METHOD_SECTIONS.get(old.method.name, ()))
    if old.method.name != new.method.name:
        unread = set()

    def walk(a: Any, b: Any, loc: tuple) -> None:
        key = dotted(loc)
        if RESULT_NEUTRAL_KEYS.match(key) or (len(loc) == 2 and loc[0] == "method" and loc[1] in unread):
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                walk(a.get(k), b.get(k), loc + (k,))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and any(isinstance(x, dict) for x in a):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, loc + (i,))
        elif a != b:
            changes.append((key, a, b))

    walk(old.to_dict(), new.to_dict(), ())
    return changes
