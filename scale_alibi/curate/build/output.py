"""Where a build writes one release: `LocalOutput` (a directory) or `ObjectOutput` (a prefix of an
object store named by an fsspec URL). `open_output(out, release)` picks one.

Both keep one contract, which is what makes a kill at any moment safe and a rerun cheap:
a metatile's files are whole and durable before its done record exists; a rerun trusts done
records and cuts every other metatile again; the manifest is written last, in one piece.

- A directory stages a metatile's PNGs privately, fsyncs them, writes the done record, then renames
  them into the public tree (`staging.py`); an flock keeps a second build out.
- An object store has no rename, but a PUT is atomic: a metatile's PNGs are PUT at their final keys
  (one request each, no copy), then its done record. Objects of a metatile that failed before its
  record are not in any manifest, so never served, and the retry overwrites them. A second build is
  kept out by a lease object created with a conditional PUT (If-None-Match) and renewed while the
  build runs; a killed build's lease expires after LEASE_S (at once when it ran on this machine).

Outputs are plain data (a path or a URL) so metatile tasks can carry them to Dask workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import (
    MANIFEST_NAME,
    Release,
    atomic_file,
    fsync_paths,
    write_bytes_atomic,
    write_manifest_batches,
)
from scale_alibi.contract.storage import is_remote, join, local_path, remote_filesystem
from scale_alibi.curate.build.staging import (
    _check_out,
    _clean_tmp,
    _confined,
    _dirs_up_to,
    _Lock,
    _mt_name,
    commit_staging,
)

Metatile = tuple[int, int, int]
BUILD_DIR = ".build"  # the build's working state inside the release; removed once the manifest exists


def _metatile_of(name: str) -> Metatile | None:
    """The metatile a done record's file name stands for (None: not a record's name)."""
    try:
        k, x, y = (int(v) for v in name.removesuffix(".json").split("-"))
    except ValueError:
        return None
    return k, x, y


def _record_name(mt: Metatile) -> str:
    return f"{BUILD_DIR}/done/{_mt_name(mt)}.json"


def _staged_name(mt: Metatile, rel: str) -> str:
    return f"{BUILD_DIR}/staging/{_mt_name(mt)}/{rel}"


class ReleaseOutput(ABC):
    """One release's storage as the build sees it. Names (`rel`) are '/'-paths relative to the release."""

    name: str

    @property
    @abstractmethod
    def location(self) -> str:
        """The release's path or URL, for messages."""

    # -- primitives each store provides -----------------------------------------------------------------
    @abstractmethod
    def read(self, rel: str) -> bytes | None:
        """The bytes of `rel`, or None when it does not exist."""

    @abstractmethod
    def read_size(self, rel: str) -> int | None:
        """The size of file `rel` in bytes, or None when it does not exist."""

    @abstractmethod
    def write(self, rel: str, data: bytes) -> None:
        """Write `rel` whole and durably: readers see the old bytes, the new ones or nothing."""

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Remove `rel` (a file or a whole directory/prefix); nothing to remove is fine."""

    @abstractmethod
    def names(self, rel_dir: str) -> list[str]:
        """Names of the files directly in `rel_dir` (empty when it does not exist)."""

    @abstractmethod
    def check_writable(self) -> None:
        """Raise UserError (what to do) unless the build can write here."""

    @abstractmethod
    def lock(self) -> AbstractContextManager[Any]:
        """Hold the release for this build alone; UserError when another build holds it."""

    @abstractmethod
    def check_file(self, rel: str, digest: str, deep: bool) -> str | None:
        """What is wrong with file `rel` (None: nothing); see scale_alibi.curate.damage.check_file."""

    @abstractmethod
    def publish(self, mt: Metatile, files: dict[str, bytes], record: dict) -> None:
        """Make a metatile's files public and durable, its done record existing only once they are."""

    @abstractmethod
    def stage(self, mt: Metatile, files: dict[str, bytes]) -> None:
        """Write a metatile's files privately (a repair checks them before using them)."""

    @abstractmethod
    def finish_record(self, mt: Metatile, record: dict) -> None:
        """Complete what a kill interrupted after `mt`'s done record was written."""

    @abstractmethod
    def clean(self, recorded: set[str]) -> None:
        """Remove what an interrupted build left for metatiles without a done record (names: `_mt_name`)."""

    # How a resume checks done metatiles' files: a full re-hash on a local disk (cheap, and finds
    # damage done between runs); presence and the PNG end on a store (a PUT is whole; re-hashing would
    # download the release so far at every resume).
    resume_check_deep: bool = True

    # -- the build protocol, written once over the primitives -----------------------------------------
    def is_finished(self) -> bool:
        return self.read_size(MANIFEST_NAME) is not None

    def read_manifest(self) -> pa.Table:
        data = self.read(MANIFEST_NAME)
        if data is None:
            raise FileNotFoundError(f"{self.location}/{MANIFEST_NAME}")
        return pq.read_table(pa.BufferReader(data))

    @abstractmethod
    def write_manifest(self, batches: Iterable[pa.Table], schema: pa.Schema, metadata: dict[str, object]) -> int:
        """Write the manifest from `batches` in (z, x, y) order (contract.release.write_manifest_batches),
        in one piece: the last write of a build, which makes the release exist. Returns its rows."""

    def done_metatiles(self) -> list[Metatile]:
        """Metatiles that have a done record."""
        found = (_metatile_of(name) for name in self.names(f"{BUILD_DIR}/done") if name.endswith(".json"))
        return [mt for mt in found if mt is not None]

    def read_record(self, mt: Metatile) -> dict | None:
        """The done record of `mt` (its manifest rows and files), or None."""
        data = self.read(_record_name(mt))
        return None if data is None else json.loads(data)

    def write_record(self, mt: Metatile, record: dict) -> None:
        self.write(_record_name(mt), json.dumps(record, sort_keys=True).encode())

    def forget(self, mt: Metatile) -> None:
        """Drop a metatile's done record (it is cut again)."""
        self.delete(_record_name(mt))

    def begin(self, mt: Metatile) -> None:
        """A new attempt at `mt` (Dask reruns a lost worker's task): drop an earlier attempt's record
        first, or a rerun would trust it over files this attempt replaces."""
        self.forget(mt)
        self.delete(f"{BUILD_DIR}/staging/{_mt_name(mt)}")

    def staged(self, mt: Metatile, rel: str) -> bytes | None:
        return self.read(_staged_name(mt, rel))

    def finish(self) -> None:
        """Remove the build's working state (after the manifest is written, or before a repair)."""
        self.delete(BUILD_DIR)


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
        return _confined(self.path / rel, self.out)

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
        _check_out(self.out)
        _confined(self.path, self.out)
        self.path.mkdir(parents=True, exist_ok=True)
        _confined(self.path / BUILD_DIR, self.out)

    def lock(self) -> AbstractContextManager[Any]:
        return _Lock(self.path / ".lock")

    def write_manifest(self, batches: Iterable[pa.Table], schema: pa.Schema, metadata: dict[str, object]) -> int:
        with atomic_file(self._file(MANIFEST_NAME)) as f:
            return write_manifest_batches(f, batches, schema, metadata)

    def check_file(self, rel: str, digest: str, deep: bool) -> str | None:
        from scale_alibi.curate.damage import check_file

        return check_file(self.path / rel, digest, deep)

    def stage(self, mt: Metatile, files: dict[str, bytes]) -> None:
        staging = self._file(f"{BUILD_DIR}/staging/{_mt_name(mt)}")
        staged = []
        for rel, data in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)  # private until the done record commits it
            staged.append(target)
        fsync_paths([*staged, *_dirs_up_to(staged, staging.parent)])  # durable before a record names them

    def publish(self, mt: Metatile, files: dict[str, bytes], record: dict) -> None:
        self.stage(mt, files)
        self.write_record(mt, record)
        self.finish_record(mt, record)

    def finish_record(self, mt: Metatile, record: dict) -> None:
        commit_staging(self.path, mt, record)

    def clean(self, recorded: set[str]) -> None:
        _clean_tmp(self.path, recorded)


LEASE_S = 120.0  # an object-store lease not renewed for this long belongs to a killed build


class ObjectOutput(ReleaseOutput):
    """A release under an object-store prefix URL/<name>: whole-object PUTs and a renewed lease."""

    resume_check_deep = False
    PUT_THREADS = 16  # PUTs in flight per metatile: each is a round trip, the store takes many at once

    def __init__(self, url: str, name: str):
        self.url = url.rstrip("/")
        self.name = name
        self._fs: Any = None
        self._root = ""

    def __reduce__(self):
        return ObjectOutput, (self.url, self.name)

    @property
    def location(self) -> str:
        return f"{self.url}/{self.name}"

    def _opened(self) -> tuple[Any, str]:
        """(fsspec filesystem, root path), opened on first use in each process (workers included)."""
        if self._fs is None:
            self._fs, self._root = remote_filesystem(self.url)
        return self._fs, self._root

    @property
    def fs(self) -> Any:
        return self._opened()[0]

    def _key(self, rel: str) -> str:
        return join(self._opened()[1], self.name, rel)

    def read(self, rel: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._key(rel))
        except FileNotFoundError:
            return None

    def read_size(self, rel: str) -> int | None:
        try:
            return int(self.fs.info(self._key(rel))["size"])
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self._key(rel), data)

    def _write_many(self, files: dict[str, bytes]) -> None:
        keys = {self._key(rel): data for rel, data in files.items()}
        if len(keys) <= 1:
            for key, data in keys.items():
                self.fs.pipe_file(key, data)
            return
        with ThreadPoolExecutor(min(self.PUT_THREADS, len(keys))) as pool:
            list(pool.map(lambda kv: self.fs.pipe_file(*kv), keys.items()))

    def delete(self, rel: str) -> None:
        key = self._key(rel)
        try:
            self.fs.rm(key, recursive=True)
        except FileNotFoundError:
            pass

    def names(self, rel_dir: str) -> list[str]:
        try:
            found = self.fs.ls(self._key(rel_dir), detail=True)
        except FileNotFoundError:
            return []
        return sorted(f["name"].rsplit("/", 1)[-1] for f in found if f["type"] == "file")

    def check_writable(self) -> None:
        probe = f".write-probe-{socket.gethostname()}-{os.getpid()}"
        try:
            self.write(probe, b"")
            self.delete(probe)
        except UserError:
            raise
        except Exception as e:  # botocore/aiohttp errors: credentials, endpoint, permissions, no bucket
            raise UserError(f"cannot write to {self.location} ({type(e).__name__}: {str(e)[:160]}); check the "
                            "bucket exists and the credentials (AWS_* variables for s3://) allow writing") from None

    def lock(self) -> AbstractContextManager[Any]:
        return _lease(self)

    def write_manifest(self, batches: Iterable[pa.Table], schema: pa.Schema, metadata: dict[str, object]) -> int:
        # Written to a local file first: a store's multipart upload would make a half-written
        # manifest public if the writer failed; put_file publishes it only once it is whole.
        with tempfile.TemporaryDirectory(prefix="scale-alibi-manifest-") as tmp:
            local = Path(tmp) / MANIFEST_NAME
            with open(local, "wb") as f:
                rows = write_manifest_batches(f, batches, schema, metadata)
            self.fs.put_file(str(local), self._key(MANIFEST_NAME))
        return rows

    def check_file(self, rel: str, digest: str, deep: bool) -> str | None:
        from scale_alibi.curate.damage import PNG_END

        key = self._key(rel)
        try:
            if deep:
                data = self.fs.cat_file(key)
                if hashlib.sha256(data).hexdigest() == digest:
                    return None
                return f"sha256 differs from the manifest ({len(data)} bytes)"
            tail = self.fs.cat_file(key, start=-len(PNG_END))
        except FileNotFoundError:
            return "missing"
        except OSError as e:
            return f"unreadable ({str(e)[:120]})"
        return None if tail == PNG_END else f"truncated (no PNG end chunk: {len(tail)}-byte tail differs)"

    def stage(self, mt: Metatile, files: dict[str, bytes]) -> None:
        self._write_many({_staged_name(mt, rel): data for rel, data in files.items()})

    def publish(self, mt: Metatile, files: dict[str, bytes], record: dict) -> None:
        self._write_many(files)  # final keys: a PUT is atomic, and no manifest names them yet
        self.write_record(mt, record)

    def finish_record(self, mt: Metatile, record: dict) -> None:
        """Nothing: a store's files are at their final keys before the record is written."""

    def clean(self, recorded: set[str]) -> None:
        for name in self.names_of_dirs(f"{BUILD_DIR}/staging"):
            if name not in recorded:
                self.delete(f"{BUILD_DIR}/staging/{name}")

    def names_of_dirs(self, rel_dir: str) -> list[str]:
        try:
            found = self.fs.ls(self._key(rel_dir), detail=True)
        except FileNotFoundError:
            return []
        return sorted(f["name"].rstrip("/").rsplit("/", 1)[-1] for f in found if f["type"] == "directory")


@dataclass(frozen=True)
class _LeaseHolder:
    host: str
    pid: int
    renewed: float

    def encode(self) -> bytes:
        return json.dumps({"host": self.host, "pid": self.pid, "renewed": self.renewed}).encode()


@contextmanager
def _lease(output: ObjectOutput) -> Iterator[None]:
    """Hold `output`'s lease object `.lock`: created only if absent (a conditional PUT), renewed every
    LEASE_S / 4 by a thread, deleted on exit; a lease older than LEASE_S is a killed build's, taken over."""
    key = output._key(".lock")

    def holder() -> bytes:
        return _LeaseHolder(socket.gethostname(), os.getpid(), time.time()).encode()

    def create() -> bool:
        try:
            with output.fs.open(key, "xb") as f:
                f.write(holder())
            return True
        except FileExistsError:
            return False

    if not create():
        try:
            current = json.loads(output.fs.cat_file(key))
            age = time.time() - float(current["renewed"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            current, age = {}, LEASE_S  # vanished or unreadable: treat as expired
        if current.get("host") == socket.gethostname() and not _pid_alive(current.get("pid")):
            age = LEASE_S  # a build on this machine that was killed: no need to wait for its lease to expire
        if age < LEASE_S:
            raise UserError(f"another build is writing release {output.name} (lease {output.location}/.lock held "
                            f"by {current.get('host')} pid {current.get('pid')}, renewed {age:.0f}s ago); wait for "
                            f"it, or if that build was killed, rerun after {LEASE_S - age:.0f}s")
        output.delete(".lock")
        if not create():
            raise UserError(f"another build took over the expired lease of release {output.name} just now; "
                            "wait for it or build another --release")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_S / 4):
            try:
                output.fs.pipe_file(key, holder())
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the next one may succeed
                pass

    thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        output.delete(".lock")


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def open_output(out: str | os.PathLike[str], release: str) -> ReleaseOutput:
    """The output for release `release` under `out`: a local directory or an fsspec URL."""
    if is_remote(out):
        return ObjectOutput(os.fspath(out), release)
    return LocalOutput(local_path(out), release)
