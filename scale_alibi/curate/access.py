"""Access to Planetary Computer's storage: SAS tokens per container, fresh ones on demand, and a check up front.

Signing is the planetary-computer SDK's own path: a token for the href's (account, container) from the
token service (``PC_SDK_SAS_URL``, default Planetary Computer's), requested with the subscription key
``PC_SDK_SUBSCRIPTION_KEY`` when it is set (collections with ``msft:requires_account: true`` need it),
kept in the SDK's per-container cache, and appended to the href. Two things the SDK does not do:

- a *fresh* token on demand: after a 403 the SDK's cache may still hold a token that looks valid
  (revoked, or the service announced a later expiry than the storage honours); re-signing from it
  would give the same refused URL, so ``fresh`` drops the container's cache entry first;
- a check before any work: ``check_access`` signs one href of each collection, so a refused token
  request (no key, a wrong key) is one clear line before any metatile is cut, not a failure per metatile.

Which hrefs are signed: those in Azure blob storage (``<account>.blob.core.windows.net/<container>/...``,
the SDK's rule), and, path-style (``/<container>/...``, account = the host) as a storage emulator
serves them, those on the token service's own origin (the offline world serves files and tokens
from one server). Anything else passes through unchanged, with no network call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from scale_alibi.contract.errors import UserError

KEY_VARIABLE = "PC_SDK_SUBSCRIPTION_KEY"
BLOB_STORAGE_DOMAIN = ".blob.core.windows.net"
PUBLIC_ASSETS_HOST = "ai4edatasetspublicassets.blob.core.windows.net"  # thumbnails: public, never signed
_TOKEN_PARAMS = {"st", "se", "sp"}  # an href carrying any of these is already signed
TOKEN_RETRIES = 6  # of a token request answered 429/5xx (as catalog requests: scale_alibi.curate.search)
TOKEN_BACKOFF_S = 0.25  # doubling


class TokenRefused(UserError):
    """The token service refused a token (HTTP 401/403): no key, or a wrong one; retrying cannot help."""

    def __init__(self, message: str, status: int = 0, container: str = ""):  # defaults: unpickled from a worker
        super().__init__(message)
        self.status = status
        self.container = container


@dataclass(frozen=True)
class TokenScope:
    """What one SAS token covers: a storage account's container."""

    account: str
    container: str


def token_scope(href: str) -> TokenScope | None:
    """The (account, container) whose token signs `href`; None for an href that is not signed."""
    from planetary_computer.settings import Settings

    parsed = urlparse(href)
    segments = parsed.path.lstrip("/").split("/")
    if parsed.netloc.endswith(BLOB_STORAGE_DOMAIN) and parsed.netloc != PUBLIC_ASSETS_HOST:
        from planetary_computer.utils import parse_blob_url

        account, container = parse_blob_url(parsed)
        return TokenScope(account, container)
    service = urlparse(Settings.get().sas_url or "")
    if parsed.scheme == service.scheme and parsed.netloc == service.netloc and len(segments) > 1 and segments[0]:
        return TokenScope(parsed.hostname or parsed.netloc, segments[0])
    return None


def _token(scope: TokenScope, fresh: bool):
    """The SDK's token for `scope` (from its cache unless `fresh`); 401/403 become TokenRefused."""
    import requests
    from planetary_computer.sas import TOKEN_CACHE, get_token

    if fresh:  # the SDK keys its cache by the token request URL, which ends in /<account>/<container>
        suffix = f"/{scope.account}/{scope.container}"
        for url in [u for u in list(TOKEN_CACHE) if u.endswith(suffix)]:
            TOKEN_CACHE.pop(url, None)
    try:
        # the SDK's default, 10 retries of 429/5xx from 0.8 s doubling (capped at 120 s), waits ~7 minutes
        return get_token(scope.account, scope.container, retry_total=TOKEN_RETRIES, retry_backoff_factor=TOKEN_BACKOFF_S)
    except requests.HTTPError as e:
        status = e.response.status_code if e.response is not None else 0
        if status not in (401, 403):
            raise
        from planetary_computer.settings import Settings

        if Settings.get().subscription_key:  # from the variable or ~/.planetarycomputer/settings.env
            advice = f"the subscription key ({KEY_VARIABLE}) was refused: check it, or use --signer"
        else:
            advice = f"set {KEY_VARIABLE} to your Planetary Computer subscription key, or use --signer"
        raise TokenRefused(f"the token service refused a token for {scope.account}/{scope.container} "
                           f"(HTTP {status}); {advice}", status, scope.container) from None


@dataclass(frozen=True)
class PlanetaryComputerSigner:
    """Signs hrefs with Planetary Computer SAS tokens (picklable: Dask workers sign with it)."""

    def __call__(self, href: str) -> str:
        return self.sign(href, fresh=False)

    def fresh(self, href: str) -> str:
        """`href` signed with a newly requested token (after the storage refused the cached one)."""
        return self.sign(href, fresh=True)

    def sign(self, href: str, fresh: bool = False) -> str:
        scope = token_scope(href)
        if scope is None or _TOKEN_PARAMS & set(parse_qs(urlparse(href).query)):
            return href
        return _token(scope, fresh).sign(href).href


def check_access(client, collections: Iterable[tuple[str, Sequence[str]]], bbox: Sequence[float],
                 signer: Callable[[str], str]) -> None:
    """Sign one href of each collection (`(collection id, asset keys)`) found in `bbox`, so a refused
    token is one UserError before any work; a collection without items over `bbox` is skipped."""
    for collection, assets in collections:
        found = client.search(collections=[collection], bbox=list(bbox), max_items=1, limit=1).items_as_dicts()
        item = next(iter(found), None)
        hrefs = [item["assets"][k]["href"] for k in assets if item and k in item.get("assets", {})]
        if not hrefs:
            continue
        try:
            signer(hrefs[0])
        except TokenRefused as e:
            need = " (the collection requires a Planetary Computer account)" if _requires_account(client, collection) else ""
            raise TokenRefused(f"cannot read {collection}{need}: {e}", e.status, e.container) from None


def _requires_account(client, collection: str) -> bool:
    try:
        return bool(client.get_collection(collection).extra_fields.get("msft:requires_account"))
    except Exception:  # the flag only words the message: a catalog without it is not an error
        return False
