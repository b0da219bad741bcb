"""Scene search: STAC items per sensor for a bounding box, as typed scenes (`scale_alibi.curate.scene`).

The catalog's optional extensions (``query``, ``filter``, ``sortby``) are used only where the server
declares them in its conformance classes (rustac's in-memory backend returns *no items* for
``query``); every filter is applied again on the client and every ordering is made on the client,
so results are identical either way. Items are **not** signed here: signing is lazy, just before
a read (see ``scale_alibi.curate.reader``), from the unsigned href.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scale_alibi.contract.errors import UserError
from scale_alibi.curate.scene import Scene, parse_scene, parse_time

log = logging.getLogger(__name__)

PLANETARY_COMPUTER = "https://planetarycomputer.microsoft.com/api/stac/v1"


@dataclass(frozen=True)
class Sensor:
    """One layer's STAC collection and the asset keys it reads."""

    layer: str
    collection: str
    assets: tuple[str, ...]


SENSORS: dict[str, Sensor] = {
    "s2": Sensor("s2", "sentinel-2-l2a", ("visual", "SCL")),
    "s1": Sensor("s1", "sentinel-1-rtc", ("vv", "vh")),
    "naip": Sensor("naip", "naip", ("image",)),
}


@dataclass(frozen=True)
class SearchOptions:
    """Client-side filters applied to every search (and pushed to the server where it can)."""

    datetime: str | None = None  # STAC interval "a/b" for S1 and S2 (NAIP: naip_years)
    max_cloud: float = 20.0  # S2 eo:cloud_cover upper limit, percent
    s1_mode: str = "IW"
    naip_years: tuple[int, int] | None = None  # inclusive


# ---------------------------------------------------------------- signing

Signer = Callable[[str], str]


def _pc_sign(href: str) -> str:
    import planetary_computer

    return planetary_computer.sign(href)


def _no_sign(href: str) -> str:
    return href


def resolve_signer(signer: str | Signer | None) -> Signer:
    """A signer from a callable or a spec: "planetary-computer" (default), "none", or "module:attr"."""
    if callable(signer):
        return signer
    if signer in (None, "planetary-computer", "pc"):
        return _pc_sign
    if signer == "none":
        return _no_sign
    if ":" in signer:
        module, attr = signer.split(":", 1)
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"cannot load signer {signer!r} ({e}); give module:function") from None
    raise UserError(f"unknown signer {signer!r}; use planetary-computer, none or module:function")


# ---------------------------------------------------------------- search

TIMEOUT_S = 30.0  # default wait for any one network answer (catalog request, COG range read)
SEARCH_RETRIES = 6  # retries of a catalog request answered 429/5xx (reads: scale_alibi.curate.reader.RETRIES)
TIMEOUT_RETRIES = 2  # retries of one that got no answer at all within the timeout
BACKOFF_S = 0.25  # doubles per retry (the first is immediate), capped at BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
RETRY_AFTER_MAX_S = 60.0  # a server's Retry-After is honoured up to this


def _retry():
    """The urllib3 retry policy of catalog requests: 429/5xx and timeouts, with backoff and Retry-After."""
    from urllib3.util.retry import Retry

    class CappedRetry(Retry):
        def get_retry_after(self, response):
            after = super().get_retry_after(response)
            return None if after is None else min(after, RETRY_AFTER_MAX_S)

    return CappedRetry(total=None, connect=TIMEOUT_RETRIES, read=TIMEOUT_RETRIES, status=SEARCH_RETRIES, other=0,
                       redirect=5, allowed_methods=None,  # searches are POSTs, and idempotent
                       status_forcelist=(429, 500, 502, 503, 504), backoff_factor=BACKOFF_S,
                       backoff_max=BACKOFF_MAX_S, respect_retry_after_header=True)


def network_reason(err: Exception, timeout_s: float) -> str:
    """What went wrong with a catalog request, in a few words (pystac_client flattens errors to text)."""
    text = " ".join(str(err).split())
    lowered = text.lower()
    if "timed out" in lowered or "timeout" in lowered:
        return f"no answer within {timeout_s:g} s, {TIMEOUT_RETRIES + 1} tries"
    if "too many" in lowered and "error responses" in lowered:  # urllib3: retries of 429/5xx used up
        # the codes urllib3 names ("too many 503 error responses"), not digits of the URL's port
        codes = sorted(set(re.findall(r"too many (\d{3}) error responses", text)))
        return f"HTTP {'/'.join(codes) or 'error'} on all {SEARCH_RETRIES + 1} tries"
    if "connection" in lowered or "resolve" in lowered:  # refused, reset, DNS
        return "connection failed"
    return text[:160] or err.__class__.__name__


def open_catalog(url: str, timeout_s: float = TIMEOUT_S):
    """Open a STAC API whose requests time out after `timeout_s` and are retried; any failure is one clear line."""
    import pystac_client
    from pystac_client.stac_api_io import StacApiIO

    try:
        return pystac_client.Client.open(url, stac_io=StacApiIO(max_retries=_retry()), timeout=timeout_s)
    except Exception as e:  # connection refused, DNS, timeout, not a STAC API, ...
        raise UserError(f"cannot reach STAC catalog {url} ({network_reason(e, timeout_s)}); check --catalog and "
                        "the network") from None


def _conforms(client, name: str) -> bool:
    from pystac_client import ConformanceClasses

    try:
        return bool(client.conforms_to(getattr(ConformanceClasses, name)))
    except Exception:
        return False


def _parse_dt(value: str | None) -> datetime | None:
    if not value or value == "..":
        return None
    return parse_time(value)


def parse_interval(interval: str | None) -> tuple[datetime | None, datetime | None]:
    """Parse a STAC datetime interval "a/b" ("..", empty = open); a single date means that day."""
    if not interval:
        return None, None
    try:
        if "/" in interval:
            a, b = interval.split("/", 1)
            start, end = _parse_dt(a), _parse_dt(b)
            if end is not None and len(b) == 10:  # a bare end date includes that whole day
                end = end.replace(hour=23, minute=59, second=59)
        else:
            start = end = _parse_dt(interval)
            if start is not None and len(interval) == 10:  # a bare date means that whole day
                end = start.replace(hour=23, minute=59, second=59)
    except ValueError:
        raise UserError(f"--datetime {interval!r} is not a STAC interval like 2022-01-01/2022-12-31") from None
    if start and end and end < start:
        raise UserError(f"--datetime {interval!r} ends before it starts")
    return start, end


def collection_meta(client, collection: str) -> dict[str, Any]:
    """The STAC Collection dict of `collection` (its ``item_assets`` nodata and ``msft:requires_account``),
    or {} when the catalog does not serve it."""
    try:
        return client.get_collection(collection).to_dict()
    except Exception:  # a catalog without /collections/{id}: items alone decide
        return {}


def to_scene(item: dict[str, Any], sensor: Sensor, collection: dict[str, Any] | None = None) -> Scene | None:
    """The typed scene of a found item, or None (logged) when it has no usable time or footprint."""
    try:
        return parse_scene({**item, "collection": sensor.collection}, sensor.layer, sensor.assets, collection)
    except (ValueError, TypeError, KeyError) as e:
        log.warning("%s %s skipped: %s", sensor.collection, item.get("id"), e)
        return None


def keep_item(scene: Scene, opts: SearchOptions) -> bool:
    """Client-side filters (applied whether or not the server honoured them)."""
    layer = scene.layer
    if any(not scene.has(k) for k in SENSORS[layer].assets if k != "SCL"):
        return False
    start, end = parse_interval(opts.datetime) if layer != "naip" else (None, None)
    dt = scene.datetime
    if (start and dt < start) or (end and dt > end):
        return False
    if layer == "s2":
        return scene.cloud_cover is not None and scene.cloud_cover <= opts.max_cloud
    if layer == "s1":
        return (scene.instrument_mode or opts.s1_mode) == opts.s1_mode
    if layer == "naip" and opts.naip_years:
        return scene.naip_year is not None and opts.naip_years[0] <= scene.naip_year <= opts.naip_years[1]
    return True


def search_items(catalog: str, layer: str, bbox: tuple[float, float, float, float],
                 opts: SearchOptions, timeout_s: float = TIMEOUT_S) -> list[Scene]:
    """All items of `layer` intersecting `bbox` (lon/lat) that pass `opts`, sorted by id (pure; a Dask task)."""
    sensor = SENSORS[layer]
    client = open_catalog(catalog, timeout_s)
    kwargs: dict[str, Any] = {"collections": [sensor.collection], "bbox": list(bbox), "limit": 250}
    if opts.datetime and layer != "naip":  # NAIP is chosen by --naip-years, the anchor of the match
        kwargs["datetime"] = opts.datetime
    # Push filters down only where the server says it implements them.
    if _conforms(client, "QUERY"):
        if layer == "s2":
            kwargs["query"] = {"eo:cloud_cover": {"lte": opts.max_cloud}}
        elif layer == "s1":
            kwargs["query"] = {"sar:instrument_mode": {"eq": opts.s1_mode}}
    try:
        meta = collection_meta(client, sensor.collection)
        found = [to_scene(it, sensor, meta) for it in client.search(**kwargs).items_as_dicts()]
    except Exception as e:
        raise UserError(f"STAC search of {sensor.collection} at {catalog} failed ({network_reason(e, timeout_s)}); "
                        "check the catalog, or rerun later to resume") from None
    items = [it for it in found if it is not None and keep_item(it, opts)]
    log.info("%s: %d items (%d before client-side filters)", sensor.collection, len(items), len(found))
    return sorted(items, key=lambda it: it.id)


def dedupe(items: Iterable[Scene]) -> list[Scene]:
    """Items from several search blocks, once each, sorted by (collection, id)."""
    seen: dict[tuple[str, str], Scene] = {}
    for it in items:
        seen.setdefault((it.collection, it.id), it)
    return [seen[k] for k in sorted(seen)]
