"""`curate train`: train a Scale-ALiBi model on triplets streamed from a running `curate serve`, or
read from the release's store (a directory or an object-store URL) with no server.

Single process:  curate train --server http://127.0.0.1:8000 --release small --config tiny --out runs/a
Without server:  curate train --data s3://bucket/releases --release small --config tiny --out runs/a
Multi-GPU DDP:   torchrun --nproc-per-node 8 "$(command -v curate)" train ... --device cuda
(each rank reads its own shards; gradients are synchronised by DistributedDataParallel).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import check_release_name

log = logging.getLogger(__name__)


@click.command("train")
@click.option("--server", "url", default=None, help="URL of a running `curate serve` (or pass --data).")
@click.option("--data", "data", default=None,
              help="Data root holding the release, read directly: a directory or an object-store URL (or pass --server).")
@click.option("--release", required=True, help="Release name on that server or under --data.")
@click.option("--config", "config_name", type=click.Choice(["tiny", "base", "croma"]), default="base", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Optimizer steps (per rank).")
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True, help="Samples per step per rank.")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run directory: checkpoints, TensorBoard logs.")
@click.option("--resume", is_flag=True, help="Continue from the run directory's latest checkpoint.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--lr", type=float, default=None, help="Peak learning rate [tiny: 2e-3, else 5e-4].")
@click.option("--warmup-steps", type=int, default=None, help="Linear warmup steps [5% of --steps].")
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--grad-clip", type=float, default=1.0, show_default=True)
@click.option("--num-workers", type=click.IntRange(min=0), default=2, show_default=True, help="DataLoader workers per rank.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The release's stats.json [the server's, or the one beside the manifest under --data].")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=500, show_default=True, help="0: only at the end.")
@click.option("--deterministic", is_flag=True, help="Deterministic kernels (exact CPU resume).")
@click.option("--eval-tiles", type=click.IntRange(min=0), default=256, show_default=True,
              help="Held-out tiles for the final S1->S2 retrieval top-1 (0: skip).")
def train(url, data, release, config_name, device, steps, batch_size, run_dir, resume, compile_, lr, warmup_steps,
          weight_decay, grad_clip, num_workers, seed, stats_path, checkpoint_every, deterministic, eval_tiles) -> None:
    """Train on a served release; checkpoints and TensorBoard logs go to --out."""
    check_release_name(release)  # it becomes part of every request path
    if (url is None) == (data is None):
        raise UserError("pass exactly one of --server URL (a running `curate serve`) and --data PATH|URL (the release's store)")
    import torch

    from scale_alibi.model.data.transforms import load_stats
    from scale_alibi.model.train.data import (
        DatasetSource,
        PrepareBatch,
        StreamSource,
        collect_split,
        collect_stored_split,
        fetch_release_zoom,
        fetch_stats,
        stored_stats,
    )
    from scale_alibi.model.train.distributed import init_distributed, seed_everything
    from scale_alibi.model.train.optim import TrainConfig
    from scale_alibi.model.train.trainer import Trainer

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but torch sees no CUDA device; use --device cpu")
    info = init_distributed(device)
    dev = f"cuda:{info.local_rank}" if device == "cuda" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(info.local_rank)
    if resume and not (run_dir / "checkpoints" / "latest").is_file():
        raise UserError(f"--resume but {run_dir} has no checkpoint; drop --resume to start a new run")
    if not resume and (run_dir / "checkpoints" / "latest").is_file():
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")

    # Fails at once, with one line, if the server cannot be reached or the release read.
    source: StreamSource | DatasetSource
    if data is not None:
        source = DatasetSource(data, release, batch_size, num_workers=num_workers, seed=seed, rank=info.rank,
                               world_size=info.world_size)
        stats = load_stats(stats_path) if stats_path else stored_stats(source.dataset.release)
        zoom: int | None = source.dataset.zooms()[-1] if len(source.dataset) else None
    else:
        stats = load_stats(stats_path) if stats_path else fetch_stats(url, release)
        source = StreamSource(url, release, batch_size, num_workers=num_workers, seed=seed, rank=info.rank,
                              world_size=info.world_size)
        zoom = None
    if stats is None:
        log.warning("no stats.json for %s: images are scaled with fixed constants instead", release)
    prepare = PrepareBatch(stats)

    from scale_alibi.model.nn.config import get_config
    from scale_alibi.model.nn.scale_alibi import ScaleAlibiModel
    from scale_alibi.model.train.checkpoint import stored_config

    # resuming: the run's own config, so a run started before L_ref followed the zoom keeps its L_ref
    model_cfg = stored_config(run_dir) if resume else None
    if model_cfg is not None:
        model_cfg = model_cfg.resolved()
    else:  # L_ref = one low-res patch at the release's zoom, so the bias counts the data's own patches
        zoom = zoom if data is not None else fetch_release_zoom(url, release)
        model_cfg = get_config(config_name, **({"ref_zoom": zoom} if zoom is not None else {})).resolved()
    log.info("L_ref %.2f m (zoom %s)", model_cfg.reference_length_m, model_cfg.ref_zoom)
    seed_everything(seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = ScaleAlibiModel(model_cfg)
    seed_everything(seed + 1000 * info.rank)  # ...but different MAE masks per rank
    cfg = TrainConfig(
        steps=steps, batch_size=batch_size, lr=lr if lr is not None else (2e-3 if config_name == "tiny" else 5e-4),
        warmup_steps=warmup_steps if warmup_steps is not None else max(1, steps // 20),
        weight_decay=weight_decay, grad_clip=grad_clip, device=dev, compile=compile_,
        deterministic=deterministic, seed=seed, checkpoint_every=checkpoint_every,
    )
    trainer = Trainer(model, cfg, run_dir, model_config=model_cfg.to_dict(), prepare=prepare,
                      normalization=prepare.record())
    try:
        losses = trainer.fit(source, resume=resume)
    finally:
        trainer.close()
    if info.is_main and losses:
        k = min(20, len(losses))
        click.echo(f"steps {trainer.step}: loss first {k} mean {sum(losses[:k]) / k:.4f}, last {k} mean {sum(losses[-k:]) / k:.4f}")
    if info.is_main and eval_tiles:
        from scale_alibi.model.eval.retrieval import retrieval_top1

        heldout = (collect_stored_split(data, release, "heldout", limit=eval_tiles) if data is not None
                   else collect_split(url, release, "heldout", limit=eval_tiles))
        r = retrieval_top1(model, heldout, device=dev, prepare=prepare)  # trainer.module: the same module, moved
        click.echo(f"heldout s1->s2 retrieval top-1 {r.top1:.3f} over {r.n} tiles (chance {r.chance:.4f}, {r.over_chance:.1f}x)")
    if info.world_size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()

