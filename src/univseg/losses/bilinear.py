"""Bilinear upsampling as two taps per output row and column, so that the losses can use the upsampled
embedding (scores, norms, per-class sums) without materialising it at input resolution.

``F.interpolate(mode="bilinear", align_corners=False)`` (the model's ``upsample``) is separable and
linear: output pixel (y, x) is ``sum_{r,s in {0,1}} a_r(y) b_s(x) E[i0(y) + r, j0(x) + s]`` with
two taps per axis. :func:`bilinear_taps` reads those taps off ``F.interpolate`` itself (it
interpolates one-hot rows), so they are the kernel's own weights, on the kernel's own device.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Taps(NamedTuple):
    """The two source taps of each of ``n_out`` output positions along one axis.

    ``index`` [n_out] (long) is the first source index i0; ``w0`` and ``w1`` [n_out] (float32) are
    the weights of i0 and i0 + 1. At the last source index ``w1`` is 0 (the kernel clamps i0 + 1 to
    i0 and merges the weights into ``w0``), so i0 + 1 may point one past the end: a padded
    (replicated) row or a row of weight 0.
    """

    index: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor


def bilinear_upsample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The model's ``upsample``: bilinear resize of [B, C, h, w] to ``size`` (no-op when already that size)."""
    return t if tuple(t.shape[-2:]) == tuple(size) else F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def bilinear_taps(n_in: int, n_out: int, device: torch.device | str | None = None) -> Taps:
    """Taps of ``F.interpolate(..., mode="bilinear", align_corners=False)`` from ``n_in`` to ``n_out`` along one axis."""
    onehot = torch.eye(n_in, device=device).view(1, n_in, n_in, 1)  # channel c: one-hot at source row c
    a = F.interpolate(onehot, size=(n_out, 1), mode="bilinear", align_corners=False)[0, :, :, 0].T  # [n_out, n_in]
    src = torch.arange(n_in, device=a.device)
    i0 = torch.where(a > 0, src, n_in).amin(dim=1)  # first source with a non-zero weight
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w0 = a.gather(1, i0.unsqueeze(1)).squeeze(1)
    w1 = torch.where(i1 > i0, a.gather(1, i1.unsqueeze(1)).squeeze(1), torch.zeros_like(w0))
    return Taps(i0, w0, w1)


def upsampled_sq_norm(embedding: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``upsample(embedding, size).pow(2).sum(1)`` [B, H, W] without the [B, D, H, W] upsampled tensor.

    |sum_t w_t e_t|^2 = sum_{t,t'} w_t w_t' <e_t, e_t'> over the 2x2 taps of each output pixel, so only
    the inner products of neighbouring feature pixels are needed: five [B, h(+1), w(+1)] maps at
    feature resolution (norms, right, down, diagonal and anti-diagonal neighbours), combined with
    the tap weights first along the width, then along the height. Differentiable; float32. It
    equals the direct computation up to float rounding (see tests/test_lean_entropy.py).
    """
    e = embedding.float()
    h, w = e.shape[-2:]
    ty = bilinear_taps(h, size[0], e.device)
    tx = bilinear_taps(w, size[1], e.device)
    ep = F.pad(e, (0, 1, 0, 1), mode="replicate")  # i0 + 1 / j0 + 1 one past the end read a weight-0 copy
    norm = (ep * ep).sum(1)  # [B, h+1, w+1]  <E(i, j), E(i, j)>
    right = (ep[..., :, :-1] * ep[..., :, 1:]).sum(1)  # [B, h+1, w]  <E(i, j), E(i, j+1)>
    down = (ep[..., :-1, :] * ep[..., 1:, :]).sum(1)  # [B, h, w+1]  <E(i, j), E(i+1, j)>
    diag = (ep[..., :-1, :-1] * ep[..., 1:, 1:]).sum(1)  # [B, h, w]  <E(i, j), E(i+1, j+1)>
    anti = (ep[..., :-1, 1:] * ep[..., 1:, :-1]).sum(1)  # [B, h, w]  <E(i, j+1), E(i+1, j)>
    j, b0, b1 = tx
    # along the width: |b0 E(i, j) + b1 E(i, j+1)|^2 per source row i, and the cross term of rows i, i+1
    rows = b0 * b0 * norm[..., j] + b1 * b1 * norm[..., j + 1] + 2 * b0 * b1 * right[..., j]  # [B, h+1, W]
    cross = b0 * b0 * down[..., j] + b1 * b1 * down[..., j + 1] + b0 * b1 * (diag[..., j] + anti[..., j])  # [B, h, W]
    i, a0, a1 = ty.index, ty.w0.unsqueeze(1), ty.w1.unsqueeze(1)
    return a0 * a0 * rows[:, i] + a1 * a1 * rows[:, i + 1] + 2 * a0 * a1 * cross[:, i]  # [B, H, W]
