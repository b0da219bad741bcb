"""Which COG level `curate build` reads, per build zoom and sensor, on the synthetic world.

For a build at zoom Y, S1 and S2 are read at the pixel size of zoom Y and NAIP at that of Y+1 (its
Y tile is the 2x2 average of the Y+1 image). Each read goes through the real reader
(`scale_alibi.curate.reader.read_window`) over HTTP, for one tile at the centre of the world; the level is
reported as its pixel size in source pixels and its size in pixels.

    python benchmarks/overview_levels.py [--zooms 12-18]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

ASSETS = (("s2", "sentinel-2-l2a", "visual", 0), ("s1", "sentinel-1-rtc", "vv", 0), ("naip", "naip", "image", 1))


def main() -> None:
    import mercantile
    import pystac_client
    import rasterio

    from scale_alibi.curate.reader import read_window
    from scale_alibi.curate.warp import block_grid
    from scale_alibi.devworld import DEFAULT_WORLD, build_world, default_world_dir, serve_world

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zooms", default="12-18", help="first-last build zoom")
    lo, hi = (int(v) for v in p.parse_args().zooms.split("-"))
    with serve_world(build_world(default_world_dir(), DEFAULT_WORLD)) as world:
        client = pystac_client.Client.open(world.stac_url)
        lon, lat = DEFAULT_WORLD.center
        print("| build zoom | " + " | ".join(f"{layer} (read at zoom {'Y+1' if up else 'Y'})" for layer, _, _, up in ASSETS) + " |")
        print("|---" * (len(ASSETS) + 1) + "|")
        for y_zoom in range(lo, hi + 1):
            cells = []
            for _layer, coll, key, up in ASSETS:
                z = y_zoom + up
                tile = mercantile.tile(lon, lat, z)
                grid = block_grid(z, [(tile.x, tile.y)])
                item = next(iter(client.search(collections=[coll], intersects={"type": "Point", "coordinates": [lon, lat]}).items()))
                href = item.assets[key].href
                src = read_window(href, lambda h: h, grid.bounds, grid.res, indexes=[1])
                with rasterio.open(href) as ds:
                    native = abs(ds.res[0])
                    factors = ds.overviews(1)
                    level = round(src.res / native)
                    if level == 1:
                        cells.append(f"full res ({ds.width}x{ds.height}; overviews 1/{', 1/'.join(map(str, factors))})")
                    else:
                        with rasterio.open(href, overview_level=factors.index(level)) as ovr:
                            cells.append(f"1/{level} overview ({ovr.width}x{ovr.height}, pixel {src.res / native:.4f} source px)")
            print(f"| {y_zoom} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
