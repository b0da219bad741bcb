"""Where one core's time goes in `curate build`: one fixed one-process build of the synthetic world,
its COGs served by nginx (Range requests, no CPU in this process), measured in CPU-seconds of this
process (robust on a busy machine, unlike wall time), optionally under cProfile or callgrind.

    python benchmarks/build_profile.py [--zoom 17] [--fraction 1.0] [--repeats 3] [--profile out.prof]
    valgrind --tool=callgrind --instr-atstart=no python benchmarks/build_profile.py --fraction 0.15 --callgrind

A first build warms the process (imports, GDAL's caches) and is not counted; then --repeats builds,
each printed, and the least CPU per tile. --callgrind switches callgrind's instrumentation on for the
measured builds only (`callgrind_control`), so the instruction count ("totals" in the output file)
is the build's, not the interpreter's start-up. Needs Debian `nginx-light`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GDAL_NUM_THREADS", "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from build_scaling import centred, world_on_nginx  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def callgrind(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoom", type=int, default=17)
    ap.add_argument("--fraction", type=float, default=1.0, help="area of the world built, centred")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", help="write a cProfile (CPU time) of the last build here")
    ap.add_argument("--callgrind", action="store_true", help="running under callgrind: count the measured builds only")
    args = ap.parse_args()
    from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request

    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        with world_on_nginx(tmp) as (world, _):
            region = centred(world.bbox, args.fraction)
            request = resolve_request(zoom=args.zoom, region=region, release="bench", catalog=world.stac_url)
            run = RunOptions(signer="none", scheduler="synchronous", progress=False, echo=lambda m: None)

            def build() -> int:
                shutil.rmtree(tmp / "out", ignore_errors=True)
                return build_release(tmp / "out", request, run).triplets * 7

            build()  # warm: imports, GDAL's block cache
            best = float("inf")
            for rep in range(args.repeats):
                profiler = None
                if args.profile and rep == args.repeats - 1:
                    import cProfile

                    profiler = cProfile.Profile(time.thread_time)
                    profiler.enable()
                if args.callgrind:
                    callgrind(True)
                c0, t0 = cpu_s(), time.perf_counter()
                tiles = build()
                cpu, wall = cpu_s() - c0, time.perf_counter() - t0
                if args.callgrind:
                    callgrind(False)
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
                best = min(best, cpu / tiles)
                print(f"  build {rep + 1}: {tiles} PNG tiles, {cpu:.2f} CPU-s, {wall:.2f} s wall, "
                      f"{1e3 * cpu / tiles:.2f} ms CPU per tile", flush=True)
            print(f"zoom {args.zoom}, fraction {args.fraction}: least {1e3 * best:.2f} ms CPU per tile (one process)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
