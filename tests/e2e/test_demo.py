"""The README's main command, `curate demo`, end to end as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

from scale_alibi.contract.release import Release


def test_demo_builds_serves_and_trains_with_the_release_stats(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "scale_alibi", "demo", "--out", str(out), "--train-steps", "2"],
                          capture_output=True, text=True, timeout=480)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    release = Release(out / "releases", "demo-z17")
    rows = release.read_manifest().to_pylist()
    assert len(rows) >= 200 and {r["split"] for r in rows} == {"train", "heldout"}
    stats = json.loads((release.path / "stats.json").read_text())
    assert set(stats["modalities"]) >= {"s1", "s2", "naip_hires"}
    # training found the release's stats through the server instead of falling back to constants
    assert "no stats.json" not in log, log[-3000:]
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "latest").read_text().strip() == "step-000000002"
    assert "heldout s1->s2 retrieval top-1" in log and "viewer http://127.0.0.1:" in log
