"""Does a sweep scale with workers, and what does Ray cost? (prints; not a test)

    .venv/bin/python benchmarks/sweep_scaling.py                       # smoke grid, wall
    .venv/bin/python benchmarks/sweep_scaling.py --profile quick --table 1 --rounds 2

Runs the same grid (default: ``quantwm sweep --profile smoke --env wall``, 4 experiments),
each time into a fresh temporary store, on

  * the local executor with 1 worker (all torch threads) and with 2 workers (one thread each),
  * the Ray executor on a local instance with 2 CPUs (1 CPU, one thread, per task),

and prints each one's wall time and throughput, the ratios (goal: Ray within 10 % of local
processes at equal workers), and Ray's fixed cost: starting the local instance (token auth,
127.0.0.1 only, no dashboard: what ``--executor ray`` starts) and stopping it, timed apart from
the sweep. The records of local-2 and Ray are compared (time and provenance aside): they must be
equal (one thread per experiment in both). Calibrations are recorded (cached) before the first
run so that no run pays for them. The machine's load average is printed beside the figures:
timings taken beside other work say so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _grid(profile: str, env: str | None, tables: list[int] | None) -> list:
    from quantwm.study.grid import TABLES
    from quantwm.study.profiles import study_profile

    p = study_profile(profile)
    envs = (env,) if env else None
    if tables:
        return p.study_experiments(tables, envs, figures=False, width=False)
    return p.study_experiments(TABLES, envs)


def _records(root: Path) -> dict[str, dict]:
    skip = ("seconds", "provenance")
    return {p.stem: {k: v for k, v in json.loads(p.read_text()).items() if k not in skip}
            for p in sorted(root.glob("*/*.json"))}


def _run_local(grid: list, workers: int, root: Path) -> float:
    from quantwm.study import ResultStore, run_sweep

    t0 = time.perf_counter()
    run_sweep(grid, ResultStore(root), workers=workers)
    return time.perf_counter() - t0


def _run_ray(grid: list, cpus: int, root: Path) -> tuple[float, float, float]:
    """(start-up s, sweep s, shut-down s) on a local instance with ``cpus`` CPUs."""
    from quantwm.study import ResultStore, run_sweep
    from quantwm.study.ray_executor import RayOptions, ray_session

    options = RayOptions(workers=cpus)
    t0 = time.perf_counter()
    with ray_session(options):  # as the executor starts it; the sweep below uses it
        t1 = time.perf_counter()
        run_sweep(grid, ResultStore(root), executor="ray", ray_options=options)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def _prewarm(grid: list) -> None:
    from quantwm.study.runner import calibration_data

    for key in dict.fromkeys((e.env, e.profile, e.calib_episodes) for e in grid
                             if not e.is_float):
        calibration_data(key[0], key[1], episodes=key[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--env", default="wall", choices=("wall", "pusht"))
    ap.add_argument("--table", type=int, nargs="*", default=None)
    ap.add_argument("--rounds", type=int, default=1, help="repeat each run; medians printed")
    args = ap.parse_args()

    grid = _grid(args.profile, args.env, args.table)
    load0 = os.getloadavg()
    print(f"sweep scaling: profile {args.profile}, {args.env}, {len(grid)} experiments, "
          f"{os.cpu_count()} CPUs; load average {load0[0]:.1f} at the start", flush=True)
    _prewarm(grid)
    times: dict[str, list[float]] = {"local-1": [], "local-2": [], "ray-2": []}
    startup, shutdown = [], []
    same = True
    with tempfile.TemporaryDirectory(prefix="quantwm-scaling-") as tmp:
        for r in range(args.rounds):
            base = Path(tmp) / f"round{r}"
            times["local-1"].append(_run_local(grid, 1, base / "local-1"))
            print(f"  local, 1 worker   {times['local-1'][-1]:7.1f} s", flush=True)
            times["local-2"].append(_run_local(grid, 2, base / "local-2"))
            print(f"  local, 2 workers  {times['local-2'][-1]:7.1f} s", flush=True)
            up, run, down = _run_ray(grid, 2, base / "ray-2")
            times["ray-2"].append(run)
            startup.append(up)
            shutdown.append(down)
            print(f"  ray, 2 CPUs       {run:7.1f} s  (+ {up:.1f} s start-up, {down:.1f} s "
                  "shut-down)", flush=True)
            same &= _records(base / "local-2") == _records(base / "ray-2")
    load1 = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    up, down = statistics.median(startup), statistics.median(shutdown)
    n = len(grid)
    print(f"\nmedians of {args.rounds} round(s); load average {load0[0]:.1f} -> {load1[0]:.1f} "
          f"on {os.cpu_count()} CPUs (figures taken beside other work are noisy)")
    print(f"{'executor':<22}{'wall s':>8}{'exp/min':>9}{'vs local-1':>12}")
    rows = [("local, 1 worker", med["local-1"]), ("local, 2 workers", med["local-2"]),
            ("ray, 2 CPUs", med["ray-2"]), ("ray, 2 CPUs + start", med["ray-2"] + up + down)]
    for name, secs in rows:
        print(f"{name:<22}{secs:8.1f}{60 * n / secs:9.1f}{med['local-1'] / secs:12.2f}")
    ratio = med["local-2"] / med["ray-2"]
    total = med["local-2"] / (med["ray-2"] + up + down)
    print(f"\nray / local throughput at 2 workers: {ratio:.2f} without its start-up "
          f"({'within' if ratio >= 0.9 else 'outside'} the 10 % goal), {total:.2f} with it")
    print(f"ray's fixed cost per sweep: {up:.1f} s to start a local instance, {down:.1f} s to "
          "stop it")
    print(f"records of local-2 and ray-2 identical (time and provenance aside): "
          f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
