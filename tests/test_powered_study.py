"""The powered study's apparatus: profiles, records (latent error, fixed populations, method
revisions) and the cost estimate a sweep prints before it runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantwm.study import Experiment, ResultStore
from quantwm.study.grid import FLOAT
from quantwm.study.profiles import LONG_ROWS, POWER_ROWS, WIDTH_GROUP, study_profile

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = {"profile": "smoke", "episodes": 2, "calib_episodes": 2}


# ------------------------------------------------------------------------------ profiles
def test_power_profile_serves_every_insight_on_unseen_episodes() -> None:
    power = study_profile("power")
    assert power.episodes >= 200 and power.seed not in (0, 1, 2, 3)  # seeds the kit was tuned on
    assert {r.insight for r in POWER_ROWS} >= {"baseline", "I", "II", "III"}
    for env in ("wall", "pusht"):
        exps = power.focus_experiments(env)
        assert len(exps) == len(set(exps)) == len(POWER_ROWS)
        assert {e.seed for e in exps} == {power.seed} and {e.episodes for e in exps} == {200}
        groups = {e.group for e in exps if e.method in ("rtn", "omse")}
        assert groups == {None, 128, WIDTH_GROUP}
        assert {e.act_granularity for e in exps if e.predictor[1] < FLOAT} == {
            "per_tensor", "per_token"}
        # encoder-only and predictor-only at the same bits, the other part float
        enc_only = {e.encoder for e in exps if e.predictor == (FLOAT, FLOAT) and not e.is_float}
        pred_only = {e.predictor for e in exps if e.encoder == (FLOAT, FLOAT) and not e.is_float}
        assert enc_only == pred_only >= {(4, 8), (4, 4)}
    # a notebook shows them as the paper's tables: Table 1, Wall's weight-only rows, FP32 first
    table1 = power.experiments(1)
    assert table1[0].is_float and {e.env for e in table1} == {"wall"}
    assert all(e.encoder == e.predictor and e.encoder[1] == FLOAT for e in table1)


def test_long_profile_plans_every_paper_column() -> None:
    from quantwm.plan import planner_config
    from quantwm.study.grid import paper_iters

    long = study_profile("long")
    for env in ("wall", "pusht"):
        exps = long.focus_experiments(env)
        assert len(exps) == len(LONG_ROWS) and {e.episodes for e in exps} == {50}
        assert planner_config(env, long.planner).mpc_rounds == max(paper_iters(env))


def test_full_profile_is_every_row_and_the_width_variant() -> None:
    full = study_profile("full")
    grid = full.study_experiments()
    assert {e.episodes for e in grid} == {50} and {e.calib_episodes for e in grid} == {50}
    width = [e for e in grid if e.group == WIDTH_GROUP]
    grouped = [e for t in (1, 2) for e in full.experiments(t) if e.group == 128]
    assert len(width) == len(grouped) > 0
    assert {e.model_key().replace(f"g{WIDTH_GROUP}", "g128") for e in width} == {
        e.model_key() for e in grouped}


def test_width_group_splits_the_kits_rows_as_g128_splits_the_references() -> None:
    def groups(width: int, size: int) -> int:
        return -(-width // size)

    reference = {128: 384, 148: 404, 512: 1536}  # kit input width -> the reference's
    for kit, ref in reference.items():
        assert abs(groups(kit, WIDTH_GROUP) - groups(ref, 128)) <= 1
        assert groups(kit, 128) < groups(ref, 128)  # why G128 is not enough here


# ------------------------------------------------------------------------------ records
@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory) -> tuple[ResultStore, list[Experiment]]:
    from quantwm.study import run_sweep

    root = tmp_path_factory.mktemp("powered")
    grid = [Experiment("wall", **SMOKE),
            Experiment("wall", "rtn", (4, 4), (4, 4), **SMOKE)]
    store = ResultStore(root / "results")
    run_sweep(grid, store, cache_dir=root / "cache")
    return store, grid


def test_records_hold_latent_error_and_fixed_populations(smoke_store) -> None:
    store, (fp32, w4a4) = smoke_store
    a, b = store.read(fp32), store.read(w4a4)
    for rec in (a, b):
        le = rec["latent_error"]
        assert len(le["segments"]) >= 50 and le["steps"] == [1, 2, 3, 4, 5]
        assert np.isfinite(np.array(le["mse"])).all()
        ep = rec["episodes"]
        for key in ("latent_mse_by_round", "goal_distance_by_round"):  # no hole after success
            assert np.isfinite(np.array(ep[key], dtype=float)).all()
        assert len(ep["rounds_run"]) == len(ep["ids"])
    assert a["latent_error"]["segments"] == b["latent_error"]["segments"]  # paired
    # W4A4 per-tensor loses latent accuracy against the same FP32-encoded truth
    assert np.mean(b["latent_error"]["mse"]) > np.mean(a["latent_error"]["mse"])


def test_latent_error_of_fp32_is_its_own_prediction_error() -> None:
    from quantwm.model import load
    from quantwm.study.latent import latent_error, validation_segments

    model = load("wall").eval()
    segs = validation_segments("wall", n=8, num_hist=model.config.num_hist)
    again = validation_segments("wall", n=8, num_hist=model.config.num_hist)
    assert segs.ids == again.ids and torch.equal(segs.visual, again.visual)
    err = latent_error(model, segs)
    assert err.shape == (8, 5) and (err > 0).all()
    np.testing.assert_array_equal(err, latent_error(model, segs, reference=model))
    with pytest.raises(ValueError, match="segments"):
        validation_segments("wall", n=100_000)


def test_ensure_latent_error_adds_what_a_fresh_run_stores(smoke_store, tmp_path) -> None:
    from quantwm.study.runner import ensure_latent_error

    store, grid = smoke_store
    copy = ResultStore(tmp_path)
    for exp in grid:
        rec = store.read(exp)
        rec.pop("latent_error")
        copy.write(exp, {k: v for k, v in rec.items() if k not in ("experiment", "key")})
        assert "latent_error" not in copy.read(exp)
    assert ensure_latent_error(grid, copy, cache_dir=store.root.parent / "cache",
                               progress=False) == grid
    for exp in grid:
        np.testing.assert_allclose(copy.read(exp)["latent_error"]["mse"],
                                   store.read(exp)["latent_error"]["mse"], rtol=1e-5)
        assert copy.read(exp)["episodes"] == store.read(exp)["episodes"]  # success untouched
    assert ensure_latent_error(grid, copy, progress=False) == []


def test_results_of_a_changed_method_are_stale(tmp_path) -> None:
    from quantwm.model import checkpoint_digest
    from quantwm.quant import METHOD_REVISIONS

    store = ResultStore(tmp_path)
    exp = Experiment("wall", "awq_ref", (4, 32), (4, 32), episodes=4)
    ck = {"file": "wall.pt", "sha1": checkpoint_digest("wall")}
    store.write(exp, {"checkpoint": ck})  # made before revisions were recorded (= 1)
    assert METHOD_REVISIONS["awq_ref"] > 1 and not store.has(exp)
    store.write(exp, {"checkpoint": ck, "method_revision": METHOD_REVISIONS["awq_ref"]})
    assert store.has(exp)


def test_results_calibrated_on_another_draw_are_stale(tmp_path) -> None:
    """PushT's calibration episodes moved to the shipped file (revision 2): its calibrated
    results of revision 1 are stale; results that need no calibration, and Wall's, are not."""
    from quantwm.data.episodes import CALIBRATION_REVISION

    store = ResultStore(tmp_path, check_checkpoints=False)
    static = Experiment("pusht", "rtn", (4, 8), (4, 8), episodes=4)  # per-tensor ranges
    dynamic = Experiment("pusht", "rtn", (4, 8), (4, 8), act_granularity="per_token", episodes=4)
    wall = Experiment("wall", "rtn", (4, 8), (4, 8), episodes=4)
    assert CALIBRATION_REVISION["pusht"] == static.calibration_revision == 2
    assert dynamic.calibration_revision is None and wall.calibration_revision == 1
    for exp in (static, dynamic, wall):
        store.write(exp, {})  # made before calibration revisions were recorded (= 1)
    assert not store.has(static) and store.has(dynamic) and store.has(wall)
    store.write(static, {"calibration_revision": 2})
    assert store.has(static)


# ------------------------------------------------------------------------------ cost
def test_cost_estimate_from_measured_records(smoke_store) -> None:
    from quantwm.study.cost import CostModel, sweep_cost

    store, grid = smoke_store
    model = CostModel.from_records(store.records())
    per_round = model.seconds_per_round("wall", "smoke")
    assert per_round > 0
    expected, worst = model.experiment_seconds(grid[1])
    assert 0 < expected <= worst
    one, two = sweep_cost(grid, store, workers=1), sweep_cost(grid, store, workers=2)
    assert two["worst_s"] == pytest.approx(one["worst_s"] / 2)
    # a bigger CEM budget is scaled by samples x CEM steps from the measured one
    assert model.seconds_per_round("wall", "reference") > 10 * per_round
    assert np.isnan(sweep_cost([Experiment("pusht", **SMOKE)], store)["worst_s"])


def test_cost_takes_the_throughput_of_the_nearest_episode_count() -> None:
    """An episode-round of a big batch costs more than one of a small batch: a 200-episode
    experiment is priced from the 200-episode record, not the median of many small ones."""
    from quantwm.plan import planner_config
    from quantwm.study.cost import CostModel

    cfg = planner_config("wall", "cpu")

    def record(episodes: int, seconds_per_round: float) -> dict:
        exp = Experiment("wall", "rtn", (4, FLOAT), (4, FLOAT), episodes=episodes)
        rounds = cfg.n_rounds  # every episode plans every round
        return {"experiment": exp.to_dict(), "success_by_round": [0.0] * rounds,
                "episodes": {"first_success_round": [None] * episodes},
                "provenance": {"torch_threads": 1},
                "planner": {"samples": cfg.samples, "cem_steps": cfg.cem_steps},
                "seconds": {"plan": seconds_per_round * episodes * rounds, "quantize": 1.0}}

    small = [record(10, 1.0) for _ in range(5)]
    model = CostModel.from_records([*small, record(200, 2.0)])
    assert model.seconds_per_round("wall", "cpu", 10) == pytest.approx(1.0)
    assert model.seconds_per_round("wall", "cpu", 200) == pytest.approx(2.0)
    assert model.seconds_per_round("wall", "cpu", 500) == pytest.approx(2.0)
    # 50 lies nearer 200 than 10 on a log scale (x4 vs x5); 20 nearer 10 (x2 vs x10)
    assert model.seconds_per_round("wall", "cpu", 50) == pytest.approx(2.0)
    assert model.seconds_per_round("wall", "cpu", 20) == pytest.approx(1.0)
    assert model.seconds_per_round("wall", "cpu") == pytest.approx(2.0)  # largest measured
    with pytest.raises(ValueError, match="episodes=0"):
        model.seconds_per_round("wall", "cpu", 0)
    # an exact tie on a log scale (10 = 4 x 2.5 = 25 / 2.5; in floats log 0.4 != -log 2.5)
    # goes to the larger count
    tie = CostModel.from_records([record(4, 1.0), record(25, 3.0)])
    assert tie.seconds_per_round("wall", "cpu", 10) == pytest.approx(3.0)
    # another budget of the env is scaled by samples x CEM steps, from the nearest count too
    ref = planner_config("wall", "reference")
    scale = ref.samples * ref.cem_steps / (cfg.samples * cfg.cem_steps)
    assert model.seconds_per_round("wall", "reference", 10) == pytest.approx(scale * 1.0)
    assert model.seconds_per_round("wall", "reference", 200) == pytest.approx(scale * 2.0)
    expected, worst = model.experiment_seconds(
        Experiment("wall", "rtn", (4, FLOAT), (4, FLOAT), episodes=200))
    assert worst == pytest.approx(1.0 + 200 * cfg.n_rounds * 2.0)
    assert expected == pytest.approx(worst)


def test_sweep_dry_run_prints_every_profiles_cost(smoke_store, capsys) -> None:
    from quantwm.cli import main

    store, _ = smoke_store
    assert main(["sweep", "--dry-run", "--results", str(store.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["smoke", "quick", "full", "power", "long", "reference"]
    assert main(["sweep", "--profile", "power", "--env", "wall", "--dry-run", "--results",
                 str(store.root)]) == 0
    out = capsys.readouterr().out
    assert f"{len(POWER_ROWS)} experiments" in out and "expected" in out
    assert main(["sweep", "--profile", "power", "--table", "1", "--dry-run"]) == 2
    assert "--table" in capsys.readouterr().err


def test_group_counts_per_linear() -> None:
    from quantwm.model import load
    from quantwm.quant.size import group_counts

    rows = group_counts(load("wall"), (None, 128, WIDTH_GROUP))
    assert {(r["part"], r["linear"]) for r in rows} == {
        (p, n) for p in ("encoder", "predictor")
        for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    for r in rows:
        assert r["per-channel"] == 1
        assert r["G128"] == -(-r["in_features"] // 128)
        assert (r["G128"] == 1) == (r["in_features"] <= 128)  # G128 = per-channel there
        assert r[f"G{WIDTH_GROUP}"] >= 3  # the width-scaled group always splits a row


# ------------------------------------------------------------- Insights IV and V, simulated
def _record(env: str, method: str, bits: tuple, *, objective: np.ndarray, distance: np.ndarray,
            first: list, latent: np.ndarray | None = None) -> dict:
    exp = Experiment(env, method, bits[0], bits[1], episodes=len(first))
    rec = {"experiment": exp.to_dict(), "key": exp.key(), "label": exp.model_key(),
           "episodes": {"ids": [f"e{i}" for i in range(len(first))],
                        "first_success_round": first,
                        "latent_mse_by_round": objective.tolist(),
                        "goal_distance_by_round": distance.tolist()}}
    if latent is not None:
        rec["latent_error"] = {"segments": [f"s{i}" for i in range(len(latent))],
                               "steps": [1, 2, 3, 4, 5], "mse": latent.tolist()}
    return rec


def test_alignment_uses_fixed_populations_and_detects_a_broken_objective() -> None:
    from quantwm.study.alignment import Trajectories, compare

    rng = np.random.default_rng(0)
    n, rounds = 60, 6
    distance = rng.uniform(1, 10, (n, rounds)).cumsum(axis=1)[:, ::-1].copy()
    good = distance * np.exp(rng.normal(0, 0.05, (n, rounds)))  # objective tracks distance
    bad = rng.uniform(1, 100, (n, rounds))  # objective unrelated to distance
    holes = good.astype(object)
    holes[:5, 2:] = None  # an older record: nulls after success, carried on reading
    fp = _record("wall", "fp32", ((32, 32), (32, 32)), objective=holes, distance=distance,
                 first=[1] * 5 + [None] * (n - 5))
    q = _record("wall", "rtn", ((3, 32), (3, 32)), objective=bad, distance=distance,
                first=[None] * n)
    t = Trajectories.of(fp)
    assert np.isfinite(t.objective).all() and (t.objective[:5, 2:] == t.objective[:5, 1:2]).all()
    res = compare(fp, q)
    assert res["alignment"].hi < 0 and res["alignment"].significant
    same = compare(fp, fp)["objective_change"]
    assert same.estimate == 0 and same.p_value == 1.0


def test_insight4_compares_encoder_damage_across_envs() -> None:
    from quantwm.study.latent import insight4_test

    rng = np.random.default_rng(1)
    base = rng.uniform(0.01, 0.05, (64, 5))
    empty = np.zeros((2, 6))
    records = []
    for env, factor in (("wall", 3.0), ("pusht", 1.1)):
        records.append(_record(env, "fp32", ((32, 32), (32, 32)), objective=empty,
                               distance=empty, first=[None, None], latent=base))
        damaged = base * factor * np.exp(rng.normal(0, 0.1, base.shape))
        records.append(_record(env, "rtn", ((4, 4), (32, 32)), objective=empty,
                               distance=empty, first=[None, None], latent=damaged))
    out = insight4_test(records)
    assert out["family"] == ["rtn-e4a4-p32a32-gch-pertensor"]
    assert out["verdict"].word == "agrees" and out["result"].lo > 0
    assert insight4_test(records[:2]) is None  # no PushT: nothing to compare


def test_model_key_names_the_granularity_whenever_activations_are_quantized() -> None:
    keys = {Experiment("wall", "rtn", (4, 4), (FLOAT, FLOAT), act_granularity=g).model_key()
            for g in ("per_tensor", "per_token")}
    assert len(keys) == 2
    assert "per" not in Experiment("wall", "rtn", (4, FLOAT), (4, FLOAT)).model_key()


def test_a_focused_profile_puts_each_configuration_in_the_table_of_its_kind() -> None:
    """The notebooks show ``power`` / ``long`` as paper tables: each configuration but FP32 in
    exactly one table of its env, FP32 in every one; a table profile's rows keep their tables
    (bar Tables 7-8's W8A8 row with both parts alike, which is of Table 3 / 5's kind)."""
    from quantwm.study.grid import TABLE_ENV, TABLES, table_experiments
    from quantwm.study.profiles import table_of

    for name in ("power", "long"):
        profile = study_profile(name)
        for env in ("wall", "pusht"):
            tables = [t for t in TABLES if TABLE_ENV[t] == env]
            shown = [e for t in tables for e in profile.experiments(t)]
            quantized = [e for e in shown if not e.is_float]
            assert sorted(map(repr, quantized)) == sorted(
                repr(e) for e in profile.focus_experiments(env) if not e.is_float)
            assert sum(e.is_float for e in shown) == len(tables)
        assert profile.width_experiments(1) == []  # the G48 rows are among experiments(1)
    for t in TABLES:
        odd = [e for e in table_experiments(t) if not e.is_float and table_of(e) != t]
        assert all(t in (7, 8) and e.encoder == e.predictor == (8, 8) for e in odd), odd


def test_a_table_frame_matches_rows_by_configuration(tmp_path) -> None:
    """study_frame numbers a table profile's experiments as the paper's rows (their order), puts
    a configuration the paper lacks (G48) after them with its own label, and shows a focused
    profile's experiments under the paper's row of the same configuration."""
    from quantwm.study.analysis import study_frame
    from quantwm.study.grid import paper_configs

    store = ResultStore(tmp_path)
    quick, power = study_profile("quick"), study_profile("power")
    rows = quick.experiments(1)
    picked = [rows[0], rows[5], *quick.width_experiments(1)[:1], power.experiments(1)[2]]
    for exp in picked:
        store.write(exp, {"success": {"0": 0.0, "5": 0.5}, "label": exp.key(),
                          "episodes": {"first_success_round": [None, 3]}})
    frame = study_frame(1, picked, store).drop_duplicates("key").set_index("key")["row"]
    assert frame[rows[0].key()] == 0 and frame[rows[5].key()] == 5
    assert frame[picked[2].key()] == len(paper_configs(1))  # G48: after the paper's rows
    same = [i for i, e in enumerate(rows) if (e.method, e.encoder, e.group) == (
        picked[3].method, picked[3].encoder, picked[3].group)]
    assert frame[picked[3].key()] == same[0]
    g48 = study_frame(1, [picked[2]], store)
    assert g48["label"].iloc[0].endswith("G48") and g48["paper"].isna().all()


# ------------------------------------------------------------------ results at a glance
def test_records_frame_matches_the_paper_tables_frame(smoke_store) -> None:
    from quantwm.study.analysis import study_frame
    from quantwm.study.summary import records_frame

    store, (fp32, _) = smoke_store
    theirs = study_frame(1, [fp32], store)
    ours = records_frame([store.read(fp32)])
    cols = ["env", "method", "w_bits", "a_bits", "key", "iters", "n", "successes", "paper"]
    pd_equal = theirs[cols].reset_index(drop=True).equals(ours[cols].reset_index(drop=True))
    assert pd_equal, (theirs[cols], ours[cols])



def test_summary_judges_every_test_the_store_can(smoke_store) -> None:
    from quantwm.study.summary import summary_table

    store, _ = smoke_store
    only = ("smoke",)
    t = summary_table(store, {"success": only, "latent": only, "alignment": only},
                      n_resamples=199)
    assert set(t["verdict"]) <= {"agrees", "disagrees", "cannot tell"}
    assert ("FP32", "wall") in set(zip(t["test"], t["env"], strict=True))
    v = t[t["insight"] == "V"]
    assert set(v["test"]) == {"V-objective", "V-alignment"} and (v["profile"] == "smoke").all()
    assert t["why the kit may differ"].notna().all()
    assert summary_table(ResultStore(store.root.parent / "empty")).empty


def test_readme_results_at_a_glance_are_in_step_with_the_store() -> None:
    """README.md's generated block is what `python -m quantwm.study.summary` makes of the
    committed results (rerun it after committing results)."""
    from quantwm.study.summary import update_readme
    from quantwm.utils import REPO_DIR

    assert update_readme(str(REPO_DIR / "README.md"), ResultStore(), check=True), (
        "README.md's results at a glance are stale: run python -m quantwm.study.summary")


def test_a_committed_record_is_reproduced_by_rerunning_its_experiment(tmp_path) -> None:
    """Every stored record must come back when its experiment is rerun: here one committed
    quick-profile record (Wall RTN W4 G128, which needs no calibration), rerun with the
    code as it is now on the shipped checkpoint and data."""
    from quantwm.study.runner import run_experiment
    from quantwm.study.store import RESULTS_DIR

    exp = Experiment("wall", "rtn", (4, FLOAT), (4, FLOAT), 128, **study_profile("quick")
                     .run_fields())
    committed = ResultStore(RESULTS_DIR)
    if not committed.has(exp):
        pytest.skip("the committed store lacks the quick Wall RTN W4 G128 record")
    stored = committed.read(exp)
    again = run_experiment(exp, cache_dir=tmp_path)
    assert again["success"] == stored["success"]
    assert again["episodes"]["ids"] == stored["episodes"]["ids"]
    assert again["episodes"]["first_success_round"] == stored["episodes"]["first_success_round"]
    np.testing.assert_allclose(again["latent_error"]["mse"], stored["latent_error"]["mse"],
                               rtol=1e-4)
    np.testing.assert_allclose(again["mean_final_loss_by_round"],
                               stored["mean_final_loss_by_round"], rtol=1e-4)
