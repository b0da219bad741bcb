"""A real S3-protocol server on loopback (moto's server in its own process) and a fresh bucket per
test, reached the way users reach S3: through the standard AWS environment variables."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.stac_server import free_port


def s3_environment(endpoint: str) -> dict[str, str]:
    """The environment that points S3 clients (ours, Dask workers', subprocesses') at `endpoint`."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def s3_server() -> Iterator[str]:
    """The endpoint URL of `moto_server` (in-memory S3) on a free loopback port; stopped on exit."""
    with s3_server_process() as (endpoint, _):
        yield endpoint


@contextmanager
def s3_server_process() -> Iterator[tuple[str, subprocess.Popen]]:
    """(endpoint URL, process) of `moto_server` on a free loopback port, for tests that stop it
    (SIGSTOP: a store that accepts connections and stops answering); killed on exit."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.1)
        yield endpoint, server
    finally:
        server.send_signal(signal.SIGCONT)  # a stopped server cannot act on SIGTERM
        server.terminate()
        server.wait(10)


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """The URL of a TCP endpoint on loopback that accepts connections and never answers a byte:
    a store (or a proxy in front of one) that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # kept open, never read from or written to
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def new_bucket(endpoint: str) -> str:
    """Create an empty bucket on `endpoint`; returns its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    env = s3_environment(endpoint)
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1").create_bucket(Bucket=name)
    return name


def apply_environment(endpoint: str, setenv) -> None:
    """Point this process (and what it starts) at `endpoint` through `setenv` (monkeypatch.setenv)."""
    for key, value in s3_environment(endpoint).items():
        setenv(key, value)
    os.environ.pop("AWS_PROFILE", None)
