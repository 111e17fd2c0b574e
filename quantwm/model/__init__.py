"""quantwm.model: the DINO-WM-style world model, its training and its checkpoints.

    from quantwm.model import load
    wm = load("wall")                                  # data/checkpoints/wall.pt
    z = wm.encode(visual, proprio)                     # (B, T, N, Dz)
    z_next = wm.rollout(z[:, -1:], wm.normalize_action(actions))
"""

from quantwm.model.checkpoint import (
    CHECKPOINT_DIR,
    checkpoint_digest,
    checkpoint_path,
    load,
    save,
)
from quantwm.model.world_model import WorldModel, WorldModelConfig

__all__ = ["CHECKPOINT_DIR", "WorldModel", "WorldModelConfig", "checkpoint_digest",
           "checkpoint_path", "load", "save"]
