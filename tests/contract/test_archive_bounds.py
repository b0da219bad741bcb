"""Untrusted PMTiles archives: every length and offset checked against the file before anything is
allocated, decompression bounded, metadata bounded. Each hostile archive is one written by the
project's writer and then byte-patched; reading it must raise ArchiveError (one message naming the
file), quickly, with the process's address space capped so that an unbounded allocation shows as
MemoryError instead of swapping the machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scale_alibi.contract.archive import Archive, ArchiveError
from tests.archive_patch import (
    gzip_bomb,
    small_archive,
    with_entry,
    with_leaf,
    with_metadata,
    with_root_at_end,
)
from tests.memory_cap import address_space_capped
from tests.release_factory import tile_png


def read_everything(path: Path) -> None:
    """What the import and the server do with an archive: open, metadata, every entry, every tile."""
    with Archive.open(path) as archive:
        archive.metadata()
        ids, offsets, lengths = archive.entries()
        for o, n in zip(offsets.tolist(), lengths.tolist()):
            archive.pread(o, n)
        for x in range(5240, 5243):
            archive.read(15, x, 12660)


def good(tmp_path: Path) -> Path:
    return small_archive(tmp_path / "a.pmtiles", [tile_png(i) for i in range(3)])


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "entry length 2^40": (lambda p: with_entry(p, 0, length=1 << 40), "outside the"),
    "entry length 2^62": (lambda p: with_entry(p, 1, length=1 << 62), "outside the"),
    "entry offset that wraps past 2^64": (lambda p: with_entry(p, 0, offset=(1 << 64) - 1024), "beyond 2^63"),
    "offset plus length past the tile data": (lambda p: with_entry(p, 2, offset=(1 << 20)), "outside the"),
    "run length 2^40": (lambda p: with_entry(p, 0, run_length=1 << 40), "a run of"),
    "more tiles than the header counts": (lambda p: with_entry(p, 0, run_length=1000), "more tiles than its header"),
    "gzip-bomb root directory past 16 KiB": (lambda p: with_root_at_end(p, gzip_bomb(256 << 20)), "first 16384 bytes"),
    "gzip-bomb leaf directory": (lambda p: with_leaf(p, gzip_bomb(256 << 20)), "decompression bomb"),
    "256 MiB of metadata that is not JSON": (lambda p: with_metadata(p, 256 << 20), "bytes of metadata"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_archive_is_an_archive_error_fast_and_allocates_nothing_big(tmp_path, case):
    path = good(tmp_path)
    read_everything(path)  # the archive as written reads cleanly
    patch, expect = CASES[case]
    patch(path)
    started = time.monotonic()
    with address_space_capped(), pytest.raises(ArchiveError) as raised:
        read_everything(path)
    elapsed_s = time.monotonic() - started
    assert expect in str(raised.value) and str(path) in str(raised.value)
    assert elapsed_s < 5, f"{case}: {elapsed_s:.1f} s"  # a 256 MiB inflate and parse would take longer

