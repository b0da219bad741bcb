"""Committing a metatile's staged files writes nothing outside the output directory, whatever links
were planted in the release after the build checked it: a linked layer directory or a tile name that
is a link out of the root is refused (one UserError), and the file outside is left as it was."""

from __future__ import annotations

import mercantile
import pytest

from scale_alibi.contract.errors import UserError
from scale_alibi.curate.pipeline.local_output import LocalOutput

MT = mercantile.Tile(1, 2, 14)
FILES = {"s2/17/8/16.png": b"one", "s2/17/9/16.png": b"two", "naip/18/16/32.png": b"three"}


def _staged(tmp_path):
    out = tmp_path / "out"
    output = LocalOutput(out, "r")
    output.check_writable()
    output.stage(MT, FILES)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"keep")
    return out, output, outside


def test_a_commit_writes_every_staged_file_at_its_place(tmp_path):
    out, output, _ = _staged(tmp_path)
    output.finish_record(MT, {"files": list(FILES)})
    assert {rel: (out / "r" / rel).read_bytes() for rel in FILES} == FILES


def test_a_layer_directory_linked_out_of_the_root_is_refused(tmp_path):
    out, output, outside = _staged(tmp_path)
    (out / "r" / "s2").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UserError, match="resolves outside"):
        output.finish_record(MT, {"files": list(FILES)})
    assert sorted(p.name for p in outside.iterdir()) == ["victim.png"]


def test_a_tile_name_linked_out_of_the_root_is_refused(tmp_path):
    out, output, outside = _staged(tmp_path)
    target = out / "r" / "s2" / "17" / "9" / "16.png"
    target.parent.mkdir(parents=True)
    target.symlink_to(outside / "victim.png")
    with pytest.raises(UserError, match="resolves outside"):
        output.finish_record(MT, {"files": list(FILES)})
    assert (outside / "victim.png").read_bytes() == b"keep"
