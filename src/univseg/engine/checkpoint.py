"""Checkpoint files: written atomically, loaded safely (weights_only), versioned, self-describing.

A checkpoint stores the resolved config, each head's label space and the format version next
to the weights, so a model can be loaded for prediction without any config file, and loading
it into a different setup says exactly what differs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from .. import __version__
from ..data.label_space import LabelSpace
from ..utils.files import atomic_torch_save

FORMAT = "univseg-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """An unreadable or incompatible checkpoint; the message names the file and the difference."""


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (plus format markers) atomically to ``path``."""
    atomic_torch_save({"format": FORMAT, "format_version": FORMAT_VERSION, "univseg_version": __version__, **payload}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a univseg checkpoint with ``weights_only=True`` (no code from the file is executed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise CheckpointError(
            f"cannot load checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "The file is truncated, corrupt, or not a plain-tensor univseg checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a univseg checkpoint (no '{FORMAT}' marker)")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {ckpt['format_version']} (univseg {ckpt.get('univseg_version')}); "
            f"this univseg ({__version__}) reads up to format {FORMAT_VERSION}: upgrade univseg"
        )
    return ckpt


def checkpoint_label_spaces(ckpt: Mapping[str, Any]) -> dict[str, LabelSpace]:
    """``{head name: LabelSpace}`` stored in a checkpoint."""
    return {name: LabelSpace.from_dict(d) for name, d in ckpt["label_spaces"].items()}


def check_compatible(ckpt: Mapping[str, Any], model_cfg: Mapping[str, Any], label_spaces: Mapping[str, LabelSpace], path: str | Path) -> None:
    """Raise CheckpointError listing every difference between a checkpoint and the current setup."""
    diffs = []
    saved_model = ckpt["config"]["model"]
    for key in ("backbone", "embed_dim", "head_channels", "backbone_args"):
        if saved_model.get(key) != model_cfg.get(key):
            diffs.append(f"model.{key}: checkpoint {saved_model.get(key)!r}, config {model_cfg.get(key)!r}")
    saved_spaces = checkpoint_label_spaces(ckpt)
    if set(saved_spaces) != set(label_spaces):
        diffs.append(f"heads: checkpoint {sorted(saved_spaces)}, config {sorted(label_spaces)}")
    for name in sorted(set(saved_spaces) & set(label_spaces)):
        a, b = saved_spaces[name], label_spaces[name]
        if a.names != b.names:
            diffs.append(f"head '{name}' classes: checkpoint {a.names}, config {b.names}")
    if diffs:
        raise CheckpointError(f"checkpoint {path} does not match this configuration:\n  " + "\n  ".join(diffs))


def init_from_checkpoint(model: torch.nn.Module, path: str | Path, label_spaces: Mapping[str, LabelSpace]) -> list[str]:
    """Copy a checkpoint's encoder and embedding weights, and heads with the same name and classes,
    into ``model`` (fine-tuning). Returns the names of the heads that start from scratch."""
    ckpt = load_checkpoint(path)
    saved = checkpoint_label_spaces(ckpt)
    own = model.state_dict()
    fresh = [h for h in label_spaces if h not in saved or saved[h].names != label_spaces[h].names]
    take = {
        k: v
        for k, v in ckpt["model"].items()
        if k in own and not any(k.startswith(f"heads.{h}.") for h in fresh) and v.shape == own[k].shape
    }
    missing = [k for k in own if k not in take and not any(k.startswith(f"heads.{h}.") for h in fresh)]
    if missing:
        raise CheckpointError(
            f"model.init_from={path}: the checkpoint lacks or has differently shaped weights for {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}; it was trained with another backbone or embedding size"
        )
    model.load_state_dict(take, strict=False)
    return fresh
