"""quantwm.model: the DINO-WM-style world model, its training and its checkpoints.

    from quantwm.model import load
    wm = load("wall")                                  # data/checkpoints/wall.pt
    z = wm.encode(visual, proprio)                     # (B, T, N, Dz)
    z_next = wm.rollout(z[:, -1:], wm.normalize_action(actions))

The names below are imported on first use (PEP 562): importing a submodule that needs no torch
(or ``quantwm.model`` itself) does not wait seconds for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantwm.utils import lazy_exports

#: public name -> the submodule that defines it
_SOURCES = {
    "CHECKPOINT_DIR": "checkpoint", "checkpoint_digest": "checkpoint",
    "checkpoint_path": "checkpoint", "load": "checkpoint", "save": "checkpoint",
    "WorldModel": "world_model", "WorldModelConfig": "world_model",
}

__all__ = ["CHECKPOINT_DIR", "WorldModel", "WorldModelConfig", "checkpoint_digest",
           "checkpoint_path", "load", "save"]

if TYPE_CHECKING:
    from quantwm.model.checkpoint import (
        CHECKPOINT_DIR,
        checkpoint_digest,
        checkpoint_path,
        load,
        save,
    )
    from quantwm.model.world_model import WorldModel, WorldModelConfig


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, __all__)
