"""Export a trained model to ONNX or TorchScript, check the file against PyTorch, and predict with it.

    univseg export work_dirs/demo/best.pt --format onnx --label-space city --out city.onnx

An exported file maps a float32 batch ``[B, 3, H, W]`` (RGB, 0..255: normalisation is inside the
model) to one ``[B, K, H, W]`` logits tensor per exported head; batch, height and width are
dynamic. With ``--label-space all`` every head is exported (ONNX outputs are named after the
heads; TorchScript returns a tuple in the same order). Under per-domain BatchNorm a head's output
is computed with its own domain's BatchNorm (one pass per head). The file holds its label spaces
(head names, label-space names, class names and colours) as JSON: ONNX ``metadata_props`` key
``univseg``, TorchScript extra file ``univseg.json``.

Both formats are produced by tracing the model at one size (the legacy TorchScript-based ONNX
exporter, ``dynamo=False``, which needs no ``onnxscript``); :func:`verify_export` then compares the
file with PyTorch at other sizes, which catches any shape frozen at the trace size.

:class:`OnnxPredictor` (onnxruntime) and :class:`TorchScriptPredictor` have the interface of
:class:`~univseg.engine.predictor.Predictor` (``logits``, ``predict``, ``predict_all``,
``label_spaces``, ``inference``), so ``univseg predict --runtime onnxruntime`` writes the same files.
"""
from __future__ import annotations

import argparse
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data.base import files_or_folders, read_image
from ..data.label_space import LabelSpace
from ..errors import CheckpointError, ConfigError, UnivsegError
from ..models.universal import UniversalModel
from ..utils.dist import resolve_device
from ..utils.files import atomic_write
from ..utils.table import markdown_table
from .export_options import DEFAULT_ATOL, DEFAULT_MIN_AGREEMENT, DEFAULT_SIZES, FORMATS, RUNTIMES
from .inference import InferenceSettings
from .predictor import Predictor

OPSET = 17
INPUT_NAME = "image"
METADATA_KEY = "univseg"  # ONNX metadata_props key
EXTRA_FILE = "univseg.json"  # TorchScript _extra_files name
EXPORT_FORMAT = "univseg-export"
EXPORT_VERSION = 1
TRACE_SIZE = (128, 192)  # the example input's height and width; verification uses other sizes
EXPORT_EXTRA_HINT = 'pip install "univseg[export]"'


# ----------------------------------------------------------------------------- export

class ExportModule(nn.Module):
    """The graph that is exported: ``[B, 3, H, W]`` float images (0..255) -> a tuple of ``[B, K, H, W]``
    logits, one per head of ``heads``, upsampled to the input size.

    Under per-domain BatchNorm each head's pass runs with that head's domain, set inside ``forward``
    (``UniversalModel.features`` activates it), so a trace records that domain's BatchNorm weights.
    With shared BatchNorm all heads share one encoder pass.
    """

    def __init__(self, model: UniversalModel, heads: Sequence[str]) -> None:
        super().__init__()
        self.model = model.eval()
        self.head_names = list(heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, size = self.model, x.shape[-2:]
        if m.norm == "shared":
            out = m.decode(m.features(x), size, self.head_names)
            return tuple(out[h] for h in self.head_names)
        return tuple(m.decode(m.features(x, h), size, [h])[h] for h in self.head_names)


def export_model(
    checkpoint: str | Path,
    fmt: str = "onnx",
    label_space: str = "all",
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Export ``checkpoint``'s head ``label_space`` (a head or label-space name, or ``'all'``) as
    ``fmt`` (``onnx`` or ``torchscript``) to ``out`` (default: beside the checkpoint,
    ``<stem>_<head|all><suffix>``), atomically; returns the file written.

    An existing ``out`` is refused unless ``overwrite``. Checkpoint problems raise Checkpoint.load's
    CheckpointError; an unknown label space raises UnknownNameError listing the model's.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unsupported export format '{fmt}'; use one of {', '.join(FORMATS)}", key="--format")
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", amp="none")
    heads = select_heads(predictor, label_space)
    out = Path(out) if out is not None else default_output(checkpoint, fmt, "all" if label_space == "all" else heads[0])
    check_output_file(out, overwrite)
    module = ExportModule(predictor.model, heads)
    meta = json.dumps(export_metadata(predictor, heads, checkpoint))
    write = _write_onnx if fmt == "onnx" else _write_torchscript
    atomic_write(out, lambda tmp: write(module, meta, tmp), f"{fmt} model")
    return out


def select_heads(predictor: Predictor, label_space: str | None) -> list[str]:
    """Every head for ``'all'``, else the one head ``label_space`` names (UnknownNameError listing the heads)."""
    return list(predictor.label_spaces) if label_space == "all" else [predictor.resolve(label_space)]


def default_output(checkpoint: str | Path, fmt: str, which: str) -> Path:
    """``<checkpoint folder>/<checkpoint stem>_<which><format suffix>``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}_{which}{FORMATS[fmt]}")


def check_output_file(out: Path, overwrite: bool) -> None:
    """ConfigError when ``out`` (``--out``) is a folder, or an existing file and not ``overwrite``."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the path of the file to write", key="--out", path=out)
    if out.exists() and not overwrite:
        raise ConfigError(
            f"--out {out} already exists; pass --overwrite to replace it, or give another --out", key="--out", path=out
        )


def export_metadata(predictor: Predictor, heads: Sequence[str], checkpoint: str | Path) -> dict[str, Any]:
    """What the exported file says about itself: its heads (the output order), their label spaces
    (names, class names, colours), the input convention and where it came from."""
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "univseg_version": __version__,
        "heads": list(heads),
        "label_spaces": {h: predictor.label_spaces[h].to_dict() for h in heads},
        "norm": predictor.model.norm,
        "input": f"'{INPUT_NAME}': float32 [batch, 3, height, width], RGB, values 0..255 (normalised inside the model)",
        "outputs": "one float32 [batch, classes, height, width] logits tensor per head, in 'heads' order",
        "checkpoint": Path(checkpoint).name,
    }


def _example_input() -> torch.Tensor:
    """The [1, 3, H, W] image (TRACE_SIZE) the model is traced with."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, 3, *TRACE_SIZE), generator=generator).float()


def _trace(module: ExportModule) -> torch.jit.ScriptModule:
    """``module`` traced on the example input (warnings silenced: see :func:`verify_export`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module, _example_input(), check_trace=False)


def _write_onnx(module: ExportModule, meta: str, path: Path) -> None:
    """ONNX file of ``module`` (opset OPSET, dynamic batch, height and width) with ``meta`` as metadata."""
    onnx = _require("onnx", "exporting to ONNX")
    heads = module.head_names
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated; its shapes are verified
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (_example_input(),), str(path), dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=heads, dynamic_axes={name: axes for name in [INPUT_NAME, *heads]},
        )
    proto = onnx.load(str(path))
    proto.metadata_props.add(key=METADATA_KEY, value=meta)
    onnx.save(proto, str(path))


def _write_torchscript(module: ExportModule, meta: str, path: Path) -> None:
    """TorchScript file of ``module`` (traced) with ``meta`` as the extra file EXTRA_FILE."""
    traced = _trace(module)
    with warnings.catch_warnings():  # torch.jit is deprecated upstream but still the TorchScript format
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(path), _extra_files={EXTRA_FILE: meta})


def _require(name: str, purpose: str) -> Any:
    """Import the optional module ``name``; UnivsegError naming the export extra when it is missing."""
    try:
        return __import__(name)
    except ImportError:
        raise UnivsegError(
            f"{purpose} needs the '{name}' package, which is not installed; {EXPORT_EXTRA_HINT}", hint=EXPORT_EXTRA_HINT
        ) from None


# ----------------------------------------------------------------------------- exported models as predictors

class _ExportedHeads(nn.Module):
    """An exported model called like :class:`UniversalModel`: ``model(x, heads=[...]) -> {head: logits}``."""

    def __init__(self, heads: Sequence[str]) -> None:
        super().__init__()
        self.head_names = list(heads)

    def run(self, x: torch.Tensor) -> Sequence[torch.Tensor]:
        """Every head's logits of ``x``, in ``head_names`` order."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, heads: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        wanted = self.head_names if heads is None else list(heads)
        unknown = [h for h in wanted if h not in self.head_names]
        if unknown:
            raise KeyError(f"the exported model has no head {unknown[0]!r}; heads: {', '.join(self.head_names)}")
        out = dict(zip(self.head_names, self.run(x)))
        return {h: out[h] for h in wanted}


class _OnnxHeads(_ExportedHeads):
    """An onnxruntime session (float32 CPU arrays in and out)."""

    def __init__(self, session: Any, heads: Sequence[str]) -> None:
        super().__init__(heads)
        self.session = session

    def run(self, x: torch.Tensor) -> Sequence[torch.Tensor]:
        feed = {INPUT_NAME: np.ascontiguousarray(x.detach().float().cpu().numpy())}
        return [torch.from_numpy(a) for a in self.session.run(self.head_names, feed)]


class _TorchScriptHeads(_ExportedHeads):
    """A loaded TorchScript module returning a tuple of logits."""

    def __init__(self, module: torch.jit.ScriptModule, heads: Sequence[str]) -> None:
        super().__init__(heads)
        self.module = module

    def run(self, x: torch.Tensor) -> Sequence[torch.Tensor]:
        return self.module(x.float())


class OnnxPredictor(Predictor):
    """:class:`Predictor`'s interface (``logits``, ``predict``, ``predict_all``, ``label_spaces``,
    ``inference``) over an ONNX file written by :func:`export_model`, run with onnxruntime."""

    @classmethod
    def from_file(cls, path: str | Path, device: str = "auto", inference: InferenceSettings = InferenceSettings()) -> "OnnxPredictor":
        """Load ``path`` on ``device`` (auto | cpu | cuda | cuda:N: onnxruntime's execution provider)."""
        ort = _require("onnxruntime", "running an ONNX model")
        path = _existing_file(path)
        try:
            session = ort.InferenceSession(str(path), providers=_providers(ort, device))
        except Exception as e:  # onnxruntime raises its own types for files that are not ONNX models
            raise CheckpointError(
                f"{path} is not an ONNX model that onnxruntime can load ({_first_line(e)}); "
                f"give a file written by 'univseg export --format onnx' (a checkpoint runs with --runtime torch)",
                path=path,
            ) from None
        heads, spaces = parse_metadata(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)
        return cls(_OnnxHeads(session, heads), spaces, "none", inference)

    @property
    def device(self) -> torch.device:
        """Inputs are handed to onnxruntime from the CPU, whatever its execution provider."""
        return torch.device("cpu")


class TorchScriptPredictor(Predictor):
    """:class:`Predictor`'s interface over a TorchScript file written by :func:`export_model`."""

    @classmethod
    def from_file(
        cls, path: str | Path, device: str = "auto", inference: InferenceSettings = InferenceSettings()
    ) -> "TorchScriptPredictor":
        """Load ``path`` (with ``torch.jit.load``) on ``device`` (auto | cpu | cuda | cuda:N)."""
        path = _existing_file(path)
        extra = {EXTRA_FILE: ""}
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated upstream but still the TorchScript format
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location=resolve_device(device), _extra_files=extra)
        except Exception as e:  # torch raises RuntimeErrors of many kinds for files that are not TorchScript
            raise CheckpointError(
                f"{path} is not a TorchScript model ({_first_line(e)}); give a file written "
                "by 'univseg export --format torchscript' (a checkpoint runs with --runtime torch)",
                path=path,
            ) from None
        heads, spaces = parse_metadata(extra[EXTRA_FILE] or None, path)
        return cls(_TorchScriptHeads(module, heads), spaces, "none", inference)


def load_exported(path: str | Path, device: str = "auto", inference: InferenceSettings = InferenceSettings()) -> Predictor:
    """The predictor of an exported file, by its content: TorchScript (a zip archive) or ONNX."""
    path = _existing_file(path)
    cls = TorchScriptPredictor if zipfile.is_zipfile(path) else OnnxPredictor
    return cls.from_file(path, device, inference)


def open_predictor(
    path: str | Path, runtime: str = "torch", device: str = "auto", inference: InferenceSettings = InferenceSettings()
) -> Predictor:
    """The predictor of ``path`` for ``univseg predict --runtime``: ``torch`` reads a checkpoint,
    ``onnxruntime`` an ONNX file, ``torchscript`` a TorchScript file."""
    if runtime == "torch":
        return Predictor.from_checkpoint(path, device=device, inference=inference)
    if runtime == "onnxruntime":
        return OnnxPredictor.from_file(path, device, inference)
    if runtime == "torchscript":
        return TorchScriptPredictor.from_file(path, device, inference)
    raise ConfigError(f"--runtime: unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}", key="--runtime")


def parse_metadata(text: str | None, path: Path) -> tuple[list[str], dict[str, LabelSpace]]:
    """Heads (output order) and ``{head: LabelSpace}`` of an exported file's univseg metadata."""
    try:
        meta = json.loads(text) if text else None
        if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
            raise ValueError(f"no '{METADATA_KEY}' metadata")
        heads = list(meta["heads"])
        return heads, {h: LabelSpace.from_dict(meta["label_spaces"][h]) for h in heads}
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path} is not a univseg export ({type(e).__name__}: {e}): it lacks the label spaces univseg stores; "
            "export the checkpoint again with 'univseg export'",
            path=path,
        ) from None


def _existing_file(path: str | Path) -> Path:
    """``path`` as a Path; CheckpointError when it is missing or a folder."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise CheckpointError(f"exported model {path} {what}; give the file 'univseg export' wrote", path=path)
    return path


def _providers(ort: Any, device: str) -> list[Any]:
    """onnxruntime execution providers for ``device``: CUDA (when installed) then CPU for auto."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise ConfigError(
                f"--device {device}: this onnxruntime has no CUDA execution provider (it has {', '.join(available)}); "
                "install onnxruntime-gpu or use --device cpu",
                key="--device",
            )
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ConfigError(f"--device: unknown device '{device}'; use auto, cpu, cuda or cuda:N", key="--device")


# ----------------------------------------------------------------------------- verification

@dataclass(frozen=True)
class Comparison:
    """PyTorch against the exported file on one input batch, in one label space (head)."""

    inputs: str
    head: str
    max_abs_diff: float
    agreement: float  # fraction of pixels whose arg-max class is the same
    error: str | None = None  # why the exported model gave no (or wrongly shaped) logits


@dataclass(frozen=True)
class ExportCheck:
    """Every comparison of :func:`verify_export` and the limits they are held to."""

    comparisons: list[Comparison]
    atol: float = DEFAULT_ATOL
    min_agreement: float = DEFAULT_MIN_AGREEMENT

    @property
    def ok(self) -> bool:
        """Every max abs logit difference <= ``atol`` and every arg-max agreement >= ``min_agreement``."""
        return all(c.max_abs_diff <= self.atol and c.agreement >= self.min_agreement for c in self.comparisons)

    def format(self) -> str:
        """The comparisons as a table, then the verdict and the limits."""
        rows = [[c.inputs, c.head, f"{c.max_abs_diff:.2e}", f"{100 * c.agreement:.3f}"] for c in self.comparisons]
        table = markdown_table(["input", "label space", "max abs logit diff", "arg-max agreement %"], rows)
        limits = f"max abs logit difference <= {self.atol:g} and arg-max agreement >= {100 * self.min_agreement:g}%"
        errors = list(dict.fromkeys(f"{c.inputs}: {c.error}" for c in self.comparisons if c.error))
        verdict = "OK: the exported model matches PyTorch" if self.ok else "FAILED: the exported model differs from PyTorch"
        return "\n".join([table, *errors, f"{verdict} ({limits})"])


def verify_export(
    checkpoint: str | Path | Predictor,
    exported: str | Path,
    images: Iterable[str | Path] = (),
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    atol: float = DEFAULT_ATOL,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    seed: int = 0,
) -> ExportCheck:
    """Compare the logits of ``checkpoint`` (PyTorch, float32 on the CPU) and of the ``exported``
    file (onnxruntime or TorchScript) for every head the file has: on a batch of 2 random images
    at each of ``sizes`` (height, width) and on each real image of ``images`` (files or folders) at
    its own size. Reports the max abs logit difference and the arg-max agreement per input and head."""
    reference = checkpoint if isinstance(checkpoint, Predictor) else Predictor.from_checkpoint(checkpoint, device="cpu", amp="none")
    candidate = load_exported(exported, device="cpu")
    heads = list(candidate.label_spaces)
    _check_same_heads(reference, candidate, exported)
    comparisons = []
    for name, batch in _verification_inputs(images, sizes, seed):
        with torch.no_grad():
            want = reference.model(batch, heads=heads)
            try:
                got = candidate.model(batch, heads=heads)
            except Exception as e:  # a runtime's failure on this input (e.g. a shape frozen at export) fails the check
                comparisons += [Comparison(name, h, float("inf"), 0.0, _first_line(e)) for h in heads]
                continue
        comparisons += [_compare(name, h, want[h].float(), got[h].float()) for h in heads]
    return ExportCheck(comparisons, atol, min_agreement)


def _check_same_heads(reference: Predictor, candidate: Predictor, exported: str | Path) -> None:
    """CheckpointError when the exported file has a head (or classes) the checkpoint lacks."""
    for head, space in candidate.label_spaces.items():
        if head not in reference.label_spaces or reference.label_spaces[head].names != space.names:
            raise CheckpointError(
                f"{exported} has head '{head}' ({space.name}), which the checkpoint lacks or labels differently; "
                "verify an export against the checkpoint it was exported from",
                path=exported,
            )


def _verification_inputs(
    images: Iterable[str | Path], sizes: Sequence[tuple[int, int]], seed: int
) -> list[tuple[str, torch.Tensor]]:
    """``(description, [B, 3, H, W] float batch)``: 2 random images per size, then each real image."""
    generator = torch.Generator().manual_seed(seed)
    batches = [
        (f"random 2x{h}x{w}", torch.randint(0, 256, (2, 3, h, w), generator=generator).float()) for h, w in sizes
    ]
    for path in files_or_folders(images, "--images"):
        batches.append((str(path), torch.from_numpy(read_image(path)).permute(2, 0, 1).float().unsqueeze(0)))
    return batches


def _first_line(e: Exception) -> str:
    """``Type: first line of the message`` of an exception."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def _compare(inputs: str, head: str, want: torch.Tensor, got: torch.Tensor) -> Comparison:
    """Max abs difference and arg-max agreement of two [B, K, H, W] logits tensors."""
    if want.shape != got.shape:
        return Comparison(inputs, head, float("inf"), 0.0, f"logits of shape {tuple(got.shape)}, PyTorch's {tuple(want.shape)}")
    agreement = (want.argmax(1) == got.argmax(1)).float().mean().item()
    return Comparison(inputs, head, (want - got).abs().max().item(), agreement)


# ----------------------------------------------------------------------------- command line

def run_export(args: argparse.Namespace) -> int:
    """``univseg export``: write the file, then (unless --no-verify) print the comparison with PyTorch;
    exit status 1 when the exported model does not match within the limits."""
    path = export_model(args.checkpoint, args.format, args.label_space, args.out, overwrite=args.overwrite)
    runtime = "onnxruntime" if args.format == "onnx" else "torchscript"
    print(f"wrote {path}; predict with: univseg predict {path} IMAGES --out DIR --runtime {runtime}")
    if args.no_verify:
        return 0
    check = verify_export(args.checkpoint, path, args.images, args.sizes, args.atol, args.min_agreement / 100)
    print(check.format())
    return 0 if check.ok else 1


