"""The staging/commit protocol on disk: staged files, their commit into the public tree, cleanup, the lock,
and the confinement of every path the build writes or deletes to the output directory."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import FSYNC_THREADS, confine, fsync_paths
from scale_alibi.curate.pipeline.lease import LeaseHolder
from scale_alibi.curate.pipeline.tiling import Metatile, metatile_name

log = logging.getLogger(__name__)


def confined(path: Path, root: Path) -> Path:
    """`path`, once proven to resolve (symlinks followed) strictly inside `root` (the output directory):
    the build writes or deletes nothing that is not, so a crafted name or a planted symlink cannot
    reach other files (links into another release: contract.release.writable_release_dir)."""
    return confine(path, root)


def dirs_up_to(files: Iterable[Path], top: Path) -> list[Path]:
    """Every directory from each file's parent up to `top`: new directories are entries to sync too."""
    dirs: set[Path] = set()
    for parent in {os.path.dirname(f) for f in files}:  # a metatile's files share a few directories
        d = Path(parent)
        while d not in dirs and d != top.parent:
            dirs.add(d)
            if d == top:
                break
            d = d.parent
    return sorted(dirs)


def write_durable(files: dict[Path, bytes]) -> None:
    """Write each file (created or truncated) and fsync it, several at a time: one open per file, and
    the disk flushes overlap (each fsync waits for its own flush)."""
    if len(files) <= 1:
        for path, data in files.items():
            _write_fsync(path, data)
        return
    with ThreadPoolExecutor(min(FSYNC_THREADS, len(files))) as pool:
        list(pool.map(_write_fsync, files, files.values()))


def _write_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(files: Iterable[Path]) -> None:
    """Create the parent directories of `files`, each distinct one once."""
    for d in {os.path.dirname(f) for f in files}:
        os.makedirs(d, exist_ok=True)


def commit_staging(release_dir: Path, metatile: Metatile, record: dict) -> None:
    """Move a recorded metatile's staged files into the public tree (idempotent; renames only)."""
    root = release_dir.parent
    staging = confined(release_dir / ".build" / "staging" / metatile_name(metatile), root)
    if not staging.exists():
        return
    moved = []
    ready: set[Path] = set()  # target directories proven inside the root and created
    for rel in record["files"]:
        src = staging / rel
        if not src.exists():
            continue
        dst = release_dir / rel
        # A path resolves inside the root when its directory does and its name is no link: the directory
        # is checked (before it is created) once per metatile, not the whole path once per file.
        if dst.parent not in ready:
            confined(dst.parent, root).mkdir(parents=True, exist_ok=True)
            ready.add(dst.parent)
        if dst.is_symlink():
            confined(dst, root)
        os.replace(src, dst)
        moved.append(dst)
    fsync_paths(dirs_up_to(moved, release_dir))  # the renames are durable before a manifest names the files
    shutil.rmtree(staging, ignore_errors=True)


def clean_tmp(release_dir: Path, recorded: set[str]) -> None:
    """Remove what an interrupted build left: staging of unrecorded metatiles and temp files."""
    staging = confined(release_dir / ".build" / "staging", release_dir.parent)
    if staging.exists():
        for d in staging.iterdir():
            if d.name not in recorded:
                shutil.rmtree(d, ignore_errors=True)
    for d in (release_dir, confined(release_dir / ".build" / "done", release_dir.parent)):
        if d.exists():
            for p in d.glob(".*.tmp"):
                p.unlink(missing_ok=True)  # unlinks a planted symlink itself, never its target


def check_out_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable ({e.strerror or e}); pass a writable --out") from None


class ReleaseLock:
    """An exclusive flock on OUT/<release>/.lock (released by the kernel if the build is killed).

    The file names its holder (host, pid, a token): bytes that are not a holder are treated as held
    (refused, not taken over); the flock is checked to be on the file the path names now (a file
    replaced under a running build is not its lock), and the file is removed on exit only if it is
    still this build's."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        release = self.path.parent.name
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)  # never a planted link
        except OSError as e:  # a directory, a link (or a loop of links), no permission
            raise UserError(f"cannot open the lock file {self.path} of release {release} ({e.strerror or e}); it "
                            "must be a regular file: remove it if no build of that release is running") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"another build is writing release {release} "
                            f"(lock {self.path}); wait for it or build another --release") from None
        try:
            if not _same_file(fd, self.path):
                raise UserError(f"the lock file {self.path} was replaced while this build took it; another build "
                                f"may be writing release {release}: wait for it, or rerun")
            held = os.pread(fd, 4096, 0)
            if held.strip() and LeaseHolder.parse(held) is None:
                raise UserError(f"the lock file {self.path} of release {release} is unreadable, so it is treated "
                                "as held; if no build of that release is running, remove it and rerun")
            # A readable holder without the flock is a killed build's: taken over.
            mine = LeaseHolder(socket.gethostname(), os.getpid(), time.time(), uuid.uuid4().hex).encode()
            os.ftruncate(fd, 0)
            try:
                os.pwrite(fd, mine, 0)
            except OSError as e:  # a full disk: the flock alone excludes other builds (an empty lock is no one's)
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                log.warning("cannot record this build in %s (%s); the lock is held all the same", self.path,
                            e.strerror)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                if _same_file(self.fd, self.path):
                    self.path.unlink(missing_ok=True)  # never a file that replaced ours
            finally:
                os.close(self.fd)
                self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` (not followed) is the file open as `fd`."""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False
