"""Real DDP: two gloo ranks, each with half of a batch, get the gradients (and the optimizer step) of one
process training on the whole batch. The paper's code never wrapped its model in DDP, so its ranks
trained independently; here the Trainer wraps the model in DistributedDataParallel under a process
group, and the contrastive loss gathers embeddings across ranks with gradients."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scale_alibi.model.nn.config import get_config
from scale_alibi.model.nn.scale_alibi import ScaleAlibiModel, random_mask
from scale_alibi.model.train.optim import TrainConfig
from scale_alibi.model.train.trainer import Trainer

WORLD = 2
PER_RANK = 4


def _union_batch() -> dict[str, torch.Tensor]:
    """A small batch (64 px low-res, 128 px hires, 4x4 grid with the tiny config) with one fixed mask."""
    g = torch.Generator().manual_seed(1234)
    n = WORLD * PER_RANK
    s2 = torch.randn(n, 3, 64, 64, generator=g)
    batch = {
        "s1": s2[:, :2] * 0.5 + 0.3 * torch.randn(n, 2, 64, 64, generator=g),
        "s2": s2,
        "naip_hires": torch.nn.functional.interpolate(s2, scale_factor=2.0) + 0.1 * torch.randn(n, 3, 128, 128, generator=g),
        "tile_size_m": torch.linspace(1100.0, 1300.0, n),
    }
    torch.manual_seed(99)
    batch["mask"] = random_mask(n, 16, get_config("tiny").mask_ratio, "cpu")
    return batch


def _trainer() -> Trainer:
    torch.manual_seed(0)  # identical initial weights in every process
    model = ScaleAlibiModel(get_config("tiny"))
    cfg = TrainConfig(steps=10, batch_size=PER_RANK, lr=1e-3, warmup_steps=0, deterministic=True, progress=False)
    return Trainer(model, cfg, run_dir=None)


def _grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in trainer.module.named_parameters() if p.grad is not None}


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        trainer = _trainer()
        assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
        union = _union_batch()
        mine = {k: v[rank * PER_RANK : (rank + 1) * PER_RANK] for k, v in union.items()}
        out = trainer.forward_backward(mine)
        grads = _grads(trainer)
        trainer.optimizer.zero_grad(set_to_none=True)
        result = trainer.train_step(mine)  # the full step: clip, AdamW, lr schedule
        params = {n: p.detach().clone() for n, p in trainer.module.named_parameters()}
        torch.save({"loss": float(out["loss"].detach()), "grads": grads, "params": params, "step_loss": result.loss},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_main, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single_process():
    trainer = _trainer()
    union = _union_batch()
    out = trainer.forward_backward(union)
    grads = _grads(trainer)
    trainer.optimizer.zero_grad(set_to_none=True)
    result = trainer.train_step(union)
    params = {n: p.detach().clone() for n, p in trainer.module.named_parameters()}
    return {"loss": float(out["loss"].detach()), "grads": grads, "params": params, "step_loss": result.loss}


def test_ddp_gradients_equal_single_process_on_union_batch(ddp_results, single_process):
    ref = single_process["grads"]
    for rank, res in enumerate(ddp_results):
        assert res["grads"].keys() == ref.keys()
        for name, g in ref.items():
            torch.testing.assert_close(res["grads"][name], g, rtol=1e-4, atol=1e-6,
                                       msg=lambda m: f"rank {rank}, {name}: {m}")
    # the ranks' losses are their own halves' losses: they differ, and average to the union's
    losses = [r["loss"] for r in ddp_results]
    assert abs(losses[0] - losses[1]) > 1e-4
    assert sum(losses) / WORLD == pytest.approx(single_process["loss"], rel=1e-5)


def test_ddp_optimizer_step_equals_single_process(ddp_results, single_process):
    """After one Trainer.train_step (grad clipping + AdamW) the weights agree across ranks and with one process.

    Adam's first step moves each weight by about lr * sign(grad), so weights whose gradient is
    float noise (|g| < 1e-4) may legitimately move either way: those are only held to 2 * lr.
    """
    ref, ref_grads, lr = single_process["params"], single_process["grads"], 1e-3
    for name, p in ref.items():
        solid = ref_grads[name].abs() > 1e-4 if name in ref_grads else torch.ones_like(p, dtype=torch.bool)
        for rank, res in enumerate(ddp_results):
            diff = (res["params"][name] - p).abs()
            assert (float(diff[solid].max()) if solid.any() else 0.0) < 1e-2 * lr, f"rank {rank}, {name}"
            assert float(diff.max()) <= 2.0 * lr + 1e-7, f"rank {rank}, {name}"
    # ranks hold identical weights after the step (DDP keeps replicas in sync)
    for name in ref:
        assert torch.equal(ddp_results[0]["params"][name], ddp_results[1]["params"][name]), name
    # and the step did change the weights (so the comparison is not of untouched initial values)
    torch.manual_seed(0)
    init = dict(ScaleAlibiModel(get_config("tiny")).named_parameters())
    moved = sum(int(not torch.equal(init[n].detach(), p)) for n, p in ref.items())
    assert moved > len(ref) // 2
