"""Mixed precision and memory layout: which autocast dtype and which tensor layout to use on which device."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def bf16_is_fast(device: torch.device) -> bool:
    """True where bf16 math runs natively: CUDA with bf16 support, or a CPU with AVX-512 BF16 / AMX.

    On CPUs without it (e.g. AVX2-only), bf16 autocast is emulated and far slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX-512 BF16 or AMX instructions.

    oneDNN also "supports" bf16 on plain AVX-512 by emulation (measured 2.8x slower than fp32 on
    such a Xeon), so its own check is not used.
    """
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(check is not None for check in checks):
        return any(check() for check in checks)
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(amp: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where it is fast on ``device``, else 'none'; other values pass through."""
    if amp == "auto":
        return "bf16" if bf16_is_fast(device) else "none"
    return amp


def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` in {'none', 'bf16', 'fp16'} on ``device``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_channels_last(setting: bool | str, device: torch.device, amp: str, depthwise_encoder: bool) -> bool:
    """``train.channels_last``: 'auto' -> True on CPU (oneDNN's NHWC convolutions, measured faster
    for every encoder in fp32 and bf16) except bf16 training of an encoder built on depthwise
    convolutions (``depthwise_encoder``; no reliable gain there), and on CUDA with bf16/fp16
    autocast (tensor cores); False on CUDA in fp32 and elsewhere. Booleans pass through."""
    if setting != "auto":
        return bool(setting)
    if device.type == "cpu":
        return not (amp == "bf16" and depthwise_encoder)
    return device.type == "cuda" and amp in ("bf16", "fp16")
