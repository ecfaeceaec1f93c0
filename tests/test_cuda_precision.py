"""Mixed precision on CUDA: fp16 (with a GradScaler whose state is checkpointed) and bf16 train
with finite losses and resume like an uninterrupted run. Runs only where a CUDA GPU is present."""
import json
import math

import pytest
import torch

from conftest import run_killed_at
from univseg.config import validate_config
from univseg.engine.checkpoint import Checkpoint
from univseg.engine.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.fixture(autouse=True)
def deterministic_cudnn():
    previous = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_trains_and_resumes_on_cuda(tiny_raw, tmp_path, amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    tiny_raw["train"].update({"amp": amp, "device": "cuda", "eval_interval": 0, "checkpoint_interval": 2})
    cfg = validate_config(tiny_raw)
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(cfg, full, progress=False).run()
    logs = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses) and len(set(losses)) > 1
    assert not any(r.get("skipped_step") for r in logs)

    run_killed_at(Trainer(cfg, part, progress=False), 4)
    Trainer(cfg, part, resume=True, progress=False).run()
    a, b = Checkpoint.load(full / "latest.pt"), Checkpoint.load(part / "latest.pt")
    if amp == "fp16":  # the loss scale travels with the checkpoint
        assert a.scaler and a.scaler["scale"] == b.scaler["scale"]
    else:
        assert not a.scaler.get("scale")
    # bilinear upsampling's CUDA backward adds with atomics (no deterministic kernel): allow rounding
    for k, v in a.model.items():
        if v.is_floating_point():
            torch.testing.assert_close(b.model[k], v, rtol=1e-3, atol=1e-4, msg=k)
        else:
            assert torch.equal(b.model[k], v), k
