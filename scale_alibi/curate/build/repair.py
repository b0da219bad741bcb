"""Repair of damaged files: re-cut the metatiles holding them, and forget done metatiles whose committed
files were damaged before a resume."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from scale_alibi.contract.release import Release, content_hash, fsync_paths
from scale_alibi.curate.build.executor import _run, search_blocks
from scale_alibi.curate.build.metatile import metatile_key
from scale_alibi.curate.build.params import BuildParams
from scale_alibi.curate.build.staging import _dirs_up_to, _mt_name


def recut_files(rel: Release, params: BuildParams, metatiles: dict, damage: list, catalog: str, signer: Any,
                progress: bool, echo: Callable[[str], None]) -> list[str]:
    """Re-cut (stage only) the metatiles holding the damaged files `damage` (scale_alibi.curate.damage.Damage) and
    replace each such file by its re-cut bytes when they hash to the manifest's sha256; the caller holds
    the release lock. Returns a line per file left damaged."""
    from scale_alibi.curate.search import SearchOptions

    wanted: dict[tuple, list] = {}
    for d in damage:
        wanted.setdefault(metatile_key(*d.triplet, params.metatile_levels), []).append(d)
    unplanned = [d for mt, ds in wanted.items() if mt not in metatiles for d in ds]
    todo = [mt for mt in metatiles if mt in wanted]
    # Whole blocks, as the build searched them: the same search bbox gives the same items.
    blocks = {b: mts for b, mts in search_blocks(metatiles).items() if any(mt in wanted for mt in mts)}
    opts = SearchOptions(datetime=params.datetime, max_cloud=params.max_cloud, naip_years=params.naip_years)
    echo(f"release {params.release}: re-cutting {len(todo)} metatiles for {len(damage)} damaged files")
    failures: list[str] = []
    shutil.rmtree(rel.path / ".build", ignore_errors=True)
    try:
        _run(rel, params, metatiles, todo, blocks, catalog, opts, signer, "synchronous", None, progress, echo,
             failures, commit=False)
        left = [f"{d.path}: its metatile is not in the plan the manifest records" for d in unplanned]
        left += failures
        moved = []
        for mt in todo:
            staging = rel.path / ".build" / "staging" / _mt_name(mt)
            for d in wanted[mt]:
                src = staging / d.path
                if not src.is_file():
                    if not any(f.startswith(f"metatile {_mt_name(mt)}:") for f in failures):
                        left.append(f"{d.path}: the re-cut no longer yields this triplet (the catalog changed?)")
                    continue
                if content_hash(src.read_bytes()) != d.digest:
                    left.append(f"{d.path}: re-cut bytes differ from the manifest (the catalog's scenes changed?)")
                    continue
                dst = rel.path / d.path
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                moved.append(dst)
        fsync_paths(_dirs_up_to(moved, rel.path))
        return left
    finally:
        shutil.rmtree(rel.path / ".build", ignore_errors=True)


def _drop_damaged(rel: Release, records: dict, levels: int, echo: Callable[[str], None]) -> None:
    """Re-hash the committed files of done metatiles; forget (and re-cut) those with a damaged file."""
    from scale_alibi.curate.damage import find_damage

    damage = find_damage(rel, [row for r in records.values() for row in r["rows"]], deep=True)
    bad = sorted({metatile_key(*d.triplet, levels) for d in damage})
    if bad:
        echo(f"release {rel.name}: {len(damage)} files of {len(bad)} done metatiles are missing or damaged "
             f"(first: {damage[0].path}: {damage[0].problem}); cutting those metatiles again")
    for mt in bad:
        (rel.path / ".build" / "done" / f"{_mt_name(mt)}.json").unlink(missing_ok=True)
        del records[mt]
