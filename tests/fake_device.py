"""Run PyTorch code as if its model lived on an accelerator, on a machine without one.

:class:`OnDevice` is a tensor subclass that reports ``device='meta'`` while its data lives on the
CPU, so every operation really computes (``.item()``, ``bool(mask.any())``, ``nonzero`` and other
data-dependent shapes work, unlike on true meta tensors, which have no data). Each operation checks
the rule a GPU enforces: tensors of the model's device must not meet tensors with more than one
element on the CPU (0-dim CPU tensors are scalars, which CUDA also accepts); a breach raises the
error a GPU would raise (copies between devices and CPU index tensors are allowed, as on CUDA). Factory functions called with ``device=<the model's device>`` make
``OnDevice`` tensors (:class:`OnDeviceMode` must be active for those, as no argument is one);
factory functions without a device make CPU tensors, so a tensor created "beside" the model's is
caught as soon as it meets one of the model's. An explicit ``.to("cpu")`` / ``.cpu()`` leaves.
Not covered: ``.tolist()`` (refused on tensor subclasses; call ``.cpu()`` first), CUDA-only
kernels and autocast (the operations run on the CPU, in the dtypes they are given).

Example:
    model = on_device(model)              # parameters and buffers report device meta
    with OnDeviceMode():
        loss = model(to_device(x)).sum()  # a CPU tensor meeting them raises RuntimeError
        loss.backward()
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

DEVICE = torch.device("meta")
CPU = torch.device("cpu")
#: Operations CUDA runs across devices: copies between devices, and indexing with CPU indices.
CROSS_DEVICE = {torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default}
CPU_INDICES = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default,
               torch.ops.aten._index_put_impl_.default}


class DeviceMismatch(RuntimeError):
    """A CPU tensor met a tensor of the model's device in one operation (a GPU raises here too)."""


class OnDevice(torch.Tensor):
    """A CPU tensor (``inner``) that reports device ``meta``; see the module docstring."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor, requires_grad: bool = False) -> "OnDevice":
        out = torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(), dtype=inner.dtype,
            layout=inner.layout, device=DEVICE, requires_grad=requires_grad,
        )
        out.inner = inner
        return out

    def __repr__(self) -> str:  # the default repr would print through the dispatcher
        return f"OnDevice({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return run_op(func, args, kwargs or {})


def run_op(func: Any, args: tuple, kwargs: dict) -> Any:
    """Run ``func`` on the CPU data; raise :class:`DeviceMismatch` where a GPU would; wrap the outputs
    of operations that involved the model's device (or were asked for it)."""
    inputs: list[OnDevice] = []
    cpu: list[torch.Tensor] = []

    def unwrap(x: Any) -> Any:
        if isinstance(x, OnDevice):
            inputs.append(x)
            return x.inner
        if isinstance(x, torch.Tensor) and x.device == CPU and x.dim() > 0:
            cpu.append(x)
        return x

    if func in CPU_INDICES:  # the indices argument may stay on the CPU
        args = (tree_map(unwrap, args[0]), tree_map(lambda x: x.inner if isinstance(x, OnDevice) else x, args[1]),
                *tree_map(unwrap, args[2:]))
        kwargs = tree_map(unwrap, kwargs)
    else:
        args, kwargs = tree_map(unwrap, (args, kwargs))
    target = kwargs.get("device")
    if target is not None:
        kwargs = {**kwargs, "device": CPU}
    on_device = torch.device(target) == DEVICE if target is not None else bool(inputs)
    if inputs and cpu and target is None and func not in CROSS_DEVICE:
        shapes = ", ".join(str(tuple(t.shape)) for t in cpu)
        raise DeviceMismatch(
            f"Expected all tensors to be on the same device, but found at least two devices, {DEVICE.type} and cpu! "
            f"({func}: CPU tensor(s) of shape {shapes})"
        )
    out = func(*args, **kwargs)
    if not on_device:
        return out
    by_inner = {id(x.inner): x for x in inputs}  # in-place and out= operations return their argument

    def wrap(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        return by_inner[id(t)] if id(t) in by_inner else OnDevice(t)

    return tree_map(wrap, out)


class OnDeviceMode(TorchDispatchMode):
    """Makes factory functions asked for ``device='meta'`` create :class:`OnDevice` tensors."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return run_op(func, args, kwargs or {})


def to_device(t: torch.Tensor) -> OnDevice:
    """``t``'s data as an :class:`OnDevice` tensor."""
    return OnDevice(t.detach(), requires_grad=t.requires_grad)


def on_device(module: nn.Module) -> nn.Module:
    """Move ``module``'s parameters and buffers to the model's device (in place); returns ``module``."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = nn.Parameter(to_device(p), requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = to_device(b)
    return module
