"""Damage to a finished release: files a manifest row names that are missing, unreadable,
truncated or whose sha256 differs from the row's (`curate verify` lists them, a rerun of `curate
build` re-cuts them).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from scale_alibi.contract.release import HASH_COLUMNS, Release, triplet_files

PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # every PNG ends with this empty IEND chunk
_CHUNK = 1 << 20


class ReleaseFiles(Protocol):
    """A release's files wherever they are stored (scale_alibi.curate.build.output.ReleaseOutput)."""

    def check_file(self, rel: str, digest: str, deep: bool) -> str | None: ...


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


def find_damage(release: Release | ReleaseFiles, rows: pa.Table | Iterable[dict], deep: bool = True,
                progress: bool = False) -> list[Damage]:
    """The damaged files among those the manifest rows `rows` name, in row order."""
    from tqdm import tqdm

    if isinstance(rows, pa.Table):
        rows = rows.select(list(HASH_COLUMNS)).to_pylist()
    files = [((int(r["z"]), int(r["x"]), int(r["y"])), rel, digest) for r in rows for rel, digest in triplet_files(r)]
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
