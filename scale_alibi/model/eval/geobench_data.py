"""GEO-Bench classification tasks through the `geobench` package's own loader, as uint8 RGB.

Data: ``$GEO_BENCH_DIR/classification_v1.0/<task>/`` (task_specs.pkl, default_partition.json,
band_stats.json, one HDF5 file per sample), as GEO-Bench distributes it. Every encoder evaluated
here is optical RGB (Scale-ALiBi's S2 and NAIP encoders, CROMA's optical encoder fed S2 TCI), so
each task's red, green and blue bands become the uint8 RGB those encoders were trained on:

- Sentinel-2 bands (m-eurosat, m-brick-kiln: 13 bands of reflectance x 10^4): B04, B03, B02
  mapped as ESA's true-colour image (TCI, the `visual` asset the S2 tiles come from) does:
  DN = reflectance x 10^4 x 255 / 2000, clipped to 0..255. The other 10 bands are not read.
- Landsat-8 bands (m-forestnet: 6 bands) and any other band whose values exceed 0..255: B4, B3,
  B2 (or red, green, blue) stretched linearly from the task's 0.1st to 99.9th percentile
  (band_stats.json) to 0..255; Landsat-8 has no TCI product to imitate. NIR/SWIR are not read.
- RGB bands already in 0..255 (m-pv4ger's aerial RGB): used as they are, like NAIP.

Each image's ground width is its pixel count times the task's spatial resolution (GSD).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from scale_alibi.contract.errors import UserError
from scale_alibi.model.eval.task import SPLITS, Split, TaskData

BENCHMARK = "classification_v1.0"
TASKS = ("m-eurosat", "m-forestnet", "m-pv4ger", "m-brick-kiln")  # the paper's Table 2 rows
RGB = ("red", "green", "blue")
TCI_FULL_SCALE = 2000.0  # reflectance x 10^4 that TCI maps to 255
TASK_FILES = ("default_partition.json", "band_stats.json")  # a task needs besides task_specs.pkl and its samples


def import_geobench(root: Path):
    """The geobench package, pointed at `root` (it reads $GEO_BENCH_DIR once, at import)."""
    os.environ.setdefault("GEO_BENCH_DIR", str(root))
    try:
        import geobench
    except ImportError:
        raise UserError("GEO-Bench tasks need the geobench package: "
                        "pip install --no-deps geobench==1.0.0 (see docs/eval.md)") from None
    return geobench


def default_root() -> Path | None:
    """$GEO_BENCH_DIR, where GEO-Bench's downloader puts the data, if set."""
    value = os.environ.get("GEO_BENCH_DIR")
    return Path(value) if value else None


def band_rule(bands_info, band_stats) -> tuple[str, Callable[[np.ndarray, int], np.ndarray]]:
    """(one-line description, function mapping one band's values (H, W) and its index 0..2 to
    uint8) for a task's RGB bands (see the module docstring)."""
    import geobench

    if all(isinstance(b, geobench.Sentinel2) for b in bands_info):
        return ("Sentinel-2 B04/B03/B02 as TCI: DN = reflectance x 10^4 x 255 / 2000, clipped",
                lambda v, i: _to_uint8(v.astype(np.float32) * (255.0 / TCI_FULL_SCALE)))
    stats = [band_stats.get(b.name) for b in bands_info]
    if all(s is not None and 0 <= s.min and s.max <= 255 for s in stats):
        return "RGB bands already 0..255, used as they are", lambda v, i: _to_uint8(v)
    if any(s is None for s in stats):
        raise UserError(f"band_stats.json lacks one of {[b.name for b in bands_info]}; "
                        "the percentile stretch needs it (re-download the task)")
    kind = "Landsat-8 B4/B3/B2" if all(isinstance(b, geobench.Landsat8) for b in bands_info) else "RGB"
    lo = [s.percentile_0_1 for s in stats]
    hi = [max(s.percentile_99_9, s.percentile_0_1 + 1e-6) for s in stats]
    return (f"{kind} stretched from the 0.1st to the 99.9th percentile (band_stats.json) to 0..255",
            lambda v, i: _to_uint8((v.astype(np.float32) - lo[i]) * (255.0 / (hi[i] - lo[i]))))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def load_task(root: Path, name: str, limit: int | None = None, progress: bool = True) -> TaskData:
    """One GEO-Bench classification task from `root` (GEO_BENCH_DIR) as uint8 RGB per split
    (the first `limit` samples of each split when given)."""
    geobench = import_geobench(root)
    task_dir = Path(root) / BENCHMARK / name
    if not (task_dir / "task_specs.pkl").is_file():
        raise UserError(f"no GEO-Bench task {name} under {root}/{BENCHMARK}; set --geobench-dir "
                        "(or GEO_BENCH_DIR) to where `geobench-download` put the data")
    for needed in TASK_FILES:  # the package would raise deep inside, once per split
        if not (task_dir / needed).is_file():
            raise UserError(f"GEO-Bench task {name} at {task_dir} has no {needed}; download the task "
                            "again with `geobench-download`")
    specs = geobench.load_task_specs(task_dir)
    datasets = {split: geobench.GeobenchDataset(task_dir, split=split, band_names=RGB) for split in SPLITS}
    first = datasets[SPLITS[0]]  # every split of a task shares its bands' rule
    info = {b.name: b for b in specs.bands_info}
    rule = band_rule([info[n] for n in first.band_names], first.band_stats)
    splits = {}
    for split, ds in datasets.items():
        n = len(ds) if limit is None else min(limit, len(ds))
        images, labels = [], []
        for i in tqdm(range(n), desc=f"{name} {split}", disable=not progress, leave=False):
            try:
                sample = ds[i]
                hwc, _ = sample.pack_to_3d(band_names=ds.band_names)  # (H, W, 3) in red, green, blue
            except (OSError, KeyError, ValueError) as exc:  # h5py on a truncated or foreign file
                sample_name = ds.active_partition.partition_dict[split][i]
                reason = " ".join(str(exc).split())[:120]
                raise UserError(f"GEO-Bench task {name}: sample {sample_name} ({split}) cannot be read "
                                f"({reason}); download the task again with `geobench-download`") from None
            images.append(np.stack([rule[1](hwc[..., c], c) for c in range(3)]))
            labels.append(int(sample.label))
        pixels = np.stack(images)
        ground = np.full(n, pixels.shape[-1] * float(specs.spatial_resolution), dtype=np.float32)
        splits[split] = Split({"s2": pixels, "naip_hires": pixels}, ground, np.asarray(labels, np.int64))
    label_type = specs.label_type
    names = label_type.class_names or [str(c) for c in range(label_type.n_classes)]
    return TaskData(name, tuple(names), splits, rule[0])
