"""Training the world model in two stages, as DINO-WM does with a frozen DINOv2.

Stage 1, ``pretrain_encoder``: the ViT encoder is trained once on frames of *both*
environments and then frozen; it plays the part of DINOv2, which cannot be had here.
Objective, per frame:

    recon * MSE_w(decoder(encoder(x)), x)  +  aux * mean_tokens || P_env z_token - s f(state) ||^2

- The reconstruction term (through the conv decoder) makes the patch tokens keep everything
  that is visible, in particular what the predictor needs and no state vector carries: the
  wall and door position in Wall, the exact block outline in PushT. Pixels are weighted by
  ``1 + ink_weight * ink`` (ink = 1 - mean RGB, 0 on the white background): the agent is a
  dot of a few pixels, and a plain MSE would let the encoder ignore it.
- The auxiliary term makes latent distances reflect state distances, which is what a
  planner minimising ``||z - z_goal||^2`` needs. A plain autoencoder latent changes only where
  pixels change: once an object has moved off its old pixels the distance stops growing, and
  CEM sees a flat objective. DINOv2 patch features are known to encode object position and
  pose linearly; here that property is imposed directly. ``f(state)`` are the normalised
  state features a frame shows (``quantwm.model.sources.state_features``; Wall: agent x, y,
  wall x, door y and the door-path coordinate; PushT: agent x, y, block x, y, cos and sin of
  the block angle); ``P_env`` is a *fixed* random orthonormal
  projection (disjoint rows per environment), so every token must carry its frame's state,
  linearly and with a known gain ``s``: for two frames of one environment,
  ``||z_i - z_j|| >= s ||f_i - f_j||`` per token. The projection is fixed rather than learned
  so that the encoder cannot shrink the state directions to nothing.
  State labels are privileged information DINOv2 never saw; the encoder is still a pure
  image encoder after training and the world model never sees states.
- The two terms weigh the same (``aux_weight`` 1). At 0.1 (the encoder inside ``wall.pt``)
  the state directions ended ~0.26 feature std off (PushT's block ~20 px, the success radius)
  and held ~28 % of PushT's within-trajectory latent variance; at 1 they are ~0.07 std off and
  hold ~48 %, with reconstruction no worse (weighted MSE 0.0042 vs 0.0050). PushT models
  trained alike on each (1200 trajectories, 30 min, teacher forcing) plan 0.56-0.62 @5 on it
  and 0.20-0.22 on the previous one (50 episodes, two seeds). A larger gain ``aux_scale`` (4
  instead of 2, ``quantwm train --aux-scale``) would give the state directions more of the
  latent distance, but the final LayerNorm bounds each token's norm: after 15 min they were
  ~0.21 std off, three times worse, and reconstruction 35 % worse.
- Wall's door-path coordinate (the signed distance to the door, ``door_path_coordinate``)
  is there for the planner: with agent x, y alone the latent distance is the straight-line
  distance, whose minimum for a goal across the wall is the wall itself (the planner stops
  there; ``benchmarks/planning_ceiling.py --env wall``: 0.52-0.66 @5 with exact dynamics). With
  the coordinate, weighted twice an agent coordinate, the distance between two rooms is the
  length of the path through the door, and exact dynamics reach 1.00 @5. DINOv2's patch
  features are contextual (every token sees the whole image); which room the agent is in is
  the kind of layout-relative fact they carry, and a straight-line metric is not.

Between the stages, the frozen encoder's output is standardised per environment: centred
per (patch, channel) and scaled to unit RMS std over that environment's training frames (two
fixed buffers, no weights change). The planning objective adds the visual MSE to the
proprio-embedding MSE with weight 1, as in the reference, where DINOv2's patch features vary
on an O(1) scale; a small encoder trained here spends most of its output range on what is the
same in every frame (background, borders), leaving the moving objects a visual MSE of ~1e-3
against a proprio MSE of ~1e-1. Centring removes that constant part (distances do not
change), and the scale puts the two terms, and the stage-2 targets, on an O(1) scale that the
predictor's final LayerNorm can produce.

Stage 2, ``train_dynamics``: the encoder is frozen; the predictor and the action/proprio
embeddings learn the reference's loss, the MSE between the teacher-forced predictions of
frames 1..T and the (detached) latents of those frames on the visual and proprio dims, all
frames in one pass, AdamW. The decoder keeps training on detached latents (for viewing), on
every fourth step only (``decoder_every``): a PushT step takes 95 ms with it and 81 ms without
(2 cores, medians of interleaved runs), so the predictor gets ~11 % more steps in a time
budget. With ``--ema-decay`` (not in the reference) the model ends with an exponential moving
average of its weights; at 0.999 on PushT it lowered the validation z_loss by under 1 %
(0.0287 against the last weights' 0.0289), and on short runs it is worse than none, so it is
off by default. Optionally (``--rollout-steps K`` > 1, not in the reference) windows hold
K - 1 more frames and the loss adds the error of the K-step open-loop ``rollout`` from the
first ``num_hist`` frames: the error the planner's 5-step rollouts actually accumulate, which
teacher forcing never sees. Both shipped models train with K = 5: Wall's then planned 0.96 /
0.92 @5 instead of 0.84 / 0.82 (50 episodes, seeds 0 / 1), PushT's (an earlier model, on a
quarter of the current one's data) 0.65 @0 / 0.78 @5 where
teacher-forced models with one or three history frames planned 0.54 / 0.76 (300 episodes;
paired McNemar p = 0.001 / 0.39 against the three-frame one; docs/world_models.md). With one
history frame the teacher-forced prediction of frame 1 is the rollout's first step and is
taken from it, not computed twice: a PushT step at K = 5 (batch 32) takes 108 ms instead of
144 (2 cores), for the same losses and gradients. (The third more steps did not plan PushT
better on the same data: 28112 steps in 60 min against 22841, 0.765 against 0.76 @5 on 200
paired episodes; twice the data did, docs/world_models.md.)
Since the encoder is frozen, ``quantwm train`` encodes every training frame once up front
(``FrameWindows.encoded``, when the latents fit in ``--latent-cache-gib``): the same latents
up to float rounding, without the encoder's forward pass on every step (about a quarter of a
PushT step on 2 cores), and they replace the frame cache (PushT's 19200 trajectories: 11.9
GiB of latents; their frames would add 17.8 GiB).

Both stages run to a time budget (``minutes``) and/or a step budget (``max_steps``), draw
their batches from ``numpy.random.default_rng([seed, step])`` (so a resumed run sees the same
batches), write an atomic training state every ``ckpt_minutes`` and can resume from it.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim import swa_utils
from tqdm.auto import tqdm

from quantwm.model.checkpoint import CHECKPOINT_DIR, load_torch_file
from quantwm.model.world_model import WorldModel, _tile
from quantwm.utils import DATA_DIR, ENV_NAMES, atomic_path

STATE_DIR = DATA_DIR / "runs" / "train"  # training states for resuming


class FrameSource(Protocol):
    """Frames with state features, for stage 1. ``sample`` returns float (n, 3, H, W) in [0, 1]
    and float (n, num_features) normalised features."""

    num_features: int

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...


Windows = Sequence[dict[str, Any]]  # FrameWindows or anything indexable the same way


# -------------------------------------------------------------------------------------- helpers
def collate(dataset: Windows, indices: np.ndarray, device: torch.device | str
            ) -> dict[str, torch.Tensor]:
    """Stack ``dataset[i]`` for ``i in indices`` into a batch of tensors on ``device``.

    Uses the dataset's own vectorised ``batch(indices)`` when it has one (FrameWindows does).
    """
    if hasattr(dataset, "batch"):
        return {k: torch.as_tensor(v).float().to(device)
                for k, v in dataset.batch(np.asarray(indices)).items()}
    items = [dataset[int(i)] for i in indices]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]).float().to(device)
            for k in items[0]}


def dataset_stats(dataset: Windows, n: int = 1024, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mean and std of action and proprio over ``n`` random windows of the training split."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
    batch = collate(dataset, idx, "cpu")
    act = batch["action"].flatten(0, 1)
    pro = batch["proprio"].flatten(0, 1)
    return {"action_mean": act.mean(0), "action_std": act.std(0),
            "proprio_mean": pro.mean(0), "proprio_std": pro.std(0)}


def fixed_projection(enc_dim: int, num_features: Sequence[int], seed: int = 0
                     ) -> list[torch.Tensor]:
    """Orthonormal (F_e, enc_dim) projections with mutually orthogonal rows, one per source."""
    total = sum(num_features)
    if total > enc_dim:
        raise ValueError(f"{total} state features do not fit in enc_dim {enc_dim}")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(enc_dim, total, generator=g))
    return list(q.T.split(list(num_features)))


def cosine_lr(base: float, progress: float, warmup: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up over the first ``warmup`` of training, then cosine decay to floor*base."""
    if progress < warmup:
        return base * max(progress / warmup, 0.02)
    t = min((progress - warmup) / (1 - warmup), 1.0)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


class _Budget:
    """Progress in [0, 1] of a run limited by minutes and/or steps (whichever ends first)."""

    def __init__(self, minutes: float | None, max_steps: int | None, elapsed: float) -> None:
        if minutes is None and max_steps is None:
            raise ValueError("give a time budget (minutes) or a step budget (max_steps)")
        if minutes is not None and minutes <= 0 or max_steps is not None and max_steps <= 0:
            raise ValueError(f"budget must be positive: minutes={minutes}, steps={max_steps}")
        self.seconds = None if minutes is None else 60.0 * minutes
        self.max_steps = max_steps
        self.start = time.monotonic() - elapsed

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def progress(self, step: int) -> float:
        p = 0.0
        if self.seconds is not None:
            p = max(p, self.elapsed() / self.seconds)
        if self.max_steps is not None:
            p = max(p, step / self.max_steps)
        return p


def _save_state(path: Path, **state: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def resume_state_path(out: str | os.PathLike, state_dir: str | os.PathLike = STATE_DIR) -> Path:
    """The training-state file of the run that writes the checkpoint ``out``.

    One per output file, so that ``--resume --out B`` continues run B whatever other runs did
    meanwhile, and starting run B never overwrites run A's state. The shipped checkpoints
    ``data/checkpoints/{wall,pusht,encoder}.pt`` keep their states' names
    (``<name>.state.pt``); any other output gets ``<stem>-<SHA-1 of its absolute path>.state.pt``.
    """
    out = Path(out).expanduser().resolve()
    if out.parent == CHECKPOINT_DIR.resolve() and out.suffix == ".pt" \
            and out.stem in (*ENV_NAMES, "encoder"):
        return Path(state_dir) / f"{out.stem}.state.pt"
    digest = hashlib.sha1(str(out).encode()).hexdigest()[:10]
    return Path(state_dir) / f"{out.stem}-{digest}.state.pt"


def _load_state(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    state = load_torch_file(path, "training state")
    if not isinstance(state, dict) or not {"model", "optimizer", "step"} <= set(state):
        raise ValueError(f"{path} is not a training state (needs model, optimizer and step); "
                         "delete it or train without --resume")
    return state


def _resume(state_path: Path | None, resume: bool, model: WorldModel,
            opt: torch.optim.Optimizer, ema: swa_utils.AveragedModel | None = None
            ) -> tuple[int, float, list]:
    """Restore model, optimizer (and weight average) from a training state file:
    (step, seconds, history). Asked to resume without a state, it says so and starts at step 0;
    a fresh run says when it replaces an earlier run's state."""
    if state_path is not None and not resume and state_path.exists():
        print(f"note: starting afresh; the training state {state_path} of an earlier run of "
              "this output is replaced (--resume continues it)", file=sys.stderr, flush=True)
    if resume and state_path is not None and not state_path.exists():
        print(f"note: no training state at {state_path} to resume: starting at step 0",
              file=sys.stderr, flush=True)
    if resume and state_path is not None and (state := _load_state(state_path)) is not None:
        saved, current = state.get("config"), model.config.to_dict()
        if saved is not None and saved != current:
            changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
            raise ValueError(f"training state {state_path} is of another model config "
                             f"(field: (saved, this run)) {changed}; resume with the same config")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None:
            if "ema" not in state:
                raise ValueError(f"training state {state_path} holds no weight average; "
                                 "resume it with the ema_decay it was started with")
            ema.load_state_dict(state["ema"])
        return state["step"], state["elapsed"], state["history"]
    return 0, 0.0, []


def _update(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> None:
    """One optimizer step on ``loss`` with the gradient norm clipped to 1."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def _state_saver(state_path: Path | None, model: WorldModel, opt: torch.optim.Optimizer,
                 history: list, ema: swa_utils.AveragedModel | None = None
                 ) -> Callable[[int, float], None]:
    """The resumable-training checkpoint writer of a stage (a no-op without a state path)."""
    def save(step: int, elapsed: float) -> None:
        if state_path is not None:
            extra = {} if ema is None else {"ema": ema.state_dict()}
            _save_state(state_path, model=model.state_dict(), optimizer=opt.state_dict(),
                        config=model.config.to_dict(), step=step, elapsed=elapsed,
                        history=history, **extra)
    return save


def _bar(desc: str, total: int | None, quiet: bool) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=quiet, dynamic_ncols=True,
                mininterval=0.5 if interactive else 30.0)


def _loop(desc: str, step_fn: Callable[[int], dict[str, float]], *, budget: _Budget,
          step: int, history: list[dict[str, float]],
          save_fn: Callable[[int, float], None] | None, ckpt_minutes: float, log_every: int,
          quiet: bool) -> int:
    """Run ``step_fn(step)`` until the budget is spent; log, checkpoint. Returns the last step."""
    bar = _bar(desc, budget.max_steps, quiet)
    bar.update(step)
    last_ckpt = time.monotonic()
    running: dict[str, float] = {}
    while budget.progress(step) < 1.0:
        losses = step_fn(step)
        step += 1
        running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in losses.items()}
        bar.update(1)
        if step % log_every == 0:
            bar.set_postfix({k: f"{v:.4g}" for k, v in running.items()}, refresh=False)
            history.append({"step": step, "minutes": budget.elapsed() / 60, **losses})
            if not quiet and not sys.stderr.isatty():
                tqdm.write(f"[{desc}] step {step} {budget.elapsed() / 60:.1f} min " + " ".join(
                    f"{k}={v:.4g}" for k, v in running.items()), file=sys.stderr)
        if save_fn is not None and time.monotonic() - last_ckpt > 60 * ckpt_minutes:
            save_fn(step, budget.elapsed())
            last_ckpt = time.monotonic()
    bar.close()
    return step


# ------------------------------------------------------------------------------------- stage 1
def pretrain_encoder(model: WorldModel, sources: dict[str, FrameSource], *,
                     minutes: float | None = None, max_steps: int | None = None,
                     batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.05,
                     recon_weight: float = 1.0, ink_weight: float = 10.0, aux_weight: float = 1.0,
                     aux_scale: float = 2.0,
                     seed: int = 0, device: torch.device | str = "cpu",
                     state_path: str | os.PathLike | None = None, resume: bool = False,
                     ckpt_minutes: float = 2.0, log_every: int = 20, quiet: bool = False
                     ) -> dict[str, Any]:
    """Stage 1: train ``model.encoder`` (and ``model.decoder``) on frames of every source.

    Each batch holds ``batch_size // len(sources)`` frames of each source. Returns a summary
    (steps, minutes, final losses, history). The encoder is left frozen (requires_grad False).
    """
    if not sources:
        raise ValueError("pretrain_encoder needs at least one frame source")
    model.to(device).train()
    names = sorted(sources)
    projections = [p.to(device) for p in fixed_projection(
        model.config.enc_dim, [sources[n].num_features for n in names])]
    params = [*model.encoder.parameters(), *model.decoder.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    per_source = max(1, batch_size // len(names))

    state_path = None if state_path is None else Path(state_path)
    step, elapsed, history = _resume(state_path, resume, model, opt)
    budget = _Budget(minutes, max_steps, elapsed)

    def step_fn(step: int) -> dict[str, float]:
        rng = np.random.default_rng([seed, 1, step])
        for group in opt.param_groups:
            group["lr"] = cosine_lr(lr, budget.progress(step))
        recon = aux = torch.zeros((), device=device)
        for name, proj in zip(names, projections, strict=True):
            images, feats = sources[name].sample(per_source, rng)
            images, feats = images.to(device), feats.to(device)
            z = model.encoder(images)  # (n, N, enc_dim)
            weight = 1.0 + ink_weight * (1.0 - images.mean(1, keepdim=True))  # ink = not white
            err = (model.decoder(z) - images).pow(2) * weight
            recon = recon + err.mean() / len(names)
            target = (aux_scale * feats)[:, None, :].expand(-1, z.shape[1], -1)
            aux = aux + F.mse_loss(z @ proj.T, target) / len(names)
        loss = recon_weight * recon + aux_weight * aux
        _update(opt, loss, params)
        return {"recon": recon.item(), "aux": aux.item()}

    save_fn = _state_saver(state_path, model, opt, history)
    step = _loop("encoder", step_fn, budget=budget, step=step, history=history,
                 save_fn=save_fn, ckpt_minutes=ckpt_minutes,
                 log_every=log_every, quiet=quiet)
    save_fn(step, budget.elapsed())
    freeze_encoder(model)
    final = history[-1] if history else {}
    return {"stage": "encoder", "steps": step, "minutes": round(budget.elapsed() / 60, 2),
            "sources": names, "recon_weight": recon_weight, "ink_weight": ink_weight,
            "aux_weight": aux_weight,
            "aux_scale": aux_scale, "final": {k: v for k, v in final.items()
                                              if k not in ("step", "minutes")},
            "history": history}


def freeze_encoder(model: WorldModel) -> None:
    """Freeze the encoder (no gradients, eval mode), as DINO-WM freezes DINOv2."""
    model.encoder.eval()
    for p in model.encoder.parameters():
        p.requires_grad_(False)


# ------------------------------------------------------------------------------------- stage 2
@torch.no_grad()
def set_latent_standardization(model: WorldModel, frames: torch.Tensor) -> dict[str, float]:
    """Centre the encoder output per (patch, channel) and scale it to unit RMS std.

    ``frames (n, T, 3, H, W)``: T frames of each of n trajectories of one environment.
    Returns the RMS std over the frames and along trajectories before and after.
    """
    enc = model.encoder
    enc.out_shift.zero_()
    enc.out_scale.fill_(1.0)
    n, T = frames.shape[:2]
    z = enc(frames.flatten(0, 1)).unflatten(0, (n, T))  # (n, T, N, enc_dim)
    std = z.flatten(0, 1).var(0, unbiased=False).mean().sqrt()
    within = z.var(1, unbiased=False).mean().sqrt()
    enc.out_shift.copy_(z.flatten(0, 1).mean(0))
    enc.out_scale.fill_(1.0 / std.item())
    return {"raw_std": std.item(), "raw_within_trajectory_std": within.item(),
            "within_trajectory_std": (within / std).item()}


def dynamics_losses(model: WorldModel, batch: dict[str, torch.Tensor], decoder_frames: int = 1
                    ) -> dict[str, torch.Tensor]:
    """Stage-2 losses of one batch of windows of T = num_hist + K frames (K >= 1).

    ``z_loss`` (the reference's loss) is the MSE over visual + proprio dims between the
    teacher-forced ``predict`` of frames 1..num_hist and their detached latents;
    ``z_visual`` / ``z_proprio`` are its two parts; ``decoder`` is the reconstruction MSE of the
    decoder on the detached latents of the first ``decoder_frames`` frames (absent for 0). A
    batch that holds ``latent`` (the frozen encoder's output, from ``FrameWindows.encoded``)
    skips the encoder and needs only those first frames of ``visual``. With K > 1,
    ``z_rollout`` is the MSE of the K-step open-loop ``rollout`` from the first num_hist frames
    against frames num_hist..T-1 (what the planner's rollouts get wrong).
    """
    c = model.config
    visual, proprio = batch["visual"], batch["proprio"]
    action = model.normalize_action(batch["action"])
    B, T = proprio.shape[:2]
    H = c.num_hist
    if T < H + 1:
        raise ValueError(f"windows have {T} frames; stage 2 needs at least num_hist + 1 = {H + 1}")
    if "latent" in batch:  # encoded once up front (FrameWindows.encoded)
        patches = batch["latent"]
    else:
        with torch.no_grad():  # frozen encoder
            patches = model.encoder(visual.flatten(0, 1)).unflatten(0, (B, T))
    z = _tile(patches, model.proprio_encoder(model.normalize_proprio(proprio)))
    rolled = model.rollout_window(z, action) if T > H + 1 else None
    if rolled is not None and H == 1:  # same input, same action: no second predictor pass
        z_pred = rolled[:, :1]
    else:
        z_pred = model.predict(z[:, :H], action[:, :H])
    target = z[:, 1:H + 1].detach()
    err = (z_pred - target).pow(2)
    losses = {
        "z_loss": err.mean(),
        "z_visual": err[..., : c.enc_dim].mean(),
        "z_proprio": err[..., c.enc_dim:].mean(),
    }
    if decoder_frames > 0:
        recon = model.decoder(model.encoder.unstandardize(
            patches[:, :decoder_frames].flatten(0, 1)))
        losses["decoder"] = F.mse_loss(recon, visual[:, :decoder_frames].flatten(0, 1))
    if rolled is not None:
        losses["z_rollout"] = (rolled - z[:, H:].detach()).pow(2).mean()
    return losses


@torch.no_grad()
def evaluate_dynamics(model: WorldModel, dataset: Windows, n: int = 256, batch_size: int = 64,
                      seed: int = 0, device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean stage-2 losses over ``n`` fixed windows of ``dataset``."""
    was_training = model.training
    model.eval()
    idx = np.random.default_rng(seed).choice(len(dataset), size=min(n, len(dataset)),
                                             replace=False)
    sums: dict[str, float] = {}
    for start in range(0, len(idx), batch_size):
        chunk = idx[start:start + batch_size]
        losses = dynamics_losses(model, collate(dataset, chunk, device))
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item() * len(chunk)
    model.train(was_training)
    freeze_encoder(model)
    return {k: v / len(idx) for k, v in sums.items()}


def train_dynamics(model: WorldModel, train_set: Windows, val_set: Windows | None = None, *,
                   minutes: float | None = None, max_steps: int | None = None,
                   batch_size: int = 32, lr: float = 5e-4, weight_decay: float = 0.01,
                   decoder_weight: float = 1.0, decoder_every: int = 4,
                   rollout_weight: float = 1.0, ema_decay: float = 0.0, seed: int = 0,
                   device: torch.device | str = "cpu",
                   state_path: str | os.PathLike | None = None, resume: bool = False,
                   ckpt_minutes: float = 2.0, log_every: int = 20, quiet: bool = False
                   ) -> dict[str, Any]:
    """Stage 2: train predictor, action/proprio embeddings and decoder; encoder frozen.

    The model's normalisation buffers must already hold the training split's statistics.
    Windows longer than ``num_hist + 1`` frames add ``rollout_weight x z_rollout`` to the loss
    (see ``dynamics_losses``). The decoder, for viewing only, trains on every
    ``decoder_every``-th step (the other steps go to the predictor alone). With ``ema_decay``
    > 0 the model ends with an exponential moving average of its trained weights
    (``torch.optim.swa_utils``), and the summary adds the last raw weights' validation losses
    as ``val_raw``. Returns a summary (steps, minutes, final train and validation losses,
    history).
    """
    if not isinstance(decoder_every, int) or decoder_every < 1:
        raise ValueError(f"decoder_every must be an int >= 1, got {decoder_every!r}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
    model.to(device).train()
    freeze_encoder(model)
    params = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    ema = (None if ema_decay == 0 else
           swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(ema_decay)))

    state_path = None if state_path is None else Path(state_path)
    step, elapsed, history = _resume(state_path, resume, model, opt, ema)
    budget = _Budget(minutes, max_steps, elapsed)

    def step_fn(step: int) -> dict[str, float]:
        rng = np.random.default_rng([seed, 2, step])
        for group in opt.param_groups:
            group["lr"] = cosine_lr(lr, budget.progress(step))
        batch = collate(train_set, rng.integers(len(train_set), size=batch_size), device)
        train_decoder = (step + 1) % decoder_every == 0
        losses = dynamics_losses(model, batch, decoder_frames=1 if train_decoder else 0)
        loss = losses["z_loss"]
        if "decoder" in losses:
            loss = loss + decoder_weight * losses["decoder"]
        if "z_rollout" in losses:
            loss = loss + rollout_weight * losses["z_rollout"]
        _update(opt, loss, params)
        if ema is not None:
            ema.update_parameters(model)
        return {k: v.item() for k, v in losses.items()}

    save_fn = _state_saver(state_path, model, opt, history, ema)
    step = _loop("dynamics", step_fn, budget=budget, step=step, history=history,
                 save_fn=save_fn, ckpt_minutes=ckpt_minutes,
                 log_every=log_every, quiet=quiet)
    save_fn(step, budget.elapsed())
    model.eval()
    final = history[-1] if history else {}
    summary: dict[str, Any] = {
        "stage": "dynamics", "steps": step, "minutes": round(budget.elapsed() / 60, 2),
        "batch_size": batch_size, "lr": lr, "rollout_weight": rollout_weight,
        "decoder_every": decoder_every, "ema_decay": ema_decay,
        "final": {k: v for k, v in final.items() if k not in ("step", "minutes")},
        "history": history,
    }
    if ema is not None:
        if val_set is not None:
            summary["val_raw"] = evaluate_dynamics(model, val_set, device=device)
        model.load_state_dict(ema.module.state_dict())
    if val_set is not None:
        summary["val"] = evaluate_dynamics(model, val_set, device=device)
    return summary
