"""Wall: a dot in two rooms separated by a wall with a door (DINO-WM's "wall" task).

Geometry (world units = pixels of the reference's 65 x 65 canvas; x = column, y = row):

- border walls on the lines x = 4, x = 60, y = 4, y = 60 (drawn as the 1-px lines at 4 and 60);
- a vertical wall occupying ``wall_x - 3 <= x <= wall_x + 3`` (width 6; drawn as the 7 pixel
  columns ``wall_x - 3 .. wall_x + 3``), except the door ``|y - door_y| < 4`` (drawn open on rows
  ``door_y - 4 .. door_y + 4``);
- ``wall_x`` and ``door_y`` are per-episode parameters; datasets draw integers
  ``wall_x in [20, 44]`` and ``door_y in [10, 54]`` (the reference's wall/door paddings 20 / 10).

Dynamics: ``next = pos + 2 * action`` with the action clipped to ``[-2, 2]^2``. Collisions are
exact segment tests against the walls (so a large step can never tunnel through a wall): a move
whose straight path would touch a wall outside the door stops 0.5 px short of the first contact,
measured along the path (or stays put if it was already closer than that). The door is open.

State = proprio = (x, y), float64 state, float32 proprio. The picture: white background, black
walls, the agent a red Gaussian dot (std 1.7 px), rendered at ``img_size`` pixels for the 65-px
world. Success (PROTOCOL section 3): ``||goal_xy - xy|| < 4.5`` px.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from gymnasium import spaces

from quantwm.envs import raster
from quantwm.envs.base import KitEnv, as_scalar

WORLD_SIZE = 65.0
BORDER_LO, BORDER_HI = 4.0, 60.0
WALL_HALF_WIDTH = 3.0
DOOR_HALF_HEIGHT = 4.0
DOT_STD = 1.7
STEP_SCALE = 2.0
ACTION_HIGH = 2.0
STOP_SHORT = 0.5
SUCCESS_RADIUS = 4.5
#: inclusive integer ranges the datasets and episode sets draw wall_x / door_y from
WALL_X_RANGE = (20, 44)
DOOR_Y_RANGE = (10, 54)
#: the range reset accepts for explicitly given parameters (both rooms and the door stay open)
WALL_X_LIMITS = (12.0, 52.0)
DOOR_Y_LIMITS = (9.0, 55.0)

_BG = np.array([255.0, 255.0, 255.0])
_WALL = np.array([0.0, 0.0, 0.0])
_DOT = np.array([255.0, 0.0, 0.0])


def _obstacles(wall_x: np.ndarray, door_y: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Closed boxes (x0, x1, y0, y1), each bound an array (B,), that the agent may not touch."""
    inf = np.full_like(wall_x, np.inf)
    lo, hi = np.full_like(wall_x, BORDER_LO), np.full_like(wall_x, BORDER_HI)
    wx0, wx1 = wall_x - WALL_HALF_WIDTH, wall_x + WALL_HALF_WIDTH
    return [
        (-inf, lo, -inf, inf),  # left border
        (hi, inf, -inf, inf),  # right border
        (-inf, inf, -inf, lo),  # top border
        (-inf, inf, hi, inf),  # bottom border
        (wx0, wx1, -inf, door_y - DOOR_HALF_HEIGHT),  # wall above the door
        (wx0, wx1, door_y + DOOR_HALF_HEIGHT, inf),  # wall below the door
    ]


def _batch(pos: Any, wall_x: Any, door_y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must have shape (B, 2), got {pos.shape}")
    n = pos.shape[0]
    wx = np.broadcast_to(np.asarray(wall_x, dtype=np.float64), (n,)).copy()
    dy = np.broadcast_to(np.asarray(door_y, dtype=np.float64), (n,)).copy()
    return pos, wx, dy


def wall_is_free(pos: Any, wall_x: Any, door_y: Any) -> np.ndarray:
    """Whether each position (B, 2) lies strictly inside the free space of its layout."""
    pos, wx, dy = _batch(pos, wall_x, door_y)
    inside = np.zeros(len(pos), dtype=bool)
    for x0, x1, y0, y1 in _obstacles(wx, dy):
        inside |= (pos[:, 0] >= x0) & (pos[:, 0] <= x1) & (pos[:, 1] >= y0) & (pos[:, 1] <= y1)
    return ~inside


def wall_step(pos: Any, action: Any, wall_x: Any, door_y: Any) -> np.ndarray:
    """One Wall transition for a batch: positions (B, 2), actions (B, 2) -> next positions (B, 2).

    Actions are clipped to ``[-2, 2]``; the intended displacement is ``2 * action``. Each move is
    tested against every wall box with the slab method; the earliest contact time ``t*`` along the
    path ``pos + t * d`` (t in [0, 1]) stops the agent at ``t* - 0.5 / |d|`` (never below 0).
    """
    pos, wx, dy = _batch(pos, wall_x, door_y)
    act = np.clip(
        np.asarray(action, dtype=np.float64).reshape(pos.shape), -ACTION_HIGH, ACTION_HIGH
    )
    d = STEP_SCALE * act
    t_hit = np.full(len(pos), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for box in _obstacles(wx, dy):
            t_enter = np.full(len(pos), -np.inf)
            t_exit = np.full(len(pos), np.inf)
            for axis, (lo, hi) in enumerate((box[:2], box[2:])):
                p, v = pos[:, axis], d[:, axis]
                t1, t2 = (lo - p) / v, (hi - p) / v
                moving = v != 0
                inside_slab = (p >= lo) & (p <= hi)
                near = np.where(moving, np.minimum(t1, t2), np.where(inside_slab, -np.inf, np.inf))
                far = np.where(moving, np.maximum(t1, t2), np.where(inside_slab, np.inf, -np.inf))
                t_enter = np.maximum(t_enter, near)
                t_exit = np.minimum(t_exit, far)
            hits = (t_enter <= t_exit) & (t_enter <= 1.0) & (t_exit >= 0.0)
            t_hit = np.where(hits, np.minimum(t_hit, np.maximum(t_enter, 0.0)), t_hit)
    length = np.linalg.norm(d, axis=1)
    blocked = np.isfinite(t_hit)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_stop = np.where(blocked, np.maximum(t_hit - STOP_SHORT / length, 0.0), 1.0)
    return pos + t_stop[:, None] * d


def wall_success(states: Any, goal_states: Any) -> np.ndarray:
    """Vectorised PROTOCOL section 3 criterion: ``||goal_xy - xy|| < 4.5`` (any leading shape)."""
    s = np.asarray(states, dtype=np.float64)
    g = np.asarray(goal_states, dtype=np.float64)
    return np.linalg.norm(g[..., :2] - s[..., :2], axis=-1) < SUCCESS_RADIUS


@functools.lru_cache(maxsize=4096)
def _layout_image(wall_x: float, door_y: float, img_size: int) -> np.ndarray:
    """The static picture of a layout, uint8 (H, W, 3): background and walls.

    Walls are the exact pixel-area coverage of the reference's wall pixels. World point (x, y)
    sits at the centre of reference pixel (x, y), hence the 0.5 shifts.
    """

    def cover(lo: float, hi: float) -> np.ndarray:  # pixel-area coverage of world [lo, hi]
        return raster.interval_coverage(
            np.array([lo + 0.5]), np.array([hi + 0.5]), img_size, WORLD_SIZE
        )[0]

    wall_cols = cover(wall_x - WALL_HALF_WIDTH - 0.5, wall_x + WALL_HALF_WIDTH + 0.5)
    door_rows = cover(door_y - DOOR_HALF_HEIGHT - 0.5, door_y + DOOR_HALF_HEIGHT + 0.5)
    walls = wall_cols[None, :] * (1.0 - door_rows)[:, None]
    lines = np.maximum(
        cover(BORDER_LO - 0.5, BORDER_LO + 0.5), cover(BORDER_HI - 0.5, BORDER_HI + 0.5)
    )
    walls = np.maximum(walls, np.maximum(lines[None, :], lines[:, None]))
    img = raster.blank(1, img_size, _BG)
    raster.composite_(img, _WALL, walls[None])
    img = raster.to_uint8(img)[0]
    img.flags.writeable = False
    return img


def render_wall(states: Any, wall_x: Any, door_y: Any, img_size: int = 64) -> np.ndarray:
    """Images (B, H, W, 3) uint8 of positions (B, 2) under per-frame (or shared) layouts.

    The layout's picture is cached per (wall_x, door_y); the dot is the reference's Gaussian
    ``exp(-r^2 / (2 * 1.7^2))`` sampled at pixel centres (within 4 std of its centre) and
    blended in red over it.
    """
    pos, wx, dy = _batch(states, wall_x, door_y)
    px = WORLD_SIZE / img_size
    reach = 4.0 * DOT_STD

    def render(sl: slice) -> np.ndarray:
        p, x, y = pos[sl], wx[sl], dy[sl]
        img = np.stack(
            [_layout_image(float(a), float(b), img_size) for a, b in zip(x, y, strict=True)]
        )
        # the dot changes only a small window of pixels: blend there (raster coords = world + 0.5)
        rows, cols = raster.window(p + 0.5, reach, img_size, WORLD_SIZE)
        gx = np.exp(-(((cols + 0.5) * px - 0.5 - p[:, :1]) ** 2) / (2 * DOT_STD**2))  # (n, K)
        gy = np.exp(-(((rows + 0.5) * px - 0.5 - p[:, 1:]) ** 2) / (2 * DOT_STD**2))
        alpha = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)[..., None]
        where = (np.arange(len(p))[:, None, None], rows[:, :, None], cols[:, None, :])
        base = img[where].astype(np.float32)  # (n, K, K, 3)
        img[where] = np.clip(base + (_DOT.astype(np.float32) - base) * alpha + 0.5, 0, 255)
        return img

    return raster.in_chunks(render, len(pos), img_size)


def wall_proprio(states: Any) -> np.ndarray:
    """Proprio (x, y) float32 of states (..., 2)."""
    return np.asarray(states, dtype=np.float64)[..., :2].astype(np.float32)


class WallEnv(KitEnv):
    """Gymnasium env ``quantwm/Wall-v0`` (see the module docstring for geometry and dynamics).

    Episode parameters ``wall_x`` and ``door_y`` come from ``reset`` options when given, else from
    the constructor when given, else are drawn (integers in the dataset ranges) from the env's
    seeded ``np_random``; the start position is drawn uniformly in the free space unless
    ``options["state"]`` is given. Readable as ``env.unwrapped.wall_x`` / ``door_y``.
    """

    state_dim = 2
    proprio_dim = 2
    param_names = ("wall_x", "door_y")

    def __init__(
        self,
        img_size: int = 64,
        render_mode: str | None = None,
        wall_x: float | None = None,
        door_y: float | None = None,
    ) -> None:
        super().__init__(img_size=img_size, render_mode=render_mode)
        self._default_wall_x = (
            None if wall_x is None else as_scalar(wall_x, "wall_x", *WALL_X_LIMITS)
        )
        self._default_door_y = (
            None if door_y is None else as_scalar(door_y, "door_y", *DOOR_Y_LIMITS)
        )
        self.action_space = spaces.Box(-ACTION_HIGH, ACTION_HIGH, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "visual": spaces.Box(
                    0, 255, shape=(self.img_size, self.img_size, 3), dtype=np.uint8
                ),
                "proprio": spaces.Box(0.0, WORLD_SIZE, shape=(2,), dtype=np.float32),
            }
        )
        self.wall_x = float(np.mean(WALL_X_RANGE)) if wall_x is None else self._default_wall_x
        self.door_y = float(np.mean(DOOR_Y_RANGE)) if door_y is None else self._default_door_y
        self._pos = np.array([(BORDER_LO + self.wall_x) / 2, (BORDER_LO + BORDER_HI) / 2])

    def _resolve_params(self, options: dict[str, Any]) -> dict[str, float]:
        rng = self.np_random
        if options.get("wall_x") is not None:
            wall_x = as_scalar(options["wall_x"], "wall_x", *WALL_X_LIMITS)
        elif self._default_wall_x is not None:
            wall_x = self._default_wall_x
        else:
            wall_x = float(rng.integers(WALL_X_RANGE[0], WALL_X_RANGE[1] + 1))
        if options.get("door_y") is not None:
            door_y = as_scalar(options["door_y"], "door_y", *DOOR_Y_LIMITS)
        elif self._default_door_y is not None:
            door_y = self._default_door_y
        else:
            door_y = float(rng.integers(DOOR_Y_RANGE[0], DOOR_Y_RANGE[1] + 1))
        return {"wall_x": wall_x, "door_y": door_y}

    def _sample_state(self, params: dict[str, float]) -> np.ndarray:
        return sample_free_positions(self.np_random, 1, params["wall_x"], params["door_y"])[0]

    def _check_state(self, state: np.ndarray, params: dict[str, float], what: str = "state"
                     ) -> None:
        for axis, value in zip("xy", state, strict=True):
            if not BORDER_LO < value < BORDER_HI:
                raise ValueError(
                    f"{what} {state.tolist()} is not in the free space: {axis}={value:g} must "
                    f"lie strictly between the borders {BORDER_LO:g} and {BORDER_HI:g}"
                )
        wall_x, door_y = params["wall_x"], params["door_y"]
        if not wall_is_free(state[None], wall_x, door_y)[0]:
            raise ValueError(
                f"{what} {state.tolist()} is not in the free space: it is inside the wall (x in "
                f"[{wall_x - WALL_HALF_WIDTH:g}, {wall_x + WALL_HALF_WIDTH:g}] outside the door, "
                f"|y - {door_y:g}| < {DOOR_HALF_HEIGHT:g}) of wall_x={wall_x:g}, "
                f"door_y={door_y:g}"
            )

    def _apply(self, state: np.ndarray, params: dict[str, float]) -> None:
        self.wall_x, self.door_y = params["wall_x"], params["door_y"]
        self._pos = state

    def _advance(self, action: np.ndarray) -> None:
        self._pos = wall_step(self._pos[None], action[None], self.wall_x, self.door_y)[0]

    def get_state(self) -> np.ndarray:
        return self._pos.copy()

    def episode_params(self) -> dict[str, float]:
        return {"wall_x": float(self.wall_x), "door_y": float(self.door_y)}

    def render_state(self, state: Any, **params: float) -> np.ndarray:
        """Image (H, W, 3) uint8 of ``state`` under the given (default: current) layout."""
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise ValueError(f"unknown episode parameter(s) {unknown}; allowed: {self.param_names}")
        wall_x = params.get("wall_x", self.wall_x)
        door_y = params.get("door_y", self.door_y)
        pos = np.asarray(state, dtype=np.float64).reshape(1, -1)[:, :2]
        return render_wall(pos, wall_x, door_y, self.img_size)[0]

    def proprio_of(self, state: Any) -> np.ndarray:
        return wall_proprio(state)

    def is_success(self, state: Any, goal_state: Any) -> bool:
        return bool(wall_success(state, goal_state))


def sample_free_positions(
    rng: np.random.Generator, n: int, wall_x: Any, door_y: Any, margin: float = 0.5
) -> np.ndarray:
    """``n`` positions drawn uniformly from the free space (at least ``margin`` from any wall)."""
    wx = np.broadcast_to(np.asarray(wall_x, dtype=np.float64), (n,))
    dy = np.broadcast_to(np.asarray(door_y, dtype=np.float64), (n,))
    out = np.empty((n, 2))
    todo = np.arange(n)
    while len(todo):
        cand = rng.uniform(BORDER_LO + margin, BORDER_HI - margin, size=(len(todo), 2))
        ok = np.ones(len(todo), dtype=bool)
        for dx, dyy in ((0, 0), (margin, 0), (-margin, 0), (0, margin), (0, -margin)):
            ok &= wall_is_free(cand + [dx, dyy], wx[todo], dy[todo])
        out[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return out
