"""Tests of quantwm.model on a tiny config and synthetic data (a dot pushed by actions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantwm.model import CHECKPOINT_DIR, WorldModel, WorldModelConfig, load, save
from quantwm.model.train import (
    dataset_stats,
    dynamics_losses,
    evaluate_dynamics,
    pretrain_encoder,
    train_dynamics,
)
from quantwm.model.vit import Block, block_causal_mask

torch.set_num_threads(1)


def tiny_config(env: str = "pusht", **kw) -> WorldModelConfig:
    """A small model of ``env``; PushT's keeps DINO-WM's 3 history frames, so that the tests
    cover the multi-frame paths (the growing window, history actions) as well as Wall's one."""
    base = dict(img_size=32, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2, pred_depth=2,
                pred_heads=2, pred_head_dim=16, dec_width=16, num_hist=3 if env == "pusht" else 1)
    return WorldModelConfig.for_env(env, **{**base, **kw})


def tiny_model(env: str = "pusht", seed: int = 0, device: str | torch.device = "cpu", **kw
               ) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(tiny_config(env, **kw)).eval().to(device)


def render_dots(pos: np.ndarray, img_size: int) -> np.ndarray:
    """(n, 2) positions in [0, 1] -> (n, 3, H, W) float images of a dark dot on white."""
    grid = (np.arange(img_size) + 0.5) / img_size
    d2 = (grid[None, None, :] - pos[:, 0, None, None]) ** 2 \
        + (grid[None, :, None] - pos[:, 1, None, None]) ** 2
    ink = np.exp(-d2 / (2 * 0.06**2))
    img = 1.0 - ink[:, None] * np.array([0.0, 1.0, 1.0])[None, :, None, None]
    return img.astype(np.float32)


class DotWindows:
    """Windows of a dot moved by 5 sub-actions per frame; item format of FrameWindows."""

    def __init__(self, n: int, num_frames: int, proprio_dim: int, img_size: int = 32,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.pos = np.empty((n, num_frames, 2))
        self.action = rng.normal(0, 1, size=(n, num_frames, 10)).astype(np.float32)
        self.pos[:, 0] = rng.uniform(0.25, 0.75, size=(n, 2))
        for t in range(1, num_frames):
            step = 0.02 * self.action[:, t - 1].reshape(n, 5, 2).sum(1)
            self.pos[:, t] = np.clip(self.pos[:, t - 1] + step, 0.1, 0.9)
        self.proprio_dim, self.img_size = proprio_dim, img_size

    def __len__(self) -> int:
        return len(self.pos)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        p = self.pos[i]
        proprio = np.concatenate([p, np.zeros((len(p), self.proprio_dim - 2))], 1)
        return {"visual": render_dots(p, self.img_size), "proprio": proprio.astype(np.float32),
                "action": self.action[i]}


class DotFrames:
    num_features = 2

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pos = rng.uniform(0.1, 0.9, size=(n, 2))
        return torch.from_numpy(render_dots(pos, 32)), torch.from_numpy((pos - 0.5) / 0.23).float()


def random_inputs(model: WorldModel, B: int = 3, T: int = 2, seed: int = 0):
    """Seeded (visual, proprio, action) drawn on the CPU, placed on the model's device."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    visual = torch.rand(B, T, 3, c.img_size, c.img_size, generator=g)
    proprio = torch.randn(B, T, c.proprio_dim, generator=g)
    action = torch.randn(B, T, c.action_dim, generator=g)
    return tuple(t.to(model.device) for t in (visual, proprio, action))


# ------------------------------------------------------------------------------------ structure
def test_shapes_and_default_sizes():
    cfg = WorldModelConfig.for_env("pusht")
    assert (cfg.num_patches, cfg.latent_dim, cfg.pred_dim, cfg.num_hist) == (16, 138, 148, 1)
    model = WorldModel(WorldModelConfig.for_env("pusht", num_hist=3))  # DINO-WM's 3 frames
    blk = model.predictor.blocks[0]
    assert (blk.attn.qkv.in_features, blk.attn.qkv.out_features) == (148, 384)
    assert (blk.attn.proj.in_features, blk.attn.proj.out_features) == (128, 148)
    visual, proprio, action = random_inputs(model, B=2, T=3)
    z = model.encode(visual, proprio)
    assert z.shape == (2, 3, 16, 138)
    assert model.predict(z, action).shape == (2, 3, 16, 138)
    assert model.rollout(z[:, :1], action).shape == (2, 3, 16, 138)
    assert model.decode(z).shape == (2, 3, 3, 64, 64)
    assert model.predictor_flops(1) > 0


def test_blocks_hold_only_the_four_linears():
    model = tiny_model()
    for part in (model.encoder, model.predictor):
        for block in part.blocks:
            assert isinstance(block, Block)
            names = {n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
            assert names == {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert all(".blocks." in n for n in linears)  # embeddings and decoder are not Linear


def test_block_causal_mask(device):
    mask = block_causal_mask(3, 2, device)
    frame = torch.arange(6, device=device) // 2
    assert mask.device.type == device.type
    assert torch.equal(mask, frame[:, None] >= frame[None, :])
    assert block_causal_mask(1, 16, device) is None


def test_later_frames_never_change_earlier_outputs(device):
    model = tiny_model(device=device)
    visual, proprio, action = random_inputs(model, T=3)
    z = model.encode(visual, proprio)
    out = model.predict(z, action)
    z2, a2 = z.clone(), action.clone()
    z2[:, 2] += torch.randn_like(z2[:, 2])
    a2[:, 1:] += 1.0
    out2 = model.predict(z2, a2)
    torch.testing.assert_close(out2[:, 0], out[:, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(out2[:, 1], out[:, 1])  # frame 1's own action changed


def test_rollout_equals_manual_predict_calls(device):
    model = tiny_model(device=device)  # num_hist 3: the window grows 2 -> 3, then slides
    visual, proprio, _ = random_inputs(model, T=2)
    z_hist = model.encode(visual, proprio)
    g = torch.Generator().manual_seed(1)
    hist_actions = torch.randn(3, 1, 10, generator=g).to(device)
    actions = torch.randn(3, 4, 10, generator=g).to(device)
    with torch.inference_mode():
        rolled = model.rollout(z_hist, actions, hist_actions=hist_actions)
    frames, acts = list(z_hist.unbind(1)), torch.cat([hist_actions, actions], 1)
    for _ in range(4):
        end = len(frames)
        start = max(0, end - 3)
        frames.append(model.predict(torch.stack(frames[start:end], 1), acts[:, start:end])[:, -1])
    torch.testing.assert_close(rolled, torch.stack(frames[2:], 1), rtol=1e-5, atol=1e-5)


def test_rollout_single_frame_history_wall(device):
    model = tiny_model("wall", device=device)
    visual, proprio, action = random_inputs(model, T=1)
    z = model.encode(visual, proprio)
    actions = torch.randn(3, 2, 10).to(device)
    rolled = model.rollout(z, actions)
    step1 = model.predict(z, actions[:, :1])
    step2 = model.predict(step1, actions[:, 1:2])
    # batch shapes differ (one call vs two), so GPU kernels may round differently: 1e-4
    torch.testing.assert_close(rolled, torch.cat([step1, step2], 1), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    model = tiny_model(seed=3)
    model.set_normalization(torch.full((10,), 0.5), torch.full((10,), 2.0),
                            torch.arange(4.0), torch.full((4,), 3.0))
    path = save(model, tmp_path / "m.pt", steps=7)
    loaded = load(path)
    assert loaded.meta["steps"] == 7 and "commit" in loaded.meta
    assert loaded.config == model.config
    visual, proprio, action = random_inputs(model)
    for m in (model, loaded):
        m.out = m.predict(m.encode(visual, proprio), m.normalize_action(action))
    assert torch.equal(model.out, loaded.out)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw["config"], dict)


def test_partial_checkpoint_keeps_only_its_parts(tmp_path):
    model = tiny_model(seed=4)
    loaded = load(save(model, tmp_path / "enc.pt", parts=("encoder", "decoder")))
    assert loaded.meta["parts"] == ["encoder", "decoder"]
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.encoder(x), model.encoder(x))
    raw = torch.load(tmp_path / "enc.pt", weights_only=True)
    assert not any(k.startswith("predictor.") for k in raw["state_dict"])


@pytest.mark.parametrize("env", ["wall", "pusht"])
def test_shipped_checkpoint_is_its_envs_default_model(env):
    """`quantwm train --env E` (no --model) builds the architecture that was shipped."""
    if not (CHECKPOINT_DIR / f"{env}.pt").exists():
        pytest.skip(f"no shipped {env} checkpoint (quantwm train --env {env})")
    model = load(env)
    assert model.config == WorldModelConfig.for_env(env)
    assert model.meta["env"] == env and model.meta["commit"]


def test_missing_checkpoint_names_path_and_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="quantwm train"):
        load(tmp_path / "nope.pt")


@pytest.mark.parametrize("flag, bad", [("--aux-weight", "-1"), ("--aux-scale", "0")])
def test_train_cli_rejects_a_stage1_flag_it_would_not_use(tmp_path, capsys, flag, bad):
    from quantwm.cli import main

    encoder = tmp_path / "encoder.pt"
    encoder.touch()  # exists: --stage all / dynamics would not run stage 1
    for stage in ("dynamics", "all"):
        args = ["train", "--env", "pusht", "--stage", stage, "--encoder", str(encoder),
                flag, "0.5"]
        assert main(args) == 2
        assert f"{flag} 0.5" in capsys.readouterr().err
    args = ["train", "--stage", "encoder", "--encoder", str(encoder), flag, bad]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert flag in err and bad in err


def test_same_seed_same_model():
    a, b = tiny_model(seed=5), tiny_model(seed=5)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na


def test_load_onto_device_matches_cpu(tmp_path, device):
    """A checkpoint saved on the CPU loads onto ``device`` (buffers too) and computes the same."""
    model = tiny_model(seed=6)
    on_device = load(save(model, tmp_path / "m.pt"), device=device)
    assert on_device.device.type == device.type
    assert all(t.device.type == device.type for t in on_device.state_dict().values())
    visual, proprio, action = random_inputs(model, T=3)
    with torch.inference_mode():
        want = model.rollout(model.encode(visual, proprio)[:, :1], action)
        got = on_device.rollout(on_device.encode(visual.to(device), proprio.to(device))[:, :1],
                                action.to(device))
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-4)


def test_bad_inputs_raise_value_error():
    model = tiny_model()
    visual, proprio, action = random_inputs(model, T=3)
    with pytest.raises(ValueError, match="visual"):
        model.encode(visual[:, :, :, :16], proprio)
    with pytest.raises(ValueError, match="proprio"):
        model.encode(visual, proprio[..., :1])
    z = model.encode(visual, proprio)
    with pytest.raises(ValueError, match="frames"):
        model.predict(torch.cat([z, z], 1), torch.cat([action, action], 1))
    with pytest.raises(ValueError, match="action"):
        model.predict(z, action[..., :4])
    with pytest.raises(ValueError, match="hist_actions"):
        model.rollout(z[:, :2], action)
    with pytest.raises(ValueError, match="unknown environment"):
        WorldModelConfig.for_env("maze")
    with pytest.raises(ValueError, match="pred_dpeth"):
        WorldModelConfig.for_env("pusht", pred_dpeth=6)


def test_config_overrides_replace_the_env_defaults():
    config = WorldModelConfig.for_env("pusht", num_hist=3, pred_depth=6)
    assert (config.num_hist, config.pred_depth, config.proprio_dim) == (3, 6, 4)
    assert WorldModelConfig.for_env("pusht").num_hist == 1


def test_train_cli_model_flag_is_checked(tmp_path, capsys):
    from quantwm.cli import main

    encoder = tmp_path / "encoder.pt"
    assert main(["train", "--stage", "encoder", "--encoder", str(encoder),
                 "--model", "pred_depth=6"]) == 2
    assert "--model pred_depth=6" in capsys.readouterr().err
    assert main(["train", "--env", "pusht", "--stage", "dynamics", "--encoder", str(encoder),
                 "--model", "pred_depth"]) == 2
    assert "'pred_depth'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- training
def test_training_reduces_loss_and_is_deterministic(tmp_path):
    data = DotWindows(256, num_frames=4, proprio_dim=4)

    def run(seed: int) -> tuple[WorldModel, dict, dict]:
        model = tiny_model(seed=seed)
        model.set_normalization(**dataset_stats(data, n=128))
        pre = pretrain_encoder(model, {"dots": DotFrames()}, max_steps=15, batch_size=16,
                               log_every=1, seed=seed, quiet=True)
        before = evaluate_dynamics(model, data, n=64)
        summary = train_dynamics(model, data, data, max_steps=40, batch_size=16, lr=2e-3,
                                 seed=seed, quiet=True, log_every=5)
        return model, pre, {"before": before, **summary}

    m1, pre1, s1 = run(0)
    assert pre1["history"][-1]["recon"] < pre1["history"][0]["recon"]
    assert s1["val"]["z_loss"] < 0.7 * s1["before"]["z_loss"]
    assert all(not p.requires_grad for p in m1.encoder.parameters())
    m2, _, s2 = run(0)
    assert s2["val"] == s1["val"]
    for (name, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(p1, p2), name


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_continues_where_it_stopped(tmp_path, monkeypatch, ema_decay):
    import quantwm.model.train as train

    data = DotWindows(64, num_frames=2, proprio_dim=2)

    def fresh() -> WorldModel:
        model = tiny_model("wall", seed=1)
        model.set_normalization(**dataset_stats(data, n=64))
        return model

    kw = dict(max_steps=6, batch_size=8, seed=0, quiet=True, ckpt_minutes=0.0,
              ema_decay=ema_decay)
    full = fresh()
    train_dynamics(full, data, **kw)

    real_collate, calls = train.collate, []

    def interrupted_collate(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real_collate(*args, **kwargs)

    state = tmp_path / "state.pt"
    monkeypatch.setattr(train, "collate", interrupted_collate)
    with pytest.raises(KeyboardInterrupt):
        train_dynamics(fresh(), data, state_path=state, **kw)
    monkeypatch.setattr(train, "collate", real_collate)
    resumed = fresh()
    s = train_dynamics(resumed, data, state_path=state, resume=True, **kw)
    assert s["steps"] == 6
    for (name, p1), p2 in zip(full.state_dict().items(), resumed.state_dict().values(),
                              strict=True):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6, msg=name)


def test_stage2_with_latents_encoded_once_trains_the_model_of_encoding_every_batch(
        tmp_path, monkeypatch, capsys):
    """`quantwm train --stage dynamics` end to end on a tiny encoder and a small dataset: with
    the latents cached up front (no frame cache) it trains the same model as with the encoder
    run on every batch, and the checkpoint records how it was trained."""
    import quantwm.model.cli as cli
    import quantwm.model.sources as sources
    from quantwm.data import make_trajectories

    trajs = make_trajectories("wall", 12, 30, seed=2)
    monkeypatch.setattr(sources, "load_trajectories", lambda env, path=None: trajs)
    monkeypatch.setattr(cli, "STATE_DIR", tmp_path)
    fields = dict(img_size=32, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2, dec_width=16)
    encoder = save(tiny_model("wall", seed=3, **fields), tmp_path / "encoder.pt")
    small = dict(fields, pred_depth=1, pred_heads=2, pred_head_dim=16)
    models = [cli.train_world_model("wall", tmp_path / f"m{gib}.pt", encoder_path=encoder,
                                    minutes=None, steps=4, rollout_steps=2, quiet=True,
                                    latent_cache_gib=gib, model_config=small, batch_size=8)
              for gib in (0.0, None)]  # never; the default budget (60 % of memory) holds them
    printed = capsys.readouterr().out
    assert "encoding every batch instead" in printed and "every frame encoded once" in printed
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values(),
                            strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    meta = load(tmp_path / "mNone.pt").meta
    assert meta["training"]["steps"] == 4 and meta["rollout_steps"] == 2
    assert meta["dataset"] == {"trajectories": 12, "train": len(trajs.indices("train")),
                               "seed": 2, "extensions": []}


def test_resume_refuses_a_state_of_another_config(tmp_path):
    data = DotWindows(32, num_frames=2, proprio_dim=2)
    kw = dict(max_steps=2, batch_size=8, seed=0, quiet=True, state_path=tmp_path / "state.pt")

    def fresh(depth: int) -> WorldModel:
        model = tiny_model("wall", pred_depth=depth)
        model.set_normalization(**dataset_stats(data, n=32))
        return model

    train_dynamics(fresh(2), data, **kw)
    with pytest.raises(ValueError, match=r"'pred_depth': \(2, 3\)"):
        train_dynamics(fresh(3), data, resume=True, **kw)


def same_params(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_ema_ends_with_the_moving_average_of_the_trained_weights(monkeypatch):
    import quantwm.model.train as train

    data = DotWindows(64, num_frames=2, proprio_dim=2)
    kw = dict(max_steps=5, batch_size=8, lr=2e-3, seed=0, quiet=True)

    def fresh() -> WorldModel:
        model = tiny_model("wall", seed=1)
        model.set_normalization(**dataset_stats(data, n=64))
        return model

    raw, trajectory, real_update = fresh(), [], train._update

    def recording_update(opt, loss, params):
        real_update(opt, loss, params)
        trajectory.append([p.detach().clone() for p in raw.predictor.parameters()])

    monkeypatch.setattr(train, "_update", recording_update)
    s_raw = train_dynamics(raw, data, data, **kw)
    monkeypatch.setattr(train, "_update", real_update)
    decay = 0.6
    averaged = fresh()
    s_ema = train_dynamics(averaged, data, data, ema_decay=decay, **kw)

    expected = trajectory[0]  # the average starts at the first trained weights
    for weights in trajectory[1:]:
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights, strict=True)]
    for e, p in zip(expected, averaged.predictor.parameters(), strict=True):
        torch.testing.assert_close(p, e)
    assert not same_params(list(raw.predictor.parameters()), averaged.predictor)
    assert s_ema["val_raw"] == s_raw["val"]  # the raw weights trained alike
    assert s_ema["val"] != s_raw["val"]
    with pytest.raises(ValueError, match="ema_decay must be in \\[0, 1\\), got 1.0"):
        train_dynamics(fresh(), data, ema_decay=1.0, **kw)


def test_decoder_trains_only_every_nth_step():
    data = DotWindows(64, num_frames=2, proprio_dim=2)
    model = tiny_model("wall", seed=1)
    model.set_normalization(**dataset_stats(data, n=64))
    decoder = [p.detach().clone() for p in model.decoder.parameters()]
    predictor = [p.detach().clone() for p in model.predictor.parameters()]
    s = train_dynamics(model, data, max_steps=4, batch_size=8, seed=0, quiet=True, log_every=1,
                       decoder_every=5)
    assert same_params(decoder, model.decoder)
    assert not same_params(predictor, model.predictor)
    assert all("decoder" not in h for h in s["history"])
    s = train_dynamics(model, data, max_steps=4, batch_size=8, seed=0, quiet=True, log_every=1,
                       decoder_every=2)
    assert ["decoder" in h for h in s["history"]] == [False, True, False, True]
    assert not same_params(decoder, model.decoder)
    with pytest.raises(ValueError, match="decoder_every must be an int >= 1, got 0"):
        train_dynamics(model, data, max_steps=4, decoder_every=0)


def test_latent_standardization_keeps_decoded_images():
    from quantwm.model.train import set_latent_standardization

    model = tiny_model()
    frames = torch.rand(4, 3, 3, 32, 32)
    visual, proprio = frames[:, :2], torch.zeros(4, 2, 4)
    images = model.decode(model.encode(visual, proprio))
    stats = set_latent_standardization(model, frames)
    z = model.encoder(frames.flatten(0, 1))
    assert abs(z.var(0, unbiased=False).mean().sqrt().item() - 1.0) < 1e-4
    assert z.mean(0).abs().max().item() < 1e-4
    assert 0 < stats["within_trajectory_std"] <= 1.0
    torch.testing.assert_close(model.decode(model.encode(visual, proprio)), images)


def test_dynamics_losses_checks_window_length():
    model = tiny_model("pusht")  # num_hist 3: windows need >= 4 frames
    data = DotWindows(4, num_frames=3, proprio_dim=4)
    from quantwm.model.train import collate

    with pytest.raises(ValueError, match="num_hist"):
        dynamics_losses(model, collate(data, np.arange(2), "cpu"))


def test_windows_encoded_once_give_the_losses_of_encoding_every_batch():
    """Stage 2 on FrameWindows.encoded: the frozen encoder's latents computed up front equal
    those of each batch, so the losses (and their gradients) do too; only the decoder's frames
    keep their pixels."""
    from quantwm.data import FrameWindows, make_trajectories
    from quantwm.model.train import collate, freeze_encoder

    model = tiny_model("pusht").train()
    freeze_encoder(model)
    trajs = make_trajectories("pusht", 6, 30, seed=1)
    plain = FrameWindows(trajs, "train", num_frames=4, frameskip=5, img_size=32)
    encoded = plain.encoded(model.encoder, chunk=7)
    assert len(encoded) == len(plain) and plain.batch([0]).keys() == {"visual", "proprio", "action"}
    idx = np.array([0, 3, len(plain) - 1, 11])
    a, b = collate(plain, idx, "cpu"), collate(encoded, idx, "cpu")
    assert b["latent"].shape == (4, 4, model.config.num_patches, model.config.enc_dim)
    torch.testing.assert_close(b["visual"], a["visual"][:, :1], rtol=0, atol=0)
    for key in ("proprio", "action"):
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
    grads = []
    for batch in (a, b):
        model.zero_grad()
        losses = dynamics_losses(model, batch)
        (losses["z_loss"] + losses["decoder"]).backward()
        grads.append([p.grad.clone() for p in model.predictor.parameters()])
        assert all(p.grad is None for p in model.encoder.parameters())
    torch.testing.assert_close(dynamics_losses(model, b), dynamics_losses(model, a))
    for ga, gb in zip(*grads, strict=True):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)
    assert encoded.latent_bytes((16, 32)) == len(plain.traj_idx) * 31 * 16 * 32 * 4
    # without the frame cache: rendered chunk by chunk, the same latents and items
    uncached = FrameWindows(trajs, "train", num_frames=4, frameskip=5, img_size=32, cache=False)
    c = collate(uncached.encoded(model.encoder, chunk=5), idx, "cpu")
    assert c.keys() == b.keys()
    for key in b:
        torch.testing.assert_close(c[key], b[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="visual_frames must be in 0..4, got 5"):
        plain.encoded(model.encoder, visual_frames=5)


@pytest.mark.parametrize("num_hist", [1, 3])
def test_rollout_loss_is_the_open_loop_rollout_error(num_hist):
    """Longer windows add z_rollout = the error of ``rollout`` from the first num_hist frames,
    and leave the teacher-forced loss (the reference's) as it was on the first num_hist + 1
    (with one history frame it is taken from the rollout's first step, not recomputed)."""
    from quantwm.model.train import collate

    model = tiny_model("pusht", num_hist=num_hist)
    h = num_hist
    data = DotWindows(8, num_frames=h + 3, proprio_dim=4)  # K = 3 rollout steps
    model.set_normalization(**dataset_stats(data, n=8))
    batch = collate(data, np.arange(8), "cpu")
    with torch.no_grad():
        long = dynamics_losses(model, batch)
        short = dynamics_losses(model, {k: v[:, :h + 1] for k, v in batch.items()})
        z = model.encode(batch["visual"], batch["proprio"])
        act = model.normalize_action(batch["action"])
        rolled = model.rollout(z[:, :h], act[:, h - 1:h + 2],
                               hist_actions=act[:, :h - 1] if h > 1 else None)
    assert "z_rollout" not in short
    for key in ("z_loss", "z_visual", "z_proprio"):
        torch.testing.assert_close(long[key], short[key])
    torch.testing.assert_close(long["z_rollout"], (rolled - z[:, h:]).pow(2).mean())


def test_training_with_rollout_loss_reduces_it():
    data = DotWindows(128, num_frames=3, proprio_dim=2)  # Wall: num_hist 1, K = 2
    model = tiny_model("wall", seed=2)
    model.set_normalization(**dataset_stats(data, n=128))
    before = evaluate_dynamics(model, data, n=64)
    summary = train_dynamics(model, data, data, max_steps=40, batch_size=16, lr=2e-3,
                             seed=0, quiet=True, log_every=5)
    assert summary["val"]["z_rollout"] < 0.7 * before["z_rollout"]
    assert summary["rollout_weight"] == 1.0


def test_door_path_coordinate_measures_paths_through_the_door():
    from quantwm.envs.wall import wall_is_free
    from quantwm.model.sources import door_path_coordinate

    rng = np.random.default_rng(0)
    wall_x, door_y = 30.0, 22.0
    pts = rng.uniform(8, 56, size=(4000, 2))
    pts = pts[wall_is_free(pts, wall_x, door_y) & (np.abs(pts[:, 0] - wall_x) > 8)]
    h = door_path_coordinate(pts[:, 0], pts[:, 1], wall_x, door_y)
    to_door = np.hypot(pts[:, 0] - wall_x, pts[:, 1] - door_y)
    left = pts[:, 0] < wall_x
    assert np.all(np.sign(h) == np.where(left, -1, 1))
    a, b = pts[left][:50], pts[~left][:50]  # opposite rooms: the path through the door centre
    dh = np.abs(h[left][:50, None] - h[~left][None, :50])
    np.testing.assert_allclose(dh, to_door[left][:50, None] + to_door[~left][None, :50],
                               rtol=1e-3)
    assert np.all(dh >= 0.999 * np.linalg.norm(a[:, None] - b[None], axis=-1))
    c = pts[left][:60]  # one room: never longer than the straight line
    dh_same = np.abs(h[left][:60, None] - h[left][None, :60])
    assert np.all(dh_same <= np.linalg.norm(c[:, None] - c[None], axis=-1) * 1.001 + 1e-9)


def test_wall_state_features_weight_the_door_path():
    from quantwm.model.sources import (
        DOOR_PATH_WEIGHT,
        STATE_FEATURES,
        feature_normalization,
        state_features,
    )

    rng = np.random.default_rng(1)
    states = rng.uniform(8, 56, size=(500, 2))
    params = {"wall_x": rng.integers(20, 45, 500).astype(float),
              "door_y": rng.integers(10, 55, 500).astype(float)}
    feats = state_features("wall", states, params)
    assert feats.shape == (500, len(STATE_FEATURES["wall"]))
    mean, scale = feature_normalization("wall", feats)
    np.testing.assert_allclose(scale[4], scale[0] / DOOR_PATH_WEIGHT)  # px units of agent x
    np.testing.assert_allclose(scale[:4], feats[:, :4].std(0) + 1e-6)
    assert state_features("pusht", rng.normal(size=(3, 7)), {}).shape == (3, 6)


def test_training_reads_the_data_the_shipped_models_were_trained_on() -> None:
    """`quantwm train --env pusht` reads the shipped file plus its listed extensions, as the
    shipped pusht.pt records; stage 1 (the encoder) reads the shipped files alone."""
    from quantwm.model import load
    from quantwm.model.cli import dataset_meta
    from quantwm.model.sources import load_trajectories

    def data(meta: dict) -> tuple:  # what was trained on, not when it was generated
        return (meta["trajectories"], meta["train"], meta["seed"],
                [(e["seed"], e["n_traj"]) for e in meta["extensions"]])

    shipped = load("pusht").meta["dataset"]
    assert data(dataset_meta(load_trajectories("pusht"))) == data(shipped)
    assert load_trajectories("pusht", with_extensions=False).n_traj < shipped["trajectories"]
