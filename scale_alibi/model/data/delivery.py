"""How DataLoader workers hand batches to the trainer, and the one-line error when one cannot.

A worker process passes each batch's tensors through shared memory (``/dev/shm``; a container's is
64 MB unless it is given more). PyTorch allocates that memory while its queue's background feeder
thread pickles the batch; when the allocation fails there, the thread prints a traceback and drops
the batch, the worker carries on, and the main process waits for a batch that never comes or ends
the epoch without it: a hang or a silent loss. So:

* `shared_buffer` places a batch in shared memory inside the worker's own thread (as
  `torch.utils.data.default_collate` does for its stacks), where a full ``/dev/shm`` is an
  exception the DataLoader hands to the main process, instead of the feeder thread's dropped batch;
* `Delivery` wraps a DataLoader iterator: that exception, or a worker that died (killed by the
  out-of-memory killer, a signal), becomes `BatchNotDelivered`, one line that says what to do; and
  an epoch that ends with fewer samples than the dataset holds for it (a batch lost any other way)
  is the same error rather than a short epoch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import get_worker_info

from scale_alibi.contract.errors import ScaleAlibiError, UserError

SHM_DIR = "/dev/shm"
# What to change, in the words of the places it is set (docker, docker-compose.yml, curate train).
MORE_SHM = ("give the container more shared memory (docker run --shm-size 2g; compose: shm_size or ipc: host) "
            "or lower --num-workers or --batch-size")
MORE_MEMORY = "give the container more memory or lower --num-workers or --batch-size"
# torch's messages for a dead worker: raised by the DataLoader (exit) or its SIGCHLD handler (signal).
_WORKER_DIED = re.compile(r"DataLoader worker \(pids?(?:\(s\))? ([\d, ]+)\) (?:exited unexpectedly|is killed by signal: ?([^.]*))")


class SharedMemoryFull(ScaleAlibiError, RuntimeError):
    """Raised inside a worker when the batch cannot be placed in shared memory (the DataLoader
    re-raises it, same type, in the main process)."""


class BatchNotDelivered(UserError):
    """A DataLoader worker could not deliver a batch: one line naming the cause and what to do."""


def shm_summary(path: str = SHM_DIR) -> str:
    """'/dev/shm is 64 MiB': the size of the shared-memory file system this process sees (what is free
    now says little: the workers' batches are gone by the time the error is reported)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return f"{path} is not mounted"
    return f"{path} is {st.f_blocks * st.f_frsize / 2**20:.0f} MiB"


def shared_buffer(nbytes: int) -> torch.Tensor:
    """`nbytes` uninitialised bytes (uint8) for one batch; inside a DataLoader worker, allocated
    straight in shared memory (SharedMemoryFull if it is full), not copied there afterwards."""
    if get_worker_info() is None:
        return torch.empty(nbytes, dtype=torch.uint8)
    try:
        storage = torch.UntypedStorage._new_shared(nbytes)  # what default_collate allocates its stacks with
    except RuntimeError as e:  # torch: "unable to allocate shared memory(shm) ...: No space left on device (28)"
        if "No space left" in str(e) or "shared memory" in str(e):
            raise SharedMemoryFull(f"{nbytes} bytes: {e}") from None
        raise
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def as_not_delivered(exc: BaseException) -> BatchNotDelivered | None:
    """The one-line error for a DataLoader failure that means a worker could not deliver, else None."""
    if isinstance(exc, BatchNotDelivered):
        return exc
    if isinstance(exc, SharedMemoryFull):
        return BatchNotDelivered(f"a DataLoader worker could not hand its batch over: shared memory ran out ({shm_summary()}); {MORE_SHM}")
    m = _WORKER_DIED.search(str(exc)) if isinstance(exc, RuntimeError) else None
    if m is not None:
        how = f"was killed by signal {m.group(2).strip()}" if m.group(2) else "exited unexpectedly"
        return BatchNotDelivered(f"DataLoader worker (pid {m.group(1).strip()}) {how} before delivering its batch "
                                 f"(the out-of-memory killer, or a crash; {shm_summary()}); {MORE_MEMORY}")
    return None


class Delivery:
    """Iterate a DataLoader's batches; a worker that cannot deliver raises `BatchNotDelivered`.

    `expected` is the number of samples the epoch must deliver (None: not checked): an epoch that
    ends short of it lost batches on the way, which is the same error, never a short epoch.
    """

    def __init__(self, batches: Iterator[dict[str, Any]], expected: int | None):
        self.batches, self.expected = batches, expected
        self.delivered = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            batch = next(self.batches)
        except StopIteration:
            if self.expected is not None and self.delivered != self.expected:
                raise BatchNotDelivered(
                    f"the DataLoader ended the epoch after {self.delivered} of its {self.expected} samples: a worker "
                    f"lost batches ({shm_summary()}); {MORE_SHM}") from None
            raise
        except Exception as e:
            failure = as_not_delivered(e)
            if failure is None:
                raise
            raise failure from None
        self.delivered += int(batch["z"].shape[0])
        return batch
