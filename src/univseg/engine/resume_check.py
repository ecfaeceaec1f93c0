"""What ``train --resume`` may change: the new config against the one the checkpoint was trained with.

A resumed run continues exactly only with the settings it was trained with. Settings that change
what is computed (method and its settings, model, data, optimizer, schedule, seed, iterations, ...)
are refused with the list of differences and the ways out; the keys named with ``--allow-changes``
are accepted on purpose (e.g. ``train.iters`` to extend a run). Settings that only say where data
lives, how fast it loads or how often progress is logged and saved
(:data:`~univseg.config.RESULT_NEUTRAL_KEYS`) may always change. A few settings can never change in a
resumed run, because the saved state would not fit them (:data:`FIXED_ON_RESUME`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from ..config import Config, config_differences
from ..errors import CheckpointError, ConfigError
from ..validation import dotted

#: keys whose change the saved state does not fit (another method's state, another optimizer's state)
FIXED_ON_RESUME = ("method.name", "method.domains", "train.optimizer.type")


def _covers(allowed: str, key: str) -> bool:
    """Whether ``--allow-changes allowed`` covers the dotted ``key`` (the key itself or a key below it)."""
    return key == allowed or key.startswith((f"{allowed}.", f"{allowed}["))


def resume_changes(
    stored: Mapping[str, Any], cfg: Config, allowed: Sequence[str], source: Path, iteration: int
) -> tuple[list[str], list[str]]:
    """The differences (``'key: old -> new'``) between ``cfg`` and ``stored``, the config checkpoint
    ``source`` (at ``iteration``) was trained with, when ``allowed`` covers every one of them; and
    the keys of ``allowed`` that cover none (nothing changed there).

    Raises ConfigError listing the differences that are not allowed and the ways out, naming the
    ones (FIXED_ON_RESUME) that cannot change at all.
    """
    diffs = config_differences(_stored_config(stored, source), cfg)
    lines = {key: f"{key}: {a!r} -> {b!r}" for key, a, b in diffs}
    fixed = [k for k in lines if any(_covers(f, k) for f in FIXED_ON_RESUME)]
    refused = [k for k in lines if k not in fixed and not any(_covers(a, k) for a in allowed)]
    if fixed or refused:
        raise ConfigError(_refusal(lines, fixed, refused, source, iteration), path=source,
                          key=(fixed + refused)[0], values=[lines[k] for k in fixed + refused])
    return list(lines.values()), [a for a in allowed if not any(_covers(a, k) for k in lines)]


def _stored_config(stored: Mapping[str, Any], source: Path) -> Config:
    """The config saved in checkpoint ``source``, validated as this univseg's Config: keys that no longer
    exist (written by an older univseg, unused now) are dropped, keys added since take their defaults.
    CheckpointError when it does not validate otherwise."""
    data = copy.deepcopy(dict(stored))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = e.errors(include_url=False)
    if any(p["type"] != "extra_forbidden" for p in problems):
        raise CheckpointError(
            f"--resume: the config saved in {source} does not validate ({', '.join(dotted(p['loc']) for p in problems)}); "
            "it cannot be compared with this one. Start over with --overwrite (the old run is moved aside, not deleted)",
            path=source,
        )
    for p in problems:
        *parents, key = p["loc"]
        node: Any = data
        for part in parents:
            node = node[part]
        del node[key]
    return Config.model_validate(data)


def _refusal(lines: Mapping[str, str], fixed: list[str], refused: list[str], source: Path, iteration: int) -> str:
    """The message refusing a resume: the differences, then every way out."""
    text = f"--resume: {source} (iteration {iteration}) was trained with other settings; continuing with these would not be the same run:"
    text += "".join(f"\n  {lines[k]}" for k in fixed + refused)
    if fixed:
        text += f"\n{', '.join(fixed)} cannot change in a resumed run (the saved state does not fit)."
    text += (
        f"\nWays out: run with the settings the checkpoint was trained with (saved in {source.parent / 'config.yaml'}); "
        "start over with --overwrite (the old run is moved aside, nothing is deleted) or another --work-dir"
    )
    if not fixed:
        text += f"; or keep the new settings from iteration {iteration} on, on purpose: --resume --allow-changes {' '.join(refused)}"
    return text
