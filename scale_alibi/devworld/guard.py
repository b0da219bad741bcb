"""Run a command as a child that dies with us, and exit when our parent dies.

`python -m scale_alibi.devworld.guard CMD...`: used for `rustac serve`, so that a test run killed
without cleanup (or a world started from a short-lived thread) leaks no server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    """Start argv, then wait until it exits, we get SIGTERM/SIGINT, or our parent is gone."""
    from scale_alibi.devworld.fileserver import _pdeathsig

    ppid = os.getppid()
    child = subprocess.Popen(argv, preexec_fn=_pdeathsig)  # from our main thread: lives as long as we do
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop and child.poll() is None and os.getppid() == ppid:
        time.sleep(0.2)
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return child.returncode if child.returncode is not None and child.returncode >= 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
