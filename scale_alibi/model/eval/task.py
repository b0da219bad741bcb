"""What every evaluation task provides: labelled uint8 RGB images per split, per encoder view."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Split:
    """One split: images per view ("s2" for the low-res encoders, "naip_hires" for the high-res
    one; both may be the same array), each uint8 (N, 3, H, W) RGB; ground width of each image
    in metres (N,); class labels (N,)."""

    images: dict[str, np.ndarray]
    tile_size_m: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        for view, img in self.images.items():
            if img.dtype != np.uint8 or img.ndim != 4 or img.shape[1] != 3 or len(img) != n:
                raise ValueError(f"view {view!r}: expected uint8 (N={n}, 3, H, W), got "
                                 f"{img.dtype} {img.shape}")
        if len(self.tile_size_m) != n:
            raise ValueError(f"{len(self.tile_size_m)} ground sizes for {n} labels")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TaskData:
    """A classification task: its name, class names, the three splits and how its bands became
    the encoders' RGB (one line, for the report)."""

    name: str
    class_names: tuple[str, ...]
    splits: dict[str, Split]
    band_rule: str

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits or not len(self.splits[s])]
        if missing:
            raise ValueError(f"task {self.name}: empty or missing splits {missing}")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)
