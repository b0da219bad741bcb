"""Never serve bytes the manifest does not vouch for: every read is checked before it is sent.

A file's bytes are hashed on every read from disk, whatever its size, mtime or inode say (a flipped
bit keeps all three). The first read of a file is checked against the manifest's sha256; the bytes
that matched are remembered as a 64-bit XXH3 checksum, and every later read of that file is
checked against that checksum (XXH3 runs at memory speed, sha256 at ~1.5 GB/s a core: a shard
stream would spend a third of its time in sha256). A read whose checksum differs gets the full
sha256 check again, so a file rewritten with the same bytes (a repair) is accepted, and one with
other bytes is refused. XXH3 is no cryptographic hash: it catches bit rot, torn writes and stray
edits (a random change slips through with probability 2^-64), not an adversary who writes the data
directory, who could as well rewrite the manifest. Bytes fetched from a bucket are checked
against the sha256 at every fetch (an object can be replaced between two GETs by anyone with
write access to the bucket). Tiles in the in-memory cache are the bytes checked when they were
read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import xxhash

from scale_alibi.contract.errors import ScaleAlibiError
from scale_alibi.serve.catalog import MEMBERS, ReleaseIndex

log = logging.getLogger(__name__)


class DamagedFile(ScaleAlibiError):
    """A file's bytes differ from the sha256 its release's manifest records (a 500 naming the repair)."""


def damaged_message(release: str, what: str) -> str:
    """The one-line reason given for a damaged file, with the command that repairs it."""
    return (f"{what} of release {release!r} is damaged on disk (its bytes differ from the manifest's sha256); "
            f"run `curate verify --data DATA --release {release} --repair`")


def checksum(data) -> int:
    """The fast checksum of `data` (any buffer) as a non-zero int (0 means "not verified yet")."""
    return xxhash.xxh3_64_intdigest(data) or 1


def ensure_intact(index: ReleaseIndex, slot: int, digest: str, data, st: os.stat_result | None, what: str) -> None:
    """Raise DamagedFile unless `data`, the bytes just read of the file in `slot` (`st` None:
    fetched from a bucket), are the bytes whose sha256 the manifest records as `digest`."""
    quick = 0
    if st is not None:
        quick = checksum(data)
        if quick == index.verified_checksum(slot):
            return
    _ensure_sha256(index, slot, digest, data, quick, what)


def ensure_row_intact(
    index: ReleaseIndex, row: int, digests: list[str], files: Sequence[tuple[Any, os.stat_result | None]],
    what: Callable[[int], str],
) -> None:
    """`ensure_intact` of the files of manifest row `row` just read, (bytes, stat) each in
    TRIPLET_MEMBERS order, whose sha256 the manifest records as `digests`; `what(i)` names file i
    (built only for a file that needs its sha256 checked). The row's verdicts are looked up at once."""
    known = index.verified_checksums(row)
    slot = row * MEMBERS
    for i, (data, st) in enumerate(files):
        quick = 0
        if st is not None:
            quick = checksum(data)
            if quick == known[i]:
                continue
        _ensure_sha256(index, slot + i, digests[i], data, quick, what(i))


def _ensure_sha256(index: ReleaseIndex, slot: int, digest: str, data, quick: int, what: str) -> None:
    """Raise DamagedFile unless `data` hashes to `digest`; then remember its fast checksum `quick`
    (0: fetched from a bucket, checked at every fetch)."""
    if hashlib.sha256(data).hexdigest() != digest:
        log.error("release %s: %s is damaged (sha256 differs from the manifest); not served", index.name, what)
        raise DamagedFile(damaged_message(index.name, what))
    if quick:
        index.remember_verified(slot, quick)
