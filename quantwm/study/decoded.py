"""What decoded rollouts can and cannot show: the agent's pixels apart, and the agent in the latent.

The decoder (``WorldModel.decode``) is for viewing only. Stage 2 trains it on the frozen
encoder's latents of real frames (detached), never on the predictor's latents, with a plain
pixel MSE; the planner compares latents and never decodes. In an open-loop rollout the decoded
agent can fade while the pixel MSE of the whole image stays flat: the agent (Wall: a red dot of
1.7 px std; PushT: a disc of 1.9 px radius) covers ~2 % of a 64 x 64 image, so the background,
walls and block carry the whole-image error. Two measures separate the two:

- :func:`agent_errors`: the pixel MSE of a decoded picture within the agent's neighbourhood
  (``AGENT_REACH``) beside the whole image's, per frame;
- :func:`agent_readout`: where the agent is, read linearly from the latents themselves (a ridge
  regression from the visual tokens of encoded frames to the agent's position, fitted on half of
  the segments and applied to the other half's encoded frames and the predictor's open-loop
  latents), in pixels, beside the error of assuming the agent did not move.

    seg = analysis.ground_truth_segment("wall", frames=8)
    agent_errors({"FP32": analysis.open_loop(model, seg)}, seg)
    agent_readout(model, latent.validation_segments("wall", n=200))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from quantwm.envs.pusht import AGENT_RADIUS
from quantwm.envs.pusht import WORLD_SIZE as PUSHT_WORLD
from quantwm.envs.wall import DOT_STD
from quantwm.envs.wall import WORLD_SIZE as WALL_WORLD
from quantwm.utils import check_env_name

#: the agent's neighbourhood: world units from its centre (Wall: 3 dot stds, 5.1 px; PushT:
#: 1.5 agent radii, 2.8 px at 64 x 64)
AGENT_REACH = {"wall": 3.0 * DOT_STD, "pusht": 1.5 * AGENT_RADIUS}
_WORLD = {"wall": WALL_WORLD, "pusht": PUSHT_WORLD}
#: world coordinate of pixel (0, 0)'s centre is (c + 0.5) * px + offset (the renderers')
_OFFSET = {"wall": -0.5, "pusht": 0.0}


def pixel_size(env: str, img_size: int = 64) -> float:
    """World units per pixel of an ``img_size`` image of ``env``."""
    return _WORLD[check_env_name(env)] / img_size


def agent_masks(env: str, agent_xy: Any, img_size: int = 64) -> np.ndarray:
    """(T, H, W) bool: the pixels whose centre lies within ``AGENT_REACH`` of the agent at
    ``agent_xy`` (T, 2) world positions (the first two proprio numbers of either env)."""
    env = check_env_name(env)
    xy = np.asarray(agent_xy, dtype=np.float64).reshape(-1, 2)
    centres = (np.arange(img_size) + 0.5) * pixel_size(env, img_size) + _OFFSET[env]
    dx = centres[None, None, :] - xy[:, 0, None, None]
    dy = centres[None, :, None] - xy[:, 1, None, None]
    return dx**2 + dy**2 <= AGENT_REACH[env] ** 2


def agent_errors(rollouts: dict[str, dict[str, torch.Tensor]], segment: Any) -> pd.DataFrame:
    """Per configuration, frame and picture (``reconstruction`` = decode(encode(truth)),
    ``rollout`` = the open-loop prediction decoded; ``quantwm.study.analysis.open_loop``): the
    pixel MSE against the truth over the whole image (``image_mse``) and within the agent's
    neighbourhood (``agent_mse``), and the neighbourhood's share of the image's pixels
    (``agent_pixels``) and of its squared error (``agent_share``). ``segment`` is the
    ``analysis.Segment`` the rollouts were made from (its proprio gives the agent)."""
    rows = []
    for label, r in rollouts.items():
        truth = r["truth"].float()
        masks = torch.from_numpy(agent_masks(segment.env, segment.proprio[0, :, :2],
                                             truth.shape[-1]))
        for picture, key in (("reconstruction", "recon"), ("rollout", "pred")):
            sq = ((r[key].float() - truth) ** 2).mean(1)  # (T, H, W), over channels
            for t in range(truth.shape[0]):
                m = masks[t]
                rows.append({"config": label, "frame": t, "picture": picture,
                             "image_mse": float(sq[t].mean()), "agent_mse": float(sq[t][m].mean()),
                             "agent_pixels": float(m.float().mean()),
                             "agent_share": float(sq[t][m].sum() / sq[t].sum().clamp_min(1e-12))})
    return pd.DataFrame(rows)


@torch.no_grad()
def agent_readout(model: torch.nn.Module, segments: Any, ridge: float = 100.0) -> pd.DataFrame:
    """How precisely the agent's position can be read from the latents, per rollout step.

    A ridge regression (penalty ``ridge`` on standardised features) from the visual tokens of
    the encoded frames (the proprio embedding left out) to the agent's (x, y) is fitted on the
    first half of ``segments`` (a ``quantwm.study.latent.SegmentSet``) and applied to the other
    half: at step 0 to the encoded frames, at step k to the model's open-loop latent k steps
    ahead (from the true actions). Returns per step the median error in pixels (``readout_px``)
    and, for scale, that of assuming the agent stayed where it was at step 0 (``still_px``).
    """
    h = int(model.config.num_hist)
    if h != segments.num_hist:
        raise ValueError(f"the model predicts from {h} history frame(s), the segments were cut "
                         f"for {segments.num_hist}")
    n = len(segments.ids)
    if n < 4:
        raise ValueError(f"need at least 4 segments (half to fit, half to test), got {n}")
    dev = next(model.parameters()).device
    enc = model.config.enc_dim
    z = model.encode(segments.visual.to(dev), segments.proprio.to(dev))
    z_pred = model.rollout_window(z, model.normalize_action(segments.actions.to(dev)))
    feats = z[..., :enc].flatten(2).double().cpu().numpy()  # (S, T, N * enc)
    pred = z_pred[..., :enc].flatten(2).double().cpu().numpy()  # (S, T - h, N * enc)
    xy = segments.proprio[..., :2].double().numpy()  # (S, T, 2) world units
    fit = n // 2
    x_fit, y_fit = feats[:fit].reshape(-1, feats.shape[-1]), xy[:fit].reshape(-1, 2)
    mu, sd, y_mu = x_fit.mean(0), x_fit.std(0) + 1e-6, y_fit.mean(0)
    a = (x_fit - mu) / sd
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ (y_fit - y_mu))

    def read(x: np.ndarray) -> np.ndarray:
        return ((x - mu) / sd) @ w + y_mu

    px = pixel_size(segments.env, segments.visual.shape[-1])
    start = xy[fit:, h - 1]
    rows = [{"step": 0, "readout_px": float(np.median(np.linalg.norm(
        read(feats[fit:, h - 1]) - start, axis=-1))) / px, "still_px": 0.0}]
    for k in range(1, pred.shape[1] + 1):
        truth = xy[fit:, h - 1 + k]
        rows.append({"step": k,
                     "readout_px": float(np.median(np.linalg.norm(read(pred[fit:, k - 1]) - truth,
                                                                   axis=-1))) / px,
                     "still_px": float(np.median(np.linalg.norm(start - truth, axis=-1))) / px})
    return pd.DataFrame(rows).set_index("step")
