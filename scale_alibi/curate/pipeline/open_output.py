"""The output of a release at a location the user gave: a directory or an object-store URL."""

from __future__ import annotations

import os

from scale_alibi.contract.storage import STORE_TIMEOUTS, StoreTimeouts, is_remote, local_path
from scale_alibi.curate.pipeline.local_output import LocalOutput
from scale_alibi.curate.pipeline.output import ReleaseOutput


def open_output(out: str | os.PathLike[str], release: str, timeouts: StoreTimeouts = STORE_TIMEOUTS) -> ReleaseOutput:
    """The output for release `release` under `out`: a local directory or an fsspec URL (whose
    every request waits at most as `timeouts` say)."""
    if is_remote(out):
        from scale_alibi.curate.pipeline.object_output import ObjectOutput  # the store's library, only when used

        return ObjectOutput(os.fspath(out), release, timeouts)
    return LocalOutput(local_path(out), release)
