"""Does the PushT model rank candidate plans as the exact dynamics do? (prints; not a test)

    .venv/bin/python benchmarks/pusht_ranking.py --episodes 50 --seed 1
    .venv/bin/python benchmarks/pusht_ranking.py --checkpoint data/checkpoints/pusht.pt other.pt

CEM keeps the plans its objective ranks best, so what planning needs from the model is the
right ranking of nearby plans, which a lower loss need not bring. For each evaluation episode
this draws sets of 96 candidate plans (horizon 5) and scores each plan twice with the same
latent objective of the model: on the model's open-loop rollout, and on the frame the exact
dynamics reach (as ``planning_ceiling.py --objective learned``). It prints, per set, medians
over episodes of the Spearman correlation of the two scores; the regret of the model's pick
(how much worse than the best candidate it is) in the exact latent objective and in the state
cost (``planning_ceiling.pusht_state_cost``: success needs both of its terms, distance and
angle, below 1); the state-cost regret of the pick of the exact latent scores (what the
objective alone costs, with a perfect predictor); and the median state cost of the set. The
sets:

* ``broad``: CEM's first samples, N(0, 1) in normalised actions, from the episode's start;
* ``narrow``: within 0.3 of the broad plan with the lowest state cost, where CEM's last steps
  search;
* ``broad@1``, ``narrow@1``: the same from where that plan leads (a second MPC round).

The candidates are drawn in the first checkpoint's normalised action space and do not depend on
any model's scores, so every ``--checkpoint`` ranks the same plans.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from planning_ceiling import PushTCeiling, pusht_state_cost

from quantwm.data import evaluation_episodes
from quantwm.plan import planner_config
from quantwm.plan.objective import latent_objective, proprio_emb_dim
from quantwm.utils import spearman

SETS = ("broad", "narrow", "broad@1", "narrow@1")
PLANS = 96  # candidate plans per set
COLUMNS = ("spearman", "latent regret", "state regret", "exact's regret", "median state")


@torch.inference_mode()
def predicted_scores(scorer: PushTCeiling, state: np.ndarray, raw: np.ndarray,
                     z_goal: torch.Tensor) -> np.ndarray:
    """The model's objective of raw plans ``(S, T, 2)`` from ``state``: open-loop rollout."""
    model = scorer.model
    actions = torch.from_numpy(raw).float().reshape(len(raw), -1, model.config.action_dim)
    actions = model.normalize_action(actions)
    z0 = scorer._encode(state[None])[:, None].expand(len(raw), -1, -1, -1)
    z_final = model.rollout(z0, actions)[:, -1]
    return latent_objective(z_final, z_goal.expand(len(raw), -1, -1), proprio_emb_dim(model),
                            scorer.config.proprio_weight).numpy()


def candidate_sets(start: np.ndarray, goal: np.ndarray, sampler: PushTCeiling,
                   gen: torch.Generator, n: int = PLANS, narrow_std: float = 0.3
                   ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(set name, state planned from, raw plans (n, T, 2), exact final states), for SETS."""
    shape = (n, sampler.config.horizon, sampler.model.config.action_dim)
    sets, state = [], start
    for suffix in ("", "@1"):
        broad = torch.randn(shape, generator=gen)
        raw = sampler._raw(broad)
        final = sampler._simulate(state, raw)
        best = int(np.argmin(pusht_state_cost(final, goal)))
        narrow = sampler._raw(broad[best] + narrow_std * torch.randn(shape, generator=gen))
        sets += [("broad" + suffix, state, raw, final),
                 ("narrow" + suffix, state, narrow, sampler._simulate(state, narrow))]
        state = final[best]  # the next round starts where the best broad plan leads
    return sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation episodes")
    p.add_argument("--checkpoint", nargs="+", default=["pusht"],
                   help="world models to compare (default: the shipped one)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    config = planner_config("pusht", "cpu")
    scorers = [PushTCeiling(config, "learned", args.threads, c) for c in args.checkpoint]
    episodes = evaluation_episodes("pusht", n=args.episodes, seed=args.seed)
    stats = np.zeros((len(scorers), len(SETS), args.episodes, len(COLUMNS)))
    t0 = time.perf_counter()
    for i in range(args.episodes):
        gen = torch.Generator().manual_seed(args.seed * 100_003 + i)
        start, goal = episodes.start_states[i].copy(), episodes.goal_states[i]
        sets = candidate_sets(start, goal, scorers[0], gen)
        for m, scorer in enumerate(scorers):
            z_goal = scorer._encode(goal[None])
            for s, (_, state, raw, final) in enumerate(sets):
                pred = predicted_scores(scorer, state, raw, z_goal)
                exact = scorer._cost(final, goal, z_goal)
                cost = pusht_state_cost(final, goal)
                k, k_exact = int(np.argmin(pred)), int(np.argmin(exact))
                stats[m, s, i] = (spearman(pred, exact), exact[k] - exact.min(),
                                  cost[k] - cost.min(), cost[k_exact] - cost.min(),
                                  np.median(cost))
    print(f"pusht ranking: {args.episodes} episodes (seed {args.seed}), {PLANS} plans per set, "
          f"{time.perf_counter() - t0:.0f} s; medians over episodes")
    for m, checkpoint in enumerate(args.checkpoint):
        print(f"{checkpoint}\n  {'set':<9}" + "".join(f"{c:>17}" for c in COLUMNS))
        for s, name in enumerate(SETS):
            print(f"  {name:<9}" + "".join(f"{v:>17.3f}"
                                         for v in np.median(stats[m, s], axis=0)))


if __name__ == "__main__":
    main()
