"""Tar member headers built by hand are byte-identical to the standard library's tarfile (the oracle)."""

from __future__ import annotations

import io
import tarfile

import pytest

from scale_alibi.serve import tarstream


@pytest.mark.parametrize("name,size,mtime", [
    ("14_4612_6200.s2.png", 129_311, 0),
    ("a", 0, 0),
    ("14_4612_6200.naip_hires_3.png", 512, 1_700_000_000),
    ("z" * 100, 8**11 - 1, 8**11 - 1),  # the largest that fit the ustar fields
    ("ü_é.json", 1, 7),  # UTF-8 names: the checksum sums bytes, not characters
])
def test_header_is_byte_identical_to_tarfiles(name, size, mtime):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uname = info.gname = tarstream.OWNER
    assert tarstream.header(name, size, mtime) == info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8")


def test_members_read_back_with_tarfile():
    data = b"\x89PNG" + bytes(range(256)) * 3
    raw = b"".join(tarstream.member("k.s1.png", data, 0)) + tarstream.END
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        (info,) = tar.getmembers()
        assert (info.name, info.size, tar.extractfile(info).read()) == ("k.s1.png", len(data), data)
