"""The lease that keeps a second build out of a release in an object store, fenced: the lease object
`.lock` names its build by a random token, every change to it is conditional on it being unchanged
since this build last wrote it (S3 `If-None-Match`/`If-Match` on its ETag; on other stores a
compare-then-write, see LeaseObject), and a build checks the
lease still names it before each write (`LeaseFence`), so a build that stalled past the lease age
and was taken over stops before its next write instead of writing beside its successor.

An object store has no kernel lock that dies with its process: the lease is renewed every quarter
of its age by a thread; one not renewed for `lease_s()` seconds belongs to a killed (or stalled)
build and is taken over, conditionally, by the next build. A lease whose bytes are not a lease is
treated as held (it cannot be told apart from a build's): the message says how to clear it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from scale_alibi.contract.errors import UserError

LEASE_S = 120.0  # an object-store lease not renewed for this long belongs to a killed build
LEASE_S_ENV = "SCALE_ALIBI_LEASE_S"  # another lease age, for tests that stall a build past it


def lease_s() -> float:
    """The lease age: LEASE_S, or SCALE_ALIBI_LEASE_S when set (a positive number of seconds)."""
    text = os.environ.get(LEASE_S_ENV)
    if not text:
        return LEASE_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UserError(f"{LEASE_S_ENV}={text!r} is not a positive number of seconds; unset it or give e.g. 120")
    return value


class LeaseLost(UserError):
    """This build's lease was taken over by another build: it must write nothing more."""


@dataclass(frozen=True)
class LeaseHolder:
    """What the lease object says: which build holds it, and when it last renewed it."""

    host: str
    pid: int
    renewed: float
    token: str

    def encode(self) -> bytes:
        return json.dumps({"host": self.host, "pid": self.pid, "renewed": self.renewed, "token": self.token}).encode()

    @classmethod
    def parse(cls, data: bytes) -> LeaseHolder | None:
        """The holder `data` names, or None for bytes that are not a lease."""
        try:
            doc = json.loads(data)
            holder = cls(str(doc["host"]), int(doc["pid"]), float(doc["renewed"]), str(doc["token"]))
        except (ValueError, KeyError, TypeError):
            return None
        return holder if holder.renewed == holder.renewed else None  # not NaN

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}"


class LeaseObject:
    """Conditional operations on the lease object, each keyed by the tag the caller last saw.

    This generic form (any fsspec store) compares the object's bytes and then writes: a check, not
    an atomic condition, so two builds racing within one round trip could both pass it.
    `S3LeaseObject` uses the store's own conditions (ETags, `If-None-Match`/`If-Match`)."""

    def __init__(self, fs: Any, key: str):
        self.fs = fs
        self.key = key

    @staticmethod
    def _tag(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def create(self, data: bytes) -> str | None:
        """Write `data` only if the object does not exist; its tag, or None when it exists."""
        try:
            with self.fs.open(self.key, "xb") as f:
                f.write(data)
        except FileExistsError:
            return None
        return self._tag(data)

    def read(self) -> tuple[bytes, str] | None:
        """(bytes, tag) of the object, or None when it does not exist."""
        try:
            data = self.fs.cat_file(self.key)
        except FileNotFoundError:
            return None
        return data, self._tag(data)

    def replace(self, data: bytes, tag: str) -> str | None:
        """Write `data` only if the object's tag is still `tag`; the new tag, or None."""
        found = self.read()
        if found is None or found[1] != tag:
            return None
        self.fs.pipe_file(self.key, data)
        return self._tag(data)

    def delete(self, tag: str) -> bool:
        """Delete the object only if its tag is still `tag`; whether it was deleted."""
        found = self.read()
        if found is None or found[1] != tag:
            return False
        self.fs.rm_file(self.key)
        return True


class S3LeaseObject(LeaseObject):
    """The lease object on S3 (or a store speaking its API): every condition is the store's own, on
    the object's ETag, so a renewal or release racing a takeover is refused by the store."""

    # What a store answers to a condition that does not hold, or to a conditional write racing another.
    _REFUSED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}

    def __init__(self, fs: Any, key: str):
        super().__init__(fs, key)
        self.bucket, self.path, _ = fs.split_path(key)

    def _s3(self, method: str, **kwargs: object) -> Any:
        """The store's answer to `method`, or None when it refused the condition or the object is absent."""
        from fsspec.asyn import sync

        try:
            return sync(self.fs.loop, self.fs._call_s3, method, Bucket=self.bucket, Key=self.path, **kwargs)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _error_code(exc) in self._REFUSED or isinstance(exc, FileExistsError):
                return None
            raise

    def create(self, data: bytes) -> str | None:
        answer = self._s3("put_object", Body=data, IfNoneMatch="*")
        return None if answer is None else answer["ETag"]

    def read(self) -> tuple[bytes, str] | None:
        answer = self._s3("get_object")
        if answer is None:
            return None
        from fsspec.asyn import sync

        async def body() -> bytes:
            async with answer["Body"] as stream:
                return await stream.read()

        return sync(self.fs.loop, body), answer["ETag"]

    def replace(self, data: bytes, tag: str) -> str | None:
        answer = self._s3("put_object", Body=data, IfMatch=tag)
        return None if answer is None else answer["ETag"]

    def delete(self, tag: str) -> bool:
        return self._s3("delete_object", IfMatch=tag) is not None


def lease_object(fs: Any, key: str) -> LeaseObject:
    """The lease object `key` of `fs`, with the store's own conditions where it has them (S3)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return S3LeaseObject(fs, key) if protocol in ("s3", "s3a") else LeaseObject(fs, key)


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code behind `exc` (s3fs keeps botocore's ClientError as the cause)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code"))
        seen = seen.__cause__ or seen.__context__
    return None


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


@dataclass(frozen=True)
class LeaseFence:
    """What a writer (the driver or a Dask worker) checks before each write: that the lease object
    still names this build's token. Plain data, so metatile tasks carry it to workers."""

    location: str  # the lease object's URL, for messages
    token: str

    def check(self, read: Callable[[], bytes | None]) -> None:
        """Raise LeaseLost unless `read()` (the lease object's bytes) names this build."""
        data = read()
        holder = None if data is None else LeaseHolder.parse(data)
        if holder is not None and holder.token == self.token:
            return
        now = "nobody (it was released)" if data is None else holder.describe() if holder else "unreadable bytes"
        raise LeaseLost(f"this build lost its lease {self.location} (it stalled past the {lease_s():g} s lease age "
                        f"and another build took over; the lease now names {now}); it stopped before writing "
                        "more: rerun the same command once that build has finished")


@contextmanager
def hold_lease(obj: LeaseObject, location: str, release: str) -> Iterator[LeaseFence]:
    """Hold the lease `obj` (the release's `.lock`) for this build: taken if absent, or if its holder
    stopped renewing it `lease_s()` ago (at once when that holder was a dead process on this host);
    renewed by a thread; deleted on exit only if it is still this build's. Yields the fence writers check."""
    age_s = lease_s()
    token = uuid.uuid4().hex
    host, pid = socket.gethostname(), os.getpid()

    def mine() -> bytes:
        return LeaseHolder(host, pid, time.time(), token).encode()

    def ours(found: tuple[bytes, str] | None) -> str | None:
        """The ETag of `found` when it is this build's lease (a retried PUT may have landed twice)."""
        holder = None if found is None else LeaseHolder.parse(found[0])
        return found[1] if found is not None and holder is not None and holder.token == token else None

    etag = obj.create(mine()) or _take_over(obj, location, release, age_s, mine, ours)
    state = {"etag": etag}
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(age_s / 4):
            try:
                new = obj.replace(mine(), state["etag"]) or ours(obj.read())
            except Exception:  # noqa: BLE001 - a store that did not answer: the next renewal may succeed
                continue
            if new is None:
                return  # taken over: writers find out from the fence, and nothing more is renewed
            state["etag"] = new

    thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    thread.start()
    try:
        yield LeaseFence(location, token)
    finally:
        stop.set()
        thread.join()
        try:
            obj.delete(state["etag"])  # only this build's lease: never a successor's
        except Exception:  # noqa: BLE001, S110 - a store that did not answer: the lease expires after lease_s()
            pass


def _take_over(obj: LeaseObject, location: str, release: str, age_s: float, mine: Callable[[], bytes],
               ours: Callable[[tuple[bytes, str] | None], str | None]) -> str:
    """The ETag of the lease after taking it from an expired holder; UserError while it is held."""
    found = obj.read()
    if (etag := ours(found)) is not None:
        return etag  # our own create landed, and its retry was refused
    if found is None:  # released between the create and the read
        etag = obj.create(mine())
        if etag is None:
            raise UserError(f"another build took the lease of release {release} just now; wait for it or build "
                            "another --release")
        return etag
    data, their_etag = found
    holder = LeaseHolder.parse(data)
    if holder is None:
        raise UserError(f"the lease {location} of release {release} is unreadable, so it is treated as held; if no "
                        f"build is writing release {release}, delete that object and rerun")
    age = time.time() - holder.renewed
    if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
        age = age_s  # a build on this machine that was killed: no need to wait for its lease to expire
    if age < age_s:
        raise UserError(f"another build is writing release {release} (lease {location} held by "
                        f"{holder.describe()}, renewed {age:.0f}s ago); wait for it, or if that build was killed, "
                        f"rerun after {age_s - age:.0f}s")
    etag = obj.replace(mine(), their_etag)  # only the lease judged expired: not one renewed since
    if etag is None:
        raise UserError(f"another build took over the expired lease of release {release} just now; wait for it "
                        "or build another --release")
    return etag
