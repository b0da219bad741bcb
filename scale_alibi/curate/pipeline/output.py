"""Where a build writes one release: `LocalOutput` (a directory) or `ObjectOutput` (a prefix of an
object store named by an fsspec URL). `open_output(out, release)` (open_output.py) picks one.

Both keep one contract, which is what makes a kill at any moment safe and a rerun cheap:
a metatile's files are whole and durable before its done record exists; a rerun trusts done
records and cuts every other metatile again; the manifest is written last, in one piece.

- A directory stages a metatile's PNGs privately, fsyncs them, writes the done record, then renames
  them into the public tree (`staging.py`); an flock keeps a second build out.
- An object store has no rename, but a PUT is atomic: a metatile's PNGs are PUT at their final keys
  (one request each, no copy), then its done record. Objects of a metatile that failed before its
  record are not in any manifest, so never served, and the retry overwrites them. A second build is
  kept out by a fenced lease object (lease.py): created with a conditional PUT (If-None-Match),
  renewed and released only if unchanged (If-Match), checked before every write; a killed build's
  lease expires after LEASE_S (at once when it ran on this machine).

Outputs are plain data (a path or a URL) so metatile tasks can carry them to Dask workers.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scale_alibi.contract.release import MANIFEST_NAME
from scale_alibi.curate.pipeline.tiling import Metatile, metatile_name, parse_metatile_name

BUILD_DIR = ".build"  # the build's working state inside the release; removed once the manifest exists


def _record_name(mt: Metatile) -> str:
    return f"{BUILD_DIR}/done/{metatile_name(mt)}.json"


def staged_name(mt: Metatile, rel: str) -> str:
    return f"{BUILD_DIR}/staging/{metatile_name(mt)}/{rel}"


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
        """What is wrong with file `rel` (None: nothing); see scale_alibi.curate.pipeline.repair.check_file."""

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
        """Remove what an interrupted build left for metatiles without a done record (names: `metatile_name`)."""

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
        found = (parse_metatile_name(name) for name in self.names(f"{BUILD_DIR}/done") if name.endswith(".json"))
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
        self.delete(f"{BUILD_DIR}/staging/{metatile_name(mt)}")

    def staged(self, mt: Metatile, rel: str) -> bytes | None:
        return self.read(staged_name(mt, rel))

    def finish(self) -> None:
        """Remove the build's working state (after the manifest is written, or before a repair)."""
        self.delete(BUILD_DIR)
