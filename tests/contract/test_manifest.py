"""The manifest's checks and seal (scale_alibi.contract.manifest): manifests edited the way a person or
a tool would (rows repeated, removed or changed, a column dropped, a hash nulled, x beyond 2^z),
each with its footer's metadata kept, are refused with one line that names the problem; a
manifest as written passes, however its rows are chunked."""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from scale_alibi.contract.manifest import REQUIRED_COLUMNS, SEAL_KEY, ManifestError, RowsDigest, check_manifest
from scale_alibi.contract.reader import parse_manifest
from scale_alibi.contract.release import manifest_bytes
from tests.release_factory import rewritten_manifest


def _rows(n: int = 6, z: int = 15) -> list[dict]:
    def h(*parts: object) -> str:
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    return [{"z": z, "x": 100 + i // 3, "y": 200 + i % 3, "split": "heldout" if i % 4 == 3 else "train",
             "hash_s1": h(i, 1), "hash_s2": h(i, 2), "hash_naip": h(i, 3),
             "hash_naip_hires": [h(i, 4, k) for k in range(4)]} for i in range(n)]


def _sealed(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist(rows, schema=pa.schema(list(REQUIRED_COLUMNS.items())))
    return manifest_bytes(table, {"release": "r"})


def _refused(raw: bytes, mentions: str) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(raw, "release 'r'")
    message = str(caught.value)
    assert "\n" not in message and mentions in message, message
    return message


def test_a_manifest_as_written_passes_and_keeps_its_rows():
    rows = _rows()
    manifest = parse_manifest(_sealed(rows), "release 'r'")
    assert manifest.table.to_pylist() == rows
    assert manifest.metadata == {"release": "r"}


def test_a_duplicated_row_is_refused():
    raw = rewritten_manifest(_sealed(_rows()), lambda t: pa.concat_tables([t, t.slice(2, 1)]))
    _refused(raw, "more than once (e.g. 15/100/202)")


def test_a_deleted_row_is_refused_by_the_seal():
    raw = rewritten_manifest(_sealed(_rows()), lambda t: t.slice(0, 5))
    _refused(raw, "has 5 rows but was sealed with 6")


def test_a_manifest_truncated_to_half_its_rows_is_refused():
    raw = rewritten_manifest(_sealed(_rows(8)), lambda t: t.slice(0, 4))
    _refused(raw, "has 4 rows but was sealed with 8")


def test_an_edited_hash_is_refused_by_the_seal():
    other = hashlib.sha256(b"other").hexdigest()
    raw = rewritten_manifest(_sealed(_rows()), lambda t: t.set_column(
        t.schema.get_field_index("hash_s2"), "hash_s2", pa.array([other] * t.num_rows)))
    _refused(raw, "does not match its checksum")


def test_a_missing_hash_column_is_refused():
    raw = rewritten_manifest(_sealed(_rows()), lambda t: t.drop_columns(["hash_naip"]))
    _refused(raw, "lacks the columns ['hash_naip']")


def test_a_null_hash_is_refused():
    def null_first(t: pa.Table) -> pa.Table:
        values = t.column("hash_s1").to_pylist()
        values[0] = None
        return t.set_column(t.schema.get_field_index("hash_s1"), "hash_s1", pa.array(values, pa.string()))

    _refused(rewritten_manifest(_sealed(_rows()), null_first), "1 rows without hash_s1")


def test_a_hash_that_is_not_a_sha256_is_refused():
    rows = _rows()
    rows[1]["hash_naip_hires"][2] = "abc"
    _refused(_sealed(rows), "not a sha256")


@pytest.mark.parametrize("x", [-1, 2**15, 2**29 + 5])
def test_x_outside_its_zooms_range_is_refused(x):
    rows = _rows()
    rows[0]["x"] = x
    _refused(_sealed(rows), "x or y outside 0..2^z-1")


def test_an_unsealed_manifest_is_refused():
    table = pa.Table.from_pylist(_rows(), schema=pa.schema(list(REQUIRED_COLUMNS.items())))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    _refused(sink.getvalue(), "has no seal")


def test_the_digest_does_not_depend_on_how_rows_are_chunked():
    table = pa.Table.from_pylist(_rows(9), schema=pa.schema(list(REQUIRED_COLUMNS.items())))
    whole, parts = RowsDigest(), RowsDigest()
    whole.update(table)
    for start in (0, 2, 7):
        parts.update(table.slice(start, {0: 2, 2: 5, 7: 2}[start]))
    assert whole.hexdigest() == parts.hexdigest() and parts.rows == 9
    swapped = RowsDigest()
    swapped.update(table.take(pa.array([1, 0, *range(2, 9)])))
    assert swapped.hexdigest() != whole.hexdigest()  # row order is part of what is sealed


def test_the_seal_is_in_the_footer_written_after_the_rows():
    raw = _sealed(_rows())
    kv = pq.ParquetFile(pa.BufferReader(raw)).metadata.metadata
    assert b'"rows": 6' in kv[SEAL_KEY]
    table = pq.ParquetFile(pa.BufferReader(raw)).read()
    check_manifest(table, "release 'r'")
    assert pc.count(table.column("z")).as_py() == 6
