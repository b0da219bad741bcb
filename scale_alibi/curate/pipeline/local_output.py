"""`LocalOutput`: a release built into a local directory, through the staging/commit protocol of
`staging.py` (stage, fsync, done record, rename) and an flock."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pyarrow as pa

from scale_alibi.contract.release import (
    MANIFEST_NAME,
    Release,
    atomic_file,
    fsync_paths,
    writable_release_dir,
    write_bytes_atomic,
    write_manifest_batches,
)
from scale_alibi.curate.pipeline.output import BUILD_DIR, Metatile, ReleaseOutput
from scale_alibi.curate.pipeline.staging import (
    ReleaseLock,
    check_out_writable,
    clean_tmp,
    commit_staging,
    confined,
    dirs_up_to,
    make_dirs,
    write_durable,
)
from scale_alibi.curate.pipeline.tiling import metatile_name


class LocalOutput(ReleaseOutput):
    """A release directory OUT/<name>: staged files, fsync, rename, flock (see staging.py)."""

    def __init__(self, out: Path, name: str):
        self.out = Path(out)
        self.name = name
        self.release = Release(self.out, name)
        self.path = self.release.path

    def __reduce__(self):
        return LocalOutput, (self.out, self.name)

    @property
    def location(self) -> str:
        return str(self.path)

    def _file(self, rel: str) -> Path:
        return confined(self.path / rel, self.out)

    def read(self, rel: str) -> bytes | None:
        try:
            return self._file(rel).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_size(self, rel: str) -> int | None:
        p = self._file(rel)
        return p.stat().st_size if p.is_file() else None

    def write(self, rel: str, data: bytes) -> None:
        write_bytes_atomic(self._file(rel), data)

    def delete(self, rel: str) -> None:
        p = self._file(rel)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)  # a planted symlink itself, never its target

    def names(self, rel_dir: str) -> list[str]:
        d = self._file(rel_dir)
        return sorted(p.name for p in d.iterdir() if p.is_file()) if d.is_dir() else []

    def check_writable(self) -> None:
        check_out_writable(self.out)
        writable_release_dir(self.out, self.name)  # its own directory, not a link elsewhere
        self.path.mkdir(parents=True, exist_ok=True)
        confined(self.path / BUILD_DIR, self.out)

    def lock(self) -> AbstractContextManager[Any]:
        return ReleaseLock(self.path / ".lock")

    def write_manifest(self, batches: Iterable[pa.Table], schema: pa.Schema, metadata: dict[str, object]) -> int:
        with atomic_file(self._file(MANIFEST_NAME)) as f:
            return write_manifest_batches(f, batches, schema, metadata)

    def check_file(self, rel: str, digest: str, deep: bool) -> str | None:
        from scale_alibi.curate.pipeline.repair import check_file

        return check_file(self.path / rel, digest, deep)

    def stage(self, mt: Metatile, files: dict[str, bytes]) -> None:
        staging = self._file(f"{BUILD_DIR}/staging/{metatile_name(mt)}")
        staged = {staging / rel: data for rel, data in files.items()}  # private until the done record commits them
        make_dirs(staged)
        write_durable(staged)
        fsync_paths(dirs_up_to(staged, staging.parent))  # durable before a record names them

    def publish(self, mt: Metatile, files: dict[str, bytes], record: dict) -> None:
        self.stage(mt, files)
        self.write_record(mt, record)
        self.finish_record(mt, record)

    def finish_record(self, mt: Metatile, record: dict) -> None:
        commit_staging(self.path, mt, record)

    def clean(self, recorded: set[str]) -> None:
        clean_tmp(self.path, recorded)
