"""One evaluation: every task x encoder column x method, written out as `report` describes."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scale_alibi.contract.errors import UserError
from scale_alibi.model.eval import clustering, probes, report
from scale_alibi.model.eval.embeddings import COLUMNS, Column, columns_of, frozen_features
from scale_alibi.model.eval.task import SPLITS, TaskData
from scale_alibi.model.nn.scale_alibi import ScaleAlibiModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSettings:
    """How the read-outs run (the paper's: MLP hidden 2048, k = 20; epochs and seed are ours)."""

    mlp_epochs: int = 100
    batch_size: int = 32
    device: str = "cpu"
    seed: int = 0
    progress: bool = True


def task_results(task: TaskData, encoders: Mapping[Column, tuple[ScaleAlibiModel, Mapping[str, Any] | None]],
                 out_dir: Path, settings: EvalSettings) -> list[report.Result]:
    """Every method for every encoder (a model and the stats it normalises with) on one task;
    writes its confusion matrices and scatter."""
    results, panels = [], {}
    test_y = task.splits["test"].labels
    confusion_dir = out_dir / "confusion" / task.name
    confusion_dir.mkdir(parents=True, exist_ok=True)
    for column, (model, stats) in encoders.items():
        feats = {s: frozen_features(model, task.splits[s], column, stats, settings.batch_size,
                                    settings.device, settings.progress, f"{task.name} {column.name} {s}")
                 for s in SPLITS}
        predictions = {
            "mlp": probes.mlp_probe((feats["train"], task.splits["train"].labels),
                                    (feats["valid"], task.splits["valid"].labels), feats["test"],
                                    task.n_classes, settings.mlp_epochs, seed=settings.seed,
                                    device=settings.device).test_pred,
            "knn": probes.knn_predict(feats["train"], task.splits["train"].labels, feats["test"]),
        }
        k = task.n_classes
        _, predictions["kmeans"] = clustering.hungarian_accuracy(
            test_y, clustering.kmeans(feats["test"], k, settings.seed), k)
        panels[column.name] = clustering.umap_embed(feats["test"], settings.seed)
        _, predictions["umap_kmeans"] = clustering.hungarian_accuracy(
            test_y, clustering.kmeans(panels[column.name], k, settings.seed), k)
        for method in report.METHODS:
            predicted = predictions[method]
            accuracy = float((predicted == test_y).mean())
            results.append(report.Result(task.name, method, column.name, accuracy, len(test_y)))
            report.write_confusion(report.confusion_matrix(test_y, predicted, k), task.class_names,
                                   confusion_dir / f"{column.name}-{method}.csv")
            log.info("%s %s %s: %.4f", task.name, column.name, method, accuracy)
    (out_dir / "umap").mkdir(exist_ok=True)
    report.umap_scatter(panels, test_y, task.class_names,
                        f"{task.name}: UMAP of test features, coloured by true class",
                        out_dir / "umap" / f"{task.name}.png")
    return results


def evaluate(tasks: list[TaskData], models: list[ScaleAlibiModel], out_dir: Path,
             stats: Sequence[Mapping[str, Any] | None] | None = None,
             settings: EvalSettings = EvalSettings()) -> list[report.Result]:
    """Evaluate every model's columns on every task, model i normalised with `stats[i]` (the
    stats it trained with); write table.md, results.csv, confusion/ and umap/ under out_dir;
    return the table's cells."""
    per_model = list(stats) if stats is not None else [None] * len(models)
    encoders: dict[Column, tuple[ScaleAlibiModel, Mapping[str, Any] | None]] = {}
    for model, model_stats in zip(models, per_model, strict=True):
        for column in columns_of(model):
            if column in encoders:
                raise UserError(f"two checkpoints fill the {column.name} column; pass one "
                                "Scale-ALiBi and/or one croma checkpoint")
            encoders[column] = (model, model_stats)
    encoders = {c: encoders[c] for c in COLUMNS if c in encoders}  # the paper's column order
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for task in tqdm(tasks, desc="tasks", disable=not settings.progress):
        results += task_results(task, encoders, out_dir, settings)
    names = [c.name for c in encoders]
    table = report.markdown_table(results, names, [t.name for t in tasks])
    rules = "\n".join(f"- {t.name}: {t.band_rule}" for t in tasks)
    counts = "\n".join(f"- {t.name}: {', '.join(f'{s} {len(t.splits[s])}' for s in SPLITS)}, "
                       f"{t.n_classes} classes" for t in tasks)
    (out_dir / "table.md").write_text(
        "# Frozen-encoder evaluation (test accuracy)\n\n" + table +
        "\nBands:\n" + rules + "\n\nSamples:\n" + counts + "\n")
    report.write_csv(results, out_dir / "results.csv")
    return results
