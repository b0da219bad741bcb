"""`ObjectOutput`: a release built into an object-store prefix (an fsspec URL): whole-object PUTs at
final keys, done records, and a lease object that keeps a second build out (see output.py)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import MANIFEST_NAME, write_manifest_batches
from scale_alibi.contract.storage import join, remote_filesystem
from scale_alibi.curate.build.output import BUILD_DIR, Metatile, ReleaseOutput, staged_name

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
        from scale_alibi.curate.build.repair import PNG_END

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
        self._write_many({staged_name(mt, rel): data for rel, data in files.items()})

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
