"""build_world: render every scene into COGs and write the STAC catalog templates, cached by config."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from rasterio.transform import Affine
from shapely.geometry import Polygon, box

from scale_alibi.contract.errors import UserError
from scale_alibi.devworld import stac
from scale_alibi.devworld.config import WorldConfig
from scale_alibi.devworld.raster import render_sensor, write_cog
from scale_alibi.devworld.scenes import Scene, pixel_to_xy, plan
from scale_alibi.devworld.truth import truth_of

log = logging.getLogger(__name__)

MARKER = "world.json"  # written last: its presence (with the config's key) means the world is complete
COLLECTIONS = ("sentinel-2-l2a", "sentinel-1-rtc", "naip")
SCL_OF_CLASS = np.array([6, 4, 4, 5, 5, 4], np.uint8)  # water, vegetation, not-vegetated
# S1/S2 scenes here are a few hundred pixels (one COG block), real ones ~10980 px with four
# overview levels (Planetary Computer's S2 visual: 5490, 2745, 1373, 687): keep three, scaled down.
SMALL_SCENE_OVERVIEWS = 3


def is_world(path: Path, cfg: WorldConfig | None = None) -> bool:
    """True when path holds a complete world (of cfg, when given)."""
    try:
        meta = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return cfg is None or meta.get("key") == cfg.key()


def load_config(path: Path) -> WorldConfig:
    """The WorldConfig a complete world directory was built from."""
    if not is_world(path):
        raise UserError(f"{path} is not a built world (no {MARKER}); run `curate world build --out {path}` first")
    return WorldConfig.from_json(json.loads((Path(path) / MARKER).read_text())["config"])


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive lock next to the world dir so concurrent test sessions build it once."""
    lock = path.parent / f".{path.name}.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_world(out_dir: str | os.PathLike, cfg: WorldConfig) -> Path:
    """Render the world into out_dir (COGs under files/, STAC under catalog/); skip if already built."""
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory (new, empty, or a previous world)")
    if is_world(out, cfg):
        return out
    if out.is_dir() and any(out.iterdir()) and not is_world(out):
        raise UserError(f"{out} is not empty and holds no world; give a new or empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if is_world(out, cfg):  # built by a concurrent process while we waited
            return out
        for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            t0 = time.perf_counter()
            _render_all(tmp, cfg)
            seconds = time.perf_counter() - t0
            (tmp / MARKER).write_text(json.dumps({"key": cfg.key(), "config": cfg.to_json(), "render_seconds": round(seconds, 2)}, indent=1))
            if out.exists():
                old = out.parent / f".{out.name}.old-{os.getpid()}"
                out.rename(old)
                tmp.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(out)
            log.info("world rendered in %.1f s: %s", seconds, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _render_scene(root: str, scene: Scene, cfg: WorldConfig) -> dict:
    """Render one scene's COGs; returns its STAC item (runs in a worker process)."""
    render = {"sentinel-2-l2a": _s2, "sentinel-1-rtc": _s1, "naip": _naip}[scene.collection]
    return render(Path(root) / "files" / scene.collection / scene.id, scene, truth_of(cfg), cfg)


def _workers() -> int:
    env = os.environ.get("SCALE_ALIBI_WORLD_WORKERS")
    return max(1, int(env)) if env else max(1, min(2, os.cpu_count() or 1))


def _render_all(root: Path, cfg: WorldConfig) -> None:
    scenes = plan(cfg)
    n = _workers()
    if n == 1:
        results = [_render_scene(str(root), sc, cfg) for sc in scenes]
    else:
        # Largest (NAIP) first so the pool's tail is short; spawn: no forked GDAL/BLAS state.
        order = sorted(range(len(scenes)), key=lambda i: -scenes[i].width * scenes[i].height * (4 if scenes[i].collection == "naip" else 1))
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
            futs = {i: pool.submit(_render_scene, str(root), scenes[i], cfg) for i in order}
            results = [futs[i].result() for i in range(len(scenes))]
    items: dict[str, list[dict]] = {c: [] for c in COLLECTIONS}
    for scene, it in zip(scenes, results):
        items[scene.collection].append(it)
    cat = root / "catalog"
    cat.mkdir()
    for cid, its in items.items():
        (cat / f"{cid}.json").write_text(json.dumps(stac.collection(cid, cfg, its), indent=1))
        fc = {"type": "FeatureCollection", "features": its}
        (cat / f"{cid}-items.json").write_text(json.dumps(fc, indent=1))


def _pixel_lonlat_local(scene: Scene, truth, cols: np.ndarray, rows: np.ndarray):
    """Local-frame coordinates of pixel centres (arrays of fractional col/row indices)."""
    from rasterio.warp import transform as warp_transform

    xs, ys = pixel_to_xy(scene.transform, cols.ravel(), rows.ravel())
    lon, lat = warp_transform(scene.crs, "EPSG:4326", list(xs), list(ys))
    x, y = truth.to_local(np.array(lon), np.array(lat))
    return x.reshape(cols.shape), y.reshape(cols.shape)


def _s2(folder: Path, scene: Scene, truth, cfg: WorldConfig) -> dict:
    vis = render_sensor(truth, "s2", scene.crs, scene.transform, scene.height, scene.width)
    h2, w2 = scene.half_res_shape
    # SCL at 20 m: land cover at 20 m pixel centres (pixel units of the 10 m grid).
    c20, r20 = np.meshgrid(np.arange(w2) * 2 + 1.0, np.arange(h2) * 2 + 1.0)
    x20, y20 = _pixel_lonlat_local(scene, truth, c20, r20)
    scl = SCL_OF_CLASS[truth.classes(x20, y20)]
    date = scene.datetime[:10]
    if scene.quirks.get("clouds"):
        c10, r10 = np.meshgrid(np.arange(scene.width) + 0.5, np.arange(scene.height) + 0.5)
        x10, y10 = _pixel_lonlat_local(scene, truth, c10, r10)
        dens = truth.cloud_density(date, x10, y10).astype(np.float32)
        cloud = np.array([232.0, 234.0, 240.0], np.float32)[:, None, None]
        vis = vis * (1 - dens) + cloud * dens
        d20 = truth.cloud_density(date, x20, y20)
        scl = np.where(d20 > 0.75, 9, np.where(d20 > 0.45, 8, np.where(d20 > 0.2, 10, scl))).astype(np.uint8)
    out = np.clip(np.rint(vis), 1, 255).astype(np.uint8)
    valid_px = None
    if "swath_edge" in scene.quirks:
        # A straight, slightly tilted swath edge: pixels east of it are nodata (0) in both assets.
        frac, tilt = scene.quirks["swath_edge"], math.tan(math.radians(12.0))
        c0 = frac * scene.width

        def edge(row):
            return c0 + tilt * (row - scene.height / 2)

        cols = np.arange(scene.width) + 0.5
        rows = np.arange(scene.height) + 0.5
        bad = cols[None, :] > edge(rows)[:, None]
        out[:, bad] = 0
        bad20 = (np.arange(w2) * 2 + 1.0)[None, :] > edge(np.arange(h2) * 2 + 1.0)[:, None]
        scl[bad20] = 0
        valid_px = Polygon([(0, 0), (edge(0), 0), (edge(scene.height), scene.height), (0, scene.height)]).intersection(box(0, 0, scene.width, scene.height))
    if scene.quirks.get("scl_defect"):
        # A disc where SCL says "saturated or defective" (1, north half: the visual is saturated
        # white there) and "no data" (0, south half: the visual looks like any other ground).
        cx, cy = scl_defect_centre(cfg, truth)
        disc = (x20 - cx) ** 2 + (y20 - cy) ** 2 < SCL_DEFECT_RADIUS_M**2
        scl[disc & (y20 >= cy)] = 1
        scl[disc & (y20 < cy)] = 0
        c10, r10 = np.meshgrid(np.arange(scene.width) + 0.5, np.arange(scene.height) + 0.5)
        x10, y10 = _pixel_lonlat_local(scene, truth, c10, r10)
        out[:, ((x10 - cx) ** 2 + (y10 - cy) ** 2 < SCL_DEFECT_RADIUS_M**2) & (y10 >= cy)] = 255
    visual_nodata = None if scene.quirks.get("untagged") else 0
    write_cog(folder / "visual.tif", out, scene.crs, scene.transform, nodata=visual_nodata, min_overviews=SMALL_SCENE_OVERVIEWS)
    tr = scene.transform
    t20 = Affine(tr.a * 2, tr.b, tr.c, tr.d, tr.e * 2, tr.f)
    write_cog(folder / "SCL.tif", scl[None], scene.crs, t20, nodata=0, resampling="nearest", min_overviews=SMALL_SCENE_OVERVIEWS)
    extra = {
        "eo:cloud_cover": stac.cloud_cover(scl),
        "s2:nodata_pixel_percentage": round(100.0 * float((out[0] == 0).mean()), 6),
        "s2:high_proba_clouds_percentage": round(100.0 * float((scl == 9).mean()), 6),
        "s2:medium_proba_clouds_percentage": round(100.0 * float((scl == 8).mean()), 6),
        "s2:thin_cirrus_percentage": round(100.0 * float((scl == 10).mean()), 6),
    }
    return stac.item(scene, valid_px, stac.s2_assets(scene), extra)


SCL_DEFECT_RADIUS_M = 150.0


def scl_defect_centre(cfg: WorldConfig, truth) -> tuple[float, float]:
    """Local-frame centre (metres) of the SCL 0/1 disc: 40 % of the way east, inside the overlap of the
    west-zone scene with the east-zone scene of the same day (which fills it), a quarter of the way north."""
    w, s, e, n = cfg.bbox
    x, y = truth.to_local(np.array([w + 0.4 * (e - w)]), np.array([s + 0.25 * (n - s)]))
    return float(x[0]), float(y[0])


def bright_targets(cfg: WorldConfig) -> list[tuple[float, float, float, float]]:
    """(lon, lat, vv, vh) of S1 point scatterers: > 10 linear, saturating any 8-bit mapping."""
    rng = np.random.default_rng([cfg.seed, 1])
    w, s, e, n = cfg.bbox
    out = []
    for i in range(cfg.bright_targets):
        lon = w + (e - w) * rng.uniform(0.1, 0.9)
        lat = s + (n - s) * rng.uniform(0.1, 0.9)
        out.append((lon, lat, float(20.0 + 15.0 * i), float(12.0 + 4.0 * i)))
    return out


def _s1(folder: Path, scene: Scene, truth, cfg: WorldConfig) -> dict:
    from rasterio.warp import transform as warp_transform

    g0 = render_sensor(truth, "s1", scene.crs, scene.transform, scene.height, scene.width)
    if cfg.s1_enl:
        rng = np.random.default_rng([cfg.seed, zlib.crc32(scene.id.encode())])
        g = g0 * rng.gamma(cfg.s1_enl, 1.0 / cfg.s1_enl, size=g0.shape).astype(np.float32)
    else:
        g = g0
    targets = bright_targets(cfg)
    xs, ys = warp_transform("EPSG:4326", scene.crs, [t[0] for t in targets], [t[1] for t in targets])
    inv = ~scene.transform
    for (_lon, _lat, vv, vh), x, y in zip(targets, xs, ys):
        col, row = pixel_to_xy(inv, x, y)
        c, r = int(math.floor(col)), int(math.floor(row))
        if 0 <= r < scene.height and 0 <= c < scene.width:
            g[0, r, c], g[1, r, c] = vv, vh
    if "zero_border" in scene.quirks:
        # RTC's border: 0.0 in both polarisations, not the -32768 the tag declares (PC #307, #493).
        g[:, :, : int(round(scene.quirks["zero_border"] * scene.width))] = 0.0
    for i, pol in enumerate(("vv", "vh")):
        write_cog(folder / stac.s1_file(pol), g[i : i + 1].astype(np.float32), scene.crs, scene.transform,
                  nodata=-32768.0, min_overviews=SMALL_SCENE_OVERVIEWS)
    return stac.item(scene, None, stac.s1_assets(scene), {})


def _naip(folder: Path, scene: Scene, truth, cfg: WorldConfig) -> dict:
    dn = render_sensor(truth, "naip", scene.crs, scene.transform, scene.height, scene.width)
    out = np.clip(np.rint(dn), 0, 255).astype(np.uint8)
    if "black_collar" in scene.quirks:
        # 0 in every band north-west of a diagonal, inside the item's geometry; no nodata tag.
        rows, cols = np.ogrid[: scene.height, : scene.width]
        out[:, cols / scene.width + rows / scene.height < scene.quirks["black_collar"]] = 0
    write_cog(folder / "image.tif", out, scene.crs, scene.transform, nodata=None)
    return stac.item(scene, None, stac.naip_assets(scene), {})
