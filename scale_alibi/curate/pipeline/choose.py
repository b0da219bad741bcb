"""Scene choice per tile: render ranked scene groups lazily over a block of tiles, keep the first usable
group of each sensor, and describe the choice in the tile's manifest row."""

from __future__ import annotations

import dataclasses

import numpy as np

from scale_alibi.curate.scene import Asset, Scene


def _checked(src, layer: str, asset: Asset | None):
    """`src` with its nodata resolved (file tag, else metadata) and its valid pixels marked by the
    sensor's rule (scale_alibi.curate.validity)."""
    from scale_alibi.curate.validity import resolve_nodata, valid_pixels

    nodata = resolve_nodata(src.nodata, asset.nodata if asset else None)
    return dataclasses.replace(src, nodata=nodata, valid=valid_pixels(layer, src.data, nodata))


def _render_s2(items: list[Scene], grid, read):
    """S2 `visual` of each item, usable where its own SCL says usable ground, mosaicked first-wins.

    Each scene's visual is masked by that scene's SCL before mosaicking, so a pixel one scene lacks
    takes both its colour and its classification from the next scene."""
    from scale_alibi.curate.validity import scl_usable
    from scale_alibi.curate.warp import fill_where, warp

    h, w = grid.shape
    out = np.zeros((h, w, 3), np.uint8)
    valid = np.zeros((h, w), bool)
    for it in items:
        src = read(it.href("visual"), grid.bounds, grid.res, indexes=[1, 2, 3])
        if src is None:
            continue
        data, ok = warp([_checked(src, "s2", it.asset("visual"))], grid, np.uint8, 0)
        if it.has("SCL"):
            scl_src = read(it.href("SCL"), grid.bounds, grid.res, indexes=[1], margin_px=1)
            if scl_src is None:
                continue
            # Every SCL pixel is a class, 0 ("no data") included: SCL_INVALID decides, not the tag.
            scl_src = dataclasses.replace(scl_src, valid=np.ones(scl_src.data.shape[1:], bool))
            scl, got = warp([scl_src], grid, np.uint8, 0, resampling="nearest")
            ok &= got & scl_usable(scl[..., 0])
        fill = ok & ~valid
        fill_where(out, data, fill)
        valid |= fill
        if valid.all():
            break
    return out, valid


def _render(group, layer: str, grid, read):
    """Read every item of `group` over `grid` with `read` (href, bounds, res, **options), warp and mosaic:
    (data, usable mask)."""
    from scale_alibi.curate.warp import warp

    bounds = grid.bounds
    if layer == "s2":
        return _render_s2(group.items, grid, read)
    if layer == "s1":
        srcs = []
        for it in group.items:
            vv = read(it.href("vv"), bounds, grid.res, indexes=[1])
            vh = read(it.href("vh"), bounds, grid.res, indexes=[1])
            if vv is None or vh is None:
                continue
            if vv.data.shape != vh.data.shape or vv.transform != vh.transform:
                raise RuntimeError(f"{it.id}: vv and vh grids differ")
            vv, vh = _checked(vv, "s1", it.asset("vv")), _checked(vh, "s1", it.asset("vh"))
            data = np.concatenate([vv.data, vh.data]).astype(np.float32, copy=False)
            srcs.append(dataclasses.replace(vv, data=data, valid=vv.valid & vh.valid))
        nodata = srcs[0].nodata if srcs and srcs[0].nodata is not None else -32768.0
        return warp(srcs, grid, np.float32, nodata)
    # naip: RGB of the RGBN image
    srcs = [_checked(s, "naip", it.asset("image")) for it in group.items
            if (s := read(it.href("image"), bounds, grid.res, indexes=[1, 2, 3])) is not None]
    return warp(srcs, grid, np.uint8, 0)


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
                frac = (min(valid_fraction(v[:256, :256]), valid_fraction(v[:256, 256:]), valid_fraction(v[256:, :256]),
                            valid_fraction(v[256:, 256:])) if layer == "naip" else valid_fraction(v))
                if frac >= min_valid:
                    chosen[t] = (groups[key], data[sl], frac)
                else:
                    pos[t] += 1
                    if pos[t] < len(ranked[t]):
                        still.append(t)
        pending = still
    return chosen


def valid_fraction(mask: np.ndarray) -> float:
    """The fraction of True in a bool mask (the mean, without a float copy of the mask)."""
    return np.count_nonzero(mask) / mask.size


def _slice(grid, layer, t):
    if layer == "naip":  # grid at z+1: the tile is its 2x2 children
        r0, c0 = (t[1] * 2 - grid.y0) * grid.size, (t[0] * 2 - grid.x0) * grid.size
        return slice(r0, r0 + 2 * grid.size), slice(c0, c0 + 2 * grid.size)
    return grid.tile_slice(*t)


def describe_choice(row: dict, layer: str, group, frac: float, tile_fp) -> None:
    used = [it for it in group.items if it.footprint.intersects(tile_fp)]
    row[f"{layer}_group"] = group.key
    row[f"{layer}_items"] = [it.id for it in used]
    row[f"{layer}_datetime"] = group.datetime.isoformat()
    row[f"{layer}_valid"] = round(frac, 6)
    if layer == "s2":
        cc = [it.cloud_cover or 0.0 for it in used]
        row["s2_cloud_cover"] = max(cc) if cc else None
    if layer == "s1":
        first = used[0] if used else None
        row["s1_orbit_state"] = first.orbit_state if first else None
        row["s1_relative_orbit"] = first.relative_orbit if first else None
    if layer == "naip":
        row["naip_year"] = str(used[0].naip_year) if used and used[0].naip_year is not None else None
