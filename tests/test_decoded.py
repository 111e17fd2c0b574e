"""What decoded rollouts can show (quantwm.study.decoded): the agent's pixels apart from the
image's, and the agent's position read from the latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantwm import envs
from quantwm.study.decoded import AGENT_REACH, agent_errors, agent_masks, agent_readout, pixel_size
from quantwm.utils import DATA_DIR


@pytest.mark.parametrize("env", ["wall", "pusht"])
def test_the_agent_mask_covers_the_rendered_agent(env: str) -> None:
    """The neighbourhood holds every pixel the agent changes, and little else."""
    if env == "wall":
        state, params = np.array([[30.3, 20.6]]), {"wall_x": 50.0, "door_y": 30.0}
        away = np.array([[12.0, 50.0]])
    else:
        state = np.array([[201.0, 333.0, 400.0, 120.0, 0.3, 0.0, 0.0]])
        away = state.copy()
        away[0, :2] = (100.0, 100.0)
        params = {}
    here = envs.render_states(env, state, **params)[0].astype(int)
    there = envs.render_states(env, away, **params)[0].astype(int)
    changed = (np.abs(here - there).max(-1) > 12)  # drawn by the agent at `state` (or `away`)
    mask = agent_masks(env, envs.proprio_of(env, state)[:, :2])[0]
    mask_away = agent_masks(env, envs.proprio_of(env, away)[:, :2])[0]
    assert changed.any() and (changed <= (mask | mask_away)).all()
    radius_px = AGENT_REACH[env] / pixel_size(env)
    assert mask.sum() == pytest.approx(np.pi * radius_px**2, rel=0.25)
    assert agent_masks(env, np.zeros((3, 2)), img_size=32).shape == (3, 32, 32)


def test_agent_errors_separate_the_agent_from_the_image() -> None:
    """A rollout that loses the dot has a tiny whole-image error and a large one at the agent;
    a perfect reconstruction has none."""
    from quantwm.study.analysis import Segment

    xy = np.array([[20.0, 20.0], [24.0, 22.0], [28.0, 24.0]])
    params = {"wall_x": 50.0, "door_y": 30.0}
    truth = torch.from_numpy(envs.render_states("wall", xy, **params)).permute(0, 3, 1, 2) / 255.0
    empty = envs.render_states("wall", np.array([[5.0, 60.0]] * 3), **params)
    no_dot = torch.from_numpy(empty).permute(0, 3, 1, 2) / 255.0
    no_dot[:, :, 52:, :12] = truth[:, :, 52:, :12]  # the far corner where the dot was put
    seg = Segment("wall", truth[None], torch.from_numpy(xy).float()[None], torch.zeros(1, 2, 10))
    frame = agent_errors({"lost": {"truth": truth, "recon": truth, "pred": no_dot}}, seg)
    assert list(frame["picture"].unique()) == ["reconstruction", "rollout"]
    recon = frame[frame["picture"] == "reconstruction"]
    assert (recon[["image_mse", "agent_mse", "agent_share"]] == 0).all().all()
    lost = frame[frame["picture"] == "rollout"]
    assert (lost["agent_share"] > 0.99).all() and (lost["agent_pixels"] < 0.03).all()
    assert (lost["agent_mse"] > 30 * lost["image_mse"]).all()


def test_the_wall_latents_locate_the_agent_the_decoder_loses(one_thread) -> None:
    """The shipped FP32 Wall model: its decoded rollout loses the agent (notebooks 00 and 06),
    yet a linear read-out finds the agent in the predicted latents within a few pixels, where
    assuming it did not move is off by far more."""
    if not (DATA_DIR / "checkpoints" / "wall.pt").exists():
        pytest.skip("shipped checkpoints not found")
    from quantwm.model import load
    from quantwm.study.analysis import ground_truth_segment, open_loop
    from quantwm.study.latent import validation_segments

    model = load("wall").eval()
    seg = ground_truth_segment("wall", frames=6)
    frame = agent_errors({"FP32": open_loop(model, seg)}, seg)
    predicted = frame[(frame["picture"] == "rollout") & (frame["frame"] >= 2)]
    assert (predicted["agent_share"] > 0.5).all()
    assert (predicted["agent_mse"] > 10 * predicted["image_mse"]).all()
    readout = agent_readout(model, validation_segments("wall", n=64, steps=3))
    assert list(readout.index) == [0, 1, 2, 3]
    assert (readout["readout_px"] < 4).all()
    assert (readout.loc[2:, "still_px"] > 3 * readout.loc[2:, "readout_px"]).all()
    with pytest.raises(ValueError, match="history frame"):
        agent_readout(model, validation_segments("wall", n=4, steps=2, num_hist=2))
