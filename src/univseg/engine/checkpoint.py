"""The checkpoint record: what a univseg ``.pt`` file holds, written atomically, read safely.

A :class:`Checkpoint` stores the resolved config, each head's label space and the format
version next to the weights, so a model can be loaded for prediction without any config file,
and loading it into a different setup says exactly what differs. Files are written with
``torch.save`` through a temporary file and a rename (a crash or a full disk never leaves half a
file, and the previous file stays intact), and read with ``torch.load(weights_only=True)``: no
code from a file is ever executed; a file whose pickle would import code is refused as such.

Kept checkpoints: ``save(path, keep=N)`` keeps the ``N - 1`` previous versions of ``path`` as
``path.1`` (the previous one), ``path.2`` (the one before), ...; training does this for
``latest.pt`` with ``train.keep_checkpoints``. :meth:`Checkpoint.load_newest` (``--resume``)
falls back to the newest readable kept version, with a warning, when ``path`` is damaged or missing.

Format history:
    1  method state as plain dicts (``{"centroids": {...}}`` or ``{"discriminators": ...,
       "d_optimizer": ...}``), the model's optimizer under ``optimizer``. Still read: it is
       upgraded on load.
    2  the method is a module (``method`` is its state dict), every optimizer under
       ``optimizers`` by name (``model``, then the method's auxiliary ones), and ``data``
       records what the data order depends on.
"""
from __future__ import annotations

import glob
import os
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import __version__
from ..config import ModelConfig
from ..data.label_space import LabelSpace
from ..errors import CheckpointError
from ..models.domain_norm import adapt_norm_keys
from ..utils.files import atomic_torch_save
from .precision import resolve_amp, resolve_channels_last

FORMAT = "univseg-checkpoint"
FORMAT_VERSION = 2
# the model settings a checkpoint's weights depend on (a difference makes them unloadable)
ARCHITECTURE_KEYS = ("backbone", "backbone_args", "decoder", "decoder_args", "norm", "embed_dim", "head_channels")


@dataclass
class Checkpoint:
    """Everything one training run saves: enough to predict, to evaluate and to resume exactly.

    ``data`` holds what the data order depends on (``seed`` and ``world_size``: batch t of a
    domain is a pure function of them, the domain and t), ``rng`` the global torch (and CUDA)
    generator states, ``best`` the best mean mIoU so far and its iteration.
    """

    config: dict[str, Any]
    label_spaces: dict[str, LabelSpace]
    model: dict[str, torch.Tensor]
    method: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    iteration: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"mean_mIoU": None, "iteration": None})
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    univseg_version: str = __version__

    @property
    def model_config(self) -> dict[str, Any]:
        """The ``model`` section of the saved config; keys added since it was written take their
        defaults (e.g. ``norm: shared`` for a checkpoint from before per-domain norm)."""
        return {**ModelConfig().model_dump(mode="json"), **self.config["model"]}

    def trained_channels_last(self, device: torch.device, depthwise_encoder: bool) -> bool:
        """Whether the run's model was channels-last, ``train.channels_last`` and ``train.amp`` resolved
        on ``device`` as training did (NCHW for a config without them, from before the key existed)."""
        train = self.config.get("train", {})
        amp = resolve_amp(train.get("amp", "none"), device)
        return resolve_channels_last(train.get("channels_last", False), device, amp, depthwise_encoder)

    def save(self, path: str | Path, keep: int | None = None) -> None:
        """Write the record atomically to ``path`` (in the current format).

        With ``keep`` (>= 1), the file it replaces is kept as ``path.1`` (``path.1`` moves to
        ``path.2``, ...) so that ``keep`` checkpoints exist in all; older ones are deleted, and so is
        a damaged (truncated) ``path`` instead of being kept. A failed write (WriteError) changes
        none of these files.
        """
        path = Path(path)
        record = {f.name: getattr(self, f.name) for f in fields(self)} | {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "univseg_version": __version__,
            "label_spaces": {k: ls.to_dict() for k, ls in self.label_spaces.items()},
        }
        rotate = None if keep is None else (lambda: _rotate(path, keep))
        atomic_torch_save(record, path, "checkpoint", before_replace=rotate)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "Checkpoint":
        """Read a univseg checkpoint of any supported format (tensors only, no code executed)."""
        path = Path(path)
        raw = _read(path, map_location)
        version = int(raw.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format {version} (univseg {raw.get('univseg_version')}); "
                f"this univseg ({__version__}) reads up to format {FORMAT_VERSION}: upgrade univseg",
                path=path,
            )
        try:
            if version == 1:
                raw = _upgrade_v1(raw)
            _check_fields(raw, path)
            return cls(
                config=raw["config"],
                label_spaces={k: LabelSpace.from_dict(d) for k, d in raw["label_spaces"].items()},
                model=raw["model"],
                method=raw.get("method", {}),
                optimizers=raw.get("optimizers", {}),
                scaler=raw.get("scaler", {}),
                iteration=int(raw.get("iteration", 0)),
                best=dict(raw.get("best", {"mean_mIoU": None, "iteration": None})),
                rng=raw.get("rng", {}),
                data=raw.get("data", {}),
                format_version=version,
                univseg_version=str(raw.get("univseg_version", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{path} is an incomplete or malformed univseg checkpoint ({type(e).__name__}: {e}); it cannot be "
                "used: give a checkpoint as 'univseg train' wrote it",
                path=path,
            ) from None

    @classmethod
    def load_newest(
        cls, path: str | Path, map_location: str | torch.device = "cpu", warn: bool = True
    ) -> tuple["Checkpoint", Path]:
        """Checkpoint ``path`` and the file it came from. When ``path`` is missing or cannot be loaded
        (truncated, corrupt), the newest kept version that loads (``path.1``, ``path.2``, ...), after a
        warning on stderr (``warn``) saying what was skipped and why. CheckpointError when none loads."""
        path = Path(path)
        errors: list[CheckpointError] = []
        for candidate in [path, *cls.kept_versions(path)]:
            try:
                ckpt = cls.load(candidate, map_location)
            except CheckpointError as e:
                errors.append(e)
                continue
            if errors and warn:
                skipped = "\nwarning: ".join(e.message for e in errors)
                print(f"warning: {skipped}\nwarning: using the previous checkpoint {candidate} "
                      f"(iteration {ckpt.iteration}) instead", file=sys.stderr, flush=True)
            return ckpt, candidate
        if len(errors) == 1:
            raise errors[0]
        raise CheckpointError(
            f"no version of checkpoint {path} can be loaded:\n  " + "\n  ".join(e.message for e in errors),
            path=path, values=[e.message for e in errors],
        )

    @staticmethod
    def kept_versions(path: str | Path) -> list[Path]:
        """The kept previous versions of checkpoint ``path`` that exist (``path.1``, ``path.2``, ...), newest first."""
        return [p for _, p in _kept(Path(path))]

    def load_weights(self, model: torch.nn.Module, path: str | Path) -> None:
        """Load these weights into ``model`` (built from this checkpoint's config and label spaces).

        Raises CheckpointError naming ``path`` (this checkpoint's file) and what does not fit: a head
        whose class count differs from its label space, missing, unexpected or differently shaped weights.
        """
        problems = _head_mismatches(self) or _state_mismatches(self.model, model.state_dict())
        if problems:
            shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
            raise CheckpointError(
                f"{path}: the weights do not fit the model that its config and label spaces describe:\n  "
                + "\n  ".join(shown) + "\nThe file was edited or damaged; use the checkpoint as 'univseg train' wrote it",
                path=path, values=problems,
            )
        model.load_state_dict(self.model)

    def check_compatible(self, model_cfg: Mapping[str, Any], label_spaces: Mapping[str, LabelSpace], path: str | Path) -> None:
        """Raise CheckpointError listing every difference between this checkpoint and a setup."""
        diffs = []
        for key in ARCHITECTURE_KEYS:
            if self.model_config.get(key) != model_cfg.get(key):
                diffs.append(f"model.{key}: checkpoint {self.model_config.get(key)!r}, config {model_cfg.get(key)!r}")
        if set(self.label_spaces) != set(label_spaces):
            diffs.append(f"heads: checkpoint {sorted(self.label_spaces)}, config {sorted(label_spaces)}")
        for name in sorted(set(self.label_spaces) & set(label_spaces)):
            a, b = self.label_spaces[name], label_spaces[name]
            if a.names != b.names:
                diffs.append(f"head '{name}' classes: checkpoint {a.names}, config {b.names}")
        if diffs:
            raise CheckpointError(
                f"checkpoint {path} does not match this configuration:\n  " + "\n  ".join(diffs), path=path, values=diffs
            )


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The raw dict of a univseg checkpoint file, loaded with ``weights_only=True``."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a checkpoint file such as {path / 'latest.pt'}", path=path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", path=path)
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol is not worth a warning: it is refused below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise _unloadable(path, e) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a univseg checkpoint (no '{FORMAT}' marker); give a checkpoint written by 'univseg train'",
            path=path,
        )
    return raw


#: what each required entry of a checkpoint holds, for the message when it is missing
REQUIRED = {"config": "the training config", "label_spaces": "the heads' classes", "model": "the model weights"}


def _check_fields(raw: Mapping[str, Any], path: Path) -> None:
    """Raise CheckpointError naming the required entries ``raw`` lacks or holds in the wrong form."""
    problems = [f"it lacks '{k}' ({what})" for k, what in REQUIRED.items() if k not in raw]
    if not problems:
        if not isinstance(raw["config"], dict) or not isinstance(raw["config"].get("model"), dict):
            problems.append("its 'config' has no 'model' section")
        if not isinstance(raw["label_spaces"], dict) or not raw["label_spaces"]:
            problems.append("its 'label_spaces' is not a non-empty mapping of head name -> label space")
        if not isinstance(raw["model"], dict):
            problems.append("its 'model' is not a mapping of weight name -> tensor")
    if problems:
        raise CheckpointError(
            f"{path} is an incomplete univseg checkpoint: {'; '.join(problems)}. It cannot be used; "
            "give a checkpoint as 'univseg train' wrote it",
            path=path, values=problems,
        )


_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _unloadable(path: Path, e: Exception) -> CheckpointError:
    """The error for a file ``torch.load(weights_only=True)`` refused: code it would import, or damage."""
    code = _BLOCKED_GLOBAL.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
    imported = code.group(1) if code else _plain_pickle_import(path)
    if imported is not None:
        return CheckpointError(
            f"refused to load {path}: it holds a pickled '{imported}', and loading it could run code. univseg loads "
            "checkpoints of plain tensors only and never runs code from a file; this is not a univseg checkpoint "
            "(or it was tampered with), do not load it elsewhere unless you trust where it came from",
            path=path, values={"import": imported},
        )
    kept = Checkpoint.kept_versions(path)
    todo = f"use the previous checkpoint {kept[0]}, which was kept" if kept else "use another checkpoint"
    return CheckpointError(
        f"cannot load checkpoint {path}: it is not a univseg checkpoint, or it is damaged ({_damage(path)}); {todo}",
        path=path, hint=todo,
    )


def _damage(path: Path) -> str:
    """What is wrong with a checkpoint file that does not load, in words."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"it cannot be read: {e.strerror or e}"
    if not head:
        return "the file is empty"
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        return "it is truncated: the archive ends early"
    if head == b"PK\x03\x04":
        return "the archive's contents are corrupt"
    return "its content is neither a torch archive nor a pickle of tensors"


def _plain_pickle_import(path: Path) -> str | None:
    """The first ``module.name`` that a plain pickle file (not a torch archive) imports, else None."""
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            if f.read(1) != pickle.PROTO:
                return None
            f.seek(0)
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    return str(arg).replace(" ", ".")
                if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return ".".join(strings[-2:])
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle after all (random bytes): no import to name
        return None
    return None


# ----------------------------------------------------------------------------- kept checkpoints

def kept_path(path: str | Path, n: int) -> Path:
    """The name of the ``n``-th kept previous version of checkpoint ``path``: ``path.n``."""
    path = Path(path)
    return path.with_name(f"{path.name}.{n}")


def _kept(path: Path) -> list[tuple[int, Path]]:
    """``(n, path.n)`` of every kept previous version of ``path`` on disk, newest (n = 1) first."""
    prefix = f"{path.name}."
    found = [
        (int(p.name[len(prefix):]), p)
        for p in path.parent.glob(glob.escape(prefix) + "*")
        if p.name[len(prefix):].isdigit() and p.is_file()
    ]
    return sorted(found)


def _rotate(path: Path, keep: int) -> None:
    """Make room for a new ``path`` with ``keep`` checkpoints in all: ``path`` becomes ``path.1``,
    ``path.1`` becomes ``path.2``, ...; versions beyond ``keep`` are deleted. A ``path`` that is not
    a complete archive (truncated) is not kept: it is replaced and the older versions stay."""
    rotate = keep > 1 and path.is_file() and zipfile.is_zipfile(path)
    for n, p in reversed(_kept(path)):  # oldest first, so no rename lands on a newer version
        if n + int(rotate) >= keep:
            p.unlink()
        elif rotate:
            os.replace(p, kept_path(path, n + 1))
    if rotate:
        os.replace(path, kept_path(path, 1))


def _head_mismatches(ckpt: Checkpoint) -> list[str]:
    """One line per head whose weights have another number of outputs than its label space has classes."""
    out = []
    for head, space in ckpt.label_spaces.items():
        weight = ckpt.model.get(f"heads.{head}.weight")
        if isinstance(weight, torch.Tensor) and weight.ndim and weight.shape[0] != space.num_classes:
            out.append(
                f"head '{head}': label space '{space.name}' has {space.num_classes} classes, "
                f"but the head's weights have {weight.shape[0]} outputs"
            )
    return out


def _state_mismatches(saved: Mapping[str, Any], own: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and differently shaped entries of ``saved`` against the model's ``own``."""
    out = [f"missing weights: {k}" for k in own if k not in saved]
    out += [f"unexpected weights: {k}" for k in saved if k not in own]
    for k, v in saved.items():
        mine = own.get(k)
        if isinstance(v, torch.Tensor) and isinstance(mine, torch.Tensor) and v.shape != mine.shape:
            out.append(f"{k}: checkpoint {tuple(v.shape)}, model {tuple(mine.shape)}")
    return out


def _upgrade_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """Format 1 -> 2: method state dicts become module state dicts; optimizers move under one key."""
    out = {k: v for k, v in raw.items() if k not in ("optimizer", "method")}
    old = raw.get("method", {})
    method: dict[str, torch.Tensor] = {}
    optimizers = {"model": raw["optimizer"]} if "optimizer" in raw else {}
    if "centroids" in old:
        bank = old["centroids"]
        method["bank.initialised"] = torch.tensor(bool(bank["ready"]))
        for domain, c in bank["centroids"].items():
            method[f"bank.domains.{domain}.centroids"] = c
            method[f"bank.domains.{domain}.valid"] = bank["valid"][domain]
    if "discriminators" in old:
        for domain, state in old["discriminators"].items():
            method.update({f"discriminators.{domain}.{k}": v for k, v in state.items()})
        optimizers["discriminators"] = old["d_optimizer"]
    out["method"], out["optimizers"] = method, optimizers
    return out


def init_from_checkpoint(
    model: torch.nn.Module, path: str | Path, label_spaces: Mapping[str, LabelSpace], norm_from: str | None = None
) -> list[str]:
    """Copy a checkpoint's encoder, decoder and embedding weights, and heads with the same name and
    classes, into ``model`` (fine-tuning). Under per-domain BatchNorm, a domain the checkpoint lacks
    starts from domain ``norm_from``'s BatchNorm (default: the checkpoint's first). Returns the names
    of the heads that start from scratch."""
    ckpt = Checkpoint.load(path)
    saved = ckpt.label_spaces
    own = model.state_dict()
    fresh = [h for h in label_spaces if h not in saved or saved[h].names != label_spaces[h].names]
    take = {
        k: v
        for k, v in adapt_norm_keys(ckpt.model, own, norm_from).items()
        if k in own and not any(k.startswith(f"heads.{h}.") for h in fresh) and v.shape == own[k].shape
    }
    missing = [k for k in own if k not in take and not any(k.startswith(f"heads.{h}.") for h in fresh)]
    if missing:
        raise CheckpointError(
            f"model.init_from={path}: the checkpoint lacks or has differently shaped weights for {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}; it was trained with another backbone or embedding size",
            path=path,
            key="model.init_from",
        )
    model.load_state_dict(take, strict=False)
    return fresh
