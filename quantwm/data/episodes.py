"""Episode sets: the start/goal pairs the planner is evaluated (and calibrated) on.

PROTOCOL section 3: 50 episodes per configuration with fixed seeds; evaluation episodes come
from the validation split, calibration episodes from the training split and other seeds.

- Wall: the layout (wall_x, door_y) of a random trajectory of the split; start and goal drawn in
  opposite rooms, at least 2 x 1.7 px (two dot stds) from the walls (the reference's margins:
  x in [7.4, wall_x - 6.4] on the left, [wall_x + 6.4, 56.6] on the right, y in [7.4, 56.6]),
  the start on the left or the right with equal probability.
- PushT: the state at a random step ``t`` of a trajectory of the split and the state 25 env steps
  later along the same trajectory (reachable by construction); pairs whose start already meets
  the goal are skipped. Trajectories are used once each before any is used twice.

Evaluation and calibration draw from different splits and from different random streams
(``SeedSequence([seed, purpose])``), so the two sets never share an episode even for equal seeds.
Both read the shipped dataset file alone: the generated extensions (PushT's 14,400 more training
trajectories, ``data/pusht/extensions.json``) are for training, and neither evaluating nor
quantizing a model waits for them. Everything is deterministic given the dataset and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantwm.data.trajectories import Trajectories, load_trajectories
from quantwm.envs import is_success
from quantwm.envs.wall import BORDER_HI, BORDER_LO, DOT_STD, WALL_HALF_WIDTH
from quantwm.utils import check_env_name

GOAL_OFFSET = 25  #: PushT: env steps between start and goal
_PURPOSE = {"eval": 0, "calib": 1}

#: Which draw of calibration episodes an env's calibrated results used. PushT 2: from the shipped
#: file's training split (revision 1 drew from the extended one, whose generation a fresh
#: machine had to wait for). Results calibrated on another revision are stale.
CALIBRATION_REVISION = {"wall": 1, "pusht": 2}


@dataclass
class EpisodeSet:
    """Start/goal states (n, S) with per-episode parameters and stable string ids."""

    env_name: str
    start_states: np.ndarray
    goal_states: np.ndarray
    params: dict[str, np.ndarray] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.env_name = check_env_name(self.env_name)
        self.start_states = np.asarray(self.start_states, dtype=np.float64)
        self.goal_states = np.asarray(self.goal_states, dtype=np.float64)
        n = len(self.start_states)
        if self.goal_states.shape != self.start_states.shape:
            raise ValueError(
                f"goal_states {self.goal_states.shape} must match start_states "
                f"{self.start_states.shape}"
            )
        if len(self.ids) != n or len(set(self.ids)) != n:
            raise ValueError(f"need {n} distinct ids, got {len(set(self.ids))}")
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in self.params.items()}

    def __len__(self) -> int:
        return len(self.start_states)

    def env_kwargs(self, i: int) -> dict[str, float]:
        """Episode ``i``'s parameters (Wall: wall_x, door_y; PushT: none) as plain floats.

        They go with the start state into ``reset`` and with any state into ``render_state``:
        ``env.reset(options={"state": start_states[i], **env_kwargs(i)})`` (= ``reset_options(i)``)
        and ``env.unwrapped.render_state(goal_states[i], **env_kwargs(i))``.
        """
        return {k: float(v[i]) for k, v in self.params.items()}

    def reset_options(self, i: int) -> dict[str, Any]:
        """Full reset options of episode ``i``: its start state and its parameters."""
        return {"state": self.start_states[i].copy(), **self.env_kwargs(i)}

    def goal_options(self, i: int) -> dict[str, Any]:
        """Reset options that put an env in episode ``i``'s goal (e.g. to look at it)."""
        return {"state": self.goal_states[i].copy(), **self.env_kwargs(i)}

    def is_success(self, states: Any, index: Any = None) -> np.ndarray:
        """Success of states (n, S) against the goals (or of ``index``'s goals), vectorised."""
        goals = self.goal_states if index is None else self.goal_states[index]
        return is_success(self.env_name, states, goals)

    def subset(self, index: Any) -> EpisodeSet:
        idx = np.arange(len(self))[index]
        return EpisodeSet(
            self.env_name,
            self.start_states[idx],
            self.goal_states[idx],
            {k: v[idx] for k, v in self.params.items()},
            [self.ids[i] for i in np.atleast_1d(idx)],
        )


def _wall_episodes(
    trajs: Trajectories, split: str, n: int, rng: np.random.Generator, tag: str
) -> EpisodeSet:
    pool = trajs.indices(split)
    pick = pool[rng.integers(0, len(pool), size=n)]
    wall_x, door_y = trajs.params["wall_x"][pick], trajs.params["door_y"][pick]
    pad = 2 * DOT_STD
    lo, hi = BORDER_LO + pad, BORDER_HI - pad
    left = rng.uniform(lo, wall_x - WALL_HALF_WIDTH - pad)
    right = rng.uniform(wall_x + WALL_HALF_WIDTH + pad, hi)
    y_start, y_goal = rng.uniform(lo, hi, size=n), rng.uniform(lo, hi, size=n)
    swap = rng.random(n) < 0.5
    start = np.stack([np.where(swap, right, left), y_start], axis=1)
    goal = np.stack([np.where(swap, left, right), y_goal], axis=1)
    ids = [f"wall/{tag}/traj{int(p):04d}/{i:03d}" for i, p in enumerate(pick)]
    return EpisodeSet("wall", start, goal, {"wall_x": wall_x, "door_y": door_y}, ids)


def _pusht_episodes(
    trajs: Trajectories, split: str, n: int, rng: np.random.Generator, tag: str
) -> EpisodeSet:
    if trajs.n_steps < GOAL_OFFSET:
        raise ValueError(f"PushT episodes need trajectories of >= {GOAL_OFFSET} steps")
    pool = rng.permutation(trajs.indices(split))
    chosen: list[tuple[int, int]] = []
    used: set[tuple[int, int]] = set()
    attempts = 0
    while len(chosen) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"could not find {n} non-trivial PushT episodes in split {split!r}")
        traj = int(pool[len(chosen) % len(pool)]) if attempts <= 20 * n else int(rng.choice(pool))
        t0 = int(rng.integers(0, trajs.n_steps - GOAL_OFFSET + 1))
        start, goal = trajs.states[traj, t0], trajs.states[traj, t0 + GOAL_OFFSET]
        if (traj, t0) in used or is_success("pusht", start, goal):
            continue
        used.add((traj, t0))
        chosen.append((traj, t0))
    traj_idx = np.array([c[0] for c in chosen])
    t_idx = np.array([c[1] for c in chosen])
    ids = [f"pusht/{tag}/traj{i:04d}/t{t:03d}" for i, t in chosen]
    return EpisodeSet(
        "pusht",
        trajs.states[traj_idx, t_idx],
        trajs.states[traj_idx, t_idx + GOAL_OFFSET],
        {},
        ids,
    )


def _episodes(
    env_name: str, n: int, seed: int, purpose: str, trajectories: Trajectories | None
) -> EpisodeSet:
    env_name = check_env_name(env_name)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    split = "val" if purpose == "eval" else "train"
    # the shipped file alone: evaluation (its validation split is the extended dataset's) and
    # calibration (its own training trajectories) never wait for the extensions
    trajs = (trajectories if trajectories is not None
             else load_trajectories(env_name, with_extensions=False))
    if trajs.env_name != env_name:
        raise ValueError(f"trajectories are {trajs.env_name}, episodes asked for {env_name}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _PURPOSE[purpose]]))
    tag = f"{purpose}-s{int(seed)}"
    make = _wall_episodes if env_name == "wall" else _pusht_episodes
    return make(trajs, split, int(n), rng, tag)


def evaluation_episodes(
    env_name: str, n: int = 50, seed: int = 0, trajectories: Trajectories | None = None
) -> EpisodeSet:
    """``n`` evaluation episodes from the validation split (default: the shipped dataset; its
    file alone, whose validation split the extensions leave as it is)."""
    return _episodes(env_name, n, seed, "eval", trajectories)


def calibration_episodes(
    env_name: str, n: int = 50, seed: int = 1, trajectories: Trajectories | None = None
) -> EpisodeSet:
    """``n`` calibration episodes from the training split of the shipped file (default; its
    extensions are not read: :data:`CALIBRATION_REVISION`), never shared with evaluation."""
    return _episodes(env_name, n, seed, "calib", trajectories)
