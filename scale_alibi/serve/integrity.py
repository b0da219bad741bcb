"""Never serve bytes the manifest does not vouch for: each file's sha256 is checked on its first
read (and again whenever the file changes on disk); the verdict is remembered per file. Bytes
fetched from a bucket are checked at every fetch (they are in memory anyway, and an object can
be replaced between two GETs)."""

from __future__ import annotations

import hashlib
import logging
import os

from scale_alibi.contract.errors import ScaleAlibiError
from scale_alibi.serve.catalog import ReleaseIndex

log = logging.getLogger(__name__)


class DamagedFile(ScaleAlibiError):
    """A file's bytes differ from the sha256 its release's manifest records (a 500 naming the repair)."""


def damaged_message(release: str, what: str) -> str:
    """The one-line reason given for a damaged file, with the command that repairs it."""
    return (f"{what} of release {release!r} is damaged on disk (its bytes differ from the manifest's sha256); "
            f"run `curate verify --data DATA --release {release} --repair`")


def ensure_intact(index: ReleaseIndex, slot: int, digest: str, data, st: os.stat_result | None, what: str) -> None:
    """Raise DamagedFile unless `data` (the file in `slot`, as `st` describes it; None: fetched) hashes to `digest`."""
    if index.is_intact(slot, st):
        return
    if hashlib.sha256(data).hexdigest() != digest:
        log.error("release %s: %s is damaged (sha256 differs from the manifest); not served", index.name, what)
        raise DamagedFile(damaged_message(index.name, what))
    if st is not None:
        index.mark_intact(slot, st)
