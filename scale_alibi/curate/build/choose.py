"""Scene choice per tile: render ranked scene groups lazily over a block of tiles, keep the first usable
group of each sensor, and describe the choice in the tile's manifest row."""

from __future__ import annotations

import numpy as np

SCL_CLOUD = (3, 8, 9, 10)  # S2 scene classes treated as unusable: cloud shadow, cloud med/high, cirrus


def _render(group, layer: str, grid, read):
    """Read every item of `group` over `grid` with `read` (href, bounds, res, **options), warp and mosaic:
    (data, usable mask)."""
    from scale_alibi.curate.warp import warp

    bounds = grid.bounds
    if layer == "s2":
        visual = [read(it["assets"]["visual"], bounds, grid.res, indexes=[1, 2, 3]) for it in group.items]
        data, valid = warp([s for s in visual if s is not None], grid, np.uint8, 0)
        scl_srcs = [read(it["assets"]["SCL"], bounds, grid.res, indexes=[1], margin_px=1)
                    for it in group.items if "SCL" in it["assets"]]
        scl_srcs = [s for s in scl_srcs if s is not None]
        if scl_srcs:

            scl, scl_valid = warp(scl_srcs, grid, np.uint8, 0, resampling="nearest")
            valid &= ~(scl_valid & np.isin(scl[..., 0], SCL_CLOUD))
        return data, valid
    if layer == "s1":
        srcs = []
        for it in group.items:
            vv = read(it["assets"]["vv"], bounds, grid.res, indexes=[1])
            vh = read(it["assets"]["vh"], bounds, grid.res, indexes=[1])
            if vv is None or vh is None:
                continue
            if vv.data.shape != vh.data.shape or vv.transform != vh.transform:
                raise RuntimeError(f"{it['id']}: vv and vh grids differ")
            vv.data = np.concatenate([vv.data, vh.data]).astype(np.float32, copy=False)
            srcs.append(vv)
        nodata = srcs[0].nodata if srcs and srcs[0].nodata is not None else -32768.0
        return warp(srcs, grid, np.float32, nodata)
    # naip: RGB of the RGBN image
    srcs = [read(it["assets"]["image"], bounds, grid.res, indexes=[1, 2, 3]) for it in group.items]
    return warp([s for s in srcs if s is not None], grid, np.uint8, 0)


def choose_layer(layer: str, tiles: list[tuple[int, int]], ranked: dict, grid_for, read, min_valid: float):
    """Walk each tile's ranked groups; the first usable one wins. Returns {tile: (group, data, valid_frac)}.

    Groups are rendered lazily, over the block of the tiles that still need them, so a fallback
    scene costs bytes only where the first choice failed."""
    chosen: dict[tuple[int, int], tuple] = {}
    pos = {t: 0 for t in tiles}
    pending = [t for t in tiles if ranked.get(t)]
    while pending:
        need: dict[str, list] = {}
        groups = {}
        for t in pending:
            g = ranked[t][pos[t]]
            need.setdefault(g.key, []).append(t)
            groups[g.key] = g
        still = []
        for key in sorted(need):
            ts = need[key]
            grid = grid_for(ts)
            data, valid = _render(groups[key], layer, grid, read)
            for t in ts:
                sl = _slice(grid, layer, t)
                v = valid[sl]
                # NAIP: every one of the four z+1 tiles must pass, not just their 512 px union.
                frac = float(min(v[:256, :256].mean(), v[:256, 256:].mean(), v[256:, :256].mean(), v[256:, 256:].mean())
                             if layer == "naip" else v.mean())
                if frac >= min_valid:
                    chosen[t] = (groups[key], data[sl], frac)
                else:
                    pos[t] += 1
                    if pos[t] < len(ranked[t]):
                        still.append(t)
        pending = still
    return chosen


def _slice(grid, layer, t):
    if layer == "naip":  # grid at z+1: the tile is its 2x2 children
        r0, c0 = (t[1] * 2 - grid.y0) * grid.size, (t[0] * 2 - grid.x0) * grid.size
        return slice(r0, r0 + 2 * grid.size), slice(c0, c0 + 2 * grid.size)
    return grid.tile_slice(*t)


def describe_choice(row: dict, layer: str, group, frac: float, tile_fp) -> None:
    from scale_alibi.curate.selection import footprint

    used = [it for it in group.items if footprint(it).intersects(tile_fp)]
    row[f"{layer}_group"] = group.key
    row[f"{layer}_items"] = [it["id"] for it in used]
    row[f"{layer}_datetime"] = group.datetime.isoformat()
    row[f"{layer}_valid"] = round(frac, 6)
    if layer == "s2":
        cc = [float(it["properties"].get("eo:cloud_cover", 0.0) or 0.0) for it in used]
        row["s2_cloud_cover"] = max(cc) if cc else None
    if layer == "s1":
        p = used[0]["properties"] if used else {}
        row["s1_orbit_state"] = p.get("sat:orbit_state")
        row["s1_relative_orbit"] = None if p.get("sat:relative_orbit") is None else int(p["sat:relative_orbit"])
    if layer == "naip":
        p = used[0]["properties"] if used else {}
        row["naip_year"] = str(p.get("naip:year")) if p.get("naip:year") is not None else None
