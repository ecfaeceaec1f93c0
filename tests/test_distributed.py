"""Real torch.distributed: two CPU processes (gloo) launched by torchrun train one model."""
import json

import pytest
import torch
import yaml

from conftest import free_port, torchrun_train
from univseg.engine.checkpoint import Checkpoint


@pytest.mark.parametrize(
    "unlabeled_forward, norm, method, channels_last",
    [("together", "shared", "univ-full", "auto"), ("separate", "shared", "univ-full", False), ("together", "domain", "univ-full", False),
     ("together", "domain", "univ-match", False)],
)
def test_torchrun_two_processes_train_and_evaluate(tiny_raw, tmp_path, unlabeled_forward, norm, method, channels_last):
    # auto: the default layout, channels-last on CPU, through DDP's gradient buckets
    tiny_raw["train"].update({"iters": 4, "eval_interval": 2, "checkpoint_interval": 2, "channels_last": channels_last})
    tiny_raw["method"]["name"] = method  # univ-match: strong views, feature perturbation and alignment through DDP
    tiny_raw["method"]["unlabeled_forward"] = unlabeled_forward  # aligned steps 3-4: one or two encoder passes per domain
    tiny_raw["model"]["norm"] = norm  # domain: one encoder pass and one set of BatchNorm statistics per domain
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw))
    work = tmp_path / "work"
    proc = torchrun_train(cfg, work)
    ckpt = Checkpoint.load(work / "latest.pt")
    assert ckpt.iteration == 4 and ckpt.data["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt.model)  # the unwrapped model is saved
    assert any(".norms.rural." in k for k in ckpt.model) == (norm == "domain")
    lines = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lines if "loss" in r] == [1, 2, 3, 4]  # rank 0 alone writes the log
    assert [r["iter"] for r in lines if "ent_cross" in r] == [3, 4]  # the unlabeled images went through DDP
    assert [r["iter"] for r in lines if "strong_city" in r] == ([1, 2, 3, 4] if method == "univ-match" else [])
    evals = json.loads((work / "eval_results.json").read_text())
    assert evals["train_channels_last"] is (channels_last == "auto")
    # the val split (4 images per domain) is sharded over the 2 ranks and the confusion matrices summed
    assert evals["domains"]["city"]["pixels"] == 4 * 32 * 48 - _ignored(tiny_raw, "city")
    assert proc.stdout.count("checkpoints, metrics.jsonl") == 1


def _ignored(raw, domain):
    """Ignore pixels in the val split of a domain (they are not counted)."""
    from univseg.config import validate_config
    from univseg.data.domain import build_domains

    d = next(d for d in build_domains(validate_config(raw)) if d.name == domain)
    return sum(int((d.val[i]["label"] == 255).sum()) for i in range(len(d.val)))


def _bank_batches(step: int, rank: int):
    """Rank ``rank``'s labeled batch at ``step``: embeddings [2, 3, 4, 4] and labels in 0..3 (255 = ignore)."""
    g = torch.Generator().manual_seed(100 * step + rank)
    labels = torch.randint(0, 4, (2, 4, 4), generator=g)
    labels[0, 0] = 255
    if rank == 1:
        labels[labels == 3] = 0  # class 3 appears on rank 0 only
    return torch.randn(2, 3, 4, 4, generator=g), labels


def _initial_sums(rank: int):
    g = torch.Generator().manual_seed(7 + rank)
    return torch.randn(4, 3, generator=g), torch.tensor([2.0, 0.0, 1.0, 3.0]) if rank == 0 else torch.tensor([1.0, 0.0, 0.0, 2.0])


def _bank_worker(rank: int, world: int, port: int, out: str, steps: int) -> None:
    import torch.distributed as tdist

    from univseg.losses.centroids import CentroidBank, all_reduce_sums

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        bank = CentroidBank({"a": 4}, dim=3, mode="ema", momentum=0.9)
        bank.set_from_sums("a", *all_reduce_sums(*_initial_sums(rank)))  # the initial pass over different images
        for step in range(steps):
            bank.update("a", *_bank_batches(step, rank))
        torch.save(bank.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def test_ema_centroids_are_identical_across_ranks_and_equal_one_process_over_the_union(tmp_path):
    """Two gloo ranks see different images: every EMA update (and the initial pass) is all-reduced."""
    from univseg.losses.centroids import CentroidBank

    steps = 4
    torch.multiprocessing.spawn(_bank_worker, args=(2, free_port(), str(tmp_path), steps), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k

    single = CentroidBank({"a": 4}, dim=3, mode="ema", momentum=0.9)
    (s0, c0), (s1, c1) = _initial_sums(0), _initial_sums(1)
    single.set_from_sums("a", s0 + s1, c0 + c1)
    for step in range(steps):
        (e0, l0), (e1, l1) = _bank_batches(step, 0), _bank_batches(step, 1)
        single.update("a", torch.cat([e0, e1]), torch.cat([l0, l1]))
    for k, v in single.state_dict().items():
        assert torch.allclose(r0[k].float(), v.float(), atol=1e-6), k
    assert bool(r0["domains.a.valid"].all())
    # the update did move the centroids away from the initial means
    assert not torch.allclose(r0["domains.a.centroids"][0], (s0 + s1)[0] / 3)


def _train_rank(rank: int, world: int, port: int, raw: dict, work: str) -> None:
    """One torchrun-like rank: the trainer joins the process group from the environment, trains, and this
    rank's model and method (auxiliary networks) are saved to ``work/rank<rank>.pt``."""
    import os

    from univseg.config import validate_config
    from univseg.engine.trainer import Trainer
    from univseg.utils import dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        trainer = Trainer(validate_config(raw), f"{work}/run", progress=False)
        trainer.run()
        torch.save({"model": trainer.model.state_dict(), "method": trainer.method.state_dict()}, f"{work}/rank{rank}.pt")
    finally:
        dist.cleanup_distributed()


@pytest.mark.parametrize("method", ["adversarial", "souly", "cycada"])
def test_auxiliary_networks_stay_identical_across_ranks(tiny_raw, tmp_path, method):
    """Two processes see different images; the discriminators / generators of the method get their
    gradients averaged over the ranks, so after training every rank holds the same networks (and model
    weights)."""
    import copy

    from test_cycada import cycada_raw
    from univseg.config import validate_config
    from univseg.engine.trainer import Trainer

    tiny_raw["train"].update({"iters": 4, "eval_interval": 0, "checkpoint_interval": 4})
    if method == "cycada":  # the pixel stage (iterations 1-2) then the segmentation stage (3-4)
        source = copy.deepcopy(tiny_raw)
        source["method"] = {"name": "single", "domains": ["city"]}
        source["train"]["iters"] = 1
        Trainer(validate_config(source), tmp_path / "source", progress=False).run()
        raw = cycada_raw(tiny_raw, tmp_path / "source" / "latest.pt")
        raw["train"]["checkpoint_interval"] = 4
    else:
        raw = {**tiny_raw, "method": {"name": method, **({"souly": {"nz": 8, "ngf": 4, "image_size": 16}} if method == "souly" else {})}}
    initial = Trainer(validate_config(raw), tmp_path / "init", progress=False).method.state_dict()
    torch.multiprocessing.spawn(_train_rank, args=(2, free_port(), raw, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert initial.keys() == r0["method"].keys() and len(initial) > 0
    for k, v in r0["method"].items():
        assert torch.equal(v, r1["method"][k]), k
    assert any(not torch.equal(v, initial[k]) for k, v in r0["method"].items())  # the networks did train
    weights = [k for k in r0["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for k in weights:  # BatchNorm running statistics are each rank's own (no SyncBatchNorm)
        assert torch.equal(r0["model"][k], r1["model"][k]), k
