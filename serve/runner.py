"""Run the service under uvicorn with the fast settings (httptools, uvloop, no access log)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from serve.app import CACHE_ENV, DATA_ENV


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(data_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        cache_mb: int | None = None, log_level: str = "warning") -> None:
    """Serve `data_dir` until interrupted; workers > 1 forks stateless worker processes."""
    # Worker processes build their own app from the environment (uvicorn's factory mode).
    os.environ[DATA_ENV] = str(Path(data_dir).resolve())
    if cache_mb is not None:
        os.environ[CACHE_ENV] = str(cache_mb)
    import uvicorn

    uvicorn.run(
        "serve.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop" if _have("uvloop") else "asyncio",
        http="httptools" if _have("httptools") else "h11",
        access_log=False,
        server_header=False,
        log_level=log_level,
        timeout_graceful_shutdown=5,
    )
