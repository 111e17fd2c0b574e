"""How far does the predictor drift open loop, relative to how far the scene moves? (prints)

    .venv/bin/python benchmarks/rollout_error.py            # both shipped models
    .venv/bin/python benchmarks/rollout_error.py --env pusht --segments 48
    .venv/bin/python benchmarks/rollout_error.py --checkpoint data/checkpoints/pusht.pt other.pt

For validation segments (history frames, then 5 frameskip steps with the dataset's actions) it
prints, per rollout step k, the latent MSE of the open-loop prediction against the encoded
true frame, the latent MSE between that true frame and the last observed one (how much the
scene changed), and their ratio. A planner can only tell good plans from bad ones where the
ratio is well below 1.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from quantwm.model import load
from quantwm.study.analysis import ground_truth_segment, open_loop_latents


@torch.inference_mode()
def rollout_error(checkpoint: str, segments: int, steps: int = 5
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean (prediction error, scene change) per rollout step; ``checkpoint``: env or path."""
    model = load(checkpoint).eval()
    env, h = model.config.env, model.config.num_hist
    errors, changes = [], []
    for traj in range(segments):
        z, z_pred = open_loop_latents(model, ground_truth_segment(env, frames=h + steps,
                                                                  traj=traj))
        truth = z[:, h:]
        errors.append((z_pred - truth).square().mean(dim=(0, 2, 3)).numpy())
        changes.append((truth - z[:, h - 1: h]).square().mean(dim=(0, 2, 3)).numpy())
    return np.mean(errors, axis=0), np.mean(changes, axis=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", choices=("wall", "pusht"), nargs="+", default=["wall", "pusht"])
    p.add_argument("--segments", type=int, default=24, help="validation trajectories used")
    p.add_argument("--checkpoint", nargs="+", default=None, metavar="PATH",
                   help="checkpoints to compare (instead of the shipped --env models)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.checkpoint or args.env:
        err, change = rollout_error(name, args.segments)
        print(f"{name} ({args.segments} validation segments), by rollout step 1..{len(err)}:")
        print("  prediction error " + " ".join(f"{v:.4f}" for v in err))
        print("  scene change     " + " ".join(f"{v:.4f}" for v in change))
        print("  error / change   " + " ".join(f"{v:.2f}" for v in err / change))


if __name__ == "__main__":
    main()
