"""What `curate eval` writes: a Markdown and a CSV table shaped like the paper's Table 2, one
confusion matrix per task, encoder and method (CSV), and one UMAP scatter PNG per task."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Table 2's sections, in its order: method key -> heading
METHODS = {"mlp": "Neural (MLP probe)", "kmeans": "k-Means", "umap_kmeans": "k-Means + UMAP",
           "knn": "k-NN (k = 20)"}
# 12 distinguishable colours (Tableau 10 + 2): one per class
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
           (0, 0, 128), (128, 128, 0))


@dataclass(frozen=True)
class Result:
    """One cell of the table: accuracy of `method` on `task`'s test split for `encoder`."""

    task: str
    method: str
    encoder: str
    accuracy: float
    n_test: int


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted (predictions outside 0..C-1 dropped)."""
    ok = (predicted >= 0) & (predicted < n_classes)
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (labels[ok], predicted[ok]), 1)
    return out


def markdown_table(results: list[Result], encoders: list[str], tasks: list[str]) -> str:
    """Table 2's layout: a section per method, a row per task, a column per encoder (accuracy %)."""
    cell = {(r.task, r.method, r.encoder): r.accuracy for r in results}
    lines = ["| method | task | " + " | ".join(encoders) + " |",
             "|---|---|" + "---:|" * len(encoders)]
    for method, heading in METHODS.items():
        for task in tasks:
            values = [cell.get((task, method, e)) for e in encoders]
            shown = [f"{100 * v:.2f}%" if v is not None else "-" for v in values]
            lines.append(f"| {heading} | {task} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def write_csv(results: list[Result], path: Path) -> None:
    """One row per cell: task, method, encoder, accuracy (0..1), n_test."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Result.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)


def write_confusion(matrix: np.ndarray, class_names: tuple[str, ...], path: Path) -> None:
    """A confusion matrix as CSV with class names on both axes (rows true, columns predicted)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, matrix.tolist()):
            writer.writerow([name, *row])


def umap_scatter(panels: dict[str, np.ndarray], labels: np.ndarray, class_names: tuple[str, ...],
                 title: str, path: Path, side: int = 360) -> None:
    """One PNG: a square panel per encoder with its 2-D UMAP points coloured by true class, and
    a legend of the classes."""
    font = ImageFont.load_default()
    legend_h = 18 * ((len(class_names) + 3) // 4) + 8
    width, height = side * len(panels), side + 28 + legend_h
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 4), title, fill="black", font=font)
    margin = 16
    for p, (encoder, xy) in enumerate(panels.items()):
        x0, y0 = p * side, 24
        draw.rectangle([x0 + 2, y0, x0 + side - 3, y0 + side - 3], outline=(200, 200, 200))
        draw.text((x0 + 8, y0 + 4), encoder, fill="black", font=font)
        lo, hi = xy.min(0), xy.max(0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        pos = margin + (xy - lo) / span * (side - 2 * margin - 4)
        for (px, py), label in zip(pos.tolist(), labels.tolist()):
            colour = PALETTE[label % len(PALETTE)]
            draw.ellipse([x0 + px - 2, y0 + py - 2, x0 + px + 2, y0 + py + 2], fill=colour)
    for i, name in enumerate(class_names):
        lx, ly = 8 + (i % 4) * (width // 4), side + 32 + 18 * (i // 4)
        draw.rectangle([lx, ly + 2, lx + 10, ly + 12], fill=PALETTE[i % len(PALETTE)])
        draw.text((lx + 16, ly), name, fill="black", font=font)
    img.save(path)
