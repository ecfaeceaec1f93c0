"""The checkpoint record: what a univseg ``.pt`` file holds, written atomically, read safely.

A :class:`Checkpoint` stores the resolved config, each head's label space and the format
version next to the weights, so a model can be loaded for prediction without any config file,
and loading it into a different setup says exactly what differs. Files are written with
``torch.save`` through a temporary file and a rename (a crash never leaves half a file), and read
with ``torch.load(weights_only=True)``: no code from a file is ever executed.

Format history:
    1  method state as plain dicts (``{"centroids": {...}}`` or ``{"discriminators": ...,
       "d_optimizer": ...}``), the model's optimizer under ``optimizer``. Still read: it is
       upgraded on load.
    2  the method is a module (``method`` is its state dict), every optimizer under
       ``optimizers`` by name (``model``, then the method's auxiliary ones), and ``data``
       records what the data order depends on.
"""
from __future__ import annotations

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

    def save(self, path: str | Path) -> None:
        """Write the record atomically to ``path`` (in the current format)."""
        record = {f.name: getattr(self, f.name) for f in fields(self)} | {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "univseg_version": __version__,
            "label_spaces": {k: ls.to_dict() for k, ls in self.label_spaces.items()},
        }
        atomic_torch_save(record, path)

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
        if version == 1:
            raw = _upgrade_v1(raw)
        try:
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
                f"{path} is an incomplete univseg checkpoint ({type(e).__name__}: {e}); it cannot be used",
                path=path,
            ) from None

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
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise CheckpointError(
            f"cannot load checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "The file is truncated, corrupt, or not a plain-tensor univseg checkpoint",
            path=path,
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a univseg checkpoint (no '{FORMAT}' marker)", path=path)
    return raw


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
