"""How fast does the planner run here, and does the full study fit? (prints; not a test)

    .venv/bin/python benchmarks/plan_speed.py                 # both envs, cpu + reference
    .venv/bin/python benchmarks/plan_speed.py --envs wall --torch-profile
    python benchmarks/plan_speed.py --device cuda --measure-episodes 50 --max-batch 16384
    .venv/bin/python benchmarks/plan_speed.py --envs pusht --model patch_size=8   # another size

For each environment it prints:
  * the predictor's achieved GFLOP/s inside the planner's batched rollout (FLOPs counted by
    ``torch.utils.flop_counter.FlopCounterMode``) and a plain ``torch.matmul`` of the predictor's
    fc1 shape timed in the same run, and their ratio (goal >= 0.5);
  * seconds per MPC round for 50 episodes (cpu profile: measured with the real envs when
    ``quantwm.envs`` / ``quantwm.data`` are there; otherwise CEM only);
  * the worst case of one full configuration (all episodes plan all rounds, none succeeds) per
    profile, and the estimate of the whole study (configurations counted from
    ``data/paper_tables.csv``) at the cpu profile.
Uses the shipped checkpoint when present, else (or with ``--model FIELD=VALUE ...``, to size
another model before training it) a randomly initialised model: speed does not depend on the
weights.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from quantwm.plan import PlannerConfig, cem_plan, planner_config, rollout_objective
from quantwm.plan.objective import proprio_emb_dim
from quantwm.utils import DATA_DIR, parse_overrides

CONFIG_COLUMNS = ["table", "env", "method", "w_bits", "a_bits", "group", "act_granularity",
                  "enc_w", "enc_a", "pred_w", "pred_a"]


def load_model(env: str, device: torch.device, overrides: dict[str, object] | None = None
               ) -> tuple[torch.nn.Module, str]:
    path = DATA_DIR / "checkpoints" / f"{env}.pt"
    if path.exists() and not overrides:
        from quantwm.model import load

        return load(env, device=device), f"checkpoint {path}"
    from quantwm.model.world_model import WorldModel, WorldModelConfig

    model = WorldModel(WorldModelConfig.for_env(env, **(overrides or {}))).to(device)
    why = f"--model {overrides}" if overrides else "no checkpoint yet"
    return model, f"random init ({why})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, device: torch.device, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_gflops(rows: int, k: int, n: int, device: torch.device) -> float:
    x, w = torch.randn(rows, k, device=device), torch.randn(k, n, device=device)
    return 2 * rows * k * n / best_of(lambda: torch.matmul(x, w), device) / 1e9


def random_latents(model: torch.nn.Module, n_ep: int) -> tuple[torch.Tensor, torch.Tensor]:
    c, dev = model.config, model.device
    z = torch.randn(n_ep, 1, c.num_patches, c.latent_dim, device=dev)
    return z, torch.randn(n_ep, c.num_patches, c.latent_dim, device=dev)


def cem_step_seconds(model: torch.nn.Module, cfg: PlannerConfig, n_ep: int) -> tuple[float, float]:
    """(seconds of one CEM step for n_ep episodes, predictor GFLOP/s achieved in it)."""
    c = model.config
    z, goal = random_latents(model, n_ep)
    actions = torch.randn(n_ep, cfg.samples, cfg.horizon, c.action_dim, device=model.device)
    kw = {"proprio_dim": proprio_emb_dim(model), "proprio_weight": 1.0,
          "max_batch": cfg.max_batch}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            rollout_objective(model, z[:1], goal[:1], actions[:1, :8], **kw)
        flops_per_seq = counter.get_total_flops() / 8
        gens = [torch.Generator().manual_seed(i) for i in range(n_ep)]
        one = cfg.replace(cem_steps=1)
        seconds = best_of(lambda: cem_plan(model, z, goal, gens, one, c.action_dim,
                                           kw["proprio_dim"]), model.device, 2)
    return seconds, flops_per_seq * n_ep * cfg.samples / seconds / 1e9


def mpc_round_seconds(model: torch.nn.Module, env: str, cfg: PlannerConfig, n_ep: int
                      ) -> float | None:
    """Seconds of one real MPC round for n_ep episodes (real envs), or None if not available."""
    try:
        from quantwm.data import evaluation_episodes
        from quantwm.plan import plan_episodes

        episodes = evaluation_episodes(env, n=n_ep, seed=0)
    except (ImportError, AttributeError) as err:
        print(f"  (no real MPC round: {err})")
        return None
    res = plan_episodes(model, episodes, cfg.replace(mpc_rounds=0), device=model.device,
                        progress=False)
    return res.round_seconds[0]


def study_configurations() -> dict[str, int]:
    """Distinct configurations per env in the paper's tables (+1 FP32 baseline each)."""
    import pandas as pd

    path = DATA_DIR / "paper_tables.csv"
    if not path.exists():
        return {"wall": 105, "pusht": 85}
    d = pd.read_csv(path)
    q = d[d.method != "FP32"].drop_duplicates(CONFIG_COLUMNS)
    counts = q.groupby(q.env.str.lower()).size().to_dict()
    return {env: int(counts.get(env, 0)) + 1 for env in ("wall", "pusht")}


def torch_profile(model: torch.nn.Module, cfg: PlannerConfig) -> None:
    from torch.profiler import ProfilerActivity, profile

    z, goal = random_latents(model, 4)
    actions = torch.randn(4, cfg.samples, cfg.horizon, model.config.action_dim,
                          device=model.device)
    kw = {"proprio_dim": proprio_emb_dim(model), "proprio_weight": 1.0,
          "max_batch": cfg.max_batch}
    with torch.inference_mode():
        rollout_objective(model, z, goal, actions, **kw)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            rollout_objective(model, z, goal, actions, **kw)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["wall", "pusht"])
    parser.add_argument("--profiles", nargs="+", default=["cpu", "reference"])
    parser.add_argument("--episodes", type=int, default=50, help="episodes per configuration")
    parser.add_argument("--measure-episodes", type=int, default=10,
                        help="episodes in the timed CEM step (scaled linearly to --episodes)")
    parser.add_argument("--no-mpc", action="store_true", help="skip the real MPC round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="most sequences per rollout call (default: the profile's)")
    parser.add_argument("--model", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="time a randomly initialised model of another size "
                             "(quantwm.model.WorldModelConfig fields, e.g. patch_size=8)")
    parser.add_argument("--torch-profile", action="store_true",
                        help="print torch.profiler's top ops of one batched rollout")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {device}: {where}")
    configs = study_configurations()
    worst: dict[tuple[str, str], float] = {}
    for env in args.envs:
        model, origin = load_model(env, device, parse_overrides(args.model, "--model"))
        model.eval()
        c = model.config
        print(f"\n== {env}: {origin}; predictor width {c.pred_dim}, depth {c.pred_depth}, "
              f"{c.num_patches} patches, num_hist {c.num_hist}")
        for profile in args.profiles:
            cfg = planner_config(env, profile)
            if args.max_batch:
                cfg = cfg.replace(max_batch=args.max_batch)
            step, gflops = cem_step_seconds(model, cfg, args.measure_episodes)
            rows = min(cfg.max_batch, args.measure_episodes * cfg.samples) * c.num_patches
            ref = matmul_gflops(rows, c.pred_dim, int(round(c.pred_dim * c.mlp_ratio)), device)
            step_all = step * args.episodes / args.measure_episodes
            plan_round = step_all * cfg.cem_steps
            print(f"[{profile}] samples {cfg.samples}, topk {cfg.topk}, CEM steps "
                  f"{cfg.cem_steps}, rounds 0..{cfg.mpc_rounds}")
            print(f"  predictor {gflops:6.1f} GFLOP/s in planning; matmul ({rows}x{c.pred_dim}"
                  f" @ {c.pred_dim}x{int(round(c.pred_dim * c.mlp_ratio))}) {ref:6.1f} GFLOP/s;"
                  f" ratio {gflops / ref:.2f}")
            round_s = plan_round
            if profile == "cpu" and not args.no_mpc:
                real = mpc_round_seconds(model, env, cfg, args.episodes)
                if real is not None:
                    round_s = real
                    print(f"  one real MPC round, {args.episodes} episodes: {real:.1f} s "
                          f"(CEM alone, extrapolated: {plan_round:.1f} s)")
            if round_s is plan_round:
                print(f"  one MPC round, {args.episodes} episodes (CEM, extrapolated from "
                      f"{args.measure_episodes}): {plan_round:.1f} s")
            worst[env, profile] = round_s * cfg.n_rounds
            print(f"  worst case of one configuration ({cfg.n_rounds} rounds x "
                  f"{args.episodes} episodes, no success): {worst[env, profile] / 60:.1f} min")
            if args.torch_profile:
                torch_profile(model, cfg)
    print("\n== the study (configurations from data/paper_tables.csv, +1 FP32 each)")
    for profile in args.profiles:
        parts = [(env, configs[env], worst[env, profile]) for env in args.envs
                 if (env, profile) in worst]
        total = sum(n * w for _, n, w in parts)
        detail = " + ".join(f"{n} {env} x {w / 60:.1f} min" for env, n, w in parts)
        print(f"[{profile}] worst case: {detail} = {total / 3600:.1f} h")


if __name__ == "__main__":
    main()
