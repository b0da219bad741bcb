"""PNG encoding speed of `scale_alibi.curate.encode.encode_png` (the build's tile encoder) vs Pillow's default.

    python benchmarks/encode_bench.py [--tiles 200]

Encoding bounds curation speed on one core, so the build writes its PNGs itself: Up filter in
numpy, libdeflate at level 1. Anchors, measured in the same run on the same 256 px RGB tiles (the
loader benchmark's texture-like imagery): Pillow's PNG encoder at its default level 6 (what
`Image.save("x.png")` does), imagecodecs' libpng at level 1 with zlib's default strategy and
adaptive filtering, and libpng at level 1 with the RLE strategy and SUB filter (the build's encoder
before). Prints tiles/s and mean bytes per tile for each, and the ratios.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader_bench import synthetic_png  # noqa: E402

from scale_alibi.curate.encode import encode_png  # noqa: E402


def pillow_default(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def imagecodecs_level1(rgb: np.ndarray) -> bytes:
    return bytes(imagecodecs.png_encode(rgb, level=1))


def libpng_rle_sub(rgb: np.ndarray) -> bytes:
    return bytes(imagecodecs.png_encode(rgb, level=1, strategy=3, filter=16))  # zlib Z_RLE, PNG_FILTER_SUB


def measure(encode, tiles: list[np.ndarray]) -> tuple[float, float]:
    """(tiles per second, mean bytes per tile) of `encode` over `tiles`, best of 3 passes."""
    best = float("inf")
    for _ in range(3):
        t0 = time.thread_time()
        sizes = [len(encode(t)) for t in tiles]
        best = min(best, time.thread_time() - t0)
    return len(tiles) / best, sum(sizes) / len(sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tiles = [np.asarray(imagecodecs.png_decode(synthetic_png(rng))) for _ in range(args.tiles)]
    project = measure(encode_png, tiles)
    print(f"{args.tiles} tiles of 256x256 RGB, one core")
    print(f"project  {'scale_alibi.curate.encode.encode_png':38s} {project[0]:7.0f} tiles/s  {project[1] / 1e3:6.1f} kB/tile")
    for name, fn in (("Pillow default (level 6)", pillow_default), ("imagecodecs level 1, default strategy", imagecodecs_level1),
                     ("libpng level 1, RLE, SUB (before)", libpng_rle_sub)):
        anchor = measure(fn, tiles)
        print(f"anchor   {name:38s} {anchor[0]:7.0f} tiles/s  {anchor[1] / 1e3:6.1f} kB/tile   "
              f"speed {project[0] / anchor[0]:4.1f}x, size {project[1] / anchor[1]:4.2f}x")


if __name__ == "__main__":
    main()
