"""Does the Wall model know where the wall is? (prints; not a test)

    .venv/bin/python benchmarks/wall_collisions.py
    .venv/bin/python benchmarks/wall_collisions.py --checkpoint data/checkpoints/wall.pt other.pt

A planner exploits whatever its model gets wrong. In Wall the costly error is a predicted pass
*through* the wall: the plan looks like it reaches a goal in the other room, the real agent
stops at the wall. For random layouts this pushes the agent straight at the wall from 8-20 px
away (away from the door) for one planning horizon, 5 frameskip steps of 5 actions at 1.6 px
per step, and rolls the predictor out open loop. Where the model puts the agent is read off
its last predicted latent by the nearest encoded frame on a 1 px grid of free positions in
that layout. Printed: the share of pushes predicted on the far side of the wall, the median
position error, and the same error for free moves that never touch a wall (the control).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from quantwm.envs.wall import (
    DOOR_Y_RANGE,
    WALL_X_RANGE,
    render_wall,
    wall_is_free,
    wall_proprio,
    wall_step,
)
from quantwm.model import load

STEP = 0.8  # action norm: 1.6 px per env step


@torch.inference_mode()
def push_test(model: torch.nn.Module, layouts: int, per_layout: int, seed: int
              ) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    k_steps, frameskip = 5, model.config.frameskip

    def encode(pos: np.ndarray, wall_x: float, door_y: float) -> torch.Tensor:
        img = torch.from_numpy(render_wall(pos, wall_x, door_y, model.config.img_size))
        visual = img.permute(0, 3, 1, 2).float().div(255.0)[:, None]
        return model.encode(visual, torch.from_numpy(wall_proprio(pos)).float()[:, None])[:, 0]

    through, wall_err, free_err = [], [], []
    for _ in range(layouts):
        wall_x = float(rng.integers(WALL_X_RANGE[0], WALL_X_RANGE[1] + 1))
        door_y = float(rng.integers(DOOR_Y_RANGE[0], DOOR_Y_RANGE[1] + 1))
        grid = np.mgrid[6:59:1.0, 6:59:1.0].reshape(2, -1).T
        grid = grid[wall_is_free(grid, wall_x, door_y)]
        z_grid = encode(grid, wall_x, door_y)
        side = rng.choice([-1.0, 1.0], per_layout)  # which room the push starts in
        y = rng.uniform(8, 57, per_layout)
        starts = {
            "wall": (np.stack([wall_x + side * rng.uniform(8, 20, per_layout), y], 1),
                     np.pi * (side > 0) + rng.uniform(-0.4, 0.4, per_layout)),  # at the wall
            "free": (np.stack([wall_x + side * rng.uniform(10, 20, per_layout), y], 1),
                     np.pi * (side < 0) + rng.uniform(-0.4, 0.4, per_layout)),  # away from it
        }
        for kind, (start, heading) in starts.items():
            ok = (wall_is_free(start, wall_x, door_y) & (start[:, 0] > 7) & (start[:, 0] < 57)
                  & (np.abs(start[:, 1] - door_y) >= 10))  # away from the door
            start, heading = start[ok], heading[ok]
            act = STEP * np.stack([np.cos(heading), np.sin(heading)], 1)
            pos = start.copy()
            for _ in range(k_steps * frameskip):
                pos = wall_step(pos, act, wall_x, door_y)
            actions = np.repeat(act, k_steps * frameskip, axis=0).reshape(len(act), k_steps, -1)
            z = model.rollout(encode(start, wall_x, door_y)[:, None],
                              model.normalize_action(torch.from_numpy(actions).float()))[:, -1]
            dist = (z_grid[None] - z[:, None]).pow(2).mean(dim=(-2, -1))
            guess = grid[dist.argmin(1).numpy()]
            err = np.linalg.norm(guess - pos, axis=1)
            if kind == "wall":
                through += list(np.sign(guess[:, 0] - wall_x) != np.sign(pos[:, 0] - wall_x))
                wall_err += list(err)
            else:
                free_err += list(err)
    return {"through_wall": float(np.mean(through)), "wall_err_px": float(np.median(wall_err)),
            "free_err_px": float(np.median(free_err)), "pushes": len(through)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", default=["wall"], help="'wall' or paths")
    p.add_argument("--layouts", type=int, default=30)
    p.add_argument("--per-layout", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for ckpt in args.checkpoint:
        model = load(ckpt).eval()
        if model.config.env != "wall":
            raise ValueError(f"{ckpt} is a {model.config.env} model; this is a Wall benchmark")
        r = push_test(model, args.layouts, args.per_layout, args.seed)
        print(f"{ckpt}: {r['pushes']} pushes at the wall: {r['through_wall']:.2f} predicted "
              f"through it, median position error {r['wall_err_px']:.1f} px; free moves: "
              f"{r['free_err_px']:.1f} px")


if __name__ == "__main__":
    main()
