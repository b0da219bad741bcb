"""Where the server reads releases from: a local data directory, or a prefix of an object store.

A store lists the releases that have a manifest (each with a signature that changes when its
manifest is rewritten), reads a release's small files (manifest, stats) and opens its tile
source. The catalog (scale_alibi.serve.catalog) decides what is served; the store only reads.
Release locations come from listings, file names from the release contract: never from requests.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Hashable, Iterator

from scale_alibi.contract.errors import ScaleAlibiError
from scale_alibi.contract.release import MANIFEST_NAME, is_below
from scale_alibi.contract.storage import local_path
from scale_alibi.serve.catalog import ReleaseFiles, ReleaseIndex
from scale_alibi.serve.files import SafeReader
from scale_alibi.serve.tilesource import TileSource, open_source


class StoreUnavailable(ScaleAlibiError, OSError):
    """The object store did not answer, or refused (credentials, permissions): a 503, or exit 2 at start-up."""


class ReleaseStore(ReleaseFiles):
    """The releases under one data root, as the catalog and the tile sources read them."""

    @abstractmethod
    def tile_source(self, index: ReleaseIndex) -> TileSource:
        """A new tile source for the release `index` (its tree, or its archives)."""


class DirectoryStore(ReleaseStore):
    """Releases as directories of a local data directory; nothing that resolves outside it is read."""

    def __init__(self, data_dir: str | os.PathLike[str]):
        super().__init__(os.fspath(data_dir))
        self.root = os.path.realpath(local_path(data_dir))
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"data directory {data_dir} does not exist")
        self.reader = SafeReader(self.root)

    def finished(self) -> Iterator[tuple[str, str, Hashable]]:
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            real = os.path.realpath(entry.path)
            # A release directory (or a symlink to one) must resolve inside the data directory.
            if not is_below(real, self.root) or not os.path.isdir(real):
                continue
            try:
                st = os.stat(os.path.join(real, MANIFEST_NAME))
            except OSError:
                continue  # unfinished: no manifest yet
            yield entry.name, real, (st.st_mtime_ns, st.st_size, st.st_ino)

    def read_file(self, release: str, name: str) -> bytes | None:
        real = os.path.realpath(os.path.join(release, name))
        if not is_below(real, release) or not os.path.isfile(real):
            return None  # missing, or a link out of the release
        with open(real, "rb") as f:
            return f.read()

    def tile_source(self, index: ReleaseIndex) -> TileSource:
        return open_source(index, self.reader)
