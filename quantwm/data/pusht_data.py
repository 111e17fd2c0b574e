"""PushT trajectories from a scripted, noisy pusher that actually moves the T.

The reference trains on 18,500 noisy replays of human expert pushes; here a scripted policy
stands in for the expert. Per trajectory:

1. Start: the block at a uniform angle with its whole outline inside [60, 452]^2, the agent
   10-80 px from the T (so that little of the trajectory is spent walking up to it).
2. Pick a contact point on the T's outline (edges weighted by length) among a few random
   candidates, preferring points that face the agent, are near it, and whose push would not
   drive the T towards a wall.
3. Approach: steer to 8 px outside the contact point, along its outward normal.
4. Push: steer through the contact point into the block for 10-30 steps, with a per-push random
   sideways slant so that pushes both translate and turn the T; stop early when the T comes
   within 40 px of a wall in the push direction or the agent loses contact.
5. Re-target (back to 2) when the push ends, and with probability 0.02 at any step.

Actions are ``(aim - agent) / 100`` limited to a per-trajectory speed (pushing: 0.05-0.12,
moving to a contact point: 0.10-0.20), plus Gaussian noise of std 0.17, clipped to [-1, 1]: the
env's own relative PD action. The pace, slow deliberate pushes under large per-step noise, is
set from the reference: its dataset (noisy replays of human pushes) normalises actions by std
0.20 (after /100) and has agent speeds of std 75 px/s per axis; this policy gives 0.19 and
71 px/s. A faster, cleaner pusher (pushes at 0.1-0.3, noise 0.04) matched those two figures
too, but moved the block ~80 px and ~45 degrees in the 25 steps between an episode's start and
goal: then even the exact dynamics at the reference planner budget reach only ~0.75 of the
goals in the first MPC round, while the paper's model reaches 0.92, so the reference's goals
must be nearer. Here the block moves a median ~25 px and ~14 degrees in 25 steps
(``benchmarks/planning_ceiling.py --env pusht`` gives what a perfect model reaches).
"""

from __future__ import annotations

import numpy as np

from quantwm.envs.pusht import (
    AGENT_RADIUS,
    WALL_HI,
    WALL_LO,
    WALL_RADIUS,
    PushTEnv,
    tee_corners,
    tee_signed_distance,
)

#: per-trajectory speed ranges (relative action norm) while pushing / while moving to a contact
PUSH_SPEED = (0.05, 0.12)
MOVE_SPEED = (0.10, 0.20)
#: std of the Gaussian noise added to every action ("noisy replays")
ACTION_NOISE = 0.17

#: the T's outline in the block frame: (start point, end point, outward normal)
_EDGES = [
    ((-60.0, 0.0), (60.0, 0.0), (0.0, -1.0)),
    ((-60.0, 0.0), (-60.0, 30.0), (-1.0, 0.0)),
    ((60.0, 0.0), (60.0, 30.0), (1.0, 0.0)),
    ((-60.0, 30.0), (-15.0, 30.0), (0.0, 1.0)),
    ((15.0, 30.0), (60.0, 30.0), (0.0, 1.0)),
    ((-15.0, 30.0), (-15.0, 120.0), (-1.0, 0.0)),
    ((15.0, 30.0), (15.0, 120.0), (1.0, 0.0)),
    ((-15.0, 120.0), (15.0, 120.0), (0.0, 1.0)),
]
_A = np.array([e[0] for e in _EDGES])
_B = np.array([e[1] for e in _EDGES])
_N = np.array([e[2] for e in _EDGES])
_LEN = np.linalg.norm(_B - _A, axis=1)
_INNER_LO, _INNER_HI = WALL_LO + WALL_RADIUS, WALL_HI - WALL_RADIUS


def _rotate(pose: np.ndarray, local: np.ndarray) -> np.ndarray:
    c, s = np.cos(pose[2]), np.sin(pose[2])
    return local @ np.array([[c, s], [-s, c]])


def _room_ahead(pose: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Free distance from the T's corners to the walls along unit ``direction`` (K, 2) -> (K,)."""
    corners = tee_corners(pose)  # (8, 2)
    room = np.full(len(direction), np.inf)
    for axis in (0, 1):
        d = direction[:, axis, None]
        ahead_hi = (_INNER_HI - corners[None, :, axis]) / np.where(d > 1e-9, d, 1.0)
        ahead_lo = (corners[None, :, axis] - _INNER_LO) / np.where(d < -1e-9, -d, 1.0)
        gap = np.where(d > 1e-9, ahead_hi, np.where(d < -1e-9, ahead_lo, np.inf))
        room = np.minimum(room, gap.min(axis=1))
    return room


#: radius (px) of the circle around the T's middle that the agent walks along to get behind it
_ORBIT = 115.0


def _tee_centre(pose: np.ndarray) -> np.ndarray:
    """The middle of the T's bounding circle: block-frame point (0, 60)."""
    return pose[:2] + _rotate(pose, np.array([0.0, 60.0]))


def _angle_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed angle from vectors ``u`` (..., 2) to ``v`` (..., 2), in (-pi, pi]."""
    cross = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
    return np.arctan2(cross, (u * v).sum(axis=-1))


def _clear_paths(agent: np.ndarray, aims: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(K,) whether the straight walk from ``agent`` to each aim (K, 2) stays clear of the T.

    The agent may graze the T and may start in contact with it.
    """
    along = np.linspace(0.0, 1.0, 13)[None, 1:, None]
    path = agent[None, None, :] + along * (aims - agent)[:, None, :]
    return (tee_signed_distance(path, pose[None, None, :]) > AGENT_RADIUS - 2.0).all(axis=1)


def _orbit_waypoint(agent: np.ndarray, aim: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Next point on the way around the T towards ``aim``: 50 degrees further along the orbit."""
    centre = _tee_centre(pose)
    rel = agent - centre
    turn = np.clip(_angle_between(rel, aim - centre), -0.87, 0.87)
    c, s = np.cos(turn), np.sin(turn)
    direction = np.array([c * rel[0] - s * rel[1], s * rel[0] + c * rel[1]])
    radius = max(_ORBIT, float(np.linalg.norm(rel)))
    return centre + direction / max(np.linalg.norm(direction), 1e-9) * radius


class ScriptedPusher:
    """The noisy scripted push policy described in the module docstring (one trajectory)."""

    def __init__(self, rng: np.random.Generator, state: np.ndarray) -> None:
        self.rng = rng
        self.push_speed = rng.uniform(*PUSH_SPEED)
        self.move_speed = rng.uniform(*MOVE_SPEED)
        self.noise = ACTION_NOISE
        self._new_contact(state)

    def _new_contact(self, state: np.ndarray) -> None:
        rng = self.rng
        k = 16
        edge = rng.choice(len(_EDGES), size=k, p=_LEN / _LEN.sum())
        t = rng.uniform(0.1, 0.9, size=k)
        local = _A[edge] + t[:, None] * (_B[edge] - _A[edge])
        normal = _N[edge]
        pose, agent = state[2:5], state[:2]
        point = pose[:2] + _rotate(pose, local)
        n_w = _rotate(pose, normal)
        aim = point + n_w * (AGENT_RADIUS + 8.0)
        # approaching a point behind the T means walking around it: count the detour
        clear = _clear_paths(agent, aim, pose)
        centre = _tee_centre(pose)
        detour = _ORBIT * np.abs(_angle_between(agent - centre, aim - centre[None]))
        dist = np.where(clear, np.linalg.norm(aim - agent, axis=1), detour + _ORBIT)
        room = _room_ahead(pose, -n_w)
        # prefer pushes towards the middle of the table, strongly so near a wall
        corners = tee_corners(pose)
        gap = min(corners.min() - _INNER_LO, _INNER_HI - corners.max())
        to_middle = 256.0 - corners.mean(axis=0)
        to_middle /= max(np.linalg.norm(to_middle), 1e-9)
        inward = -n_w @ to_middle
        score = (
            dist / 60.0
            + 3.0 * np.clip((150.0 - room) / 60.0, 0.0, None)
            - inward * (1.5 + 2.0 * np.clip((150.0 - gap) / 100.0, 0.0, 1.0))
            + rng.gumbel(size=k) * 0.4
        )
        self.phase = "approach"
        self.steps_left = 40  # give up an approach that takes longer than this
        self.slant = rng.normal(0.0, 0.5)
        self.idle = 0
        best = int(np.argmin(score))
        self.local, self.normal = local[best], normal[best]

    def act(self, state: np.ndarray) -> np.ndarray:
        rng = self.rng
        if rng.random() < 0.02:
            self._new_contact(state)
        pose, agent = state[2:5], state[:2]
        self.last_pose, self._pose = getattr(self, "_pose", None), pose.copy()
        point = pose[:2] + _rotate(pose, self.local)
        n_w = _rotate(pose, self.normal)
        if self.phase == "approach":
            aim = point + n_w * (AGENT_RADIUS + 8.0)
            self.steps_left -= 1
            if np.linalg.norm(aim - agent) < 10.0:
                self.phase = "push"
                self.steps_left = int(rng.integers(10, 31))
            elif self.steps_left <= 0:
                self._new_contact(state)
            elif not _clear_paths(agent, aim[None], pose)[0]:
                aim = _orbit_waypoint(agent, aim, pose)
        if self.phase == "push":
            side = np.array([-n_w[1], n_w[0]])
            aim = point - 40.0 * n_w + 40.0 * self.slant * side
            self.steps_left -= 1
            touching = tee_signed_distance(agent, pose) < AGENT_RADIUS + 3.0
            moving = self.last_pose is not None and np.abs(pose - self.last_pose).max() > 0.2
            self.idle = 0 if touching and moving else self.idle + 1
            cramped = _room_ahead(pose, -n_w[None])[0] < 40.0
            if self.steps_left <= 0 or self.idle > 2 or cramped:
                self._new_contact(state)
        return self._action(aim, agent)

    def _action(self, aim: np.ndarray, agent: np.ndarray) -> np.ndarray:
        delta = (aim - agent) / 100.0
        norm = np.linalg.norm(delta)
        speed = self.push_speed if self.phase == "push" else self.move_speed
        if norm > speed:
            delta *= speed / norm
        return np.clip(delta + self.rng.normal(0.0, self.noise, size=2), -1.0, 1.0)


def sample_start(rng: np.random.Generator) -> np.ndarray:
    """A start state: the T inside [60, 452]^2 at a uniform angle, the agent 10-80 px from it."""
    while True:
        pose = np.array([*rng.uniform(60, 452, size=2), rng.uniform(-np.pi, np.pi)])
        corners = tee_corners(pose)
        if corners.min() < 60 or corners.max() > 452:
            continue
        agent = rng.uniform(30, 482, size=2)
        gap = tee_signed_distance(agent, pose) - AGENT_RADIUS
        if 10.0 < gap < 80.0:
            return np.array([*agent, *pose, 0.0, 0.0])


def generate_pusht(
    n_traj: int, n_steps: int, rng: np.random.Generator, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """States (N, T+1, 7) and actions (N, T, 2) of ``n_traj`` scripted-push trajectories."""
    env = PushTEnv()
    states = np.empty((n_traj, n_steps + 1, 7))
    actions = np.empty((n_traj, n_steps, 2))
    it = range(n_traj)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="pusht trajectories", unit="traj")
    for i in it:
        start = sample_start(rng)
        env.reset(options={"state": start})
        policy = ScriptedPusher(rng, start)
        states[i, 0] = env.get_state()
        for t in range(n_steps):
            actions[i, t] = env.clip_action(policy.act(states[i, t]))
            states[i, t + 1] = env.step_state(actions[i, t])
    return states, actions


def block_moved(states: np.ndarray, pos_tol: float = 1.0, angle_tol: float = 0.01) -> np.ndarray:
    """(N, T) bool: whether the block moved more than ``pos_tol`` px or turned ``angle_tol`` rad."""
    d_pos = np.linalg.norm(np.diff(states[..., 2:4], axis=-2), axis=-1)
    d_ang = np.abs(np.diff(states[..., 4], axis=-1))
    return (d_pos > pos_tol) | (d_ang > angle_tol)
