"""Wall trajectories: random walks with a persistent heading (PROTOCOL section 4).

Per trajectory (all trajectories advance together, vectorised):

- layout: integers ``wall_x`` in [20, 44] and ``door_y`` in [10, 54];
- start: uniform over the free space, at least 1 px from every wall;
- heading: the previous heading plus von Mises noise (concentration 1 / 0.2, the reference's
  ``action_angle_noise`` 0.2), the first one uniform; after a step that a wall cut short
  (the agent covered less than half of the intended move) the next heading is drawn afresh, so
  walks do not grind against a wall for many steps;
- step length: normal(1, 0.4) truncated to [0.2, 1.8] (the reference's values);
- action = length * (cos heading, sin heading), so ``|action| <= 1.8`` and the env moves the agent
  by up to 3.6 px per step;
- a fraction ``door_seekers`` (default 0.25) of the walks steer towards the door, then on to a
  point in the other room, to make sure the data shows the door being used: their heading is
  pulled towards the current waypoint (the mean of the von Mises noise is set to the turn
  needed, capped at 0.5 rad per step);
- a fraction ``wall_pushers`` (default 0.4) head straight for a point across the wall (half of
  them for one in the other room, half for one just behind the wall beside the door), so they
  run into the wall and keep pressing against it (no fresh heading when blocked) for 2-15
  blocked steps before they give up and seek the door. This is what the planner's samples do
  all the time; without it the predictor saw few pushes into the wall (4.3 % of the steps) and
  learned to let the agent pass through it, most of all beside the door.
"""

from __future__ import annotations

import numpy as np

from quantwm.envs.wall import (
    BORDER_HI,
    BORDER_LO,
    DOOR_Y_RANGE,
    STEP_SCALE,
    WALL_HALF_WIDTH,
    WALL_X_RANGE,
    sample_free_positions,
    wall_step,
)

ANGLE_NOISE = 0.2
STEP_MEAN, STEP_STD, STEP_LO, STEP_HI = 1.0, 0.4, 0.2, 1.8


def truncated_normal(
    rng: np.random.Generator, mean: float, std: float, lo: float, hi: float, size: int
) -> np.ndarray:
    """Samples of normal(mean, std) restricted to [lo, hi] (by rejection)."""
    out = np.empty(size)
    todo = np.arange(size)
    while len(todo):
        x = rng.normal(mean, std, size=len(todo))
        ok = (x >= lo) & (x <= hi)
        out[todo[ok]] = x[ok]
        todo = todo[~ok]
    return out


def generate_wall(
    n_traj: int,
    n_steps: int,
    rng: np.random.Generator,
    door_seekers: float = 0.25,
    wall_pushers: float = 0.4,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """States (N, T+1, 2), actions (N, T, 2) and layouts {"wall_x", "door_y"} of (N,)."""
    for name, value in (("door_seekers", door_seekers), ("wall_pushers", wall_pushers)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
    if door_seekers + wall_pushers > 1.0:
        raise ValueError(
            f"door_seekers + wall_pushers must be <= 1, got {door_seekers} + {wall_pushers}"
        )
    wall_x = rng.integers(WALL_X_RANGE[0], WALL_X_RANGE[1] + 1, size=n_traj).astype(np.float64)
    door_y = rng.integers(DOOR_Y_RANGE[0], DOOR_Y_RANGE[1] + 1, size=n_traj).astype(np.float64)
    pos = sample_free_positions(rng, n_traj, wall_x, door_y, margin=1.0)
    role = rng.random(n_traj)
    seeker = role < door_seekers
    pusher = (role >= door_seekers) & (role < door_seekers + wall_pushers)
    push_budget = rng.integers(2, 16, size=n_traj)  # blocked steps before a pusher gives up
    # door seekers: first the door's far side, then a random point in the other room
    side = np.sign(pos[:, 0] - wall_x)
    beyond = wall_x - side * (WALL_HALF_WIDTH + 4.0)
    final_x = np.where(
        side > 0,
        rng.uniform(BORDER_LO + 3.0, wall_x - WALL_HALF_WIDTH - 3.0),
        rng.uniform(wall_x + WALL_HALF_WIDTH + 3.0, BORDER_HI - 3.0),
    )
    final = np.stack([final_x, rng.uniform(BORDER_LO + 3.0, BORDER_HI - 3.0, n_traj)], axis=1)
    door_far = np.stack([beyond, door_y], axis=1)
    door_near = np.stack([wall_x + side * (WALL_HALF_WIDTH + 4.0), door_y], axis=1)
    # pushers aim across the wall: half at a point of the other room, half just behind the wall
    # beside the door (5-14 px off its centre), where a push misses the door by little
    edge = rng.random(n_traj) < 0.5
    beside_door = np.clip(
        door_y + rng.choice([-1.0, 1.0], n_traj) * rng.uniform(5.0, 14.0, n_traj),
        BORDER_LO + 1.0,
        BORDER_HI - 1.0,
    )
    across = np.stack(
        [
            np.where(edge, wall_x - side * (WALL_HALF_WIDTH + 2.0), final_x),
            np.where(edge, beside_door, rng.uniform(BORDER_LO + 3.0, BORDER_HI - 3.0, n_traj)),
        ],
        axis=1,
    )
    stage = np.zeros(n_traj, dtype=np.int64)  # 0: to the door's near side, 1: far side, 2: final

    states = np.empty((n_traj, n_steps + 1, 2))
    actions = np.empty((n_traj, n_steps, 2))
    states[:, 0] = pos
    heading = rng.uniform(-np.pi, np.pi, n_traj)
    blocked = np.zeros(n_traj, dtype=bool)
    kappa = 1.0 / ANGLE_NOISE
    for t in range(n_steps):
        waypoint = np.where(
            stage[:, None] == 0, door_near, np.where(stage[:, None] == 1, door_far, final)
        )
        waypoint = np.where(pusher[:, None], across, waypoint)
        want = np.arctan2(waypoint[:, 1] - pos[:, 1], waypoint[:, 0] - pos[:, 0])
        turn = np.angle(np.exp(1j * (want - heading)))
        mean_turn = np.where(seeker | pusher, np.clip(turn, -0.5, 0.5), 0.0)
        heading = heading + rng.vonmises(mean_turn, kappa)
        heading = np.where(blocked & ~pusher, rng.uniform(-np.pi, np.pi, n_traj), heading)
        length = truncated_normal(rng, STEP_MEAN, STEP_STD, STEP_LO, STEP_HI, n_traj)
        act = length[:, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        new = wall_step(pos, act, wall_x, door_y)
        moved = np.linalg.norm(new - pos, axis=1)
        blocked = moved < 0.5 * STEP_SCALE * length
        # a pusher that used up its blocked steps (or got across) seeks the door from now on
        push_budget = push_budget - (pusher & blocked)
        got_across = pusher & (np.sign(new[:, 0] - wall_x) != side)
        gave_up = (pusher & (push_budget <= 0)) | got_across
        seeker, pusher = seeker | gave_up, pusher & ~gave_up
        stage = np.where(got_across, 2, stage)
        reached = np.linalg.norm(new - waypoint, axis=1) < 2.5
        stage = np.where(seeker & reached & (stage < 2), stage + 1, stage)
        actions[:, t] = act
        states[:, t + 1] = new
        pos = new
    return states, actions, {"wall_x": wall_x, "door_y": door_y}


def crossed_wall(states: np.ndarray, wall_x: np.ndarray) -> np.ndarray:
    """(N,) whether each trajectory visits both rooms (goes through the door at least once)."""
    side = np.sign(states[:, :, 0] - wall_x[:, None])
    return (side != side[:, :1]).any(axis=1)
