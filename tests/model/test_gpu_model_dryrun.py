"""Smoke test: the GPU benchmark script runs end to end on CPU (`--dry-run`) from the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_dry_run_passes():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_model.py", "--dry-run"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "all sections ran" in out
    for figure in ("TFLOP/s (peak anchor)", "flex scale-alibi", "sdpa + bias", "sdpa no bias",
                   "samples/s", "MFU"):
        assert figure in out, figure
