"""What the manifest records besides the tiles: its column types, the build parameters and software versions."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from scale_alibi.contract.release import REQUIRED_COLUMNS
from scale_alibi.curate.build.params import BuildParams


def _versions() -> dict[str, str]:
    import dask
    import imagecodecs
    import pystac_client
    import rasterio

    from scale_alibi import __version__

    return {"scale-alibi": __version__, "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__,
            "numpy": np.__version__, "imagecodecs": imagecodecs.__version__, "dask": dask.__version__,
            "pystac-client": pystac_client.__version__}


def _manifest_table(rows: list[dict]):
    import pyarrow as pa

    schema = dict(REQUIRED_COLUMNS)
    extra = {}
    for layer in ("s2", "s1", "naip"):
        extra[f"{layer}_group"] = pa.string()
        extra[f"{layer}_items"] = pa.list_(pa.string())
        extra[f"{layer}_datetime"] = pa.string()
        extra[f"{layer}_valid"] = pa.float64()
    extra["s2_cloud_cover"] = pa.float64()
    extra["s1_orbit_state"] = pa.string()
    extra["s1_relative_orbit"] = pa.int32()
    extra["naip_year"] = pa.string()
    schema.update(extra)
    s = pa.schema(list(schema.items()))
    return pa.Table.from_pylist(rows, schema=s)


def _params_meta(params: BuildParams) -> dict:
    d = asdict(params)
    d["naip_years"] = list(params.naip_years) if params.naip_years else None
    return d
