"""`ObjectOutput`: a release built into an object-store prefix (an fsspec URL): whole-object PUTs at
final keys, done records, and a fenced lease object that keeps a second build out (lease.py).

Every store call waits at most as its `StoreTimeouts` say; a call that still fails (no answer, no
access) stops the build with one line (a rerun resumes), and every write first checks that the
lease still names this build."""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import MANIFEST_NAME, write_manifest_batches
from scale_alibi.contract.storage import STORE_TIMEOUTS, StoreTimeouts, join, remote_filesystem, store_failure
from scale_alibi.curate.pipeline.lease import LeaseFence, hold_lease, lease_object
from scale_alibi.curate.pipeline.output import BUILD_DIR, Metatile, ReleaseOutput, staged_name

T = TypeVar("T")


class ObjectOutput(ReleaseOutput):
    """A release under an object-store prefix URL/<name>: whole-object PUTs and a renewed lease."""

    resume_check_deep = False
    PUT_THREADS = 16  # PUTs in flight per metatile: each is a round trip, the store takes many at once

    def __init__(self, url: str, name: str, timeouts: StoreTimeouts = STORE_TIMEOUTS, fence: LeaseFence | None = None):
        self.url = url.rstrip("/")
        self.name = name
        self.timeouts = timeouts
        self.fence = fence  # set while this build holds the lease: every write checks it first
        self._fs: Any = None
        self._root = ""

    def __reduce__(self):
        return ObjectOutput, (self.url, self.name, self.timeouts, self.fence)

    @property
    def location(self) -> str:
        return f"{self.url}/{self.name}"

    def _opened(self) -> tuple[Any, str]:
        """(fsspec filesystem, root path), opened on first use in each process (workers included)."""
        if self._fs is None:
            self._fs, self._root = remote_filesystem(self.url, self.timeouts)
        return self._fs, self._root

    def _call(self, what: Callable[..., T], *args: object, **kwargs: object) -> T:
        """`what(*args, **kwargs)` on the store; a failure other than a missing object (the store did not
        answer within its timeouts and tries, or refused) is one line: the build stops, a rerun resumes."""
        try:
            return what(*args, **kwargs)
        except (FileNotFoundError, UserError):
            raise
        except Exception as exc:  # botocore's errors are not all OSErrors: catch what the library raises
            raise UserError(f"the object store holding {self.location} failed ({store_failure(exc)}; "
                            f"{self.timeouts.describe()} at most); check the store's endpoint and credentials "
                            "(AWS_* variables for s3://) and rerun: finished metatiles are kept") from None

    def _fenced(self) -> None:
        """Raise LeaseLost unless this build still holds the lease (nothing to check outside a build)."""
        if self.fence is not None:
            self.fence.check(lambda: self.read(".lock"))

    @property
    def fs(self) -> Any:
        return self._opened()[0]

    def _key(self, rel: str) -> str:
        return join(self._opened()[1], self.name, rel)

    def read(self, rel: str) -> bytes | None:
        try:
            return self._call(self.fs.cat_file, self._key(rel))
        except FileNotFoundError:
            return None

    def read_size(self, rel: str) -> int | None:
        try:
            return int(self._call(self.fs.info, self._key(rel))["size"])
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        self._fenced()
        self._call(self.fs.pipe_file, self._key(rel), data)

    def _write_many(self, files: dict[str, bytes]) -> None:
        self._fenced()
        keys = {self._key(rel): data for rel, data in files.items()}
        if len(keys) <= 1:
            for key, data in keys.items():
                self._call(self.fs.pipe_file, key, data)
            return
        with ThreadPoolExecutor(min(self.PUT_THREADS, len(keys))) as pool:
            list(pool.map(lambda kv: self._call(self.fs.pipe_file, *kv), keys.items()))

    def delete(self, rel: str) -> None:
        self._fenced()
        key = self._key(rel)
        try:
            self._call(self.fs.rm, key, recursive=True)
        except FileNotFoundError:
            pass

    def names(self, rel_dir: str) -> list[str]:
        try:
            found = self._call(self.fs.ls, self._key(rel_dir), detail=True)
        except FileNotFoundError:
            return []
        return sorted(f["name"].rsplit("/", 1)[-1] for f in found if f["type"] == "file")

    def check_writable(self) -> None:
        probe = f".write-probe-{socket.gethostname()}-{os.getpid()}"
        try:
            self.fs.pipe_file(self._key(probe), b"")
            self.fs.rm(self._key(probe))
        except UserError:
            raise
        except Exception as e:  # botocore/aiohttp errors: credentials, endpoint, permissions, no bucket, no answer
            raise UserError(f"cannot write to {self.location} ({store_failure(e)[:200]}; {self.timeouts.describe()} "
                            "at most); check the bucket exists, the endpoint answers and the credentials (AWS_* "
                            "variables for s3://) allow writing") from None

    def lock(self) -> AbstractContextManager[Any]:
        return self._leased()

    @contextmanager
    def _leased(self) -> Iterator[None]:
        """Hold the release's lease; while held, this output (and its copies on workers) is fenced by it."""
        lease = lease_object(self.fs, self._key(".lock"))
        with hold_lease(lease, f"{self.location}/.lock", self.name) as fence:
            self.fence = fence
            try:
                yield
            finally:
                self.fence = None

    def write_manifest(self, batches: Iterable[pa.Table], schema: pa.Schema, metadata: dict[str, object]) -> int:
        # Written to a local file first: a store's multipart upload would make a half-written
        # manifest public if the writer failed; put_file publishes it only once it is whole.
        with tempfile.TemporaryDirectory(prefix="scale-alibi-manifest-") as tmp:
            local = Path(tmp) / MANIFEST_NAME
            with open(local, "wb") as f:
                rows = write_manifest_batches(f, batches, schema, metadata)
            self._fenced()
            self._call(self.fs.put_file, str(local), self._key(MANIFEST_NAME))
        return rows

    def check_file(self, rel: str, digest: str, deep: bool) -> str | None:
        from scale_alibi.curate.pipeline.repair import PNG_END

        key = self._key(rel)
        try:
            if deep:
                data = self._call(self.fs.cat_file, key)
                if hashlib.sha256(data).hexdigest() == digest:
                    return None
                return f"sha256 differs from the manifest ({len(data)} bytes)"
            tail = self._call(self.fs.cat_file, key, start=-len(PNG_END))
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
            found = self._call(self.fs.ls, self._key(rel_dir), detail=True)
        except FileNotFoundError:
            return []
        return sorted(f["name"].rstrip("/").rsplit("/", 1)[-1] for f in found if f["type"] == "directory")
