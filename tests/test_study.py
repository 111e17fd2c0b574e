"""The study's grid declarations, result store and table statistics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from quantwm.study import (
    TABLES,
    Experiment,
    ResultStore,
    mcnemar_exact,
    paper_configs,
    paper_style_table,
    paper_tables,
    table_experiments,
    wilson_interval,
)
from quantwm.study.tables import success_matrix


@pytest.mark.parametrize("table", TABLES)
def test_grid_matches_the_paper_row_for_row(table: int) -> None:
    rows = paper_configs(table)
    experiments = table_experiments(table)
    assert len(experiments) == len(rows)
    for (_, row), exp in zip(rows.iterrows(), experiments, strict=True):
        assert exp.is_float == (row["method"] == "FP32")
        if exp.is_float:
            continue
        if not pd.isna(row["enc_w"]):
            assert exp.encoder == (row["enc_w"], row["enc_a"])
            assert exp.predictor == (row["pred_w"], row["pred_a"])
        else:
            assert exp.encoder == exp.predictor == (row["w_bits"], row["a_bits"])
        expected_group = None if pd.isna(row["group"]) else 128
        assert exp.group == expected_group


def test_the_whole_grid_is_196_quantized_configurations_run_once_each() -> None:
    per_table = [[e for e in table_experiments(t) if not e.is_float] for t in TABLES]
    assert sum(len(t) for t in per_table) == 196
    # Shared rows (e.g. RTN W8A8 in Tables 3 and 7) have one key: run once, shown twice.
    keys = {e.key() for t in per_table for e in t}
    assert len(keys) == 192
    assert len(paper_tables()) == 1248


def test_experiment_validation_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="nope"):
        Experiment("wall", method="nope", encoder=(4, 32), predictor=(4, 32))
    with pytest.raises(ValueError, match="1"):
        Experiment("wall", method="rtn", encoder=(1, 32), predictor=(4, 32))
    with pytest.raises(ValueError, match="maze"):
        Experiment("maze")
    exp = Experiment("wall", "rtn", (4, 8), (4, 8), group=128, act_granularity="per_token")
    assert Experiment.from_dict(exp.to_dict()) == exp


def test_store_resumes_without_loss_or_duplicates(tmp_path) -> None:
    store = ResultStore(tmp_path)
    grid = [Experiment("wall", "rtn", (b, 32), (b, 32), episodes=4) for b in (3, 4, 8)]
    assert store.missing(grid + grid[:1]) == grid
    store.write(grid[0], {"success": {"0": 0.5}})
    # An interrupted write leaves no partial file: simulate a crash inside the atomic block.
    with pytest.raises(RuntimeError):
        from quantwm.utils import atomic_path

        with atomic_path(store.path(grid[1])) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("interrupted")
    assert not store.path(grid[1]).exists()
    assert list(tmp_path.rglob("*.tmp*")) == []
    assert store.missing(grid) == grid[1:]
    store.write(grid[0], {"success": {"0": 0.75}})  # a forced rerun replaces, never duplicates
    assert len(list(store.records())) == 1
    assert store.read(grid[0])["success"] == {"0": 0.75}


def test_store_reruns_results_of_another_checkpoint(tmp_path) -> None:
    from quantwm.model import checkpoint_digest

    store = ResultStore(tmp_path)
    old, current = [Experiment("wall", "rtn", (b, 32), (b, 32), episodes=4) for b in (3, 4)]
    store.write(old, {"checkpoint": {"file": "wall.pt", "sha1": "0000000000"}})
    store.write(current, {"checkpoint": {"file": "wall.pt", "sha1": checkpoint_digest("wall")}})
    assert store.missing([old, current]) == [old]
    assert not store.has(old) and store.has(current)
    assert ResultStore(tmp_path, check_checkpoints=False).missing([old, current]) == []


def test_wilson_interval_properties() -> None:
    lo, hi = wilson_interval(47, 50)
    assert lo < 0.94 < hi and 0 <= lo and hi <= 1
    assert wilson_interval(0, 50)[0] == 0.0
    assert math.isclose(wilson_interval(50, 50)[1], 1.0)
    # Known value: 47/50 -> [0.838, 0.979] (Wilson 1927).
    assert math.isclose(lo, 0.838, abs_tol=1e-3) and math.isclose(hi, 0.979, abs_tol=1e-3)
    # 0.94 vs 0.96 on 50 episodes overlap: not distinguishable.
    assert wilson_interval(48, 50)[0] < 0.94
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


def test_mcnemar_flags_only_real_paired_differences() -> None:
    a = [True] * 20 + [False] * 30
    assert mcnemar_exact(a, a) == 1.0
    b = [False] * 20 + [False] * 30
    assert mcnemar_exact(a, b) < 1e-5
    c = [True] * 19 + [False] + [False] * 29 + [True]  # one swap each way
    assert mcnemar_exact(a, c) == 1.0


def test_paper_style_table_layout_and_flags() -> None:
    iters = [0, 5, 10]
    fp32 = {"label": "FP32", "first_success_round": [0] * 25 + [3] * 20 + [None] * 5}
    w3 = {"label": "RTN W3", "first_success_round": [None] * 50}
    table = paper_style_table([fp32, w3], iters)
    assert list(table.columns.get_level_values(0).unique()) == ["0 iters", "5 iters", "10 iters"]
    assert list(table["5 iters"].columns) == ["success", "lo", "hi", "p", "flag"]
    assert table.loc["FP32", ("5 iters", "success")] == 0.90  # numbers, not text
    assert table.loc["FP32", ("5 iters", "lo")] < 0.90 < table.loc["FP32", ("5 iters", "hi")]
    assert np.isnan(table.loc["FP32", ("5 iters", "p")])  # the reference itself
    assert table.loc["RTN W3", ("5 iters", "flag")] and table.loc["RTN W3", ("5 iters", "p")] < 0.05
    assert table.loc["RTN W3", ("10 iters", "success")] == 0.0
    assert success_matrix([None, 0, 7], iters).tolist() == [
        [False, False, False], [True, True, True], [False, False, True]]


def test_parallel_sweep_equals_serial_and_resumes(tmp_path) -> None:
    from quantwm.study import run_sweep

    grid = [Experiment("wall", "fp32", profile="smoke", episodes=2, calib_episodes=2),
            Experiment("wall", "rtn", (8, 32), (8, 32), profile="smoke", episodes=2,
                       calib_episodes=2)]
    serial, parallel = ResultStore(tmp_path / "serial"), ResultStore(tmp_path / "parallel")
    assert run_sweep(grid, serial, cache_dir=tmp_path / "cache") == grid
    assert sorted(run_sweep(grid, parallel, cache_dir=tmp_path / "cache", workers=2),
                  key=grid.index) == grid
    for exp in grid:  # same outcomes; losses equal up to the thread count's float rounding
        a, b = serial.read(exp)["episodes"], parallel.read(exp)["episodes"]
        assert a["first_success_round"] == b["first_success_round"]
        assert np.allclose(np.array(a["final_loss_by_round"], dtype=float),
                           np.array(b["final_loss_by_round"], dtype=float), rtol=1e-4,
                           equal_nan=True)
    assert run_sweep(grid, parallel, cache_dir=tmp_path / "cache", workers=2) == []
    with pytest.raises(ValueError, match="workers"):
        run_sweep(grid, parallel, force=True, workers=0)


def test_verdicts_warn_when_fp32_is_too_weak_to_judge_by() -> None:
    from quantwm.study.analysis import baseline_caveat

    def frame(successes: int) -> pd.DataFrame:
        return pd.DataFrame([
            {"method": "FP32", "iters": 5, "successes": successes, "n": 10,
             "success": successes / 10, "paper": 0.94},
            {"method": "RTN", "iters": 5, "successes": 1, "n": 10, "success": 0.1,
             "paper": 0.9},
        ])

    weak = baseline_caveat(frame(2), 5)
    assert weak is not None and "2 of 10" in weak and "0.94" in weak
    assert baseline_caveat(frame(9), 5) is None
    assert baseline_caveat(frame(2), 0) is None  # no FP32 row at that iters

    from quantwm.study.stats import Claim, episode_test, judge

    flat = episode_test([0.0, 0.02, -0.01, 0.01, 0.0, -0.02, 0.01, 0.0, 0.01, -0.01])
    assert judge(flat, Claim("no_increase")).word == "agrees"
    # a weak baseline decides nothing by the absence of an effect...
    assert judge(flat, Claim("no_increase"), baseline_ok=False).word == "cannot tell"
    # ...but a significant one still stands
    worse = episode_test([-1.0, -0.75, -1.0, -0.5, -1.0, -1.0, -0.75, -1.0, -1.0, -0.5])
    assert judge(worse, Claim("decrease"), baseline_ok=False).word == "agrees"


def test_reference_study_profile_is_the_papers_protocol() -> None:
    from quantwm.plan import planner_config
    from quantwm.study.grid import paper_iters
    from quantwm.study.profiles import study_profile

    exps = study_profile("reference").experiments(1)
    assert len(exps) == len(study_profile("quick").experiments(1))
    assert {e.profile for e in exps} == {"reference"}
    assert {e.episodes for e in exps} == {50}
    for env in ("wall", "pusht"):  # every "iters" column of the paper is planned
        assert max(paper_iters(env)) == planner_config(env, "reference").mpc_rounds


def test_sweep_figures_adds_the_figure_rows_of_the_tables_envs(tmp_path, capsys) -> None:
    from quantwm.cli import main
    from quantwm.study.analysis import figure_experiments
    from quantwm.study.profiles import study_profile

    def listed(*extra: str) -> list[str]:
        args = ["sweep", "--table", "2", "--dry-run", "--results", str(tmp_path), *extra]
        assert main(args) == 0
        return [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]

    plain, with_figures = listed(), listed("--figures")
    figures = [e.key() for e in figure_experiments("pusht", study_profile("quick")).values()]
    assert set(with_figures) == set(plain) | set(figures)
    assert set(figures) - set(plain), "table 2 alone should lack some figure rows"
    assert not any(key.startswith("wall") for key in with_figures)
