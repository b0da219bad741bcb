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
from datetime import datetime, timedelta, timezone
from typing import Any

from scale_alibi.contract.errors import ScaleAlibiError, UserError
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
    # S1/S2 are searched only within this many days of the NAIP captures found in the same block
    # (the match can use no other scene); None: over the whole archive (or --datetime).
    max_gap_days: float | None = None
    concurrency: int = 4  # catalog searches of one build running at once (Planetary Computer throttles bursts)


# ---------------------------------------------------------------- signing

Signer = Callable[[str], str]


def _no_sign(href: str) -> str:
    return href


def resolve_signer(signer: str | Signer | None) -> Signer:
    """A signer from a callable or a spec: "planetary-computer" (default), "none", or "module:attr"."""
    if callable(signer):
        return signer
    if signer in (None, "planetary-computer", "pc"):
        from scale_alibi.curate.access import PlanetaryComputerSigner

        return PlanetaryComputerSigner()
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


def search_window(layer: str, opts: SearchOptions, naip: list[Scene] | None = None,
                  ) -> tuple[datetime | None, datetime | None] | None:
    """The time window to search `layer` in ((None, None): any time), or None when nothing there could be
    used: S1/S2 within `opts.datetime`, and within `opts.max_gap_days` of the `naip` items found."""
    if layer == "naip":  # NAIP is chosen by --naip-years, the anchor of the match
        return None, None
    start, end = parse_interval(opts.datetime)
    if naip is not None and opts.max_gap_days is not None:
        captured = [scene.datetime for scene in naip]
        if not captured:
            return None
        gap = timedelta(days=opts.max_gap_days + 1)  # a day more: a mosaic group (one UTC day) is never cut
        start = max(start, min(captured) - gap) if start else min(captured) - gap
        end = min(end, max(captured) + gap) if end else max(captured) + gap
    if start and end and end < start:
        return None
    return start, end


def _rfc3339(dt: datetime | None) -> str:
    return ".." if dt is None else dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def search_items(catalog: str, layer: str, bbox: tuple[float, float, float, float],
                 opts: SearchOptions, timeout_s: float = TIMEOUT_S,
                 naip: list[Scene] | None = None) -> list[Scene]:
    """All items of `layer` intersecting `bbox` (lon/lat) that pass `opts`, sorted by id (pure; a Dask task).
    S1/S2: only within the window `search_window` gives for the `naip` scenes of the block."""
    sensor = SENSORS[layer]
    window = search_window(layer, opts, naip)
    if window is None:
        log.info("%s: not searched (no NAIP capture to match within the window)", sensor.collection)
        return []
    client = open_catalog(catalog, timeout_s)
    kwargs: dict[str, Any] = {"collections": [sensor.collection], "bbox": list(bbox), "limit": PAGE_LIMIT}
    if window != (None, None):
        kwargs["datetime"] = f"{_rfc3339(window[0])}/{_rfc3339(window[1])}"
    # Push filters down only where the server says it implements them.
    if _conforms(client, "QUERY"):
        if layer == "s2":
            kwargs["query"] = {"eo:cloud_cover": {"lte": opts.max_cloud}}
        elif layer == "s1":
            kwargs["query"] = {"sar:instrument_mode": {"eq": opts.s1_mode}}
    try:
        meta = collection_meta(client, sensor.collection)
        found = [to_scene(it, sensor, meta) for it in complete_search(client, kwargs)]
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"STAC search of {sensor.collection} at {catalog} failed ({network_reason(e, timeout_s)}); "
                        "check the catalog, or rerun later to resume") from None
    items = [it for it in found if it is not None and keep_item(it, opts)]
    log.info("%s: %d items (%d before client-side filters)", sensor.collection, len(items), len(found))
    return sorted(items, key=lambda it: it.id)


# ---------------------------------------------------------------- paging

PAGE_LIMIT = 250  # items per page asked for
ARCHIVE_START = datetime(1970, 1, 1, tzinfo=timezone.utc)  # an open window's start, when it must be split
SPLIT_FLOOR = timedelta(minutes=1)  # a shorter window that still fills a page without a next link is cut in space
SPLIT_FLOOR_DEG = 1e-3  # ... and a box narrower than this (about 100 m) is an error
MAX_SPLITS = 256  # cuts of one search before it is an error


class _Truncated(ScaleAlibiError):
    """A page was full but had no link to the next page: the server stopped paging early."""


def _all_pages(client, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in client.search(**kwargs).pages_as_dicts():
        features = page.get("features") or []
        items.extend(features)
        if len(features) >= kwargs["limit"] and not any(link.get("rel") == "next" for link in page.get("links") or []):
            raise _Truncated(len(items))
    return items


def complete_search(client, kwargs: dict[str, Any], _budget: list[int] | None = None) -> list[dict[str, Any]]:
    """Every item of the search `kwargs` (with "limit"), following `next` links.

    A full page without a `next` link (Planetary Computer served such pages, planetary-computer-apis#274)
    would silently end the results there: the search is split in two and each half searched the same
    way, by time while the window is longer than SPLIT_FLOOR, then by space (NAIP quarter-quads of one
    flight share a timestamp) while the box is wider than SPLIT_FLOOR_DEG; below both, or after MAX_SPLITS
    cuts (items that fill both halves of every cut), a UserError."""
    budget = [MAX_SPLITS] if _budget is None else _budget
    try:
        return _all_pages(client, kwargs)
    except _Truncated as truncated:
        halves = _halves(kwargs)
        budget[0] -= 1
        if halves is None or budget[0] < 0:
            raise UserError(f"the catalog returned a full page ({kwargs['limit']} items) with no link to the next "
                            f"page for {kwargs.get('collections')} at {kwargs.get('datetime', 'any time')}, even for "
                            f"a box under {SPLIT_FLOOR_DEG:g} degrees and a window under "
                            f"{SPLIT_FLOOR.total_seconds():g} s, in at most {MAX_SPLITS} cuts; retry later or narrow --datetime") from None
        log.warning("%s: a full page without a next link after %d items; searching %s and %s",
                    kwargs.get("collections"), truncated.args[0], *[(h.get("datetime"), h.get("bbox")) for h in halves])
        found: dict[str, dict[str, Any]] = {}
        for half in halves:
            for it in complete_search(client, half, budget):
                found.setdefault(it["id"], it)  # an item on the cut is in both halves
        return list(found.values())


def _halves(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The search `kwargs` cut in two by time, else by space; None when both are below their floor."""
    start, end = parse_interval(kwargs.get("datetime"))
    start = start or ARCHIVE_START
    end = end or datetime.now(timezone.utc) + timedelta(days=1)
    if end - start > SPLIT_FLOOR:
        middle = start + (end - start) / 2
        return ({**kwargs, "datetime": f"{_rfc3339(start)}/{_rfc3339(middle)}"},
                {**kwargs, "datetime": f"{_rfc3339(middle)}/{_rfc3339(end)}"})
    if "bbox" not in kwargs:  # an `intersects` search is cut by time only
        return None
    w, s, e, n = kwargs["bbox"]
    if max(e - w, n - s) <= SPLIT_FLOOR_DEG:
        return None
    if e - w >= n - s:
        m = (w + e) / 2
        return {**kwargs, "bbox": [w, s, m, n]}, {**kwargs, "bbox": [m, s, e, n]}
    m = (s + n) / 2
    return {**kwargs, "bbox": [w, s, e, m]}, {**kwargs, "bbox": [w, m, e, n]}


def dedupe(items: Iterable[Scene]) -> list[Scene]:
    """Items from several search blocks, once each, sorted by (collection, id)."""
    seen: dict[tuple[str, str], Scene] = {}
    for it in items:
        seen.setdefault((it.collection, it.id), it)
    return [seen[k] for k in sorted(seen)]
