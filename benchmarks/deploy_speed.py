"""What lowering to integer kernels buys: planning speed, weight bytes and peak memory.

For FP32 and each lowered configuration of ``quantwm.quant.deploy.DEPLOY_CONFIGS`` (RTN,
encoder and predictor; ``quantwm.quant.lower``), per environment, in one interleaved run:

- **CEM step**: the predictor rollouts of one CEM step (``rollout_objective``) at the ``cpu``
  planner's batch: Wall 64 / PushT 48 samples x ``--step-episodes`` episodes (default 16:
  1024 sequences, one ``max_batch`` chunk), median of ``--repeats`` interleaved repeats;
- **MPC round**: one round of ``--episodes`` (50) evaluation episodes,
  ``plan_episodes(model, episodes, planner_config(env, "cpu", mpc_rounds=0))``: wall-clock
  and success @0 (paired exact McNemar p against FP32 on the same episodes);
- **weight bytes**: the blocks' Linears (codes + scales + zero points + bias for a lowered one,
  4 bytes per float) and the whole model;
- **peak memory** of one CEM step above the resident model, read from the kernel's peak RSS
  (``/proc/self/status`` VmHWM after ``clear_refs``) in a child process whose allocator
  returns every freed activation (glibc ``MALLOC_MMAP_THRESHOLD_=65536``; the timings run under
  the default allocator).

Ratios are to FP32 (speed-up = FP32 time / time). The goals on this CPU: W8A8 planning >= 1.5x
FP32 throughput at unchanged success; W4 G128 Linear weight bytes <= 0.2x FP32. A
configuration slower than FP32 is named, with why.

    .venv/bin/python benchmarks/deploy_speed.py                    # both envs (~5 min idle)
    .venv/bin/python benchmarks/deploy_speed.py --envs wall --threads 1 --json out.json
    .venv/bin/python benchmarks/deploy_speed.py --kernels-only     # the kernel candidates
    .venv/bin/python benchmarks/deploy_speed.py --with-fake        # + fake-quant W8A8 rows

``--kernels`` (or ``--kernels-only``) first times the candidate kernels on the predictor's
Linear shapes at one planner call (16384 rows): how the lowering's kernels were picked.

On a shared machine, quote the load average printed beside the figures: with 2 threads and
other processes competing, every parallel op waits for a time slice, so op count rather than
work sets the time; ``--threads 1`` is the steadier measurement there.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from quantwm.quant.deploy import DEPLOY_CONFIGS, FP32, build_model, parse_quant_spec
from quantwm.quant.lower import weight_bytes

ENVS = ("wall", "pusht")
SHAPES = ((148, 384), (128, 148), (148, 592), (592, 148))  # the predictor's Linears (K, N)


def load_note() -> str:
    load = f"load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "load n/a"
    return f"{load}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


# ---------------------------------------------------------------------------------- models
def configurations(names: list[str] | None, with_fake: bool) -> dict[str, tuple[str | None, bool]]:
    """label -> (quant spec or None for FP32, lowered)."""
    out: dict[str, tuple[str | None, bool]] = {FP32: (None, False)}
    for label, spec in DEPLOY_CONFIGS.items():
        if names and label not in names:
            continue
        out[label] = (spec, True)
        if with_fake and parse_quant_spec(spec).predictor.a < 16:
            out[f"{label} (fake)"] = (spec, False)
    return out


def build_models(env: str, configs: dict[str, tuple[str | None, bool]], calib_episodes: int
                 ) -> dict[str, torch.nn.Module]:
    from quantwm.model import load

    base = load(env).eval()
    return {label: build_model(env, spec, lowered=lowered, planner="cpu",
                               calib_episodes=calib_episodes, model=base)
            for label, (spec, lowered) in configs.items()}


def step_inputs(model: torch.nn.Module, env: str, episodes: int) -> tuple[Any, ...]:
    from quantwm.plan import planner_config
    from quantwm.plan.objective import proprio_emb_dim

    c, cfg = model.config, planner_config(env, "cpu")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(episodes, 1, c.num_patches, c.latent_dim, generator=g)
    goal = torch.randn(episodes, c.num_patches, c.latent_dim, generator=g)
    actions = torch.randn(episodes, cfg.samples, cfg.horizon, c.action_dim, generator=g)
    kw = {"proprio_dim": proprio_emb_dim(model), "proprio_weight": cfg.proprio_weight,
          "max_batch": cfg.max_batch}
    return z, goal, actions, kw


def cem_step(model: torch.nn.Module, inputs: tuple[Any, ...]) -> torch.Tensor:
    from quantwm.plan import rollout_objective

    z, goal, actions, kw = inputs
    with torch.inference_mode():
        return rollout_objective(model, z, goal, actions, **kw)


def rotated(names: list[str], r: int) -> list[str]:
    return names[r % len(names):] + names[: r % len(names)]


class Clock:
    """Wall-clock and process CPU seconds of one run. On a loaded machine the wall clock also
    counts the time spent waiting for a core; with one torch thread the CPU time does not, so
    its ratios are the steadier ones there (with two, OpenMP's spinning threads add to it)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


Times = dict[str, dict[str, list[float]]]  # label -> {"wall": [...], "cpu": [...]}


def small(inputs: tuple[Any, ...], episodes: int = 2) -> tuple[Any, ...]:
    z, goal, actions, kw = inputs
    return z[:episodes], goal[:episodes], actions[:episodes], kw


def time_cem_steps(models: dict[str, torch.nn.Module], inputs: tuple[Any, ...], repeats: int
                   ) -> Times:
    names = list(models)
    for n in names:  # warm-up (lazy initialisation), on a small batch
        cem_step(models[n], small(inputs))
    times: Times = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(repeats):
        for n in rotated(names, r):
            with Clock() as c:
                cem_step(models[n], inputs)
            times[n]["wall"].append(c.wall)
            times[n]["cpu"].append(c.cpu)
    return times


def mpc_rounds(models: dict[str, torch.nn.Module], env: str, episodes: int, repeats: int
               ) -> tuple[Times, dict[str, list[bool]]]:
    from quantwm.data import evaluation_episodes
    from quantwm.plan import plan_episodes, planner_config

    eps = evaluation_episodes(env, n=episodes, seed=0)
    cfg = planner_config(env, "cpu", mpc_rounds=0)
    names = list(models)
    times: Times = {n: {"wall": [], "cpu": []} for n in names}
    success: dict[str, list[bool]] = {}
    for r in range(repeats):
        for n in rotated(names, r + 1):
            with Clock() as c:
                res = plan_episodes(models[n], eps, cfg, progress=False)
            times[n]["wall"].append(c.wall)
            times[n]["cpu"].append(c.cpu)
            success.setdefault(n, [bool(v) for v in res.success_by_round[:, -1]])
    return times, success


# ------------------------------------------------------------------------------ peak memory
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read())[1]) * 1024


def peak_step_memory(models: dict[str, torch.nn.Module], inputs: tuple[Any, ...]
                     ) -> dict[str, int]:
    out = {}
    for n, m in models.items():
        cem_step(m, small(inputs))  # lazy initialisation outside the measured step
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        before = _status("VmRSS")
        cem_step(m, inputs)
        out[n] = _status("VmHWM") - before
    return out


def memory_child(args: argparse.Namespace) -> None:
    """Run in a child with the mmap threshold pinned: print {env: {label: peak bytes}}."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    result = {}
    for env in args.envs:
        models = build_models(env, configurations(args.configs, args.with_fake),
                              args.calib_episodes)
        inputs = step_inputs(models[FP32], env, args.step_episodes)
        result[env] = peak_step_memory(models, inputs)
    print("MEMORY " + json.dumps(result))


def measure_memory(args: argparse.Namespace) -> dict[str, dict[str, int]] | None:
    if not os.path.exists("/proc/self/clear_refs"):
        print("(no /proc/self/clear_refs here: peak memory not measured)")
        return None
    cmd = [sys.executable, __file__, "--memory-child", "--envs", *args.envs,
           "--step-episodes", str(args.step_episodes), "--calib-episodes",
           str(args.calib_episodes)]
    if args.configs:
        cmd += ["--configs", *args.configs]
    if args.with_fake:
        cmd.append("--with-fake")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("MEMORY ")), None)
    if done.returncode or line is None:
        print(f"(peak memory child failed: {done.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(line[len("MEMORY "):])


# --------------------------------------------------------------------------------- kernels
def kernel_table(rows: int, repeats: int) -> None:
    """Each candidate kernel on the predictor's four Linear shapes, interleaved; total time
    and ratio to float32 F.linear. The lowering uses the rows marked *."""
    from quantwm.quant import ActQuantizer, QuantLinear
    from quantwm.quant.lower import Int8Linear, PackedLinear

    torch.manual_seed(0)
    cases = []
    for k, n in SHAPES:
        lin = torch.nn.Linear(k, n)
        x = torch.randn(rows, k)
        x[:, 3] *= 8  # an outlier channel, as the predictor's inputs have
        # inplace: the block's Linear inputs are private temporaries (DINO_WM_LAYOUT)
        static = ActQuantizer(8, "per_tensor", inplace=True)
        static.set_range(x.min(), x.max())
        q_static = QuantLinear.from_linear(lin, 8, act=static)
        q_token = QuantLinear.from_linear(lin, 8, act=ActQuantizer(8, "per_token", inplace=True))
        codes = torch.round(lin.weight.detach() / q_static.w_scale)
        c = {
            "x": x, "fp32": lin,
            "* int8_static (fbgemm, exact codes)": Int8Linear(q_static),
            "  int8_static (fbgemm, kernel rounding)": Int8Linear(q_static, "kernel"),
            "* int8_dynamic (fbgemm, per-token)": Int8Linear(q_token),
            "  fake-quant W8A8 per-tensor": q_static,
            "  fake-quant W8A8 per-token": q_token,
            "* packed W4 G128 (dequant + sgemm)": PackedLinear(
                QuantLinear.from_linear(lin, 4, w_group_size=128)),
            "* packed W8 (dequant + sgemm)": PackedLinear(QuantLinear.from_linear(lin, 8)),
            "  fbgemm linear_dynamic (per-tensor dynamic)": _fbgemm_dynamic(codes, q_static,
                                                                            lin.bias),
            "  onednn qlinear (uint8 codes)": _onednn(codes, q_static, rows, k),
            "  aten._weight_int8pack_mm (1/8 rows, x8)": _Scaled(_int8pack(codes, q_static), 8),
            "  aten._int_mm (int8 -> int32 GEMM alone)": _int_mm(codes),
            "  aten._weight_int4pack_mm (bf16 x, K->256)": _int4pack(n),
        }
        cases.append(c)
    names = [n for n in cases[0] if n != "x"]
    times: Times = {n: {"wall": [], "cpu": []} for n in names}
    with torch.inference_mode():
        for r in range(repeats + 1):
            for n in rotated(names, r):
                wall = cpu = 0.0
                for c in cases:
                    x = c["x"].clone()  # a private temporary, as the block's LayerNorm output
                    with Clock() as clock:
                        c[n](x)
                    factor = getattr(c[n], "time_factor", 1)
                    wall, cpu = wall + clock.wall * factor, cpu + clock.cpu * factor
                if r:
                    times[n]["wall"].append(wall)
                    times[n]["cpu"].append(cpu)
    med = _medians(times)
    print(f"\n== kernel candidates: the predictor's 4 Linears {SHAPES} at {rows} rows, median "
          f"of {repeats} interleaved repeats, {load_note()} (taken beside whatever else runs)")
    print(f"  {'':46s} {'wall ms':>9s} {'x fp32':>7s} {'cpu ms':>9s} {'x fp32':>7s}")
    for n in names:
        print(f"  {n:46s} {1e3 * med[n]['wall']:9.1f} {med[n]['wall'] / med['fp32']['wall']:6.2f}x"
              f" {1e3 * med[n]['cpu']:9.1f} {med[n]['cpu'] / med['fp32']['cpu']:6.2f}x")
    print("  (* = used by quantwm.quant.lower. _int_mm: the GEMM alone, without the activation "
          "codes (signed, so shifted by 128), int32 -> float and scales the others include; "
          "int4pack: bf16 activations, which changes the numerics)")


def _fbgemm_dynamic(codes, q, bias):
    from quantwm.quant.lower import _prepack

    packed = _prepack(codes, q.w_scale.reshape(-1), bias)
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, False)


def _onednn(codes, q, rows, k):
    w = torch.ops.onednn.qlinear_prepack(codes.to(torch.int8), [rows, k])
    s, z = float(q.act.scale), int(q.act.zero_point)
    w_scale, zeros = q.w_scale.reshape(-1).float(), torch.zeros(codes.shape[0], dtype=torch.int32)
    bias = q.bias.detach()

    def run(x):
        u8 = x.div_(s).round_().add_(z).clamp_(0, 255).to(torch.uint8)
        return torch.ops.onednn.qlinear_pointwise(u8, s, z, w, w_scale, zeros, bias, 1.0, 0,
                                                  torch.float32, "none", [], "")
    return run


def _int8pack(codes, q):
    w8, scale = codes.to(torch.int8), q.w_scale.reshape(-1).float()
    return lambda x: torch.ops.aten._weight_int8pack_mm(x, w8, scale)


class _Scaled:
    """A kernel too slow to run on every row: timed on 1/``scale`` of them, time scaled up."""

    def __init__(self, fn, scale: int):
        self.fn, self.time_factor = fn, scale

    def __call__(self, x):
        return self.fn(x[: max(1, x.shape[0] // self.time_factor)])


def _int_mm(codes):
    wt = codes.to(torch.int8).t().contiguous()
    return lambda x: torch._int_mm(x.to(torch.int8), wt)


def _int4pack(n):
    k, g, n16 = 256, 128, -(-n // 16) * 16  # the kernel needs K % g == 0 and N % 16 == 0
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        torch.randint(0, 16, (n16, k), dtype=torch.int32), 2)
    sz = torch.randn(k // g, n16, 2, dtype=torch.bfloat16)
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(
        F.pad(x, (0, k - x.shape[1])).bfloat16(), packed, g, sz)[:, :n]


# ------------------------------------------------------------------------------------ main
def success_p(ref: list[bool], other: list[bool]) -> float:
    from quantwm.study.stats import mcnemar_exact

    return 1.0 if ref == other else mcnemar_exact(ref, other)


def _medians(times: Times) -> dict[str, dict[str, float]]:
    return {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}


def report_env(env: str, models: dict[str, torch.nn.Module], step: Times, mpc: Times | None,
               success: dict[str, list[bool]] | None, memory: dict[str, int] | None,
               args: argparse.Namespace) -> dict[str, Any]:
    from quantwm.plan import planner_config

    cfg = planner_config(env, "cpu")
    fb = weight_bytes(models[FP32])
    med, mmed = _medians(step), _medians(mpc or {})
    print(f"\n== {env}: CEM step = the predictor rollouts of one CEM step, {cfg.samples} samples "
          f"x {args.step_episodes} episodes (median of {args.repeats} interleaved repeats); MPC "
          f"round = plan_episodes on {args.episodes} episodes, cpu planner, round 0 "
          f"({args.mpc_repeats} interleaved pass(es)); x = speed-up over FP32 (FP32 time / "
          f"time), wall clock and process CPU time; {load_note()}; taken beside a running "
          "sweep: absolute times are the load's, compare the ratios")
    print(f"{'configuration':20s} {'kernels':17s} {'CEM wall':>14s} {'CEM cpu':>14s} "
          f"{'MPC wall':>14s} {'MPC cpu':>14s} {'success@0':>9s} {'p':>5s} "
          f"{'Linear MiB':>15s} {'model MiB':>9s} {'peak MiB':>8s}")
    rows = {}
    for n, m in models.items():
        wb = weight_bytes(m)
        rep = getattr(m, "lowering_report", None)
        kinds = ", ".join(f"{k} x{c}" for k, c in rep.counts().items()) if rep else (
            "float" if n == FP32 else "fake-quant")
        row: dict[str, Any] = {"kinds": kinds, "linear_bytes": wb.linear,
                               "linear_ratio": wb.linear / fb.linear, "model_bytes": wb.model,
                               "model_ratio": wb.model / fb.model, "cem_step": step[n]}
        cells = [f"{n.replace(' weight-only', ' w-only'):20s}", f"{kinds:17s}"]
        for clock in ("wall", "cpu"):
            speed = med[FP32][clock] / med[n][clock]
            row[f"cem_{clock}_s"], row[f"cem_{clock}_speedup"] = med[n][clock], speed
            cells.append(f"{med[n][clock]:6.2f}s {speed:5.2f}x")
        if mpc:
            for clock in ("wall", "cpu"):
                speed = mmed[FP32][clock] / mmed[n][clock]
                row[f"mpc_{clock}_s"], row[f"mpc_{clock}_speedup"] = mmed[n][clock], speed
                cells.append(f"{mmed[n][clock]:6.1f}s {speed:5.2f}x")
            ok = success[n]
            row.update(success=sum(ok) / len(ok), p_vs_fp32=success_p(success[FP32], ok),
                       mpc=mpc[n])
            cells += [f"{row['success']:9.2f}", f"{row['p_vs_fp32']:5.2f}"]
        else:
            cells += [f"{'-':>14s}"] * 2 + [f"{'-':>9s}", f"{'-':>5s}"]
        cells += [f"{wb.linear / 2**20:7.2f} {wb.linear / fb.linear:5.3f}x",
                  f"{wb.model / 2**20:9.2f}"]
        if memory:
            row["step_peak_bytes"] = memory[n]
            cells.append(f"{memory[n] / 2**20:8.0f}")
        else:
            cells.append(f"{'-':>8s}")
        print(" ".join(cells))
        rows[n] = row
    goals(rows)
    return rows


def goals(rows: dict[str, dict[str, Any]]) -> None:
    stage = "mpc" if "mpc_wall_speedup" in rows[FP32] else "cem"
    what = "MPC round" if stage == "mpc" else "CEM step"
    for n, r in rows.items():
        if n.startswith("W8A8") and "(fake)" not in n:
            wall, cpu = r[f"{stage}_wall_speedup"], r[f"{stage}_cpu_speedup"]
            same = (f"; success {r['success']:.2f} vs FP32 {rows[FP32]['success']:.2f}, paired "
                    f"p = {r['p_vs_fp32']:.2f}" if "success" in r else "")
            met = "met" if min(wall, cpu) >= 1.5 else "met by one clock" \
                if max(wall, cpu) >= 1.5 else "NOT met"
            print(f"  goal {n} >= 1.5x FP32 planning throughput ({what}): wall {wall:.2f}x, "
                  f"cpu {cpu:.2f}x -> {met}{same}")
    g = rows.get("W4 G128 weight-only")
    if g:
        met = "met" if g["linear_ratio"] <= 0.2 else "NOT met"
        print(f"  goal W4 G128 weight bytes <= 0.2x FP32: Linear weights {g['linear_ratio']:.3f}x "
              f"-> {met} (whole model {g['model_ratio']:.2f}x: the decoder, patch embedding, "
              "norms and position embeddings stay float)")
    for n, r in rows.items():
        speed = min(r[f"{stage}_wall_speedup"], r[f"{stage}_cpu_speedup"])
        if n != FP32 and speed < 1.1:
            why = ("weight-only: the codes are dequantized per forward and the GEMM stays "
                   "float32 (no low-bit weight kernel beats MKL's sgemm on this CPU at the "
                   "planner's batch, see --kernels): it buys memory, not time"
                   if "weight-only" in n else
                   "fake quantization adds elementwise passes to the float GEMM"
                   if "(fake)" in n else "see --kernels")
            print(f"  {n} is no faster than FP32 ({speed:.2f}x by one clock): {why}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    p.add_argument("--configs", nargs="+", default=None, choices=list(DEPLOY_CONFIGS),
                   metavar="LABEL", help=f"a subset of: {', '.join(DEPLOY_CONFIGS)}")
    p.add_argument("--with-fake", action="store_true",
                   help="also time the fake-quant (float) W8A8 models")
    p.add_argument("--step-episodes", type=int, default=16,
                   help="episodes in the timed CEM step (default 16: 1024 sequences)")
    p.add_argument("--repeats", type=int, default=3, help="CEM step repeats (default 3)")
    p.add_argument("--episodes", type=int, default=50, help="episodes of the MPC round")
    p.add_argument("--mpc-repeats", type=int, default=1,
                   help="interleaved MPC round passes (default 1; 0 skips the MPC round)")
    p.add_argument("--calib-episodes", type=int, default=10,
                   help="calibration episodes of the static W8A8 ranges (default 10)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak memory child")
    p.add_argument("--kernels", action="store_true", help="first time the kernel candidates")
    p.add_argument("--kernels-only", action="store_true", help="only the kernel candidates")
    p.add_argument("--kernel-rows", type=int, default=16384)
    p.add_argument("--json", default=None, help="write every measurement here")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    if args.memory_child:
        memory_child(args)
        return
    if args.kernels or args.kernels_only:
        kernel_table(args.kernel_rows, max(args.repeats, 3))
        if args.kernels_only:
            return
    t_start = time.perf_counter()
    memory = None if args.no_memory else measure_memory(args)
    out: dict[str, Any] = {"load": load_note(), "args": vars(args), "envs": {}}
    for env in args.envs:
        t0 = time.perf_counter()
        models = build_models(env, configurations(args.configs, args.with_fake),
                              args.calib_episodes)
        built = time.perf_counter() - t0
        inputs = step_inputs(models[FP32], env, args.step_episodes)
        step = time_cem_steps(models, inputs, args.repeats)
        mpc = success = None
        if args.mpc_repeats > 0:
            mpc, success = mpc_rounds(models, env, args.episodes, args.mpc_repeats)
        out["envs"][env] = report_env(env, models, step, mpc, success,
                                      (memory or {}).get(env), args)
        print(f"  (models built in {built:.0f} s)")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s wall, {time.process_time():.0f} s CPU "
          f"in this process (the memory child not counted); {load_note()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
