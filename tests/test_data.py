"""Properties of the datasets, frame windows, episode sets and the data CLI (fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantwm import envs
from quantwm.cli import main
from quantwm.data import (
    FrameWindows,
    Trajectories,
    calibration_episodes,
    default_path,
    evaluation_episodes,
    extend_trajectories,
    load_trajectories,
    make_trajectories,
    summarize,
)
from quantwm.data.pusht_data import block_moved, generate_pusht
from quantwm.data.trajectories import EXTEND_CHUNK
from quantwm.data.wall_data import crossed_wall, generate_wall
from quantwm.envs.pusht import pusht_step, tee_corners
from quantwm.envs.wall import wall_is_free, wall_step


@pytest.fixture(scope="module")
def small() -> dict[str, Trajectories]:
    return {
        "wall": make_trajectories("wall", 60, 30, seed=3),
        "pusht": make_trajectories("pusht", 24, 40, seed=3),
    }


# ---- trajectories ------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "s"), [("wall", 2), ("pusht", 7)])
def test_shapes_split_and_determinism(small: dict, name: str, s: int) -> None:
    tr = small[name]
    n, t = tr.n_traj, tr.n_steps
    assert tr.states.shape == (n, t + 1, s) and tr.actions.shape == (n, t, 2)
    assert set(tr.params) == ({"wall_x", "door_y"} if name == "wall" else set())
    train, val = tr.indices("train"), tr.indices("val")
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == n
    assert len(val) == round(0.1 * n)
    again = make_trajectories(name, n, t, seed=3)
    np.testing.assert_array_equal(again.states, tr.states)
    np.testing.assert_array_equal(again.split, tr.split)
    other = make_trajectories(name, n, t, seed=4)
    assert not np.array_equal(other.states, tr.states)


@pytest.mark.parametrize("name", ["wall", "pusht"])
def test_save_load_round_trip(small: dict, name: str, tmp_path) -> None:
    tr = small[name]
    path = tr.save(tmp_path / name / "t.npz")
    back = Trajectories.load(path)
    np.testing.assert_array_equal(back.states, tr.states)
    np.testing.assert_array_equal(back.actions, tr.actions)
    np.testing.assert_array_equal(back.split, tr.split)
    assert back.params.keys() == tr.params.keys()
    assert back.meta["seed"] == 3 and back.env_name == name


def test_wall_trajectories_follow_the_dynamics(small: dict) -> None:
    tr = small["wall"]
    wx, dy = tr.params["wall_x"], tr.params["door_y"]
    assert set(np.unique(wx)) <= set(range(20, 45)) and set(np.unique(dy)) <= set(range(10, 55))
    step = np.linalg.norm(tr.actions, axis=-1)
    assert step.min() >= 0.2 - 1e-6 and step.max() <= 1.8 + 1e-6
    for t in range(tr.n_steps):
        nxt = wall_step(tr.states[:, t], tr.actions[:, t], wx, dy)
        np.testing.assert_allclose(nxt, tr.states[:, t + 1], atol=1e-4)
    flat = tr.states.reshape(-1, 2)
    t1 = tr.n_steps + 1
    assert wall_is_free(flat, np.repeat(wx, t1), np.repeat(dy, t1)).all()
    assert crossed_wall(tr.states, wx).mean() > 0.1  # the door gets used


def test_wall_pushers_press_against_the_wall() -> None:
    def pressing(**fractions: float) -> tuple[float, float]:
        """Share of steps blocked by the middle wall; share of walks blocked 3 steps in a row."""
        states, actions, p = generate_wall(400, 40, np.random.default_rng(0), **fractions)
        moved = np.linalg.norm(np.diff(states, axis=1), axis=-1)
        at_wall = np.abs(states[:, :-1, 0] - p["wall_x"][:, None]) < 4.0
        blocked = (moved < np.linalg.norm(actions, axis=-1)) & at_wall  # < half of 2 * |action|
        in_a_row = blocked[:, 2:] & blocked[:, 1:-1] & blocked[:, :-2]
        return float(blocked.mean()), float(in_a_row.any(axis=1).mean())

    walkers, pushers = pressing(wall_pushers=0.0), pressing(door_seekers=0.0, wall_pushers=1.0)
    assert pushers[0] > 4 * walkers[0]
    assert pushers[1] > 0.6 and pushers[1] > 3 * walkers[1]
    with pytest.raises(ValueError, match="wall_pushers must be a fraction in \\[0, 1\\], got 1.5"):
        generate_wall(4, 5, np.random.default_rng(0), wall_pushers=1.5)
    with pytest.raises(ValueError, match="door_seekers \\+ wall_pushers must be <= 1"):
        generate_wall(4, 5, np.random.default_rng(0), door_seekers=0.6, wall_pushers=0.6)


def test_pusht_trajectories_push_the_block(small: dict) -> None:
    tr = small["pusht"]
    # slow pushes between walks to the next contact: the block moves in about a third of the
    # steps, and nearly every trajectory (40 steps here) moves it
    assert block_moved(tr.states).mean() > 0.2
    assert block_moved(tr.states).any(axis=1).mean() >= 0.9
    corners = tee_corners(tr.states[..., 2:5])
    assert corners.min() > 4.0 and corners.max() < 508.0
    assert np.abs(tr.actions).max() <= 1.0
    for i in range(3):  # recorded states follow from the recorded actions (Markov env)
        nxt = pusht_step(tr.states[i, 10], tr.actions[i, 10])
        np.testing.assert_allclose(nxt, tr.states[i, 11], atol=1e-3)


def test_summary_reports_what_the_data_does(small: dict) -> None:
    w, p = summarize(small["wall"]), summarize(small["pusht"])
    assert 0.0 < w["fraction_through_door"] <= 1.0
    assert p["fraction_steps_block_moves"] > 0.2


@pytest.mark.parametrize("name", ["wall", "pusht"])
def test_extending_a_dataset_keeps_its_validation_split_and_episodes(small: dict, name: str,
                                                                     monkeypatch) -> None:
    import quantwm.data.trajectories as trajectories

    monkeypatch.setattr(trajectories, "EXTEND_CHUNK", 4)  # two chunks of 4, one of 2
    base = small[name]
    grown = extend_trajectories(base, 10, seed=5, workers=2)  # chunks in two processes
    assert grown.n_traj == base.n_traj + 10 and (grown.split[base.n_traj:] == "train").all()
    np.testing.assert_array_equal(grown.states[: base.n_traj], base.states)
    np.testing.assert_array_equal(grown.indices("val"), base.indices("val"))
    assert {k: v.shape for k, v in grown.params.items()} == {k: (base.n_traj + 10,)
                                                             for k in base.params}
    a = evaluation_episodes(name, 5, seed=2, trajectories=base)
    b = evaluation_episodes(name, 5, seed=2, trajectories=grown)
    np.testing.assert_array_equal(a.start_states, b.start_states)
    np.testing.assert_array_equal(a.goal_states, b.goal_states)
    # chunk k comes from SeedSequence([seed, k]): the first chunk is a plain 4-trajectory draw
    rng = np.random.default_rng(np.random.SeedSequence([5, 0]))
    first = trajectories._generate(name, 4, base.n_steps, rng)[0]
    np.testing.assert_array_equal(grown.states[base.n_traj: base.n_traj + 4],
                                  trajectories._round32(first))
    alone = extend_trajectories(base, 10, seed=5, workers=1)  # the data do not depend on workers
    np.testing.assert_array_equal(alone.states, grown.states)
    np.testing.assert_array_equal(alone.actions, grown.actions)
    assert grown.meta["extensions"][0]["seed"] == 5
    with pytest.raises(ValueError, match="seed 5 was already used"):
        extend_trajectories(grown, 2, seed=5)
    with pytest.raises(ValueError, match="seed 3 was already used"):
        extend_trajectories(base, 2, seed=3)
    with pytest.raises(ValueError, match="n_traj must be a positive integer, got 0"):
        extend_trajectories(base, 0, seed=6)
    with pytest.raises(ValueError, match="workers must be a positive integer or None, got 0"):
        extend_trajectories(base, 2, seed=6, workers=0)


def test_bad_dataset_requests() -> None:
    with pytest.raises(ValueError, match="n_traj"):
        make_trajectories("wall", 1, 10)
    with pytest.raises(ValueError, match="unknown environment"):
        make_trajectories("maze", 10, 10)
    with pytest.raises(ValueError, match="no trajectory file"):
        Trajectories.load("/nonexistent/trajectories.npz")
    with pytest.raises(ValueError, match="split"):
        make_trajectories("wall", 4, 5).indices("test")


# ---- the shipped files -------------------------------------------------------------------------
def test_shipped_datasets_are_reproducible_from_their_seed() -> None:
    wall = load_trajectories("wall")
    assert (wall.n_traj, wall.n_steps, wall.meta["seed"]) == (3840, 50, 0)
    fresh = make_trajectories("wall", seed=0)
    np.testing.assert_array_equal(fresh.states, wall.states)
    np.testing.assert_array_equal(fresh.split, wall.split)
    pusht = load_trajectories("pusht")
    assert (pusht.n_traj, pusht.n_steps, pusht.meta["seed"]) == (19200, 80, 0)
    # 4800 from seed 0 (the file), then data/pusht/extensions.json: 4800 more of seed 1 and
    # 9600 of seed 2 (training only, generated on first use).
    # Trajectories are generated one after another from one stream: a prefix regenerates
    head = make_trajectories("pusht", 2, 80, seed=0)
    np.testing.assert_array_equal(head.states, pusht.states[:2])
    assert [(e["seed"], e["n_traj"]) for e in pusht.meta["extensions"]] == [(1, 4800), (2, 9600)]
    assert (pusht.split[4800:] == "train").all() and (pusht.split == "val").sum() == 480
    for seed, first in ((1, 4800), (2, 9600)):  # each extension's 2nd chunk
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        second = generate_pusht(2, 80, rng)[0]
        np.testing.assert_array_equal(pusht.states[first + EXTEND_CHUNK:][:2],
                                      second.astype(np.float32).astype(np.float64))
    assert default_path("pusht").stat().st_size < 12e6  # the extension is generated, not shipped


def test_shipped_extensions_are_generated_once_and_checked(tmp_path, monkeypatch) -> None:
    import json

    import quantwm.data.trajectories as trajectories

    monkeypatch.setattr(trajectories, "DATA_DIR", tmp_path)
    monkeypatch.setattr(trajectories, "EXTEND_CHUNK", 4)
    base = make_trajectories("wall", 8, 10, seed=0)
    base.save()
    assert load_trajectories("wall").n_traj == 8  # no extensions.json: the file as it is
    grown = extend_trajectories(base, 6, seed=3)
    spec = [{"seed": 3, "n_traj": 6, "sha1": trajectories.extension_digest(grown, 8)}]
    (tmp_path / "wall" / "extensions.json").write_text(json.dumps(spec))
    first = load_trajectories("wall")
    np.testing.assert_array_equal(first.states, grown.states)
    assert len(list((tmp_path / "cache").glob("wall-trajectories-*.npz"))) == 1
    monkeypatch.setattr(trajectories, "extend_trajectories", None)  # a second load reads the cache
    np.testing.assert_array_equal(load_trajectories("wall").states, grown.states)
    assert load_trajectories("wall", default_path("wall")).n_traj == 8  # an explicit path: as is
    monkeypatch.undo()
    monkeypatch.setattr(trajectories, "DATA_DIR", tmp_path / "other")
    base.save()
    spec[0]["sha1"] = "0" * 40
    (tmp_path / "other" / "wall" / "extensions.json").write_text(json.dumps(spec))
    with pytest.warns(UserWarning, match="extension of seed 3 generated here differs"):
        load_trajectories("wall")



def _shipped_file_only(tmp_path, monkeypatch) -> None:
    """Data dir ``tmp_path`` holding the shipped PushT file and its extensions.json, an empty
    cache, and generation replaced by a failure."""
    import shutil

    import quantwm.data.trajectories as trajectories

    shipped = default_path("pusht")
    (tmp_path / "pusht").mkdir()
    (tmp_path / "pusht" / "trajectories.npz").symlink_to(shipped)
    shutil.copy(shipped.with_name("extensions.json"), tmp_path / "pusht")
    monkeypatch.setattr(trajectories, "DATA_DIR", tmp_path)

    def never(*args, **kwargs):
        raise AssertionError("the extension was generated")

    monkeypatch.setattr(trajectories, "extend_trajectories", never)


def test_evaluation_validation_and_calibration_never_generate_the_extension(tmp_path, monkeypatch
                                                                            ) -> None:
    """PushT's evaluation episodes, validation segments and rendered validation frames come
    from the shipped file alone (the extension adds training trajectories only), bit for bit
    what the extended dataset gives and what the stored results were run on; calibration
    episodes are drawn from the shipped file's training split (calibration revision 2)."""
    import json

    from quantwm.study.analysis import ground_truth_segment
    from quantwm.study.latent import validation_segments
    from quantwm.study.store import RESULTS_DIR

    full = load_trajectories("pusht")  # the extended dataset (data/cache, or generated once)
    expected = {(n, s): evaluation_episodes("pusht", n=n, seed=s, trajectories=full)
                for n, s in ((50, 0), (10, 1))}
    _shipped_file_only(tmp_path, monkeypatch)
    for (n, s), want in expected.items():
        got = evaluation_episodes("pusht", n=n, seed=s)
        assert got.ids == want.ids
        np.testing.assert_array_equal(got.start_states, want.start_states)
        np.testing.assert_array_equal(got.goal_states, want.goal_states)
    segs = validation_segments("pusht")
    seg = ground_truth_segment("pusht", frames=4)
    assert not (tmp_path / "cache").exists()  # nothing generated, nothing cached
    calib = calibration_episodes("pusht", n=10, seed=1)
    shipped = load_trajectories("pusht", with_extensions=False)
    assert not (tmp_path / "cache").exists()
    monkeypatch.undo()
    same = calibration_episodes("pusht", n=10, seed=1, trajectories=shipped)
    drawn = [int(i.split("/traj")[1].split("/")[0]) for i in calib.ids]
    assert calib.ids == same.ids and max(drawn) < shipped.n_traj
    np.testing.assert_array_equal(calib.start_states, same.start_states)
    # the episodes and segments the committed PushT FP32 result was run on
    record = next(json.loads(p.read_text()) for p in sorted((RESULTS_DIR / "pusht").glob(
        "pusht-fp32-cpu-n10-c10-s0-*.json")))
    assert record["episodes"]["ids"] == evaluation_episodes("pusht", n=10, seed=0).ids
    assert record["latent_error"]["segments"] == segs.ids
    again = validation_segments("pusht")
    torch.testing.assert_close(again.visual, segs.visual, rtol=0, atol=0)
    torch.testing.assert_close(again.actions, segs.actions, rtol=0, atol=0)
    torch.testing.assert_close(ground_truth_segment("pusht", frames=4).visual, seg.visual,
                               rtol=0, atol=0)


def test_extension_progress_bar_gives_the_expected_time(capsys) -> None:
    import quantwm.data.trajectories as trajectories

    base = make_trajectories("wall", 6, 10, seed=0)
    quiet = extend_trajectories(base, 5, seed=4, workers=1)
    assert "expected" not in capsys.readouterr().err
    shown = extend_trajectories(base, 5, seed=4, workers=1, progress=True)
    err = capsys.readouterr().err
    assert "wall: 5 training trajectories (seed 4), expected ~0 s on 1 idle CPU" in err
    assert "5/5" in err
    np.testing.assert_array_equal(shown.states, quiet.states)
    # PushT: 14400 trajectories of 80 steps, 6 chunks of 2400 on 2 CPUs: 3 rounds of ~46 s
    seconds = trajectories.expected_generation_seconds("pusht", 14400, 80, workers=2)
    assert 120 <= seconds <= 160
    assert trajectories.expected_generation_seconds("pusht", 14400, 80, workers=6) * 3 == seconds


# ---- frame windows -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "p"), [("wall", 2), ("pusht", 4)])
def test_frame_windows(small: dict, name: str, p: int) -> None:
    tr = small[name]
    fw = FrameWindows(tr, "train", num_frames=3, frameskip=5, img_size=32)
    n_train = len(tr.indices("train"))
    assert len(fw) == n_train * (tr.n_steps - 15 + 1)
    item = fw[len(fw) - 1]
    assert item["visual"].shape == (3, 3, 32, 32) and item["visual"].dtype == torch.float32
    assert 0.0 <= item["visual"].min() and item["visual"].max() <= 1.0
    assert item["proprio"].shape == (3, p) and item["action"].shape == (3, 10)
    # window k: frames at t0, t0 + 5, t0 + 10; action row j = raw actions t0+5j .. t0+5j+4
    k = 7
    row, t0 = fw.windows[k]
    i = fw.traj_idx[row]
    item = fw[k]
    frames = envs.render_states(
        name, tr.states[i, [t0, t0 + 5, t0 + 10]], 32, **{key: v[i] for key, v in tr.params.items()}
    )
    np.testing.assert_array_equal((item["visual"] * 255).round().byte().permute(0, 2, 3, 1), frames)
    np.testing.assert_array_equal(
        item["action"][1].numpy(), tr.actions[i, t0 + 5 : t0 + 10].reshape(-1).astype(np.float32)
    )
    np.testing.assert_array_equal(
        item["proprio"][2].numpy(), envs.proprio_of(name, tr.states[i, t0 + 10])
    )
    # the cache and on-demand rendering agree; batch == stacked items
    lazy = FrameWindows(tr, "train", num_frames=3, frameskip=5, img_size=32, cache=False)
    b, b_lazy = fw.batch([0, 5, k]), lazy.batch([0, 5, k])
    for key in b:
        torch.testing.assert_close(b[key], b_lazy[key], rtol=0, atol=0)
        torch.testing.assert_close(b[key][2], item[key], rtol=0, atol=0)
    assert fw.stats()["action_mean"].shape == (10,)
    val = FrameWindows(tr, "val", num_frames=3, cache=False)
    assert set(tr.split[fw.traj_idx]) == {"train"} and set(tr.split[val.traj_idx]) == {"val"}


def test_frame_windows_bad_arguments(small: dict) -> None:
    tr = small["wall"]
    with pytest.raises(ValueError, match="does not fit"):
        FrameWindows(tr, "train", num_frames=10, frameskip=5, cache=False)
    with pytest.raises(ValueError, match="num_frames"):
        FrameWindows(tr, "train", num_frames=0, cache=False)
    with pytest.raises(ValueError, match="split"):
        FrameWindows(tr, "test", num_frames=2, cache=False)
    with pytest.raises(IndexError):
        FrameWindows(tr, "val", num_frames=2, cache=False)[10**6]


# ---- episode sets ------------------------------------------------------------------------------
def _pairs(eps) -> set[bytes]:
    return {
        np.concatenate([s, g]).tobytes()
        for s, g in zip(eps.start_states, eps.goal_states, strict=True)
    }


@pytest.mark.parametrize("name", ["wall", "pusht"])
def test_episode_sets_are_deterministic_and_disjoint(name: str) -> None:
    ev, ca = evaluation_episodes(name), calibration_episodes(name)
    assert len(ev) == len(ca) == 50
    assert ev.start_states.shape == ev.goal_states.shape == (50, envs.STATE_DIM[name])
    again = evaluation_episodes(name)
    np.testing.assert_array_equal(again.start_states, ev.start_states)
    assert again.ids == ev.ids
    assert not set(ev.ids) & set(ca.ids)
    assert not _pairs(ev) & _pairs(ca)
    same_seed = calibration_episodes(name, seed=0)  # even with the evaluation seed
    assert not _pairs(ev) & _pairs(same_seed)
    assert not ev.is_success(ev.start_states).any()  # nothing is solved before planning
    assert ev.is_success(ev.goal_states).all()
    env = envs.make(name)
    obs, _ = env.reset(options=ev.reset_options(3))
    np.testing.assert_array_equal(env.unwrapped.get_state(), ev.start_states[3])
    goal_img = env.unwrapped.render_state(ev.goal_states[3], **ev.env_kwargs(3))
    assert goal_img.shape == obs["visual"].shape
    assert len(ev.subset(slice(0, 5))) == 5


def test_wall_episodes_cross_the_wall() -> None:
    ev = evaluation_episodes("wall", n=200, seed=5)
    wx, dy = ev.params["wall_x"], ev.params["door_y"]
    start_side = np.sign(ev.start_states[:, 0] - wx)
    assert (start_side == -np.sign(ev.goal_states[:, 0] - wx)).all()
    assert 0.3 < (start_side > 0).mean() < 0.7  # start on either side
    assert (
        wall_is_free(ev.start_states, wx, dy).all() and wall_is_free(ev.goal_states, wx, dy).all()
    )
    trajs = load_trajectories("wall")
    val_layouts = {
        (a, b)
        for a, b in zip(
            trajs.params["wall_x"][trajs.indices("val")],
            trajs.params["door_y"][trajs.indices("val")],
            strict=True,
        )
    }
    assert {(a, b) for a, b in zip(wx, dy, strict=True)} <= val_layouts


def test_pusht_goals_lie_25_steps_ahead_on_the_right_split() -> None:
    trajs = load_trajectories("pusht")
    for eps, split in (
        (evaluation_episodes("pusht", n=20), "val"),
        (calibration_episodes("pusht", n=20), "train"),
    ):
        for i, ep in enumerate(eps.ids):
            traj, t0 = int(ep.split("/traj")[1].split("/")[0]), int(ep.split("/t")[-1])
            assert trajs.split[traj] == split
            np.testing.assert_array_equal(eps.start_states[i], trajs.states[traj, t0])
            np.testing.assert_array_equal(eps.goal_states[i], trajs.states[traj, t0 + 25])
    ev = evaluation_episodes("pusht", n=50)
    assert len({e.rsplit("/", 1)[0] for e in ev.ids}) == 50  # one episode per val trajectory


def test_bad_episode_requests() -> None:
    with pytest.raises(ValueError, match="positive"):
        evaluation_episodes("wall", n=0)
    with pytest.raises(ValueError, match="unknown environment"):
        calibration_episodes("maze")


# ---- CLI ---------------------------------------------------------------------------------------
def test_cli_make_and_show(tmp_path, capsys) -> None:
    out = tmp_path / "w.npz"
    assert (
        main(
            [
                "data",
                "make",
                "--env",
                "wall",
                "--seed",
                "2",
                "--n-traj",
                "20",
                "--n-steps",
                "12",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "fraction_through_door" in text and str(out) in text
    assert Trajectories.load(out).n_traj == 20
    assert main(["data", "show", "--env", "wall", "--path", str(out)]) == 0
    assert "trajectories" in capsys.readouterr().out
    assert (
        main(["data", "make", "--env", "wall", "--n-traj", "1", "--out", str(out), "--quiet"]) == 2
    )
    assert "n_traj" in capsys.readouterr().err
    extend = ["data", "extend", "--env", "wall", "--n-traj", "6", "--path", str(out)]
    assert main([*extend, "--seed", "4"]) == 0
    assert Trajectories.load(out).n_traj == 26 and "'seed': 4" in capsys.readouterr().out
    assert main([*extend, "--seed", "2"]) == 2
    assert "seed 2 was already used" in capsys.readouterr().err
