"""Repair of damaged files: re-cut the metatiles holding them, and forget done metatiles whose committed
files were damaged before a resume."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scale_alibi.contract.release import content_hash
from scale_alibi.curate.build.executor import _run, search_blocks
from scale_alibi.curate.build.metatile import metatile_key
from scale_alibi.curate.build.output import ReleaseOutput
from scale_alibi.curate.build.params import BuildParams
from scale_alibi.curate.build.staging import _mt_name


def recut_files(output: ReleaseOutput, params: BuildParams, metatiles: dict, damage: list, catalog: str, signer: Any,
                progress: bool, echo: Callable[[str], None]) -> list[str]:
    """Re-cut (stage only) the metatiles holding the damaged files `damage` (scale_alibi.curate.damage.Damage) and
    replace each such file by its re-cut bytes when they hash to the manifest's sha256; the caller holds
    the release lock. Returns a line per file left damaged."""
    from scale_alibi.curate.search import SearchOptions

    wanted: dict[tuple, list] = {}
    for d in damage:
        z, x, y = d.triplet
        wanted.setdefault(metatile_key(z, x, y, params.metatile_levels), []).append(d)
    unplanned = [d for mt, ds in wanted.items() if mt not in metatiles for d in ds]
    todo = [mt for mt in metatiles if mt in wanted]
    # Whole blocks, as the build searched them: the same search bbox gives the same items.
    blocks = {b: mts for b, mts in search_blocks(metatiles).items() if any(mt in wanted for mt in mts)}
    opts = SearchOptions(datetime=params.datetime, max_cloud=params.max_cloud, naip_years=params.naip_years)
    echo(f"release {params.release}: re-cutting {len(todo)} metatiles for {len(damage)} damaged files")
    failures: list[str] = []
    output.finish()
    try:
        _run(output, params, metatiles, todo, blocks, catalog, opts, signer, "synchronous", None, progress, echo,
             failures, commit=False)
        left = [f"{d.path}: its metatile is not in the plan the manifest records" for d in unplanned]
        left += failures
        for mt in todo:
            for d in wanted[mt]:
                data = output.staged(mt, d.path)
                if data is None:
                    if not any(f.startswith(f"metatile {_mt_name(mt)}:") for f in failures):
                        left.append(f"{d.path}: the re-cut no longer yields this triplet (the catalog changed?)")
                    continue
                if content_hash(data) != d.digest:
                    left.append(f"{d.path}: re-cut bytes differ from the manifest (the catalog's scenes changed?)")
                    continue
                output.write(d.path, data)
        return left
    finally:
        output.finish()


def _drop_damaged(output: ReleaseOutput, records: dict, levels: int, echo: Callable[[str], None]) -> None:
    """Check the committed files of done metatiles (output.resume_check_deep); forget (and re-cut) those
    with a damaged file."""
    from scale_alibi.curate.damage import find_damage

    damage = find_damage(output, [row for r in records.values() for row in r["rows"]], deep=output.resume_check_deep)
    bad = sorted({metatile_key(z, x, y, levels) for d in damage for z, x, y in [d.triplet]})
    if bad:
        echo(f"release {output.name}: {len(damage)} files of {len(bad)} done metatiles are missing or damaged "
             f"(first: {damage[0].path}: {damage[0].problem}); cutting those metatiles again")
    for mt in bad:
        output.forget(mt)
        del records[mt]
