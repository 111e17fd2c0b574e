"""Which part of PushT's success test do failed episodes miss? (prints; not a test)

    .venv/bin/python benchmarks/pusht_failures.py
    .venv/bin/python benchmarks/pusht_failures.py --episodes 50 --seed 1 --set proprio_weight=8
    .venv/bin/python benchmarks/pusht_failures.py --checkpoint other.pt

Success needs ||(agent xy, block xy) - goal|| < 20 px **and** a block angle within 20 degrees
(PROTOCOL section 3), so an episode can fail on the agent alone with the block in place. This
plans the evaluation episodes with the shipped (or given) model at the `cpu` profile and, for
each episode still failing after round 5, takes the round that came closest to the goal and
prints the medians of its agent distance, block distance and angle error, and how often each
part is off: the agent (> 14 px, i.e. more than its share of the 20 px), the block (> 14 px),
the angle (> 20 degrees).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from quantwm.data import evaluation_episodes
from quantwm.envs.pusht import SUCCESS_ANGLE, SUCCESS_DISTANCE, wrap_angle
from quantwm.model import load
from quantwm.plan import planner_config
from quantwm.plan.mpc import plan_episodes
from quantwm.utils import parse_overrides

_SHARE = SUCCESS_DISTANCE / np.sqrt(2.0)  # one of two equal parts of the 20 px: ~14 px


def error_parts(states: np.ndarray, goals: np.ndarray) -> dict[str, np.ndarray]:
    """Agent distance, block distance (px), angle error (degrees) and the tested 4-D distance."""
    return {
        "agent": np.linalg.norm(states[..., :2] - goals[..., :2], axis=-1),
        "block": np.linalg.norm(states[..., 2:4] - goals[..., 2:4], axis=-1),
        "angle": np.degrees(np.abs(wrap_angle(states[..., 4] - goals[..., 4]))),
        "dist4": np.linalg.norm(states[..., :4] - goals[..., :4], axis=-1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="pusht", help="world model (default: the shipped one)")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the evaluation episodes and of the planner, as `quantwm eval` "
                        "(--set seed=N: another planner seed)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="planner overrides, as for `quantwm eval`")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.checkpoint)
    episodes = evaluation_episodes("pusht", n=args.episodes, seed=args.seed)
    config = planner_config("pusht", "cpu", **{"seed": args.seed, **parse_overrides(args.set)})
    result = plan_episodes(model, episodes, config, progress=False)
    print(f"{args.checkpoint}: {args.episodes} episodes (seed {args.seed}), "
          f"success @0 {result.success_at(0):.2f}, @5 {result.success_at(5):.2f}")
    goals = np.asarray(episodes.goal_states)
    start = error_parts(np.asarray(episodes.start_states), goals)
    failed = np.flatnonzero(~result.success_by_round[:, 5])
    if not len(failed):
        return
    reached = error_parts(result.states[failed, :6], goals[failed, None])
    best = np.nanargmin(reached["dist4"], axis=1)  # the closest round of each failed episode
    closest = {k: v[np.arange(len(failed)), best] for k, v in reached.items()}
    max_angle = np.degrees(SUCCESS_ANGLE)
    med = {k: np.median(v) for k, v in closest.items()}
    med0 = {k: np.median(v[failed]) for k, v in start.items()}
    print(f"{len(failed)} failed; at their closest round, median agent {med['agent']:.1f} px, "
          f"block {med['block']:.1f} px, angle {med['angle']:.1f} deg (at the start: "
          f"{med0['agent']:.1f} px, {med0['block']:.1f} px, {med0['angle']:.1f} deg)")
    agent_off = closest["agent"] > _SHARE
    block_ok = (closest["block"] <= _SHARE) & (closest["angle"] <= max_angle)
    print(f"  share off: agent > {_SHARE:.0f} px {agent_off.mean():.2f}, "
          f"block > {_SHARE:.0f} px {np.mean(closest['block'] > _SHARE):.2f}, "
          f"angle > {max_angle:.0f} deg {np.mean(closest['angle'] > max_angle):.2f}; "
          f"block placed (<= {_SHARE:.0f} px and angle) but agent off: "
          f"{(block_ok & agent_off).mean():.2f}")


if __name__ == "__main__":
    main()
