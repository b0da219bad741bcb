"""Manifests that lie, edited the way a person or a tool would (tests.release_factory.edit_manifest):
`curate verify`, `stats` and `pack` each answer one `error:` line and write nothing; the server does
not serve the release. Each file the manifest names is intact: only the manifest lies."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest
from click.testing import CliRunner

from scale_alibi.cli.main import main
from scale_alibi.serve.catalog import Catalog
from scale_alibi.serve.stores import DirectoryStore
from tests.cli_errors import one_error_line
from tests.release_factory import edit_manifest, file_tree, make_release


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _duplicated(t: pa.Table) -> pa.Table:
    return pa.concat_tables([t, t.slice(1, 1)])


def _deleted(t: pa.Table) -> pa.Table:
    return pa.concat_tables([t.slice(0, 3), t.slice(4)])


def _half(t: pa.Table) -> pa.Table:
    return t.slice(0, t.num_rows // 2)


def _no_hash_column(t: pa.Table) -> pa.Table:
    return t.drop_columns(["hash_naip"])


def _null_hash(t: pa.Table) -> pa.Table:
    values = t.column("hash_s2").to_pylist()
    values[2] = None
    return t.set_column(t.schema.get_field_index("hash_s2"), "hash_s2", pa.array(values, pa.string()))


def _x_set(x: int):
    def edit(t: pa.Table) -> pa.Table:
        values = t.column("x").to_pylist()
        values[-1] = x
        return t.set_column(t.schema.get_field_index("x"), "x", pa.array(values, pa.int64()))

    return edit


LIES = {  # edit -> what the error line names
    "duplicated row": (_duplicated, "more than once"),
    "deleted row": (_deleted, "rows but was sealed with 12"),
    "half the rows": (_half, "has 6 rows but was sealed with 12"),
    "no hash column": (_no_hash_column, "lacks the columns ['hash_naip']"),
    "null hash": (_null_hash, "rows without hash_s2"),
}


@pytest.fixture
def lying(tmp_path, request):
    """(data root, release) whose manifest was edited by LIES[request.param]."""
    release = make_release(tmp_path / "data", "r", nx=4, ny=3)
    edit, _ = LIES[request.param]
    edit_manifest(release, edit)
    return tmp_path / "data", release


@pytest.mark.parametrize("lying", list(LIES), indirect=True)
def test_verify_refuses_a_manifest_that_lies(lying, request):
    data, release = lying
    mentions = LIES[request.node.callspec.params["lying"]][1]
    one_error_line(_invoke("verify", "--data", str(data), "--release", "r", "--no-progress"), mentions)


@pytest.mark.parametrize("lying", list(LIES), indirect=True)
def test_stats_refuses_a_manifest_that_lies_and_writes_nothing(lying, request):
    data, release = lying
    before = file_tree(data)
    mentions = LIES[request.node.callspec.params["lying"]][1]
    one_error_line(_invoke("stats", "--data", str(data), "--release", "r", "--split", "all"), mentions)
    assert file_tree(data) == before


@pytest.mark.parametrize("lying", list(LIES), indirect=True)
def test_pack_refuses_a_manifest_that_lies_before_writing_any_archive(lying, request, tmp_path):
    data, release = lying
    before = file_tree(data)
    mentions = LIES[request.node.callspec.params["lying"]][1]
    one_error_line(_invoke("pack", "--data", str(data), "--release", "r"), mentions)
    one_error_line(_invoke("pack", "--data", str(data), "--release", "r", "--out", str(tmp_path / "packed")), mentions)
    assert file_tree(data) == before and not (tmp_path / "packed").exists()


def test_a_manifest_truncated_to_half_its_bytes_is_one_error_line(tmp_path):
    release = make_release(tmp_path / "data", "r", nx=4, ny=3)
    raw = release.manifest_path.read_bytes()
    release.manifest_path.write_bytes(raw[: len(raw) // 2])
    for command in ("verify", "stats", "pack"):
        one_error_line(_invoke(command, "--data", str(tmp_path / "data"), "--release", "r"), "cannot be read")
    assert not release.archive_path("s1").exists()


@pytest.mark.parametrize("x", [2**29 + 3, -1, 2**15])
def test_the_server_does_not_serve_a_release_whose_x_is_outside_its_zoom(tmp_path, x):
    make_release(tmp_path / "data", "good", nx=2, ny=2)
    bad = make_release(tmp_path / "data", "bad", nx=2, ny=2, seed=1)
    edit_manifest(bad, _x_set(x))
    catalog = Catalog(DirectoryStore(tmp_path / "data"))
    assert catalog.names() == ["good"]
    east = catalog.get("good").summary()["bounds"][2]
    assert -180 <= east <= 180


def test_a_manifest_edited_with_its_seal_rewritten_still_serves_only_what_it_lists(tmp_path):
    """The seal guards against edits, not against a forger who recomputes it: a manifest that keeps the
    contract is served, and a tile it does not list is still a 404 (what the checks add is exact)."""
    release = make_release(tmp_path / "data", "r", nx=2, ny=2)
    from scale_alibi.contract.release import read_manifest, write_manifest

    table = read_manifest(release.manifest_path)
    write_manifest(table.slice(0, 3), release.manifest_path, {"release": "r"})
    index = Catalog(DirectoryStore(tmp_path / "data")).get("r")
    assert index is not None and index.triplets == 3
    z, x, y = (table.column(c)[3].as_py() for c in ("z", "x", "y"))
    assert index.row_of(z, x, y) is None
    assert hashlib.sha256(release.manifest_path.read_bytes()).hexdigest() == index.etag_seed
