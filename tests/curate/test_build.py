"""curate build against the synthetic world: the manifest rows the scenes imply, the spatial split,
and kill -9 then resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

from scale_alibi.contract.release import Release, manifest_metadata
from tests.release_factory import file_tree
from tests.world_rows import across_edge, expected_rows, zone_edge

# ------------------------------------------------------------------------------ rows and splits

def test_manifest_rows_are_what_the_scenes_imply(built_release, world):
    rel = Release(*built_release)
    table = rel.read_manifest()
    got = set(zip(table.column("x").to_pylist(), table.column("y").to_pylist()))
    complete, ambiguous = expected_rows(world, 17)
    assert len(ambiguous) <= 3
    assert got - ambiguous == complete
    assert len(got) >= 200
    # Every manifest file exists, with the recorded hash; nothing else is in the public tree.
    from scale_alibi.contract.release import content_hash

    listed = set()
    for row in table.to_pylist():
        paths = rel.triplet_paths(row["z"], row["x"], row["y"])
        for name, path in paths.items():
            want = row["hash_naip_hires"][int(name[-1])] if name.startswith("naip_hires") else row[f"hash_{name}"]
            assert content_hash(path.read_bytes()) == want
            listed.add(path)
    public = {p for layer in ("s1", "s2", "naip") for p in (rel.path / layer).rglob("*") if p.is_file()}
    assert public == listed
    meta = manifest_metadata(table)
    assert meta["zoom"] == 17 and meta["software"]["rasterio"]
    used = {i for row in table.to_pylist() for k in ("s1_items", "s2_items", "naip_items") for i in row[k]}
    assert used == set(meta["items"])
    # `updated` as each item has it: PC's S1 RTC items have none (null), the others a time.
    from tests.world_rows import world_items

    updated = {it["id"]: it["properties"].get("updated") for its in world_items(world).values() for it in its}
    assert {k: v["updated"] for k, v in meta["items"].items()} == {k: updated[k] for k in used}
    assert any(v is None for v in updated.values()) and any(v for v in updated.values())


def test_hard_cases_are_in_the_manifest(built_release, world):
    rows = Release(*built_release).read_manifest().to_pylist()
    across = across_edge(rows, zone_edge(world))
    assert len(across) >= 3
    assert all(len({i.split("_R098_T")[1][:2] for i in r["s2_items"]}) == 2 for r in across)  # zones 13 and 14
    naip_zones = {i.split("_")[4] for r in rows for i in r["naip_items"]}
    assert naip_zones == {"13", "14"}  # NAD83 UTM 13N and 14N NAIP both used


def test_split_is_spatially_blocked_with_enough_heldout(built_release):
    rows = Release(*built_release).read_manifest().to_pylist()
    by_block = defaultdict(set)
    for r in rows:
        by_block[(r["x"] >> 2, r["y"] >> 2)].add(r["split"])
    assert all(len(s) == 1 for s in by_block.values())
    heldout = sum(r["split"] == "heldout" for r in rows)
    assert 64 <= heldout <= len(rows) - 64


# ------------------------------------------------------------------------ kill -9 and resume

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from scale_alibi.cli.main import main; main()", "build", *args]


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_kill_9_then_rerun_is_identical_and_cheaper(z16, world, tmp_path):
    import psutil

    ref, ref_stats = z16
    total = sum(1 for layer in ("s1", "s2", "naip") for p in (ref.path / layer).rglob("*.png"))
    w, s, e, n = world.bbox
    args = _cli("--bbox", f"{w},{s},{e},{n}", "--zoom", "16", "--release", "w16", "--metatile", "1",
                "--out", str(tmp_path), "--catalog", world.stac_url, "--signer", "none", "--workers", "2",
                "--no-progress")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    public = tmp_path / "w16"
    kids: set[int] = set()
    written = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        kids.update(_children(proc.pid))
        written = sum(1 for layer in ("s1", "s2", "naip") for _ in (public / layer).rglob("*.png"))
        if written >= 0.2 * total:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    kids.update(_children(proc.pid))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0.2 * total <= written <= 0.8 * total, (written, total)
    # No build process survives the kill (workers notice their parent is gone).
    gone_by = time.monotonic() + 20
    alive = [k for k in kids if psutil.pid_exists(k) and psutil.Process(k).status() != psutil.STATUS_ZOMBIE]
    while alive and time.monotonic() < gone_by:
        time.sleep(0.2)
        alive = [k for k in alive if psutil.pid_exists(k) and psutil.Process(k).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"build processes survived the kill: {alive}"

    world.files.reset_stats()
    done = subprocess.run(args, capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rerun = world.files.stats()
    assert 0 < rerun["bytes"] < ref_stats["bytes"]
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name in (".build", ".lock")]
    assert not leftovers
    assert file_tree(public) == file_tree(ref.path)  # byte-identical tiles and manifest

    world.files.reset_stats()
    again = subprocess.run(args, capture_output=True, timeout=120)
    assert again.returncode == 0 and world.files.stats()["bytes"] == 0
    assert file_tree(public) == file_tree(ref.path)


