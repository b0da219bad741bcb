"""The manifest streamed from done records (a build never holds all its rows): batches written in
(z, x, y) order give the same table as sorting everything at once, an out-of-order batch is refused,
and row groups stay bounded."""

from __future__ import annotations

import io
import random

import mercantile
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scale_alibi.contract.release import REQUIRED_COLUMNS, manifest_bytes, manifest_metadata, write_manifest_batches
from scale_alibi.curate.pipeline.local_output import LocalOutput
from scale_alibi.curate.pipeline.manifest import manifest_batches, manifest_columns, manifest_table

Z = 15
LEVELS = 2  # 4x4-tile metatiles


def _row(x: int, y: int) -> dict:
    h = f"{x:032x}{y:032x}"
    return {"z": Z, "x": x, "y": y, "split": "train", "hash_s1": h, "hash_s2": h, "hash_naip": h,
            "hash_naip_hires": [h] * 4, "s2_items": [f"s2-{x}"], "s1_items": [f"s1-{y}"], "naip_items": ["n"]}


def _records(tmp_path):
    """Done records of 3 x 3 metatiles (some tiles missing, as where a triplet was incomplete),
    written in a shuffled order."""
    output = LocalOutput(tmp_path, "r")
    output.check_writable()
    rng = random.Random(5)
    done, rows = [], []
    mts = [mercantile.Tile(mx, my, Z - LEVELS) for mx in range(100, 103) for my in range(200, 203)]
    rng.shuffle(mts)
    for mt in mts:
        here = [_row(x, y) for x in range(mt.x * 4, mt.x * 4 + 4) for y in range(mt.y * 4, mt.y * 4 + 4)
                if rng.random() < 0.8]
        output.write_record(mt, {"metatile": [mt.z, mt.x, mt.y], "rows": here, "files": []})
        done.append(mt)
        rows += here
    return output, done, rows


def test_rows_streamed_column_by_column_equal_the_manifest_sorted_at_once(tmp_path):
    output, done, rows = _records(tmp_path)
    streamed = io.BytesIO()
    n = write_manifest_batches(streamed, manifest_batches(output, done), manifest_columns(), {"release": "r"})
    assert n == len(rows)
    got = pq.read_table(io.BytesIO(streamed.getvalue()))
    whole = pq.read_table(io.BytesIO(manifest_bytes(manifest_table(rows), {"release": "r"})))
    assert got.equals(whole)
    assert manifest_metadata(got) == {"release": "r"}
    assert got.column("x").to_pylist() == sorted(got.column("x").to_pylist())


def test_a_column_holds_only_its_own_metatiles_rows(tmp_path):
    output, done, rows = _records(tmp_path)
    batches = list(manifest_batches(output, done))
    assert len(batches) == 3  # three columns of metatiles
    for batch in batches:
        assert len({x // 4 for x in batch.column("x").to_pylist()}) == 1


def test_batches_out_of_order_are_refused(tmp_path):
    schema = pa.schema(list(REQUIRED_COLUMNS.items()))
    a = pa.Table.from_pylist([_row(5, 1), _row(5, 2)], schema=schema)
    b = pa.Table.from_pylist([_row(4, 9)], schema=schema)
    with pytest.raises(ValueError, match="increasing"):
        write_manifest_batches(io.BytesIO(), [a, b], schema, {})
    with pytest.raises(ValueError, match="increasing"):
        write_manifest_batches(io.BytesIO(), [a, a], schema, {})  # a duplicate row is not in order either


def test_row_groups_are_bounded(tmp_path, monkeypatch):
    import scale_alibi.contract.release as release

    monkeypatch.setattr(release, "MANIFEST_ROW_GROUP", 10)
    schema = pa.schema(list(REQUIRED_COLUMNS.items()))
    batches = [pa.Table.from_pylist([_row(x, y) for y in range(4)], schema=schema) for x in range(12)]
    sink = io.BytesIO()
    assert write_manifest_batches(sink, batches, schema, {}) == 48
    groups = pq.ParquetFile(io.BytesIO(sink.getvalue())).metadata
    assert groups.num_row_groups == 4 and max(groups.row_group(i).num_rows for i in range(4)) == 12


def test_a_done_record_that_vanished_before_the_seal_is_one_error_naming_the_rerun(tmp_path):
    from scale_alibi.contract.errors import UserError

    output, done, rows = _records(tmp_path)
    output.forget(done[4])
    with pytest.raises(UserError, match=r"vanished .* rerun the same command"):
        write_manifest_batches(io.BytesIO(), manifest_batches(output, done), manifest_columns(), {})
