"""Durability of `curate build`: every file is on disk (fsync) before the record that commits it,
and files get the mode the umask gives (like any other tool's output), not 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from shapely.geometry import box

from scale_alibi.contract.release import Release
from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request


def _spy(monkeypatch) -> list[tuple[str, str, str]]:
    """Record os.fsync (path, file mode or "dir") and os.replace (src, dst) calls, in order, around the
    real calls."""
    events: list[tuple[str, str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else oct(stat.S_IMODE(st.st_mode))
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), kind))
        real_fsync(fd)

    def replace(src, dst, **kw) -> None:
        real_replace(src, dst, **kw)
        events.append(("replace", str(src), str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_are_fsynced_before_their_commit_and_get_the_umasks_mode(world, tmp_path, monkeypatch, umask):
    from scale_alibi.contract.reader import StoredRelease
    from scale_alibi.model.data.stats import write_stats

    events = _spy(monkeypatch)
    previous = os.umask(umask)
    try:
        build_release(tmp_path, resolve_request(zoom=15, region=box(*world.bbox), release="d", catalog=world.stac_url),
                      RunOptions(signer="none", scheduler="synchronous", progress=False, echo=lambda m: None))
        write_stats(StoredRelease(tmp_path, "d"), {"release": "d"})
    finally:
        os.umask(previous)
    rel = Release(tmp_path, "d")
    mode = oct(0o666 & ~umask)
    written = [p for p in rel.path.rglob("*") if p.is_file()]
    assert written and {oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {mode}
    synced_files = [path for kind, path, m in events if kind == "fsync" and m != "dir"]
    assert all(m == mode for kind, _, m in events if kind == "fsync" and m != "dir")  # temp files too

    def at(kind: str, path: str, start: int = 0) -> int:
        """Index of the first `kind` event on `path` from `start` on."""
        return next(i for i, e in enumerate(events) if i >= start and e[0] == kind and path in (e[1], e[2]))

    done = [e for e in events if e[0] == "replace" and "/.build/done/" in e[2]]
    assert done
    for _, tmp, record in done:
        mt = Path(record).stem
        staged = [p for p in synced_files if f"/.build/staging/{mt}/" in p and p.endswith(".png")]
        assert staged, f"no staged PNG of metatile {mt} was fsynced"
        i = at("replace", record)
        assert all(at("fsync", p) < i for p in staged)  # the PNGs, then the record that commits them
        assert all(at("fsync", str(Path(p).parent)) < i for p in staged)  # and their directory entries
        assert at("fsync", tmp) < i < at("fsync", str(Path(record).parent), i)
    manifest = str(rel.manifest_path)
    m = at("replace", manifest)
    tmp = events[m][1]
    assert at("fsync", tmp) < m < at("fsync", str(rel.path), m)
    commits = [i for i, e in enumerate(events) if e[0] == "replace" and e[2].endswith(".png")]
    assert commits and max(commits) < m
    for d in {str(Path(events[i][2]).parent) for i in commits}:  # renames durable before the manifest
        last = max(i for i in commits if str(Path(events[i][2]).parent) == d)
        assert any(e == ("fsync", d, "dir") for e in events[last:m]), d
