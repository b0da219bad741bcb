"""The manifest a build writes: its columns, the build parameters and software versions, and its rows
streamed back from the done records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.manifest import build_schema
from scale_alibi.contract.names import LAYERS
from scale_alibi.curate.pipeline.output import Metatile, ReleaseOutput
from scale_alibi.curate.pipeline.params import BuildParams
from scale_alibi.curate.pipeline.tiling import metatile_name


def software_versions() -> dict[str, str]:
    from importlib.metadata import version

    import imagecodecs
    import pystac_client
    import rasterio

    from scale_alibi import __version__

    # dask's version from its metadata: a one-process build never imports dask (0.3 s) otherwise.
    return {"scale-alibi": __version__, "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__,
            "numpy": np.__version__, "imagecodecs": imagecodecs.__version__, "dask": version("dask"),
            "pystac-client": pystac_client.__version__}


def manifest_columns() -> pa.Schema:
    """The build's manifest schema: every column the contract defines (scale_alibi.contract.manifest)."""
    return build_schema()


def manifest_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=manifest_columns())


@dataclass(frozen=True)
class MetatileSummary:
    """What the driver keeps of a done metatile while the build runs: its rows stay in its done record
    (a CONUS z15 build has 9.1 million rows: ~21 GiB as Python objects) until the manifest streams them."""

    rows: int
    items: frozenset[str]  # ids of the STAC items its rows use


def summarize(record: dict) -> MetatileSummary:
    return MetatileSummary(len(record["rows"]), frozenset(
        i for row in record["rows"] for layer in LAYERS for i in row[f"{layer}_items"]))


READ_THREADS = 8  # done records read at once: each is a round trip on an object store


def manifest_batches(output: ReleaseOutput, done: Iterable[Metatile]) -> Iterator[pa.Table]:
    """The manifest's rows read back from the done records of `done`, one table per column of
    metatiles (same x range), sorted by (x, y): batches in manifest order, memory one column."""
    columns: dict[int, list[Metatile]] = {}
    for mt in done:
        columns.setdefault(mt.x, []).append(mt)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for x in sorted(columns):
            rows = []
            for mt, record in zip(columns[x], pool.map(output.read_record, columns[x])):
                if record is None:  # removed since its task reported: a lost worker's late retry, or a person
                    raise UserError(f"the done record of metatile {metatile_name(mt)} vanished from "
                                    f"{output.location} before the manifest was written; rerun the same command "
                                    "(it cuts that metatile again)")
                rows.extend(record["rows"])
            rows.sort(key=lambda r: (r["z"], r["x"], r["y"]))
            yield manifest_table(rows)


def params_metadata(params: BuildParams) -> dict:
    d = asdict(params)
    d["naip_years"] = list(params.naip_years) if params.naip_years else None
    return d
