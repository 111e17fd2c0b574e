"""``quantwm train``: pretrain the shared encoder (stage 1) and train an env's world model.

    quantwm train --stage encoder --minutes 7      # stage 1 on both envs -> encoder.pt
    quantwm train --env wall --minutes 22          # stage 2 (runs stage 1 first if needed)
    quantwm train --env pusht --resume             # continue an interrupted run

The stage-1 encoder is written to ``data/checkpoints/encoder.pt`` and reused (frozen) by every
env, as DINO-WM reuses one DINOv2. Training states for ``--resume`` live in ``data/runs/train/``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantwm.cli import check_output_file, float_in, int_at_least, torch_device
from quantwm.envs import ACTION_DIM, PROPRIO_DIM
from quantwm.utils import DATA_DIR, ENV_NAMES, check_env_name, parse_overrides, seed_everything

if TYPE_CHECKING:
    from quantwm.model.world_model import WorldModel, WorldModelConfig

EXAMPLES = """\
examples:
  quantwm train --env wall --minutes 22            stage 2 (stage 1 first if encoder.pt is missing)
  quantwm train --stage encoder --minutes 7        stage 1 on both envs -> encoder.pt
  quantwm train --env pusht --resume               continue an interrupted run
  quantwm train --env pusht --model num_hist=3 --out /tmp/pusht3.pt   DINO-WM's 3 frames"""

# torch (and so the model) is imported by the functions that need it: `quantwm train --help`
# does not wait seconds for it
CHECKPOINT_DIR = DATA_DIR / "checkpoints"  # quantwm.model.checkpoint.CHECKPOINT_DIR
ENCODER_PATH = CHECKPOINT_DIR / "encoder.pt"
STATE_DIR = DATA_DIR / "runs" / "train"
_ENCODER_FIELDS = ("img_size", "patch_size", "enc_dim", "enc_depth", "enc_heads", "mlp_ratio",
                   "dec_width")


def default_latent_cache_gib() -> float:
    """Stage 2's default latent budget: 60 % of this machine's physical memory (8 GiB where the
    platform does not say). PushT's 19200 trajectories take 11.9 GiB of latents (12.6 GiB peak
    in all), so the shipped recipe encodes once on a 24-GiB machine."""
    try:
        return 0.6 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return 8.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", choices=ENV_NAMES, help="environment (not needed for --stage encoder)")
    p.add_argument("--stage", choices=("all", "encoder", "dynamics"), default="all",
                   help="encoder: stage 1 only; dynamics: stage 2 only (needs --encoder); "
                        "all: stage 1 if --encoder is missing, then stage 2 (default)")
    p.add_argument("--minutes", type=float_in(0, lo_open=True), default=22.0,
                   help="time budget in minutes of the stage being run (stage 2 for --stage "
                        "all; default 22)")
    p.add_argument("--encoder-minutes", type=float_in(0, lo_open=True), default=7.0,
                   help="time budget of stage 1 when --stage all has to run it (default 7)")
    p.add_argument("--steps", type=int_at_least(1), default=None,
                   help="optional step budget, >= 1 (the first of time and steps ends the run)")
    p.add_argument("--seed", type=int_at_least(0), default=0,
                   help="seed of initialisation, batches and data order, >= 0 (default 0)")
    p.add_argument("--out", type=Path, default=None,
                   help="output checkpoint (default data/checkpoints/<env>.pt)")
    p.add_argument("--encoder", type=Path, default=ENCODER_PATH,
                   help="stage-1 checkpoint, read by stage 2 and written by stage 1 (default "
                        "data/checkpoints/encoder.pt)")
    p.add_argument("--resume", action="store_true", help="continue from the saved training state")
    p.add_argument("--device", default="cpu",
                   help="torch device: cpu (default), cuda, cuda:N or mps")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="torch threads, >= 1 (default: torch's choice)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help="batch size, >= 1 (default: the stage's, quantwm.model.train)")
    p.add_argument("--lr", type=float_in(0, lo_open=True), default=None,
                   help="learning rate, > 0 (default: the stage's, quantwm.model.train)")
    p.add_argument("--aux-weight", type=float_in(0), default=None,
                   help="stage 1: weight of the state-feature loss against reconstruction "
                        "(default: quantwm.model.train.pretrain_encoder's)")
    p.add_argument("--aux-scale", type=float_in(0, lo_open=True), default=None,
                   help="stage 1: gain s of the state features in the latent, i.e. their share "
                        "of latent distances (default: quantwm.model.train.pretrain_encoder's)")
    p.add_argument("--latent-cache-gib", type=float_in(0), default=None, metavar="GIB",
                   help="stage 2: encode every frame once when the latents fit in this much "
                        "memory, else every batch (default 60%% of this machine's memory, "
                        f"here {default_latent_cache_gib():.1f}; 0: never)")
    p.add_argument("--decoder-every", type=int_at_least(1), default=None, metavar="N",
                   help="stage 2: train the (viewing-only) decoder on every N-th step only "
                        "(default: quantwm.model.train.train_dynamics's)")
    p.add_argument("--ema-decay", type=float_in(0, 1, hi_open=True), default=None,
                   help="stage 2: end with an exponential moving average of the weights, "
                        "in [0, 1), e.g. 0.999; 0: none (default: "
                        "quantwm.model.train.train_dynamics's)")
    p.add_argument("--model", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="stage 2: world-model config fields other than the env's defaults, e.g. "
                        "num_hist=1 pred_depth=6 (quantwm.model.WorldModelConfig; the encoder's "
                        "must match --encoder)")
    p.add_argument("--rollout-steps", type=int_at_least(1), default=1, metavar="K",
                   help="train on K-step open-loop rollouts as well (default 1: teacher "
                        "forcing only, as the reference)")


def run(args: argparse.Namespace) -> int:
    if args.stage != "encoder" and args.env is None:
        raise ValueError("--env is required unless --stage encoder")
    torch_device(args.device)
    stage1 = args.stage == "encoder" or (args.stage == "all" and not args.encoder.exists())
    if stage1:
        check_output_file(args.encoder, "--encoder")
    if args.stage != "encoder":
        check_output_file(args.out or CHECKPOINT_DIR / f"{check_env_name(args.env)}.pt", "--out")
    for flag, value in (("--aux-weight", args.aux_weight), ("--aux-scale", args.aux_scale)):
        if value is not None and not stage1:
            raise ValueError(f"{flag} {value} is for stage 1, which this run does not train "
                             f"(--stage {args.stage}, encoder {args.encoder} exists)")
    if args.aux_weight is not None and not args.aux_weight >= 0:
        raise ValueError(f"--aux-weight must be >= 0, got {args.aux_weight}")
    if args.aux_scale is not None and not args.aux_scale > 0:
        raise ValueError(f"--aux-scale must be > 0, got {args.aux_scale}")
    if args.latent_cache_gib is not None and not args.latent_cache_gib >= 0:
        raise ValueError(f"--latent-cache-gib must be >= 0, got {args.latent_cache_gib}")
    if args.model and args.stage == "encoder":
        raise ValueError(f"--model {' '.join(args.model)} is for stage 2, which --stage encoder "
                         "does not train")
    model_config = parse_overrides(args.model, "--model")
    if args.stage != "encoder":  # a bad field fails here, not after stage 1
        check_model_config(check_env_name(args.env), model_config)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if stage1:
        minutes = args.minutes if args.stage == "encoder" else args.encoder_minutes
        train_encoder(args.encoder, minutes=minutes, steps=args.steps, seed=args.seed,
                      device=args.device, resume=args.resume, batch_size=args.batch_size,
                      lr=args.lr, aux_weight=args.aux_weight, aux_scale=args.aux_scale)
    if args.stage == "encoder":
        return 0
    env = check_env_name(args.env)
    out = args.out or CHECKPOINT_DIR / f"{env}.pt"
    train_world_model(env, out, encoder_path=args.encoder, minutes=args.minutes,
                      steps=args.steps, seed=args.seed, device=args.device, resume=args.resume,
                      rollout_steps=args.rollout_steps, latent_cache_gib=args.latent_cache_gib,
                      model_config=model_config,
                      batch_size=args.batch_size, lr=args.lr,
                      decoder_every=args.decoder_every, ema_decay=args.ema_decay)
    return 0


def check_model_config(env: str, overrides: dict[str, Any]) -> WorldModelConfig:
    """The env's ``WorldModelConfig`` with ``--model`` overrides, or a ValueError naming the
    first bad one: sizes are integers >= 1, ``mlp_ratio`` a finite number > 0, and the model
    must fit the env's data (proprio and action widths) with patches that tile the image."""
    from quantwm.model.world_model import WorldModelConfig

    kinds = {f.name: f.type if isinstance(f.type, str) else f.type.__name__
             for f in dataclasses.fields(WorldModelConfig)}
    for key, value in overrides.items():
        if key == "env":
            raise ValueError(f"--model env={value}: the environment is --env")
        kind = kinds.get(key)
        if kind == "int" and (not isinstance(value, int) or value < 1):
            raise ValueError(f"--model {key}={value}: {key} must be an integer >= 1")
        if kind == "float" and (not isinstance(value, int | float) or not math.isfinite(value)
                                or value <= 0):
            raise ValueError(f"--model {key}={value}: {key} must be a finite number > 0")
    config = WorldModelConfig.for_env(env, **overrides)
    if config.proprio_dim != PROPRIO_DIM[env]:
        raise ValueError(f"--model proprio_dim={config.proprio_dim}: {env}'s proprio has "
                         f"{PROPRIO_DIM[env]} numbers")
    if config.action_dim != ACTION_DIM[env] * config.frameskip:
        raise ValueError(f"--model action_dim={config.action_dim}: with frameskip "
                         f"{config.frameskip}, {env}'s actions take "
                         f"{ACTION_DIM[env] * config.frameskip} numbers (set action_dim too)")
    if config.img_size % config.patch_size:
        raise ValueError(f"--model patch_size={config.patch_size} must divide img_size="
                         f"{config.img_size}")
    return config


def _overrides(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def train_encoder(path: Path, *, minutes: float | None, steps: int | None = None, seed: int = 0,
                  device: str = "cpu", resume: bool = False, **kw: Any) -> WorldModel:
    """Stage 1 on the training frames of both environments; saves to ``path``."""
    from quantwm.model.checkpoint import save
    from quantwm.model.sources import EnvFrames, load_trajectories
    from quantwm.model.train import pretrain_encoder, resume_state_path
    from quantwm.model.world_model import WorldModel, WorldModelConfig

    seed_everything(seed)
    model = WorldModel(WorldModelConfig.for_env("wall"))
    sources = {env: EnvFrames(env, load_trajectories(env, with_extensions=False), "train",
                              model.config.img_size)
               for env in ENV_NAMES}
    summary = pretrain_encoder(model, sources, minutes=minutes, max_steps=steps, seed=seed,
                               device=device, state_path=resume_state_path(path, STATE_DIR),
                               resume=resume, **_overrides(**kw))
    save(model, path, parts=("encoder", "decoder"), stage="encoder", seed=seed,
         training=summary)
    print(f"encoder: {summary['steps']} steps in {summary['minutes']} min, "
          f"final {summary['final']} -> {path}")
    return model


def dataset_meta(trajs: Any) -> dict[str, Any]:
    """What a checkpoint records of the trajectories it was trained on."""
    return {"trajectories": trajs.n_traj, "train": len(trajs.indices("train")),
            "seed": trajs.meta.get("seed"), "extensions": trajs.meta.get("extensions", [])}


def train_world_model(env: str, out: Path, *, encoder_path: Path, minutes: float | None,
                      steps: int | None = None, seed: int = 0, device: str = "cpu",
                      resume: bool = False, rollout_steps: int = 1,
                      latent_cache_gib: float | None = None,
                      model_config: dict[str, Any] | None = None, **kw: Any) -> WorldModel:
    """Stage 2 for ``env`` on top of the frozen stage-1 encoder; saves to ``out``.

    ``model_config`` overrides fields of the env's default ``WorldModelConfig`` (a deeper
    predictor, more history frames, ...); the encoder's fields must match ``encoder_path``.

    ``rollout_steps`` K > 1 trains on windows of num_hist + K frames with the K-step rollout
    loss added (``quantwm.model.train.dynamics_losses``). Every frame is encoded once up front
    when its latents take at most ``latent_cache_gib`` GiB of CPU memory (0: never; default
    ``default_latent_cache_gib()``); frames are not cached but rendered per batch (then only
    the decoder's).
    """
    if not isinstance(rollout_steps, int) or rollout_steps < 1:
        raise ValueError(f"rollout_steps must be an int >= 1, got {rollout_steps!r}")
    from quantwm.model.checkpoint import load, save
    from quantwm.model.sources import frame_windows, load_trajectories, trajectory_frames
    from quantwm.model.train import (
        dataset_stats,
        freeze_encoder,
        resume_state_path,
        set_latent_standardization,
        train_dynamics,
    )
    from quantwm.model.world_model import WorldModel, WorldModelConfig

    seed_everything(seed)
    config = WorldModelConfig.for_env(env, **(model_config or {}))
    model = WorldModel(config)
    pretrained = load(encoder_path)
    for field in _ENCODER_FIELDS:
        if getattr(pretrained.config, field) != getattr(config, field):
            raise ValueError(f"encoder checkpoint {encoder_path} has {field}="
                             f"{getattr(pretrained.config, field)}, the {env} model needs "
                             f"{getattr(config, field)}")
    model.encoder.load_state_dict(pretrained.encoder.state_dict())
    model.decoder.load_state_dict(pretrained.decoder.state_dict())

    trajs = load_trajectories(env)
    frames = trajectory_frames(env, trajs, "train", 64, config.frameskip, config.img_size, seed)
    standardization = set_latent_standardization(model, frames)
    print(f"{env}: encoder output standardised: {standardization}")
    T = config.num_hist + rollout_steps
    # no frame cache: a batch renders its frames (~1.5 ms per 32), and latents that fit are
    # kept instead, so the frozen encoder runs once per frame, not once per batch
    train_set, val_set = (frame_windows(env, trajs, split, T, config.frameskip, config.img_size)
                          for split in ("train", "val"))
    model.set_normalization(**dataset_stats(train_set, n=2048, seed=seed))
    per_frame = (config.num_patches, config.enc_dim)
    gib = sum(w.latent_bytes(per_frame) for w in (train_set, val_set)) / 2**30
    if latent_cache_gib is None:
        latent_cache_gib = default_latent_cache_gib()
    if gib <= latent_cache_gib:
        freeze_encoder(model)
        encoder = model.encoder.to(device)
        train_set, val_set = (w.encoded(lambda images: encoder(images.to(device)))
                              for w in (train_set, val_set))
        print(f"{env}: every frame encoded once ({gib:.2f} GiB of latents)")
    else:
        print(f"{env}: latents would take {gib:.2f} GiB > --latent-cache-gib "
              f"{latent_cache_gib:.1f}: encoding every batch instead")
    summary = train_dynamics(model, train_set, val_set, minutes=minutes, max_steps=steps,
                             seed=seed, device=device, state_path=resume_state_path(out, STATE_DIR),
                             resume=resume, **_overrides(**kw))
    encoder_meta = copy.deepcopy(pretrained.meta)
    encoder_meta.get("training", {}).pop("history", None)
    save(model, out, stage="world_model", env=env, seed=seed, rollout_steps=rollout_steps,
         training=summary, encoder=encoder_meta, standardization=standardization,
         dataset=dataset_meta(trajs))
    print(f"{env}: {summary['steps']} steps in {summary['minutes']} min, train "
          f"{summary['final']}, val {summary.get('val')} -> {out}")
    return model
