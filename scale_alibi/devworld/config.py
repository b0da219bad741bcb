"""WorldConfig: everything that determines the synthetic world's pixels, and its cache key."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from pathlib import Path

# Bump when rendering changes, so cached worlds from older code are not reused (the key also
# hashes the renderer's source, so a change that forgets the bump still renders anew).
RENDER_VERSION = 5

# Local metric frame: x, y in metres on a sphere of mean Earth radius around the world's centre.
EARTH_RADIUS_M = 6371008.8
DEG = math.pi / 180.0

# Largest bbox side accepted, in degrees (~10 km): keeps a hand-made world renderable in
# minutes (NAIP at 0.6 m dominates: ~45 M pixels per 16 km2 per year).
MAX_SPAN_DEG = 0.1


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """The synthetic world's extent, random seed and sensor acquisition plan (frozen, hashable)."""

    bbox: tuple[float, float, float, float] = (-102.022, 35.182, -101.978, 35.218)
    seed: int = 7
    naip_state: str = "tx"
    naip_years: tuple[str, ...] = ("2020", "2022")
    naip_grid: int = 3  # quarter-quad-like footprints per side (scaled down)
    s2_dates: tuple[str, ...] = ("2023-06-05", "2023-06-15", "2023-06-20")
    s2_cloudy_date: str = "2023-06-15"
    s2_swath_date: str = "2023-06-20"
    s1_dates: tuple[str, ...] = ("2023-06-07", "2023-06-10")  # ascending, descending
    # Planetary Computer's data irregularities (docs: scale_alibi/devworld/README.md), each on a
    # scene that a build prefers, with clean scenes of the same ground to fall back to:
    s1_zero_border: float = 0.3  # ascending pass: this fraction of its width (west) 0-filled under a -32768 tag
    s2_scl_defect_date: str = "2023-06-05"  # west-zone scene: a patch of SCL 0 and 1 over valid-looking pixels
    naip_fine_year: str = "2023"  # one 0.3 m footprint, with a black (0) collar inside its geometry
    bright_targets: int = 6  # S1 point scatterers that saturate any 8-bit mapping
    s1_enl: float | None = 10.0  # S1 speckle: equivalent number of looks; None = no speckle

    def __post_init__(self) -> None:
        w, s, e, n = (float(v) for v in self.bbox)
        if not (-180 <= w < e <= 180 and -80 <= s < n <= 84):
            raise ValueError(f"bbox {self.bbox} must be W,S,E,N with W<E, S<N, lon in [-180,180], lat in [-80,84]")
        if not (e <= -42.0 and s >= 0.0):
            # NAIP is delivered in NAD83 UTM, EPSG:26901-26923: North America only.
            raise ValueError(f"bbox {self.bbox} must lie in North America (lon <= -42, lat >= 0): NAIP uses NAD83 UTM zones 1-23")
        if e - w > MAX_SPAN_DEG or n - s > MAX_SPAN_DEG:
            raise ValueError(f"bbox {self.bbox} spans more than {MAX_SPAN_DEG} degrees; use a smaller world")
        object.__setattr__(self, "bbox", (w, s, e, n))

    @property
    def center(self) -> tuple[float, float]:
        """(lon, lat) of the bbox centre: the origin of the local metric frame."""
        w, s, e, n = self.bbox
        return ((w + e) / 2.0, (s + n) / 2.0)

    def key(self) -> str:
        """Short content hash of the config, the renderer version and the renderer's source (the cache key)."""
        blob = json.dumps({"v": RENDER_VERSION, "source": source_digest(), **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_json(self) -> dict:
        """Plain-JSON form (for world.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> WorldConfig:
        """Inverse of to_json."""
        kw = dict(data)
        for k in ("bbox", "naip_years", "s2_dates", "s1_dates"):
            kw[k] = tuple(kw[k])
        return cls(**kw)


# The modules that decide the world's pixels and items (not the servers that serve them).
CONTENT_MODULES = ("config", "scenes", "build", "raster", "field", "truth", "landcover", "stac")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 of the source of CONTENT_MODULES."""
    h = hashlib.sha256()
    for name in CONTENT_MODULES:
        h.update(name.encode() + b"\0" + (Path(__file__).parent / f"{name}.py").read_bytes())
    return h.hexdigest()


DEFAULT_WORLD = WorldConfig()


def cache_root() -> Path:
    """Where cached worlds live: $SCALE_ALIBI_CACHE or ~/.cache/scale-alibi."""
    root = os.environ.get("SCALE_ALIBI_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "scale-alibi"


def default_world_dir(cfg: WorldConfig = DEFAULT_WORLD) -> Path:
    """The cache directory of a world: <cache_root>/world-<cfg.key()>."""
    return cache_root() / f"world-{cfg.key()}"
