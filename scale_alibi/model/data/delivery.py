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

A dead worker is reported by `next()`, never anywhere else. PyTorch's own report comes from a
SIGCHLD handler it installs when a DataLoader starts its workers (once per process): the handler
raises RuntimeError in the main thread between any two bytecodes, wherever it happens to be. Landing
in a ``finally`` it escapes as a traceback; landing inside the progress bar's locking (tqdm takes
two locks in turn, and an exception between them leaves the first held) the trainer hangs at its
next write; and no ``try`` around ``next()`` can catch it. So `Delivery` puts back the SIGCHLD disposition that was there before the
DataLoader started (torch does not install its handler a second time), and finds a dead worker
itself, synchronously: the iterator's worker processes are noted when it starts, and each `next()`
looks at their exit codes first (a ``waitpid`` each) -- the DataLoader's own check, a RuntimeError
"exited unexpectedly" from inside ``next()`` after at most 5 s without data, backs that up. A worker
that fails is reported with its pid and signal, and the iterator's other workers are stopped first,
so none outlives the trainer. (A process that started a plain DataLoader's workers earlier has
torch's handler already; `Delivery` leaves a handler it finds in place: `curate train` starts no such
DataLoader.)
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info

from scale_alibi.contract.errors import ScaleAlibiError, UserError

SHM_DIR = "/dev/shm"
# What to change, in the words of the places it is set (docker, docker-compose.yml, curate train).
MORE_SHM = ("give the container more shared memory (docker run --shm-size 2g; compose: shm_size or ipc: host) "
            "or lower --num-workers or --batch-size")
MORE_MEMORY = "give the container more memory or lower --num-workers or --batch-size"
STOP_WAIT_S = 5.0  # for a worker to end after SIGTERM (torch's worker exits at once), before SIGKILL
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


def worker_died(process: multiprocessing.process.BaseProcess) -> BatchNotDelivered:
    """The one-line error for a DataLoader worker process that ended with a non-zero exit code."""
    code = process.exitcode or 0
    try:
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    except ValueError:  # a signal number Python has no name for
        how = f"was killed by signal {-code}"
    return BatchNotDelivered(f"DataLoader worker (pid {process.pid}) {how} before the epoch's batches were delivered "
                             f"(the out-of-memory killer, or a crash; {shm_summary()}); {MORE_MEMORY}")


def started_workers(start: Callable[[], Iterator[dict[str, Any]]]) -> tuple[Iterator[dict[str, Any]], list[multiprocessing.process.BaseProcess]]:
    """Start a DataLoader iterator (`start`: the DataLoader's own ``__iter__``); return it and the worker
    processes it started, with torch's asynchronous SIGCHLD handler kept out (see the module doc)."""
    main = threading.current_thread() is threading.main_thread()  # signals are the main thread's only
    disposition = signal.getsignal(signal.SIGCHLD) if main else None
    before = set(multiprocessing.active_children())
    try:
        batches = start()
    finally:
        if disposition is not None and signal.getsignal(signal.SIGCHLD) is not disposition:
            signal.signal(signal.SIGCHLD, disposition)
    # torch's workers are multiprocessing children of this process: the ones that were not there before
    return batches, [p for p in multiprocessing.active_children() if p not in before]


def stop(processes: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """End `processes` now (SIGTERM, then SIGKILL after STOP_WAIT_S) and reap them."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(STOP_WAIT_S)
        if p.is_alive():
            p.kill()
            p.join(STOP_WAIT_S)


class Delivery:
    """Iterate a DataLoader's batches; a worker that cannot deliver raises `BatchNotDelivered`.

    `start` starts the DataLoader's iterator (the DataLoader's own ``__iter__``): `Delivery` starts it
    itself to know its worker processes and to keep torch's asynchronous SIGCHLD handler out.
    `expected` is the number of samples the epoch must deliver (None: not checked): an epoch that
    ends short of it lost batches on the way, which is the same error, never a short epoch.
    """

    def __init__(self, start: Callable[[], Iterator[dict[str, Any]]], expected: int | None):
        self.expected = expected
        self.delivered = 0
        self.batches, self.workers = started_workers(start)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def dead_worker(self) -> BatchNotDelivered | None:
        """The error for the first of this epoch's workers that ended with a non-zero exit code, if any
        (a worker the DataLoader itself ended, done with its data, exits with 0)."""
        for p in self.workers:
            if p.exitcode:  # polls (waitpid, WNOHANG): None while it runs
                return worker_died(p)
        return None

    def fail(self, failure: BatchNotDelivered) -> BatchNotDelivered:
        """Stop this epoch's workers (none may outlive the trainer) and return `failure` to raise."""
        stop(self.workers)
        return failure

    def __next__(self) -> dict[str, Any]:
        died = self.dead_worker()
        if died is not None:
            raise self.fail(died)
        try:
            batch = next(self.batches)
        except StopIteration:
            died = self.dead_worker()  # killed after its last batch, before the DataLoader ended it
            if died is not None:
                raise self.fail(died) from None
            if self.expected is not None and self.delivered != self.expected:
                raise BatchNotDelivered(
                    f"the DataLoader ended the epoch after {self.delivered} of its {self.expected} samples: a worker "
                    f"lost batches ({shm_summary()}); {MORE_SHM}") from None
            raise
        except Exception as e:
            failure = self.dead_worker() or as_not_delivered(e)
            if failure is None:
                raise
            raise self.fail(failure) from None
        self.delivered += int(batch["z"].shape[0])
        return batch
