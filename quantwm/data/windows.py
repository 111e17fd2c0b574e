"""FrameWindows: a torch Dataset of frameskip windows cut from trajectories.

Window ``(i, t0)`` of trajectory ``i`` holds ``num_frames`` frames at env steps
``t0, t0 + frameskip, ..., t0 + (num_frames - 1) * frameskip`` and, for each frame ``t``, the
``frameskip`` raw actions taken after it (steps ``t .. t + frameskip - 1``) concatenated as
``(a_x, a_y, a_x, a_y, ...)``; so every window needs ``num_frames * frameskip`` actions and a
trajectory of T steps gives ``T - num_frames * frameskip + 1`` windows (every start offset).

Item: ``{"visual": float32 (num_frames, 3, H, W) in [0, 1], "proprio": float32 (num_frames, P),
"action": float32 (num_frames, 2 * frameskip)}``; raw, un-normalised values (the model
normalises, see ``stats()``).

Frames are rendered from states. With ``cache=True`` (the default) every frame of the split's
trajectories is rendered once, vectorised, into one channel-first uint8 array
(N x (T+1) x 3 x H x W bytes at 64 px: ~2.2 GB for Wall's training split, ~19 GB for
PushT's, built in minutes on 2 cores): items are then slices of it.
With ``cache=False`` each item renders its frames on demand (slower per item, no memory).
``batch(indices)`` assembles many items at once without per-item Python overhead.

``encoded(encode)`` returns the same windows with every frame passed once through a frozen
encoder: items then hold ``latent`` (num_frames, ...) and only the first ``visual_frames``
frames of ``visual``. Stage-2 training uses it, without the frame cache, so that the frozen
encoder does not run again on every batch and the latents are the only copy of the data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from quantwm.data.trajectories import Trajectories
from quantwm.envs import render_states


class FrameWindows(Dataset):
    """Windows of ``num_frames`` frames ``frameskip`` env steps apart (see the module docstring)."""

    def __init__(
        self,
        trajs: Trajectories,
        split: str,
        num_frames: int,
        frameskip: int = 5,
        img_size: int = 64,
        cache: bool = True,
    ) -> None:
        for name, value in (
            ("num_frames", num_frames),
            ("frameskip", frameskip),
            ("img_size", img_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        span = num_frames * frameskip
        if span > trajs.n_steps:
            raise ValueError(
                f"a window of num_frames={num_frames} x frameskip={frameskip} = {span} steps does "
                f"not fit in trajectories of {trajs.n_steps} steps"
            )
        self.trajs = trajs
        self.split = split
        self.num_frames, self.frameskip, self.img_size = (
            int(num_frames),
            int(frameskip),
            int(img_size),
        )
        self.traj_idx = trajs.indices(split)
        if len(self.traj_idx) == 0:
            raise ValueError(f"split {split!r} has no trajectories")
        starts = np.arange(trajs.n_steps - span + 1)
        rows = np.repeat(np.arange(len(self.traj_idx)), len(starts))
        self.windows = np.stack([rows, np.tile(starts, len(self.traj_idx))], axis=1)  # (M, 2)
        self._proprio = torch.from_numpy(trajs.proprio()[self.traj_idx])  # (n, T+1, P)
        act = trajs.actions[self.traj_idx].astype(np.float32)
        self._actions = torch.from_numpy(act)  # (n, T, 2)
        self._frames: np.ndarray | None = self._render_all() if cache else None
        self._latents: torch.Tensor | None = None  # (n, T+1, ...) once encoded()
        self._visual_frames = self.num_frames

    def _render_rows(self, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
        """uint8 frames (len(rows), H, W, 3) of (row, time) pairs."""
        traj = self.traj_idx[rows]
        states = self.trajs.states[traj, times]
        params = {k: v[traj] for k, v in self.trajs.params.items()}
        return render_states(self.trajs.env_name, states, self.img_size, **params)

    def _render_all(self) -> np.ndarray:
        """Every frame of the split, channel-first uint8 (n, T+1, 3, H, W), rendered in chunks."""
        n, t1, size = len(self.traj_idx), self.trajs.n_steps + 1, self.img_size
        out = np.empty((n, t1, 3, size, size), dtype=np.uint8)
        per_chunk = max(1, 2048 // t1)
        for start in range(0, n, per_chunk):
            rows = np.arange(start, min(n, start + per_chunk))
            frames = self._render_rows(np.repeat(rows, t1), np.tile(np.arange(t1), len(rows)))
            out[rows] = frames.reshape(len(rows), t1, size, size, 3).transpose(0, 1, 4, 2, 3)
        return out

    def _frames_at(self, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Channel-first uint8 frames (k, 3, H, W) of (row, time) pairs: cached or rendered."""
        if self._frames is not None:
            return self._frames[rows, times]
        return np.ascontiguousarray(self._render_rows(rows, times).transpose(0, 3, 1, 2))

    def encoded(self, encode: Callable[[torch.Tensor], torch.Tensor], *, chunk: int = 512,
                visual_frames: int = 1) -> FrameWindows:
        """These windows with every frame encoded once: ``encode`` maps float (n, 3, H, W) in
        [0, 1] to (n, ...); it runs on ``chunk`` frames at a time under ``torch.no_grad`` and
        its outputs are kept on the CPU (float32, ``latent_bytes()`` of them). Items of the
        result hold ``latent`` (num_frames, ...) and the first ``visual_frames`` frames of
        ``visual``. The windows themselves are shared, not copied. Without the frame cache
        each chunk is rendered, encoded and dropped, and items render their ``visual_frames``
        frames on demand (cheap: a few ms for a batch's first frames), so the latents are all
        the memory this takes.
        """
        if not 0 <= visual_frames <= self.num_frames:
            raise ValueError(f"visual_frames must be in 0..{self.num_frames}, got {visual_frames}")
        n, t1 = len(self.traj_idx), self.trajs.n_steps + 1
        latents: torch.Tensor | None = None  # filled in place: no second copy at the peak
        with torch.no_grad():
            for start in range(0, n * t1, chunk):
                rows, times = np.divmod(np.arange(start, min(n * t1, start + chunk)), t1)
                images = torch.from_numpy(self._frames_at(rows, times)).float().div_(255.0)
                z = encode(images)
                if latents is None:
                    latents = torch.empty((n * t1, *z.shape[1:]), dtype=torch.float32)
                latents[start:start + len(z)] = z
        out = copy.copy(self)
        out._latents = latents.unflatten(0, (n, t1))
        out._visual_frames = int(visual_frames)
        return out

    def latent_bytes(self, latent_shape: tuple[int, ...]) -> int:
        """Bytes that ``encoded()`` keeps for an encoder with per-frame output ``latent_shape``."""
        return len(self.traj_idx) * (self.trajs.n_steps + 1) * int(np.prod(latent_shape)) * 4

    def __len__(self) -> int:
        return len(self.windows)

    def _times(self, starts: np.ndarray) -> np.ndarray:
        return starts[:, None] + self.frameskip * np.arange(self.num_frames)[None, :]  # (B, T)

    def batch(self, indices: Any) -> dict[str, torch.Tensor]:
        """Items ``indices`` stacked: visual (B, T, 3, H, W), proprio (B, T, P), action (B, T, A)
        (and, once ``encoded()``, latent (B, T, ...) with visual cut to its first frames).

        Negative indices are not supported.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"window index out of range for {len(self)} windows")
        rows, starts = self.windows[idx, 0], self.windows[idx, 1]
        times = self._times(starts)
        b, t = times.shape
        seen = times[:, : self._visual_frames]  # the frames whose pixels the batch holds
        frames = self._frames_at(np.repeat(rows, seen.shape[1]), seen.reshape(-1))
        frames = frames.reshape(b, seen.shape[1], *frames.shape[1:])  # (B, T', 3, H, W)
        # numpy, single-threaded: torch's thread pool is slower for this on a busy 2-core CPU
        visual = frames.astype(np.float32)
        visual *= np.float32(1.0 / 255.0)
        rows_t, times_t = torch.from_numpy(rows)[:, None], torch.from_numpy(times)
        steps = torch.from_numpy(starts[:, None] + np.arange(t * self.frameskip)[None, :])
        out = {"visual": torch.from_numpy(visual), "proprio": self._proprio[rows_t, times_t],
               "action": self._actions[rows_t, steps].reshape(b, t, 2 * self.frameskip)}
        if self._latents is not None:
            out["latent"] = self._latents[rows_t, times_t]
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"window index {index} out of range for {len(self)} windows")
        return {k: v[0] for k, v in self.batch([i % len(self)]).items()}

    def stats(self) -> dict[str, np.ndarray]:
        """Mean/std of the window action vector (2 * frameskip,) and proprio (P,) over the split."""
        s = self.trajs.stats(self.split)
        return {
            "action_mean": np.tile(s["action_mean"], self.frameskip),
            "action_std": np.tile(s["action_std"], self.frameskip),
            "proprio_mean": s["proprio_mean"],
            "proprio_std": s["proprio_std"],
        }
