"""Repair of damaged files: re-cut the metatiles holding them; and the resume check, which forgets done
metatiles whose committed files were damaged since."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from scale_alibi.contract.release import content_hash
from scale_alibi.curate.build.executor import _run, search_blocks
from scale_alibi.curate.build.manifest import MetatileSummary, summarize
from scale_alibi.curate.build.metatile import metatile_key
from scale_alibi.curate.build.output import Metatile, ReleaseOutput
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
    opts = SearchOptions(datetime=params.datetime, max_cloud=params.max_cloud, naip_years=params.naip_years,
                         max_gap_days=params.max_gap_days)  # the build's search windows
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


def resume_done(output: ReleaseOutput, metatiles: Iterable[Metatile], levels: int,
                echo: Callable[[str], None]) -> dict[Metatile, MetatileSummary]:
    """Summaries of the planned metatiles whose done record a resumed build can trust: each record's
    interrupted renames are finished and its files checked (output.resume_check_deep); a metatile
    with a damaged file is forgotten, so it is cut again. Records are read a few at a time, never all."""
    from scale_alibi.curate.damage import find_damage

    def check(mt: Metatile):
        record = output.read_record(mt)
        if record is None:
            return mt, None, []
        output.finish_record(mt, record)  # finish moves a kill interrupted
        return mt, summarize(record), find_damage(output, record["rows"], deep=output.resume_check_deep)

    trusted: dict[Metatile, MetatileSummary] = {}
    bad, damaged = [], []
    with ThreadPoolExecutor(4) as pool:
        for mt, summary, damage in pool.map(check, [mt for mt in metatiles]):
            if damage:
                bad.append(mt)
                damaged.extend(damage)
            elif summary is not None:
                trusted[mt] = summary
    if bad:
        echo(f"release {output.name}: {len(damaged)} files of {len(bad)} done metatiles are missing or damaged "
             f"(first: {damaged[0].path}: {damaged[0].problem}); cutting those metatiles again")
    for mt in bad:
        output.forget(mt)
    return trusted
