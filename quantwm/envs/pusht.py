"""PushT: a round pusher moves a T-shaped block on a table (DINO-WM's "pusht" task), pymunk 7.

World: 512 x 512 px, y pointing down (image rows), gravity 0. Walls: the reference's are segments
of radius 2 on the lines 5 and 506; here they are thick static boxes with the same inner faces
(7 and 504), so that a block squeezed against a wall is pushed back in, never through.

- Agent: a *kinematic* circle of radius 15 (it pushes, nothing pushes it back), driven by a PD
  controller ``accel = 100 * (target - pos) - 20 * vel`` at 100 Hz physics, 10 Hz control
  (10 sub-steps of 0.01 s per ``step``).
- Action: relative, ``target = agent_pos + 100 * action`` with the action clipped to ``[-1, 1]^2``;
  the target is then clipped to ``[22, 489]^2`` so the agent stays inside the walls. Held
  constant, an action ``a`` moves the agent about ``40.7 * |a|`` px per step (after a first
  step of ``29.6 * |a|`` px from rest).
- Block: a T of a 120 x 30 bar and a 30 x 90 stem, mass 1. Contacts are frictionless, which is
  what the reference effectively simulates: it writes ``friction = 1`` on the *bodies*, where
  pymunk does not read it, and leaves the shapes' friction at pymunk's default 0. In the
  block's own frame the bar spans x in [-60, 60], y in [0, 30] and the stem x in [-15, 15],
  y in [30, 120]; the block's *position* is that frame's origin (the middle of the bar's outer
  edge) and its centre of gravity is (0, 45) as in the reference.
- Settling (a documented choice, the reference's own): the space's damping is 0, i.e. every body
  loses all its velocity at each 10 ms physics step, so the block moves only while it is pushed
  and stops as soon as contact ends (quasi-static pushing, no sliding, no spinning).
- Markov by construction: every control step builds a fresh pymunk space from the 7-number state
  (block at rest, no contact memory) and runs the 10 sub-steps in it. So ``pusht_step(state,
  action)`` is a pure function, an env reset to a state continues exactly as the env that was
  in it, and a goal taken from a trajectory is reachable with the trajectory's own actions. What
  this drops from the reference is the little the state cannot hold anyway: the block's residual
  velocity at the end of a step (at most one 10 ms sub-step of motion) and pymunk's warm-start
  impulse cache across control steps.
- Jams (a second documented choice): a kinematic pusher can press the T into a wall without
  limit, which in pymunk ends with the T squeezed through the wall or shot across the table. Here
  a physics sub-step after which the T reaches more than 2 px (and deeper than before) past a
  wall's inner face is undone and the agent stops for that sub-step: the agent stalls against a
  jammed T, as a real pusher would. Pushing anywhere else is the reference's.

State (float64): ``(agent x, agent y, block x, block y, block angle, agent vx, agent vy)``; the
angle is in radians, unwrapped (it accumulates as the block turns); compare angles only through
the wrapped difference. Proprio (float32): ``(agent x, agent y, agent vx, agent vy)``.

Picture (numpy, anti-aliased, drawn at ``img_size`` px for the 512-px world): white table, light
grey walls, the T's bar in slate grey and its stem in a darker slate (two rectangles; the two
shades make the T's heading unambiguous even at 64 px, where the T is ~15 px wide), the agent a
royal-blue disc on top.

Success (PROTOCOL section 3): ``||goal[:4] - state[:4]|| < 20`` (agent xy and block xy jointly)
and ``|wrap(goal_angle - angle)| < pi / 9``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pymunk
from gymnasium import spaces

from quantwm.envs import raster
from quantwm.envs.base import KitEnv, wrap_angle

WORLD_SIZE = 512.0
WALL_LO, WALL_HI, WALL_RADIUS = 5.0, 506.0, 2.0
AGENT_RADIUS = 15.0
KP, KV = 100.0, 20.0
DT = 0.01
SUBSTEPS = 10
ACTION_SCALE = 100.0
ACTION_HIGH = 1.0
TARGET_LO = WALL_LO + WALL_RADIUS + AGENT_RADIUS
TARGET_HI = WALL_HI - WALL_RADIUS - AGENT_RADIUS
#: shape friction of every contact (the reference's effective value, see the docstring)
FRICTION = 0.0
BLOCK_MASS = 1.0
#: the T's two rectangles in the block frame: (centre x, centre y, half width, half height)
BAR = (0.0, 15.0, 60.0, 15.0)
STEM = (0.0, 75.0, 15.0, 45.0)
BLOCK_COG = (0.0, 45.0)
#: how far (px) the agent may press the T into a wall before its sub-step is undone
JAM_TOLERANCE = 2.0
SUCCESS_DISTANCE = 20.0
SUCCESS_ANGLE = np.pi / 9
#: the fastest agent a reset accepts, px/s: the PD controller's steady speed is at most ~580
#: (a diagonal action held), 533 the fastest measured under random actions, 370 in the datasets
AGENT_SPEED_LIMIT = 2000.0
#: the largest |block angle| a reset accepts, rad: 100 turns either way (the datasets' reach 8)
ANGLE_LIMIT = 200.0 * np.pi

_BG = np.array([255.0, 255.0, 255.0])
_WALL = np.array([211.0, 211.0, 211.0])  # LightGray
_BAR = np.array([119.0, 136.0, 153.0])  # LightSlateGray
_STEM = np.array([60.0, 72.0, 92.0])  # dark slate
_AGENT = np.array([65.0, 105.0, 225.0])  # RoyalBlue


def _box_vertices(box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    cx, cy, hx, hy = box
    return [(cx - hx, cy - hy), (cx + hx, cy - hy), (cx + hx, cy + hy), (cx - hx, cy + hy)]


def tee_signed_distance(points: Any, poses: Any) -> np.ndarray:
    """Signed distance from points (..., 2) to the T at poses (..., 3) = (x, y, angle).

    Negative inside the T. Used to place agents clear of the block and to pick contact points.
    """
    pts = np.asarray(points, dtype=np.float64)
    pose = np.asarray(poses, dtype=np.float64)
    c, s = np.cos(pose[..., 2]), np.sin(pose[..., 2])
    dx, dy = pts[..., 0] - pose[..., 0], pts[..., 1] - pose[..., 1]
    u, v = c * dx + s * dy, -s * dx + c * dy
    dist = np.full(np.broadcast(u, v).shape, np.inf)
    for cx, cy, hx, hy in (BAR, STEM):
        qx, qy = np.abs(u - cx) - hx, np.abs(v - cy) - hy
        outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
        inside = np.minimum(np.maximum(qx, qy), 0.0)
        dist = np.minimum(dist, outside + inside)
    return dist


def tee_corners(poses: Any) -> np.ndarray:
    """World coordinates (..., 8, 2) of the T's outline corners at poses (..., 3) = (x, y, a)."""
    pose = np.asarray(poses, dtype=np.float64)
    local = np.array([v for box in (BAR, STEM) for v in _box_vertices(box)])  # (8, 2)
    c, s = np.cos(pose[..., 2])[..., None], np.sin(pose[..., 2])[..., None]
    x = pose[..., 0, None] + c * local[:, 0] - s * local[:, 1]
    y = pose[..., 1, None] + s * local[:, 0] + c * local[:, 1]
    return np.stack([x, y], axis=-1)


def pusht_success(states: Any, goal_states: Any) -> np.ndarray:
    """Vectorised PROTOCOL section 3 criterion on states (..., 7) against goals (..., 7)."""
    s = np.asarray(states, dtype=np.float64)
    g = np.asarray(goal_states, dtype=np.float64)
    close = np.linalg.norm(g[..., :4] - s[..., :4], axis=-1) < SUCCESS_DISTANCE
    aligned = np.abs(wrap_angle(g[..., 4] - s[..., 4])) < SUCCESS_ANGLE
    return close & aligned


def pusht_proprio(states: Any) -> np.ndarray:
    """Proprio (agent x, y, vx, vy) float32 of states (..., 7)."""
    s = np.asarray(states, dtype=np.float64)
    return s[..., [0, 1, 5, 6]].astype(np.float32)


#: radius around the block-frame point (0, 60) that holds the whole T (corners at (+-60, 0|30))
_TEE_CENTRE = (0.0, 60.0)
_TEE_RADIUS = float(np.hypot(60.0, 60.0))


@functools.lru_cache(maxsize=8)
def _background(img_size: int) -> np.ndarray:
    """The static part of every frame: the table and its walls, (1, 3, H, W) float32."""
    lo, hi = WALL_LO - WALL_RADIUS, WALL_LO + WALL_RADIUS
    shift = WALL_HI - WALL_LO
    lines = np.maximum(
        raster.interval_coverage(np.array([lo]), np.array([hi]), img_size, WORLD_SIZE)[0],
        raster.interval_coverage(
            np.array([lo + shift]), np.array([hi + shift]), img_size, WORLD_SIZE
        )[0],
    )
    background = raster.blank(1, img_size, _BG)
    raster.composite_(background, _WALL, np.maximum(lines[None, :], lines[:, None])[None])
    background.flags.writeable = False
    return background


def render_pusht(states: Any, img_size: int = 64) -> np.ndarray:
    """Images (B, H, W, 3) uint8 of PushT states (B, 7), anti-aliased, pure numpy.

    The T and the agent are rasterised in small windows around them (``raster.window``), then
    alpha-blended over a static background with the walls.
    """
    st = np.asarray(states, dtype=np.float64)
    if st.ndim != 2 or st.shape[1] < 5:
        raise ValueError(f"states must have shape (B, 7), got {st.shape}")
    px = WORLD_SIZE / img_size
    background = _background(img_size)

    def render(sl: slice) -> np.ndarray:
        s = st[sl]
        n = len(s)
        c, sn = np.cos(s[:, 4]), np.sin(s[:, 4])
        centre = s[:, 2:4] + np.stack(
            [c * _TEE_CENTRE[0] - sn * _TEE_CENTRE[1], sn * _TEE_CENTRE[0] + c * _TEE_CENTRE[1]], 1
        )
        rows, cols = raster.window(centre, _TEE_RADIUS, img_size, WORLD_SIZE)
        dx = ((cols + 0.5) * px - s[:, 2:3])[:, None, :]  # (n, 1, K)
        dy = ((rows + 0.5) * px - s[:, 3:4])[:, :, None]  # (n, K, 1)
        u = c[:, None, None] * dx + sn[:, None, None] * dy
        v = c[:, None, None] * dy - sn[:, None, None] * dx
        bar = raster.oriented_box_coverage(u, v, BAR[:2], BAR[2:], px)
        stem = raster.oriented_box_coverage(u, v, STEM[:2], STEM[2:], px)
        block = np.minimum(bar + stem, 1.0)
        stem_share = np.divide(stem, bar + stem, out=np.zeros_like(stem), where=stem > 0)
        arows, acols = raster.window(s[:, 0:2], AGENT_RADIUS, img_size, WORLD_SIZE)
        adist = np.hypot(
            ((acols + 0.5) * px - s[:, 0:1])[:, None, :],
            ((arows + 0.5) * px - s[:, 1:2])[:, :, None],
        )
        img = np.repeat(background, n, axis=0)
        # the stem's share of the union is blended over the bar: no seam where the two meet
        raster.composite_(img, _BAR, raster.scatter(bar, rows, cols, img_size))
        raster.composite_(img, _STEM, raster.scatter(stem_share * block, rows, cols, img_size))
        agent = raster.disc_coverage(adist, AGENT_RADIUS, px)
        raster.composite_(img, _AGENT, raster.scatter(agent, arows, acols, img_size))
        return raster.to_uint8(img)

    return raster.in_chunks(render, len(st), img_size)


_INNER_LO, _INNER_HI = WALL_LO + WALL_RADIUS, WALL_HI - WALL_RADIUS
_PARTS = [_box_vertices(BAR), _box_vertices(STEM)]
_AREAS = [4 * BAR[2] * BAR[3], 4 * STEM[2] * STEM[3]]
#: the T's moment of inertia about its centre of gravity, mass split between the parts by area
_MOMENT = sum(
    pymunk.moment_for_poly(
        BLOCK_MASS * a / sum(_AREAS), verts, offset=(-BLOCK_COG[0], -BLOCK_COG[1])
    )
    for a, verts in zip(_AREAS, _PARTS, strict=True)
)
_FAR = 200.0
#: distance from the block's origin to its farthest corner, (+-15, 120)
_TEE_REACH = float(np.hypot(STEM[2], STEM[1] + STEM[3]))
_WALL_BOXES = [
    (-_FAR, -_FAR, _INNER_LO, WORLD_SIZE + _FAR),  # left
    (_INNER_HI, -_FAR, WORLD_SIZE + _FAR, WORLD_SIZE + _FAR),  # right
    (-_FAR, -_FAR, WORLD_SIZE + _FAR, _INNER_LO),  # top
    (-_FAR, _INNER_HI, WORLD_SIZE + _FAR, WORLD_SIZE + _FAR),  # bottom
]


class _Sim:
    """A fresh pymunk space holding one PushT state (block at rest, no contact memory)."""

    def __init__(self, state: np.ndarray) -> None:
        space = pymunk.Space()
        space.gravity = (0.0, 0.0)
        space.damping = 0.0  # all momentum removed every physics step: the block settles at once
        for x0, y0, x1, y1 in _WALL_BOXES:
            wall = pymunk.Poly(space.static_body, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
            wall.friction = FRICTION
            space.add(wall)
        agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        disc = pymunk.Circle(agent, AGENT_RADIUS)
        disc.friction = FRICTION
        block = pymunk.Body(BLOCK_MASS, _MOMENT)
        block.center_of_gravity = BLOCK_COG
        shapes = [pymunk.Poly(block, verts) for verts in _PARTS]
        for shape in shapes:
            shape.friction = FRICTION
        agent.position = (float(state[0]), float(state[1]))
        agent.velocity = (float(state[5]), float(state[6]))
        # angle first, then position: the position then lands exactly where asked
        block.angle = float(state[4])
        block.position = (float(state[2]), float(state[3]))
        space.add(agent, disc, block, *shapes)
        self.space, self.agent, self.block, self.shapes = space, agent, block, shapes

    def wall_penetration(self) -> float:
        """How deep (px) the block's bounding boxes reach past the walls' inner faces (>= 0)."""
        depth = 0.0
        for shape in self.shapes:
            bb = shape.bb
            depth = max(depth, _INNER_LO - bb.left, _INNER_LO - bb.bottom)
            depth = max(depth, bb.right - _INNER_HI, bb.top - _INNER_HI)
        return depth

    def near_wall(self) -> bool:
        """Whether any part of the T could touch a wall (its origin within 130 px of one)."""
        x, y = self.block.position
        return min(x, y, WORLD_SIZE - x, WORLD_SIZE - y) < _TEE_REACH + 10.0

    def run(self, target: tuple[float, float]) -> None:
        """10 PD-driven sub-steps towards ``target``, undoing any that jam the T into a wall."""
        agent, block, space = self.agent, self.block, self.space
        tx, ty = target
        for _ in range(SUBSTEPS):
            (px, py), (vx, vy) = agent.position, agent.velocity
            agent.velocity = (
                vx + (KP * (tx - px) - KV * vx) * DT,
                vy + (KP * (ty - py) - KV * vy) * DT,
            )
            guard = self.near_wall()  # far from the walls nothing can jam: skip the checks
            if guard:
                depth = self.wall_penetration()
                saved = (block.position, block.angle)
            space.step(DT)
            if guard and self.wall_penetration() > max(depth, JAM_TOLERANCE):
                # the kinematic agent is pressing the T into a wall: undo the sub-step, agent stalls
                agent.position, agent.velocity = (px, py), (0.0, 0.0)
                block.angle, block.position = saved[1], saved[0]
                block.velocity, block.angular_velocity = (0.0, 0.0), 0.0
                space.reindex_shapes_for_body(block)

    def state(self) -> np.ndarray:
        a, b = self.agent, self.block
        return np.array(
            [a.position.x, a.position.y, b.position.x, b.position.y, b.angle]
            + [a.velocity.x, a.velocity.y],
            dtype=np.float64,
        )


def pusht_step(state: Any, action: Any) -> np.ndarray:
    """One PushT control step: state (7,), action (2,) -> next state (7,); a pure function.

    The action is clipped to [-1, 1]; the PD target ``agent + 100 * action`` to ``[22, 489]^2``.
    """
    s = np.asarray(state, dtype=np.float64)
    a = np.clip(np.asarray(action, dtype=np.float64), -ACTION_HIGH, ACTION_HIGH)
    target = np.clip(s[:2] + ACTION_SCALE * a, TARGET_LO, TARGET_HI)
    sim = _Sim(s)
    sim.run((float(target[0]), float(target[1])))
    return sim.state()


class PushTEnv(KitEnv):
    """Gymnasium env ``quantwm/PushT-v0`` (see the module docstring for physics and drawing).

    Without ``options["state"]``, reset draws the agent in [50, 450]^2, the block in [100, 400]^2
    with a uniform angle (the reference's ranges), re-drawing until the T lies inside the walls
    and the agent is clear of it. A given state (or goal) must be one the env can be in: agent
    and block positions in [0, 512], the T on the table ([0, 512]^2), the agent's centre inside
    the walls ([7, 504]^2) and not inside the T, its speed at most ``AGENT_SPEED_LIMIT`` (2000
    px/s) and the block angle within ``ANGLE_LIMIT`` (+-200 pi, 100 turns; the angle is
    unwrapped, so it is not wrapped for you: ``quantwm.envs.base.wrap_angle`` does that).
    Anything else is a ``ValueError`` naming the value and the allowed range.
    The env holds only its 7-number state; each step simulates it with ``pusht_step``.
    """

    state_dim = 7
    proprio_dim = 4

    def __init__(self, img_size: int = 64, render_mode: str | None = None) -> None:
        super().__init__(img_size=img_size, render_mode=render_mode)
        self.action_space = spaces.Box(-ACTION_HIGH, ACTION_HIGH, shape=(2,), dtype=np.float32)
        vmax = AGENT_SPEED_LIMIT  # reset accepts no faster agent, and the PD never gets there
        self.observation_space = spaces.Dict(
            {
                "visual": spaces.Box(
                    0, 255, shape=(self.img_size, self.img_size, 3), dtype=np.uint8
                ),
                "proprio": spaces.Box(
                    low=np.array([0.0, 0.0, -vmax, -vmax], dtype=np.float32),
                    high=np.array([WORLD_SIZE, WORLD_SIZE, vmax, vmax], dtype=np.float32),
                    dtype=np.float32,
                ),
            }
        )
        self._state = np.array([256.0, 400.0, 256.0, 300.0, 0.0, 0.0, 0.0])

    def _sample_state(self, params: dict[str, float]) -> np.ndarray:
        rng = self.np_random
        while True:
            agent = rng.uniform(50, 450, size=2)
            block = rng.uniform(100, 400, size=2)
            angle = rng.uniform(-np.pi, np.pi)
            corners = tee_corners([*block, angle])
            if corners.min() < _INNER_LO or corners.max() > _INNER_HI:
                continue
            if tee_signed_distance(agent, [*block, angle]) > AGENT_RADIUS + 2.0:
                return np.array([*agent, *block, angle, 0.0, 0.0])

    def _check_state(self, state: np.ndarray, params: dict[str, float], what: str = "state"
                     ) -> None:
        xy = state[:4]
        if np.any(xy < 0.0) or np.any(xy > WORLD_SIZE):
            raise ValueError(
                f"{what} {state.tolist()}: agent and block positions must lie in "
                f"[0, {WORLD_SIZE:g}]"
            )
        if not abs(state[4]) <= ANGLE_LIMIT:
            raise ValueError(
                f"{what} {state.tolist()}: block angle {state[4]:g} must lie in "
                f"[-{ANGLE_LIMIT:.1f}, {ANGLE_LIMIT:.1f}] (100 turns either way); wrap it "
                f"into [-pi, pi) first"
            )
        corners = tee_corners(state[2:5])
        if corners.min() < 0.0 or corners.max() > WORLD_SIZE:
            raise ValueError(
                f"{what} {state.tolist()}: the T would stick out of the table "
                f"[0, {WORLD_SIZE:g}]^2"
            )
        if np.any(state[:2] < _INNER_LO) or np.any(state[:2] > _INNER_HI):
            raise ValueError(
                f"{what} {state.tolist()}: the agent at ({state[0]:g}, {state[1]:g}) is in a "
                f"wall; its centre must lie in [{_INNER_LO:g}, {_INNER_HI:g}]^2"
            )
        inside = tee_signed_distance(state[:2], state[2:5])
        if inside < 0.0:
            raise ValueError(
                f"{what} {state.tolist()}: the agent's centre ({state[0]:g}, {state[1]:g}) is "
                f"{-inside:.3g} px inside the T; it must lie outside the T"
            )
        speed = float(np.hypot(state[5], state[6]))
        if speed > AGENT_SPEED_LIMIT:
            raise ValueError(
                f"{what} {state.tolist()}: agent speed {speed:g} px/s (velocity "
                f"({state[5]:g}, {state[6]:g})) must be at most {AGENT_SPEED_LIMIT:g} px/s"
            )

    def _apply(self, state: np.ndarray, params: dict[str, float]) -> None:
        self._state = state

    def _advance(self, action: np.ndarray) -> None:
        self._state = pusht_step(self._state, action)

    # ---- the kit's env API -----------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        return self._state.copy()

    def render_state(self, state: Any, **params: float) -> np.ndarray:
        """Image (H, W, 3) uint8 of any PushT state (7,). PushT has no episode parameters."""
        if params:
            raise ValueError(f"PushT has no episode parameters, got {sorted(params)}")
        st = np.asarray(state, dtype=np.float64).reshape(1, -1)
        return render_pusht(st, self.img_size)[0]

    def proprio_of(self, state: Any) -> np.ndarray:
        return pusht_proprio(state)

    def is_success(self, state: Any, goal_state: Any) -> bool:
        return bool(pusht_success(state, goal_state))
