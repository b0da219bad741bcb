"""A tiny GEO-Bench in GEO-Bench's own on-disk format, written with the geobench package's own
classes (Sample/Band writers, Partition, TaskSpecifications, its band statistics): three tasks
shaped like the paper's, one per band rule (Sentinel-2 reflectance, Landsat-8, 0..255 RGB)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

PX = 32
COUNTS = {"train": 16, "valid": 8, "test": 8}


def _class_images(rng: np.random.Generator, label: int, n_bands: int, rgb_index: tuple[int, int, int],
                  scale: float) -> np.ndarray:
    """(n_bands, PX, PX) noise whose red band is bright for class 1 and blue for class 0."""
    bands = rng.uniform(0.2, 0.4, (n_bands, PX, PX))
    bright = rgb_index[0] if label else rgb_index[2]
    bands[bright] += 0.4
    return bands * scale


def write_task(root: Path, name: str, kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    """One two-class task under root/classification_v1.0/name; kind: "s2", "landsat" or "rgb".
    Returns the pixels written per sample name, (bands, PX, PX) in the task's band order."""
    os.environ.setdefault("GEO_BENCH_DIR", str(root))
    import geobench
    from geobench.dataset import compute_dataset_statistics

    if kind == "s2":  # 13 bands, reflectance x 10^4 as uint16 (m-eurosat, m-brick-kiln)
        infos, gsd, scale, dtype = geobench.sentinel2_13_bands, 10.0, 2000.0, np.uint16
        rgb = (3, 2, 1)
    elif kind == "landsat":  # 6 Landsat-8 bands, values beyond 0..255 (m-forestnet)
        infos, gsd, scale, dtype = geobench.landsat8_9_bands[1:7], 15.0, 1000.0, np.int16
        rgb = (2, 1, 0)
    else:  # aerial RGB 0..255 (m-pv4ger)
        infos, gsd, scale, dtype = geobench.make_rgb_bands(0.1), 0.1, 255.0, np.uint8
        rgb = (0, 1, 2)
    task_dir = Path(root) / "classification_v1.0" / name
    task_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    partition = geobench.Partition()
    written = {}
    for split, n in COUNTS.items():
        for i in range(n):
            label = i % 2
            pixels = _class_images(rng, label, len(infos), rgb, scale).astype(dtype)
            bands = [geobench.Band(pixels[b], band_info=info, spatial_resolution=gsd)
                     for b, info in enumerate(infos)]
            sample = geobench.Sample(bands, label=label, sample_name=f"{split}_{i:03d}")
            sample.write(str(task_dir))
            written[sample.sample_name] = pixels
            partition.add(split, sample.sample_name)
    partition.save(str(task_dir), "default")
    specs = geobench.TaskSpecifications(
        dataset_name=name, benchmark_name="classification_v1.0", bands_info=list(infos),
        spatial_resolution=gsd, patch_size=(PX, PX), n_time_steps=1,
        label_type=geobench.Classification(2, ["no", "yes"]))
    specs.save(str(task_dir))
    _, stats = compute_dataset_statistics(geobench.GeobenchDataset(task_dir), n_value_per_image=200)
    (task_dir / "band_stats.json").write_text(json.dumps({k: v.to_dict() for k, v in stats.items()}))
    return written


TASKS = {"m-eurosat": "s2", "m-forestnet": "landsat", "m-pv4ger": "rgb"}


def write_benchmark(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """m-eurosat (S2), m-forestnet (Landsat-8), m-pv4ger (RGB) under root: pixels per task."""
    return {name: write_task(root, name, kind, seed) for seed, (name, kind) in enumerate(TASKS.items())}
