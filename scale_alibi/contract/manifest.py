"""The manifest of a release: its columns (all of them), its seal and the checks every reader runs.

One row per complete triplet (z, x, y), sorted by (z, x, y). Columns: `REQUIRED_COLUMNS` in every
manifest (`curate import-pmtiles` writes only these), `BUILD_COLUMNS` in a manifest `curate build`
wrote (what each tile was cut from). docs/manifest.md describes every column.

The seal: when a manifest is written, the writer records in its Parquet footer the number of rows
and a sha256 over the rows' required columns (`RowsDigest`). A reader recomputes both: a manifest
with a row removed, repeated, reordered or edited after it was sealed is refused, as is one with
no seal (written by hand, or by a tool that dropped the footer's metadata).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scale_alibi.contract.errors import UserError

SPLITS: tuple[str, ...] = ("train", "heldout")  # values of the manifest's `split` column
MAX_ZOOM = 28  # deepest triplet zoom: NAIP lives one deeper, and (z, x, y) of z+1 still packs in an int64

# Version of the manifest contract (REQUIRED_COLUMNS and their meaning), recorded in PMTiles archives.
MANIFEST_SCHEMA_VERSION = 1

# Columns every manifest has.
REQUIRED_COLUMNS: dict[str, pa.DataType] = {
    "z": pa.int32(),
    "x": pa.int64(),
    "y": pa.int64(),
    "split": pa.string(),  # "train" or "heldout"
    "hash_s1": pa.string(),  # sha256 hex of the PNG bytes
    "hash_s2": pa.string(),
    "hash_naip": pa.string(),
    "hash_naip_hires": pa.list_(pa.string()),  # four hashes in HIRES_CHILDREN order
}
HASH_NAMES: tuple[str, ...] = ("hash_s1", "hash_s2", "hash_naip")


def _build_columns() -> dict[str, pa.DataType]:
    columns: dict[str, pa.DataType] = {}
    for layer in ("s2", "s1", "naip"):  # the column order of every manifest built so far
        columns[f"{layer}_group"] = pa.string()  # the scenes' acquisition group (orbit pass, day)
        columns[f"{layer}_items"] = pa.list_(pa.string())  # STAC item ids the tile was cut from
        columns[f"{layer}_datetime"] = pa.string()  # acquisition time, ISO 8601
        columns[f"{layer}_valid"] = pa.float64()  # fraction of the tile's pixels with data
    columns["s2_cloud_cover"] = pa.float64()  # eo:cloud_cover of the S2 scene, percent
    columns["s1_orbit_state"] = pa.string()  # ascending or descending
    columns["s1_relative_orbit"] = pa.int32()
    columns["naip_year"] = pa.string()  # naip:year, a string as the catalog gives it
    return columns


# Columns `curate build` records beyond the required ones.
BUILD_COLUMNS: dict[str, pa.DataType] = _build_columns()


def build_schema() -> pa.Schema:
    """The schema of a manifest `curate build` writes: every column, required ones first."""
    return pa.schema([*REQUIRED_COLUMNS.items(), *BUILD_COLUMNS.items()])


SEAL_KEY = b"scale_alibi_seal"  # key of the seal in the Parquet footer's key-value metadata
DIGESTED: tuple[str, ...] = tuple(REQUIRED_COLUMNS)


def _strings(h: tuple, array: pa.Array) -> None:
    """Feed a string array to (lengths hasher, bytes hasher): the same bytes however it is chunked."""
    array = array.cast(pa.large_string())
    if len(array) == 0:
        return
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    h[0].update(np.diff(offsets).astype("<i8").tobytes())
    data = array.buffers()[2]
    if data is not None and offsets[-1] > offsets[0]:
        h[1].update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])


def _all_sha256_length(column: pa.ChunkedArray | pa.Array) -> bool:
    """Whether every value has a sha256's length in hex (64 characters), none null (the offsets
    alone: a scan of the digits would cost seconds over a CONUS manifest's 64 million hashes, and a
    wrong digit is caught anyway where bytes meet their hash)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for array in chunks:
        if array.null_count:
            return False
        array = array.cast(pa.large_string())
        if len(array) == 0:
            continue
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
        if (np.diff(offsets) != 64).any():
            return False
    return True


class RowsDigest:
    """sha256 over a manifest's required columns, fed batch by batch in manifest order (a batch's
    chunking does not change it): what a seal records and a reader recomputes."""

    def __init__(self) -> None:
        self.rows = 0
        self._h = {c: (hashlib.sha256(), hashlib.sha256(), hashlib.sha256()) for c in DIGESTED}

    def update(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        for name in DIGESTED:
            h = self._h[name]
            for chunk in table.column(name).chunks:
                if pa.types.is_integer(chunk.type):
                    h[0].update(chunk.cast(pa.int64()).fill_null(-1).to_numpy().astype("<i8").tobytes())
                elif pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
                    h[2].update(pc.list_value_length(chunk).fill_null(-1).to_numpy().astype("<i8").tobytes())
                    _strings(h, pc.list_flatten(chunk))
                else:
                    _strings(h, chunk)

    def hexdigest(self) -> str:
        outer = hashlib.sha256()
        for name in DIGESTED:
            outer.update(name.encode() + b"\0" + b"".join(x.digest() for x in self._h[name]))
        return outer.hexdigest()

    def seal(self) -> dict[bytes, bytes]:
        """The footer metadata that seals a manifest with these rows."""
        return {SEAL_KEY: json.dumps({"rows": self.rows, "rows_sha256": self.hexdigest()}).encode()}


class ManifestError(UserError):
    """A manifest that breaks the contract: a release with it is not served, packed, measured or verified."""


def _example(z: np.ndarray, x: np.ndarray, y: np.ndarray, at: np.ndarray) -> str:
    i = int(np.flatnonzero(at)[0])
    return f"{int(z[i])}/{int(x[i])}/{int(y[i])}"


def check_manifest(table: pa.Table, what: str) -> None:
    """Raise ManifestError (one line naming `what`, e.g. "release 'small'") unless `table` is a
    manifest that keeps the contract: every required column of its type, at least one row per
    (z, x, y) and never two, x and y within their zoom's range, every hash 64 characters long (a sha256 in hex), every
    split a known one, and the seal in its footer (the table's schema metadata) matching."""
    hint = "rebuild the release with `curate build` (or import it again)"
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"the manifest of {what} lacks the columns {missing}; {hint}")
    for name, kind in REQUIRED_COLUMNS.items():
        got = table.schema.field(name).type
        if got != kind and not (pa.types.is_integer(got) and pa.types.is_integer(kind)):
            raise ManifestError(f"the manifest of {what} has column {name} of type {got}, not {kind}; {hint}")
    for name in REQUIRED_COLUMNS:
        nulls = table.column(name).null_count
        if nulls:
            raise ManifestError(f"the manifest of {what} has {nulls} rows without {name}; {hint}")
    z, x, y = (table.column(c).to_numpy().astype(np.int64) for c in ("z", "x", "y"))
    bad_z = (z < 0) | (z > MAX_ZOOM)
    if bad_z.any():
        raise ManifestError(f"the manifest of {what} has {int(bad_z.sum())} rows with a zoom outside 0..{MAX_ZOOM} "
                            f"(e.g. {_example(z, x, y, bad_z)}); {hint}")
    size = np.left_shift(np.int64(1), z)
    bad_xy = (x < 0) | (y < 0) | (x >= size) | (y >= size)
    if bad_xy.any():
        raise ManifestError(f"the manifest of {what} has {int(bad_xy.sum())} rows with x or y outside 0..2^z-1 "
                            f"(e.g. {_example(z, x, y, bad_xy)}); {hint}")
    keys = (z << 58) | (x << 29) | y
    uniq, counts = np.unique(keys, return_counts=True)
    if len(uniq) != len(keys):
        k = int(uniq[counts > 1][0])
        raise ManifestError(f"the manifest of {what} lists {len(keys) - len(uniq)} (z, x, y) more than once "
                            f"(e.g. {k >> 58}/{(k >> 29) & (2**29 - 1)}/{k & (2**29 - 1)}); {hint}")
    splits = pc.unique(table.column("split")).to_pylist()
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ManifestError(f"the manifest of {what} has splits {unknown[:3]}, not {list(SPLITS)}; {hint}")
    hashes = [table.column(c) for c in HASH_NAMES] + [pc.list_flatten(table.column("hash_naip_hires"))]
    lengths = pc.list_value_length(table.column("hash_naip_hires")).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != 4).any():
        raise ManifestError(f"the manifest of {what} has rows without four hash_naip_hires; {hint}")
    if not all(_all_sha256_length(column) for column in hashes):
        raise ManifestError(f"the manifest of {what} has a hash that is not a sha256 (64 hex digits long); {hint}")
    check_seal(table, what)


def check_seal(table: pa.Table, what: str) -> None:
    """ManifestError unless the footer's seal records exactly `table`'s rows."""
    raw = (table.schema.metadata or {}).get(SEAL_KEY)
    if raw is None:
        raise ManifestError(f"the manifest of {what} has no seal (row count and checksum written with it): "
                            "it was written by hand or by an older scale-alibi; rebuild the release with "
                            "`curate build` (or import it again)")
    try:
        recorded = json.loads(raw)
        rows, digest = int(recorded["rows"]), str(recorded["rows_sha256"])
    except (ValueError, KeyError, TypeError):
        raise ManifestError(f"the manifest of {what} has an unreadable seal; rebuild the release") from None
    if rows != table.num_rows:
        raise ManifestError(f"the manifest of {what} has {table.num_rows} rows but was sealed with {rows}: rows were "
                            "added or removed after it was written; rebuild the release with `curate build`")
    actual = RowsDigest()
    actual.update(table)
    if actual.hexdigest() != digest:
        raise ManifestError(f"the manifest of {what} does not match its checksum: rows were edited after it was "
                            "written; rebuild the release with `curate build`")
