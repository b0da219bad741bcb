"""A synthetic world shaped like Planetary Computer: analytic ground truth, COGs, a real STAC API.

    cfg = WorldConfig(...)                  # DEFAULT_WORLD: ~4x4 km straddling UTM zones 13/14
    world_dir = build_world(out_dir, cfg)   # cached: skips when already built for this cfg
    with serve_world(world_dir) as w:       # rustac STAC API + Range file server on loopback
        w.stac_url, w.files_url, w.files.stats(), w.sign(item)

Ground truth tiles: scale_alibi.devworld.truth.render_truth(layer, z, x, y, size).
"""

from scale_alibi.devworld.build import build_world, is_world
from scale_alibi.devworld.config import DEFAULT_WORLD, WorldConfig, default_world_dir
from scale_alibi.devworld.serve import World, serve_world, start_world

__all__ = ["DEFAULT_WORLD", "WorldConfig", "World", "build_world", "default_world_dir", "is_world", "serve_world", "start_world"]
