"""``quantwm eval``: the FP32 planner on the shipped checkpoint, success by iteration.

    quantwm eval --env wall                          # 50 evaluation episodes, cpu profile
    quantwm eval --env pusht --seed 1 --json out.json
    quantwm eval --env wall --profile reference      # PROTOCOL section 2 exactly (slow here)
"""

from __future__ import annotations

import argparse
import time

from quantwm.plan.config import DEFAULT_PROFILE, PROFILES
from quantwm.utils import ENV_NAMES, parse_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, choices=ENV_NAMES, help="environment")
    parser.add_argument("--episodes", type=int, default=50, help="evaluation episodes (50)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the evaluation episodes and of the planner (0; "
                             "--set seed=N plans the same episodes with another planner seed)")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES,
                        help=f"planner profile (default {DEFAULT_PROFILE}; reference = PROTOCOL)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint path (default: the shipped data/checkpoints/<env>.pt)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="most sequences per rollout call (memory; default from config)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override PlannerConfig fields, e.g. --set samples=100 execute=best")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write the summary here (config, timing, success by iters and "
                             "per episode)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from quantwm.data import evaluation_episodes
    from quantwm.model import load
    from quantwm.plan.config import planner_config
    from quantwm.plan.mpc import plan_episodes
    from quantwm.utils import atomic_write_json, provenance

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    device = torch.device(args.device)
    model = load(args.checkpoint or args.env, device=device)
    episodes = evaluation_episodes(args.env, n=args.episodes, seed=args.seed)
    overrides = parse_overrides(args.set)
    if args.max_batch is not None:
        overrides["max_batch"] = args.max_batch
    config = planner_config(args.env, args.profile, **{"seed": args.seed, **overrides})
    extra = " + " + " ".join(args.set) if args.set else ""
    print(f"eval {args.env}: {args.episodes} episodes (seed {args.seed}), profile "
          f"{args.profile}{extra}: samples {config.samples}, topk {config.topk}, CEM steps "
          f"{config.cem_steps}, MPC rounds 0..{config.mpc_rounds}, device {device}")
    t0 = time.perf_counter()
    result = plan_episodes(model, episodes, config, device=device,
                           progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    table = result.success_table()
    print("iters   " + "  ".join(f"{k:>5d}" for k in table))
    print("success " + "  ".join(f"{v:5.2f}" for v in table.values()))
    rounds = len(result.round_seconds)
    align = result.alignment()
    print("objective vs true distance (Spearman) "
          f"{_fmt(align['objective_vs_distance'])}; predicted vs reached objective "
          f"{_fmt(align['predicted_vs_reached'])}")
    print(f"time {seconds:.1f} s ({rounds} rounds, "
          f"{seconds / max(rounds, 1):.1f} s per round on average)")
    if args.json:
        summary = result.summary()
        summary.update(seed=args.seed, profile=args.profile, overrides=args.set, device=str(device),
                       checkpoint=args.checkpoint or args.env, provenance=provenance())
        atomic_write_json(args.json, summary)
        print(f"wrote {args.json}")
    return 0


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
