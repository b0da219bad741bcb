"""`curate verify`: check a finished release's files against its manifest, and repair them.

Every file a manifest row names is re-hashed (sha256) against the row; damage is a file that is
missing, unreadable, truncated or whose hash differs. `--repair` re-cuts only the metatiles that
hold damaged files, through the build's own path (same catalog search, same cut, staged and
fsynced), and replaces a damaged file only by re-cut bytes whose hash is the manifest's: the
repaired tree is byte-identical to the release as built, or the command says what it could not fix.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pyarrow as pa

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import (
    HASH_COLUMNS,
    TRIPLET_MEMBERS,
    Release,
    manifest_metadata,
    read_manifest,
    triplet_files,
)

PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # every PNG ends with this empty IEND chunk
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Damage:
    """One damaged file of a release."""

    triplet: tuple[int, int, int]  # (z, x, y) of the manifest row naming it
    path: str  # relative to the release directory
    digest: str  # the manifest's sha256
    problem: str


def check_file(path: Path, digest: str, deep: bool = True) -> str | None:
    """What is wrong with the file at `path` (None: nothing). `deep` hashes it; otherwise only its
    presence and its PNG end chunk are checked (one small read: finds deleted and truncated files)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if not deep:
                if size >= len(PNG_END):
                    f.seek(size - len(PNG_END))
                    if f.read() == PNG_END:
                        return None
                return f"truncated ({size} bytes, no PNG end chunk)"
            h = hashlib.sha256()
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if h.hexdigest() == digest:
        return None
    return f"sha256 differs from the manifest ({size} bytes)"


def find_damage(release: Release, rows: pa.Table | Iterable[dict], deep: bool = True,
                progress: bool = False) -> list[Damage]:
    """The damaged files among those the manifest rows `rows` name, in row order."""
    from tqdm import tqdm

    if isinstance(rows, pa.Table):
        rows = rows.select(list(HASH_COLUMNS)).to_pylist()
    files = [((int(r["z"]), int(r["x"]), int(r["y"])), rel, digest) for r in rows for rel, digest in triplet_files(r)]
    root = release.path
    # Hashing releases the GIL: a few threads keep a disk or a page cache busy.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        problems = []
        for problem in pool.map(lambda f: check_file(root / f[1], f[2], deep), files, chunksize=64):
            problems.append(problem)
            bar.update(1)
    return [Damage(t, rel, digest, p) for (t, rel, digest), p in zip(files, problems) if p is not None]


def build_inputs(meta: dict[str, Any]):
    """(BuildParams, region geometry or None, named-release spec or None) a release was built from,
    read back from its manifest metadata."""
    from scale_alibi.curate.build import BuildParams

    try:
        p = dict(meta["params"])
        p["naip_years"] = tuple(p["naip_years"]) if p.get("naip_years") else None
        params = BuildParams(**p)
    except (KeyError, TypeError) as e:
        raise UserError(f"the manifest does not record the build parameters ({e}); rebuild the release") from None
    label = params.region
    if label.startswith("release:"):
        from scale_alibi.regions import load_release

        return params, None, load_release(label.removeprefix("release:"))
    if label.startswith("geometry:"):
        import shapely.wkt
        from shapely.errors import ShapelyError

        try:
            return params, shapely.wkt.loads(label.removeprefix("geometry:")), None
        except ShapelyError:
            raise UserError(f"release {params.release} was built from a region the manifest records only by its "
                            "hash; rerun the same `curate build` command, which re-cuts missing or truncated "
                            "files") from None
    from scale_alibi.regions import load_region

    return params, load_region(label), None


def repair(release: Release, damage: list[Damage], catalog: str | None, signer: Any, progress: bool,
           echo: Callable[[str], None]) -> list[str]:
    """Re-cut the metatiles holding `damage` and replace the damaged files; returns what stayed damaged."""
    from scale_alibi.curate.build import _Lock, group_metatiles, plan_tiles, recut_files

    with _Lock(release.path / ".lock"):
        meta = manifest_metadata(read_manifest(release.manifest_path))
        params, geometry, spec = build_inputs(meta)
        catalog = catalog or str(meta.get("catalog") or "")
        if not catalog:
            raise UserError("the manifest records no catalog; pass --catalog (the STAC API the release was built from)")
        from scale_alibi.curate.search import open_catalog

        open_catalog(catalog)
        tiles = plan_tiles(params, geometry=geometry, spec=spec)
        metatiles = group_metatiles(tiles, params.zoom, params.metatile_levels)
        return recut_files(release, params, metatiles, damage, catalog, signer, progress, echo)


@click.command("verify")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Data directory (the OUT of `curate build`).")
@click.option("--release", required=True, help="Release to check.")
@click.option("--repair", "do_repair", is_flag=True,
              help="Re-cut the metatiles of damaged files from the catalog and replace those files.")
@click.option("--catalog", default=None, help="STAC API to re-cut from.  [default: the one the manifest records]")
@click.option("--signer", default="planetary-computer", show_default=True,
              help="Href signer for --repair: planetary-computer, none, or module:function.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def verify(data_dir: Path, release: str, do_repair: bool, catalog: str | None, signer: str, progress: bool) -> None:
    """Re-hash every file of a release against its manifest; list damage; with --repair, re-cut it.

    Exit status: 0 when the release is intact (or was repaired), 1 when damage was found and not
    repaired."""
    rel = Release(data_dir, release)
    if not rel.is_finished:
        raise UserError(f"no finished release {release!r} under {data_dir} (no manifest.parquet); "
                        "build it with `curate build`")
    try:
        table = read_manifest(rel.manifest_path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"the manifest of {release} is unreadable ({str(e)[:120]}); it cannot be verified: "
                        "rebuild the release") from None
    damage = find_damage(rel, table, deep=True, progress=progress)
    total = table.num_rows * len(TRIPLET_MEMBERS)
    for d in damage:
        click.echo(f"damaged: {d.path}: {d.problem}")
    if not damage:
        click.echo(f"release {release}: all {total} files of {table.num_rows} triplets match the manifest")
        return
    triplets = len({d.triplet for d in damage})
    if not do_repair:
        click.echo(f"release {release}: {len(damage)} of {total} files damaged in {triplets} triplets; run "
                   f"`curate verify --data {data_dir} --release {release} --repair` to re-cut them")
        sys.exit(1)
    left = repair(rel, damage, catalog, signer, progress, lambda m: click.echo(m, err=True))
    if left:
        for line in left:
            click.echo(f"not repaired: {line}")
        click.echo(f"release {release}: {len(left)} of {len(damage)} damaged files could not be repaired")
        sys.exit(1)
    click.echo(f"release {release}: repaired {len(damage)} files in {triplets} triplets; all {total} files "
               "match the manifest")
