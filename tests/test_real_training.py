"""A short camvid_idd training run on the real data (../shared/data) at low resolution."""
import json

import pytest

from conftest import DATA_ROOT
from univseg.config import load_config, resolve_config_path
from univseg.engine.trainer import Trainer

pytestmark = pytest.mark.skipif(
    not (DATA_ROOT / "camvid").is_dir() or not (DATA_ROOT / "idd_lite").is_dir(),
    reason=f"real data not found under {DATA_ROOT} (set UNIVSEG_DATA_ROOT to the folder holding camvid/ and idd_lite/)",
)

LOW_RES = [
    f"domains.camvid.dataset.root={DATA_ROOT / 'camvid'}",
    f"domains.idd.dataset.root={DATA_ROOT / 'idd_lite'}",
    "domains.camvid.train_transforms=[{type: resize, scale: 0.25}, {type: hflip}]",
    "domains.camvid.val_transforms=[{type: resize, scale: 0.25}]",
    "domains.idd.train_transforms=[{type: resize, size: [56, 80]}, {type: hflip}]",
    "domains.idd.val_transforms=[{type: resize, size: [56, 80]}]",
    "domains.camvid.labeled.count=16",
    "domains.idd.labeled.count=16",
    "model.backbone_args={width: 0.5}",
    "model.embed_dim=16",
    "method.warmup_iters=20",
    "train.iters=40",
    "train.optimizer.lr=0.003",
    "train.schedule.warmup_iters=0",
    "train.eval_interval=0",
    "train.log_interval=1",
    "train.checkpoint_interval=40",
    "train.num_workers=0",
    "train.amp=none",
    "eval.max_images=8",
]


def test_camvid_idd_short_run_lowers_the_loss(tmp_path):
    cfg = load_config(resolve_config_path("camvid_idd"), LOW_RES)
    results = Trainer(cfg, tmp_path, progress=False).run()
    logs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    sup = [r["sup"] for r in logs if "sup" in r]
    assert len(sup) == 40
    assert sum(sup[-5:]) / 5 < 0.8 * sum(sup[:5]) / 5, sup
    assert any("ent_cross" in r for r in logs)  # the alignment terms ran after the warm-up
    for d in ("camvid", "idd"):
        assert results["domains"][d]["pixels"] > 0 and results["domains"][d]["mIoU"] > 0
