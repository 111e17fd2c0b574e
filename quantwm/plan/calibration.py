"""Record the inputs the encoder and predictor see during FP32 planning (PROTOCOL section 5).

``record_calibration`` runs the planner for a few MPC rounds with forward pre-hooks on
``world_model.encoder`` and ``world_model.predictor`` and keeps (a seeded random subset of) the
rows of their input tensors. The result, ``{"encoder": [...], "predictor": [...]}``, is what
``quantwm.quantize(model, config, calibration)`` consumes; it is plain tensors, so
``save_calibration`` / ``load_calibration`` (``torch.load(weights_only=True)``) can cache it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from quantwm.plan.config import PlannerConfig
from quantwm.plan.mpc import plan_episodes
from quantwm.utils import atomic_path

PARTS = ("encoder", "predictor")


class _Recorder:
    """A forward pre-hook keeping each input row with probability ``keep`` (seeded)."""

    def __init__(self, keep: float, seed: int) -> None:
        self.keep = keep
        self.generator = torch.Generator().manual_seed(seed)
        self.tensors: list[Tensor] = []
        self.rows = 0

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if self.keep >= 1.0:
            rows = x
        else:
            mask = torch.rand(x.shape[0], generator=self.generator) < self.keep
            if not mask.any():
                return
            rows = x[mask.to(x.device)]
        self.tensors.append(rows.detach().to("cpu", copy=True))
        self.rows += rows.shape[0]


def record_calibration(world_model: torch.nn.Module, episodes: Any, config: PlannerConfig,
                       rounds: int = 2, device: torch.device | str = "cpu",
                       max_samples: int = 4096, progress: bool = False,
                       make_env: Callable[..., Any] | None = None) -> dict[str, list[Tensor]]:
    """Inputs of ``encoder`` and ``predictor`` while the FP32 planner runs ``rounds`` MPC rounds.

    Episodes that succeed leave the batch, as in evaluation. At most ``max_samples`` input
    rows (images for the encoder, token sequences for the predictor) are kept per part, drawn
    uniformly over the run with a generator seeded from ``config.seed``; the predictor rows
    come from every rollout step, so they cover 1..num_hist frame windows.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    cfg = config.replace(mpc_rounds=rounds - 1)
    n = len(episodes.ids)
    # Upper bounds on the rows each part sees if no episode succeeds early.
    expected = {
        "encoder": n * (rounds + 2),  # goal + start + one observation per round
        "predictor": n * rounds * cfg.cem_steps * cfg.samples * cfg.horizon,
    }
    recorders = {part: _Recorder(min(1.0, max_samples / expected[part]), cfg.seed + k)
                 for k, part in enumerate(PARTS)}
    handles = [getattr(world_model, part).register_forward_pre_hook(recorders[part])
               for part in PARTS]
    try:
        plan_episodes(world_model, episodes, cfg, device=device, progress=progress,
                      make_env=make_env)
    finally:
        for h in handles:
            h.remove()
    # Clone outside inference mode so that the tensors can be used with autograd later.
    return {part: [t.clone() for t in _trim(recorders[part].tensors, max_samples)]
            for part in PARTS}


def _trim(tensors: list[Tensor], max_rows: int) -> list[Tensor]:
    """Keep whole tensors (and a slice of the last) until ``max_rows`` rows are kept."""
    out, total = [], 0
    for t in tensors:
        if total >= max_rows:
            break
        take = min(t.shape[0], max_rows - total)
        out.append(t[:take])
        total += take
    return out


def calibration_rows(calibration: dict[str, list[Tensor]]) -> dict[str, int]:
    """Number of recorded rows per part."""
    return {part: sum(t.shape[0] for t in ts) for part, ts in calibration.items()}


def save_calibration(calibration: dict[str, list[Tensor]], path: str | os.PathLike) -> None:
    """Write a calibration set atomically (plain tensors; loadable with weights_only=True)."""
    with atomic_path(path) as tmp:
        torch.save({part: list(ts) for part, ts in calibration.items()}, tmp)


def load_calibration(path: str | os.PathLike) -> dict[str, list[Tensor]]:
    """A calibration set written by ``save_calibration``; a one-line ``ValueError`` naming the
    file when it cannot be read or is not one (``torch.load(weights_only=True)``)."""
    from quantwm.model.checkpoint import load_torch_file

    data = load_torch_file(path, "calibration file")
    if not isinstance(data, dict) or not set(PARTS) <= set(data):
        raise ValueError(f"{path} is not a calibration file (needs keys {PARTS})")
    for part in PARTS:
        if not isinstance(data[part], list | tuple) or not all(
                isinstance(t, Tensor) for t in data[part]):
            raise ValueError(f"calibration file {path}: {part!r} is not a list of tensors")
    return {part: list(data[part]) for part in data}
