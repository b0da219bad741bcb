"""`curate eval`: frozen-encoder evaluation of checkpoints on GEO-Bench and the synthetic world.

    curate eval --checkpoint runs/base --checkpoint runs/croma --stats data/small/stats.json --out eval/
    curate eval --checkpoint runs/tiny --tasks world-landcover --world-release data/world-z17 --out eval/
"""

from __future__ import annotations

from pathlib import Path

import click

from scale_alibi.contract.errors import UserError

WORLD_TASK = "world-landcover"


@click.command("eval")
@click.option("--checkpoint", "checkpoints", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A run directory (its latest checkpoint) or a checkpoint directory; repeat for "
                   "a Scale-ALiBi (SA-high, SA-low) and a croma (CROMA) checkpoint.")
@click.option("--tasks", default="m-eurosat,m-forestnet,m-pv4ger,m-brick-kiln", show_default=True,
              help=f"Comma-separated GEO-Bench tasks and/or {WORLD_TASK}.")
@click.option("--geobench-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="GEO-Bench data root [$GEO_BENCH_DIR].")
@click.option("--world-release", default=None,
              help=f"DATA/RELEASE built from the synthetic world ({WORLD_TASK} task): a directory or an "
                   "object-store URL (s3://bucket/prefix/RELEASE).")
@click.option("--world", "world_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="The world directory that release was built from [the default world].")
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="The training release's stats.json [the stats each checkpoint records "
                                 "it was trained with].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where table.md, results.csv, confusion/ and umap/ go.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--mlp-epochs", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Read at most this many GEO-Bench samples per split (a quick look).")
@click.option("--seed", type=int, default=0, show_default=True)
def eval_command(checkpoints, tasks, geobench_dir, world_release, world_dir, stats_path, out_dir,
                 device, batch_size, mlp_epochs, limit, seed) -> None:
    """Table 2 for checkpoints: MLP probe, kNN, k-means and UMAP + k-means per task."""
    import torch

    from scale_alibi.model.data.transforms import load_stats
    from scale_alibi.model.eval.embeddings import columns_of, eval_stats, load_model
    from scale_alibi.model.eval.run import EvalSettings, evaluate

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but torch sees no CUDA device; use --device cpu")
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    # Checkpoints and stats first: a bad one is reported before minutes of task data are read.
    models = [load_model(path, device) for path in checkpoints]
    needed = sorted({column.modality for model in models for column in columns_of(model)})
    given = load_stats(stats_path, needed) if stats_path else None
    stats = [eval_stats(path, given, needed, lambda m: click.echo(m, err=True)) for path in checkpoints]
    task_data = [_load(name, geobench_dir, world_release, world_dir, limit) for name in names]
    settings = EvalSettings(mlp_epochs=mlp_epochs, batch_size=batch_size, device=device, seed=seed)
    results = evaluate(task_data, models, out_dir, stats, settings)
    click.echo((out_dir / "table.md").read_text())
    click.echo(f"{len(results)} results in {out_dir}/results.csv; confusion matrices in "
               f"{out_dir}/confusion, UMAP scatters in {out_dir}/umap")


def _load(name: str, geobench_dir: Path | None, world_release: str | None, world_dir: Path | None,
          limit: int | None):
    """One task by name: the synthetic world's, or GEO-Bench's."""
    if name == WORLD_TASK:
        from functools import partial

        from scale_alibi.contract.reader import StoredRelease
        from scale_alibi.devworld import DEFAULT_WORLD
        from scale_alibi.devworld.build import load_config
        from scale_alibi.devworld.field import CLASSES, Truth
        from scale_alibi.devworld.landcover import tile_label
        from scale_alibi.model.eval.world_task import load_world_task

        if world_release is None:
            raise UserError(f"task {WORLD_TASK} needs --world-release DATA/RELEASE (a build of the "
                            "synthetic world, e.g. by `curate demo`)")
        world = load_config(world_dir) if world_dir else DEFAULT_WORLD
        data_root, _, release_name = world_release.rstrip("/").rpartition("/")
        return load_world_task(StoredRelease(data_root or ".", release_name), CLASSES,
                               partial(tile_label, Truth(world)))
    from scale_alibi.model.eval.geobench_data import TASKS, default_root, load_task

    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose from {', '.join((*TASKS, WORLD_TASK))}")
    root = geobench_dir or default_root()
    if root is None:
        raise UserError(f"task {name} needs GEO-Bench data: pass --geobench-dir or set GEO_BENCH_DIR")
    return load_task(root, name, limit)
