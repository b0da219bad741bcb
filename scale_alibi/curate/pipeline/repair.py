"""Damage to a release and its repair, in one place: `curate verify` (find, and with --repair re-cut),
a rerun of `curate build` on a finished release (the cheap check, then the re-cut) and a resumed build
(done metatiles whose files were damaged since are cut again) all go through here.

Damage is a file a manifest row (or a done record) names that is missing, unreadable, truncated or
whose sha256 differs from the row's. Repair re-cuts only the metatiles holding damaged files, through
the build's own path (same catalog search, same cut, staged and fsynced), and replaces a damaged file
only by re-cut bytes whose hash is the manifest's: the repaired tree is byte-identical to the release
as built, or the caller is told what could not be fixed.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import mercantile
import pyarrow as pa

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import HASH_COLUMNS, Release, content_hash, manifest_metadata, triplet_files
from scale_alibi.curate.pipeline.executor import run_graph, search_blocks
from scale_alibi.curate.pipeline.manifest import MetatileSummary, summarize
from scale_alibi.curate.pipeline.output import ReleaseOutput
from scale_alibi.curate.pipeline.request import BuildRequest, RunOptions, recorded_request
from scale_alibi.curate.pipeline.tiling import Metatile, group_metatiles, metatile_name, metatile_of

PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # every PNG ends with this empty IEND chunk
_CHUNK = 1 << 20


# ------------------------------------------------------------------ finding damage

class ReleaseFiles(Protocol):
    """A release's files wherever they are stored (scale_alibi.curate.pipeline.output.ReleaseOutput)."""

    def check_file(self, rel: str, digest: str, deep: bool) -> str | None: ...


@dataclass(frozen=True)
class Damage:
    """One damaged file of a release."""

    triplet: mercantile.Tile  # the tile of the manifest row naming it
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


def find_damage(release: Release | ReleaseFiles, rows: pa.Table | Iterable[dict], deep: bool = True,
                progress: bool = False) -> list[Damage]:
    """The damaged files among those the manifest rows `rows` name, in row order."""
    from tqdm import tqdm

    if isinstance(rows, pa.Table):
        rows = rows.select(list(HASH_COLUMNS)).to_pylist()
    files = [(mercantile.Tile._make((int(r["x"]), int(r["y"]), int(r["z"]))), rel, digest)
             for r in rows for rel, digest in triplet_files(r)]
    if isinstance(release, Release):
        root = release.path

        def check(rel: str, digest: str, deep: bool) -> str | None:
            return check_file(root / rel, digest, deep)
    else:
        check = release.check_file
    # Hashing and store reads release the GIL: a few threads keep a disk or a store busy.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        problems = []
        for problem in pool.map(lambda f: check(f[1], f[2], deep), files, chunksize=64):
            problems.append(problem)
            bar.update(1)
    return [Damage(t, rel, digest, p) for (t, rel, digest), p in zip(files, problems) if p is not None]


# ------------------------------------------------------------------ repairing it

def recut_files(output: ReleaseOutput, request: BuildRequest, metatiles: dict[Metatile, list], damage: list[Damage],
                run: RunOptions) -> list[str]:
    """Re-cut (stage only, in this process) the metatiles holding the damaged files `damage` and
    replace each such file by its re-cut bytes when they hash to the manifest's sha256; the caller
    holds the release lock. Returns a line per file left damaged."""
    wanted: dict[Metatile, list[Damage]] = {}
    for d in damage:
        wanted.setdefault(metatile_of(d.triplet, request.params.metatile_levels), []).append(d)
    unplanned = [d for mt, ds in wanted.items() if mt not in metatiles for d in ds]
    todo = [mt for mt in metatiles if mt in wanted]
    # Whole blocks, as the build searched them: the same search bbox gives the same items.
    blocks = {b: mts for b, mts in search_blocks(metatiles).items() if any(mt in wanted for mt in mts)}
    run.echo(f"release {request.release}: re-cutting {len(todo)} metatiles for {len(damage)} damaged files")
    failures: list[str] = []
    output.finish()
    try:
        run_graph(output, request, metatiles, todo, blocks, replace(run, scheduler="synchronous", workers=None),
                  failures, commit=False)
        left = [f"{d.path}: its metatile is not in the plan the manifest records" for d in unplanned]
        left += failures
        for mt in todo:
            for d in wanted[mt]:
                data = output.staged(mt, d.path)
                if data is None:
                    if not any(f.startswith(f"metatile {metatile_name(mt)}:") for f in failures):
                        left.append(f"{d.path}: the re-cut no longer yields this triplet (the catalog changed?)")
                    continue
                if content_hash(data) != d.digest:
                    left.append(f"{d.path}: re-cut bytes differ from the manifest (the catalog's scenes changed?)")
                    continue
                output.write(d.path, data)
        return left
    finally:
        output.finish()


def repair(output: ReleaseOutput, damage: list[Damage], catalog: str | None, run: RunOptions) -> list[str]:
    """`curate verify --repair`: re-cut the metatiles holding `damage`, planned from the request the
    manifest records (`catalog` overrides its catalog), and replace the damaged files; returns what
    stayed damaged."""
    with output.lock():
        request = recorded_request(manifest_metadata(output.read_manifest()), catalog)
        from scale_alibi.curate.search import open_catalog

        open_catalog(request.catalog)
        metatiles = group_metatiles(request.plan(), request.params.metatile_levels)
        return recut_files(output, request, metatiles, damage, run)


def repair_finished(output: ReleaseOutput, request: BuildRequest, table: pa.Table, run: RunOptions, out: str) -> bool:
    """A rerun of `curate build` on a finished release (the caller holds its lock): the cheap check
    (presence and the PNG end chunk: finds deleted and truncated files; `curate verify` re-hashes
    everything), then the re-cut of what it finds (`out`: the data root, for messages). Returns whether anything was repaired; UserError
    when a damaged file could not be re-cut."""
    damage = find_damage(output, table, deep=False, progress=run.progress)
    if not damage:
        return False
    release = request.release
    run.echo(f"release {release} is complete but {len(damage)} files are missing or truncated "
             f"(first: {damage[0].path}); re-cutting them")
    from scale_alibi.curate.search import open_catalog

    open_catalog(request.catalog)
    metatiles = group_metatiles(request.plan(), request.params.metatile_levels)
    left = recut_files(output, request, metatiles, damage, run)
    if left:
        raise UserError(f"{len(left)} damaged files of release {release} could not be re-cut (first: "
                        f"{left[0]}); see `curate verify --data {out} --release {release}`")
    run.echo(f"release {release}: repaired {len(damage)} files; {table.num_rows} triplets complete")
    return True


def resume_done(output: ReleaseOutput, metatiles: Iterable[Metatile], run: RunOptions) -> dict[Metatile, MetatileSummary]:
    """Summaries of the planned metatiles whose done record a resumed build can trust: each record's
    interrupted renames are finished and its files checked (output.resume_check_deep); a metatile
    with a damaged file is forgotten, so it is cut again. Records are read a few at a time, never all."""

    def check(mt: Metatile):
        record = output.read_record(mt)
        if record is None:
            return mt, None, []
        output.finish_record(mt, record)  # finish moves a kill interrupted
        return mt, summarize(record), find_damage(output, record["rows"], deep=output.resume_check_deep)

    trusted: dict[Metatile, MetatileSummary] = {}
    bad, damaged = [], []
    with ThreadPoolExecutor(4) as pool:
        for mt, summary, damage in pool.map(check, list(metatiles)):
            if damage:
                bad.append(mt)
                damaged.extend(damage)
            elif summary is not None:
                trusted[mt] = summary
    if bad:
        run.echo(f"release {output.name}: {len(damaged)} files of {len(bad)} done metatiles are missing or damaged "
                 f"(first: {damaged[0].path}: {damaged[0].problem}); cutting those metatiles again")
    for mt in bad:
        output.forget(mt)
    return trusted
