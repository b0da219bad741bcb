"""Run the service under uvicorn with the fast settings (httptools, uvloop, no access log)."""

from __future__ import annotations

import importlib.util
import os

from scale_alibi.contract.storage import is_remote, local_path
from scale_alibi.serve.app import CACHE_ENV, DATA_ENV

HEADER_TIMEOUT_ENV = "SCALE_ALIBI_HEADER_TIMEOUT"  # read by scale_alibi.serve.protocol in each worker
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds a connection has to send a complete request head
MAX_HEAD_BYTES = 64 * 1024  # request line and headers
MAX_HEADERS = 100


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(data_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        cache_mb: int | None = None, log_level: str = "warning", keep_alive_timeout: float = 5.0,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> None:
    """Serve `data_dir` (a directory or a bucket URL) until interrupted; workers > 1 forks stateless worker processes.

    A connection is closed when it sends no complete request head within `header_timeout` seconds
    (of connecting or of its previous response), or stays idle `keep_alive_timeout` seconds after one."""
    # Worker processes build their own app (and protocol) from the environment (uvicorn's factory mode).
    os.environ[DATA_ENV] = str(data_dir) if is_remote(data_dir) else str(local_path(data_dir).resolve())
    os.environ[HEADER_TIMEOUT_ENV] = str(header_timeout)
    if cache_mb is not None:
        os.environ[CACHE_ENV] = str(cache_mb)
    import uvicorn

    uvicorn.run(
        "scale_alibi.serve.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop" if _have("uvloop") else "asyncio",
        # Without httptools, h11 caps the head's size but has no head deadline.
        http="scale_alibi.serve.protocol:GuardedHttpToolsProtocol" if _have("httptools") else "h11",
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        # arg-type: uvicorn annotates it int but only hands it to loop.call_later, which takes fractional seconds
        timeout_keep_alive=keep_alive_timeout,  # type: ignore[arg-type]
        access_log=False,
        server_header=False,
        log_level=log_level,
        timeout_graceful_shutdown=5,
    )
