"""How well could the planner do with a perfect world model? (prints; not a test)

    .venv/bin/python benchmarks/planning_ceiling.py --env pusht --episodes 20
    .venv/bin/python benchmarks/planning_ceiling.py --env pusht --objective learned
    .venv/bin/python benchmarks/planning_ceiling.py --env pusht --objective learned --checkpoint C
    .venv/bin/python benchmarks/planning_ceiling.py --env wall --profile reference
    .venv/bin/python benchmarks/planning_ceiling.py --env wall --episodes 50 --objective door-path

Plans the evaluation episodes with the environment's exact dynamics in place of the learned
predictor, so the success it prints is the ceiling a planner profile allows on these episodes:

* ``--objective state`` (default): the objective is the true distance to the goal in the units
  of the success test (Wall: squared px distance; PushT: (agent+block distance / 20 px)^2 +
  (block angle / (pi/9))^2). A low number here means the search budget (or the objective's
  greediness, e.g. the Wall door) is the limit, not the model.
* ``--objective door-path`` (Wall): the squared distance plus the door-path coordinate
  (``quantwm.model.sources.door_path_coordinate``, weighted as the kit's encoder carries it):
  what the objective of an encoder that has learnt that coordinate allows.
* ``--objective learned``: exact dynamics, but every candidate's final frame is rendered and
  scored with the world model's encoder and latent objective (the shipped one, or
  ``--checkpoint``). The gap to ``state`` is what the learned latent costs; the gap from here to
  ``quantwm eval`` is what the predictor costs.

Wall goes through ``quantwm.plan.oracle`` (the kit's planner on a position latent or on
rendered frames). PushT runs its own CEM with the same rules (PROTOCOL section 2: sample 0 is
the mean, mean/std of the top-k, the final mean executed, success OR-accumulated over rounds),
because the PushT block state is not in the observation the planner encodes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from quantwm.data import evaluation_episodes
from quantwm.envs.pusht import SUCCESS_ANGLE, SUCCESS_DISTANCE, wrap_angle
from quantwm.plan import PlannerConfig, planner_config
from quantwm.plan.mpc import episode_seed
from quantwm.utils import parse_overrides


def pusht_state_cost(states: np.ndarray, goal: np.ndarray) -> np.ndarray:
    dist = np.linalg.norm(states[:, :4] - goal[:4], axis=1) / SUCCESS_DISTANCE
    angle = np.abs(wrap_angle(states[:, 4] - goal[4])) / SUCCESS_ANGLE
    return dist**2 + angle**2


class PushTCeiling:
    """CEM + MPC on PushT's exact dynamics, scored by the true state or a learned latent."""

    def __init__(self, config: PlannerConfig, objective: str, threads: int = 1,
                 checkpoint: str = "pusht") -> None:
        from quantwm.model import load

        self.config = config
        self.model = load(checkpoint).eval()  # action statistics (and the learned objective)
        self.objective = objective
        torch.set_num_threads(threads)

    def _simulate(self, state: np.ndarray, raw: np.ndarray) -> np.ndarray:
        from quantwm.envs.pusht import pusht_step

        states = np.repeat(state[None], len(raw), axis=0)
        for t in range(raw.shape[1]):
            states = np.stack([pusht_step(s, a) for s, a in zip(states, raw[:, t], strict=True)])
        return states

    @torch.inference_mode()
    def _encode(self, states: np.ndarray) -> torch.Tensor:
        from quantwm.envs.pusht import pusht_proprio, render_pusht

        img = torch.from_numpy(render_pusht(states, self.model.config.img_size))
        proprio = torch.from_numpy(pusht_proprio(states)).float()
        return self.model.encode(img.permute(0, 3, 1, 2)[:, None], proprio[:, None])[:, 0]

    def _cost(self, states: np.ndarray, goal: np.ndarray, z_goal: torch.Tensor | None
              ) -> np.ndarray:
        if z_goal is None:
            return pusht_state_cost(states, goal)
        from quantwm.plan.objective import latent_objective, proprio_emb_dim

        z = self._encode(states)
        return latent_objective(z, z_goal, proprio_emb_dim(self.model),
                                self.config.proprio_weight).numpy()

    def _raw(self, normalized: torch.Tensor) -> np.ndarray:  # (S, K, 2 * frameskip) -> (S, T, 2)
        raw = self.model.denormalize_action(normalized).double().numpy()
        return raw.reshape(len(raw), -1, 2)

    def plan(self, state: np.ndarray, goal: np.ndarray, gen: torch.Generator,
             z_goal: torch.Tensor | None) -> np.ndarray:
        c = self.config
        shape = (c.horizon, self.model.config.action_dim)
        mean, std = torch.full(shape, c.init_mean), torch.full(shape, c.init_std)
        for _ in range(c.cem_steps):
            samples = mean + std * torch.randn((c.samples, *shape), generator=gen)
            samples[0] = mean
            cost = self._cost(self._simulate(state, self._raw(samples)), goal, z_goal)
            elite = samples[torch.from_numpy(np.argsort(cost)[: c.topk])]
            mean, std = elite.mean(0), elite.std(0)
        return self._raw(mean[None])[0]

    def run(self, episodes) -> np.ndarray:
        """(n, rounds + 1) success after each MPC round."""
        from quantwm.envs.pusht import pusht_success

        success = np.zeros((len(episodes), self.config.n_rounds), dtype=bool)
        for i in range(len(episodes)):
            gen = torch.Generator().manual_seed(episode_seed(self.config.seed,
                                                             str(episodes.ids[i])))
            state, goal = episodes.start_states[i].copy(), episodes.goal_states[i]
            z_goal = self._encode(goal[None]) if self.objective == "learned" else None
            for r in range(self.config.n_rounds):
                state = self._simulate(state, self.plan(state, goal, gen, z_goal)[None])[0]
                if pusht_success(state[None], goal[None])[0]:
                    success[i, r:] = True
                    break
        return success


def wall_ceiling(episodes, config: PlannerConfig, objective: str, checkpoint: str = "wall"
                 ) -> np.ndarray:
    from quantwm.model import load
    from quantwm.model.sources import DOOR_PATH_WEIGHT
    from quantwm.plan.oracle import plan_with_oracle

    model = load(checkpoint).eval()
    if objective == "learned":
        results = plan_with_oracle(episodes, config, world_model=model)
    else:
        weight = DOOR_PATH_WEIGHT if objective == "door-path" else 0.0
        results = plan_with_oracle(episodes, config, model.action_mean, model.action_std,
                                   door_path_weight=weight)
    return np.concatenate([r.success_by_round for r in results])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", choices=("wall", "pusht"), default="pusht")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the evaluation episodes and of the planner, as `quantwm eval` "
                        "(--set seed=N: another planner seed)")
    p.add_argument("--profile", default="cpu", help="planner profile (cpu, reference, smoke)")
    p.add_argument("--rounds", type=int, default=None, help="override mpc_rounds")
    p.add_argument("--objective", choices=("state", "door-path", "learned"), default="state")
    p.add_argument("--checkpoint", default=None,
                   help="world model whose encoder scores --objective learned (default: shipped)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="planner overrides, as for `quantwm eval` (e.g. proprio_weight=8)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    checkpoint = args.checkpoint or args.env

    overrides = {"seed": args.seed, **parse_overrides(args.set)}
    config = planner_config(args.env, args.profile, **overrides)
    if args.rounds is not None:
        config = config.replace(mpc_rounds=args.rounds)
    episodes = evaluation_episodes(args.env, n=args.episodes, seed=args.seed)
    t0 = time.perf_counter()
    if args.env == "pusht":
        if args.objective == "door-path":
            p.error("--objective door-path is for --env wall")
        success = PushTCeiling(config, args.objective, args.threads, checkpoint).run(episodes)
    else:
        torch.set_num_threads(args.threads)
        success = wall_ceiling(episodes, config, args.objective, checkpoint)
    rate = success.mean(axis=0)
    print(f"{args.env} ceiling, exact dynamics, {args.objective} objective, planner "
          f"{args.profile} ({config.samples} samples / top {config.topk} / {config.cem_steps} "
          f"CEM steps), {args.episodes} episodes (seed {args.seed}), {checkpoint}, "
          f"{time.perf_counter() - t0:.0f} s")
    print("  success by round: " + "  ".join(f"{r}:{v:.2f}" for r, v in enumerate(rate)))


if __name__ == "__main__":
    main()
