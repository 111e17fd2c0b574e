"""The reports' figures and tables show every configuration, numbers stay numbers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from quantwm.study import TABLES, ResultStore, analysis, plots, report  # noqa: E402
from quantwm.study.profiles import study_profile  # noqa: E402
from quantwm.study.tables import wilson_interval  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def study_rows(n_configs: int, iters=(0, 5), table: int = 3, n: int = 10,
               seed: int = 0) -> pd.DataFrame:
    """A study frame (analysis.study_frame's columns) of ``n_configs`` made-up configurations:
    FP32 first, then RTN/OMSE/... at a few bits, per-tensor and per-token."""
    rng = np.random.default_rng(seed)
    methods = ["RTN", "OMSE", "SmoothQuant", "OmniQuant"]
    rows = []
    for i in range(n_configs):
        method = "FP32" if i == 0 else methods[(i - 1) % 4]
        bits = 32.0 if i == 0 else [8.0, 6.0, 4.0][((i - 1) // 4) % 3]
        gran = None if i == 0 else ("per-tensor" if (i - 1) // 12 % 2 == 0 else "per-token")
        label = "FP32" if i == 0 else f"{method} W{bits:.0f}A{bits:.0f} G- {gran} #{i}"
        for k in iters:
            s = int(rng.integers(0, n + 1))
            lo, hi = wilson_interval(s, n)
            rows.append({"table": table, "env": "wall", "row": i, "label": label,
                         "method": method, "w_bits": bits, "a_bits": bits, "group": np.nan,
                         "act_granularity": gran, "enc_w": np.nan, "enc_a": np.nan,
                         "pred_w": np.nan, "pred_a": np.nan, "variant": "paper",
                         "key": f"wall-config-{i}", "iters": k, "n": n, "successes": s,
                         "success": s / n, "lo": lo, "hi": hi,
                         "paper": float(rng.integers(0, 51)) / 50})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("iters", [(0, 5), (0, 5, 10, 20, 30, 40, 50)])
def test_every_configuration_is_drawn_well_past_the_old_twelve(iters) -> None:
    frame = study_rows(40, iters)
    fig = plots.plot_table(frame)
    assert plots.configurations_drawn(fig) == 40
    if len(iters) <= plots.DOT_INTERVAL_MAX_ITERS:  # one dot panel per iteration column
        assert [ax.get_title() for ax in fig.axes] == [f"{k} iters" for k in iters]
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert labels == list(frame.drop_duplicates("key")["label"])
    else:  # small multiples: the x axis spans the kit's iterations only
        assert all(ax.get_xlim()[1] < max(iters) + 1 for ax in fig.axes if ax.lines)
    assert "wall" in fig.get_suptitle() and "Table 3" in fig.get_suptitle()
    assert plots.configurations_drawn(plots.plot_success(frame)) == 40


def test_paper_table_is_numeric_one_row_per_configuration_and_styled_with_intervals() -> None:
    frame = study_rows(30)
    table = report.paper_table(frame, store=None)
    assert report.configurations_shown(table) == 30
    assert list(table[("configuration", "method")].iloc[:2]) == ["FP32", "RTN"]
    for k in (0, 5):
        block = table[f"{k} iters"]
        assert list(block.columns) == list(report.CELLS)
        assert all(pd.api.types.is_numeric_dtype(block[c]) for c in ("kit", "lo", "hi", "paper",
                                                                     "diff", "p"))
        np.testing.assert_allclose(block["diff"], block["kit"] - block["paper"])
        assert block["p"].isna().all() and not block["flag"].any()  # no store: no test
    html = report.style_table(table).to_html()
    first = frame[(frame["row"] == 1) & (frame["iters"] == 5)].iloc[0]
    assert f"{first['success']:.2f} [{first['lo']:.2f}, {first['hi']:.2f}]" in html
    assert html.count("<tr") == 30 + 2  # two header rows, every configuration


def test_paper_table_flags_a_configuration_that_differs_from_fp32_on_the_same_episodes(
        tmp_path) -> None:
    import json

    from quantwm.study import Experiment

    first = {"wall-fp": [0] * 10, "wall-same": [0] * 9 + [None], "wall-broken": [None] * 10}
    for key, rounds in first.items():
        path = tmp_path / "wall" / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        exp = Experiment("wall", episodes=len(rounds)).to_dict()  # a whole record
        path.write_text(json.dumps({"key": key, "experiment": exp,
                                    "episodes": {"first_success_round": rounds}}))
    frame = study_rows(3, iters=(0,))
    frame["key"] = list(first)
    frame["success"] = [1.0, 0.9, 0.0]
    table = report.paper_table(frame, ResultStore(tmp_path, check_checkpoints=False))
    block = table["0 iters"]
    assert np.isnan(block["p"].iloc[0]) and not block["flag"].iloc[0]
    assert block["p"].iloc[1] == 1.0 and not block["flag"].iloc[1]
    assert block["p"].iloc[2] < 0.01 and block["flag"].iloc[2]


def test_tables_7_8_show_the_encoder_and_predictor_bits_apart() -> None:
    frame = study_rows(3)
    frame.loc[frame["row"] == 1, ["w_bits", "a_bits", "enc_w", "enc_a", "pred_w", "pred_a"]] = \
        [np.nan, np.nan, 4.0, 4.0, 8.0, 8.0]
    frame.loc[frame["row"] == 0, ["enc_w"]] = np.nan
    cols = report.configuration_columns(frame)
    assert list(cols.columns) == ["method", "E #W", "E #A", "P #W", "P #A", "#G", "activations"]
    assert cols.loc[0, ["E #W", "P #A"]].tolist() == [32.0, 32.0]  # FP32
    assert cols.loc[1, ["E #W", "E #A", "P #W", "P #A"]].tolist() == [4.0, 4.0, 8.0, 8.0]


def test_setup_display_shows_every_row() -> None:
    with pd.option_context("display.max_rows", 60):
        report.setup_display()
        df = pd.DataFrame({"x": range(150)})
        assert "..." not in repr(df) and len(repr(df).splitlines()) == 151
        assert df.style.to_html().count("<tr") == 151
    for option in ("display.max_columns", "display.width", "display.max_colwidth",
                   "styler.render.max_rows", "styler.render.max_columns"):
        pd.reset_option(option)
    pd.reset_option("styler.render.max_elements")


@pytest.fixture(scope="module")
def shipped():
    store = ResultStore()
    study = study_profile("quick")
    frame = report.stored_frames(TABLES, study, store)
    if frame.empty:
        pytest.skip("no quick results in the store")
    return store, study, frame


@pytest.mark.parametrize("table", TABLES)
def test_every_stored_configuration_of_a_shipped_table_is_drawn_and_tabled(shipped, table):
    store, study, frame = shipped
    exps = study.experiments(table) + study.width_experiments(table)  # G48 after the paper's
    stored = [e for e in exps if store.has(e)]
    sub = frame[frame["table"] == table]
    if not stored:
        pytest.skip(f"no current result of Table {table} in the store")
    assert sub["key"].nunique() == len({e.key() for e in stored})
    assert plots.configurations_drawn(plots.plot_table(sub)) == len(stored)
    table_ = report.paper_table(sub, store)
    assert report.configurations_shown(table_) == len(stored)
    assert table_.columns.get_level_values(0).unique().tolist()[1:] == [
        f"{k} iters" for k in sorted(sub["iters"].unique())]


def test_figures_are_titled_with_their_env() -> None:
    absmax = {"encoder.blocks.0.mlp.fc1": torch.rand(8)}
    fig = plots.plot_channel_absmax(absmax, absmax, list(absmax), env="pusht")
    assert all(ax.get_title().startswith("pusht: ") for ax in fig.axes)
    stats = analysis.outlier_stats(absmax)
    fig = plots.plot_outlier_ratios(stats, stats, env="pusht")
    assert fig.axes[0].get_title().startswith("pusht: ")


def test_loss_scatter_labels_only_the_highlighted_configurations() -> None:
    rng = np.random.default_rng(0)
    alignment = pd.DataFrame({"key": [f"k{i}" for i in range(100)],
                              "label": [f"{['RTN', 'OMSE', 'AWQ'][i % 3]} cfg {i}"
                                        for i in range(100)],
                              "loss_last": rng.uniform(0.1, 1, 100),
                              "success": rng.uniform(0, 1, 100),
                              "goal_distance": rng.uniform(0, 50, 100)})
    fig = plots.plot_loss_vs_success(alignment, "wall", highlight={"k3", "k50", "RTN cfg 9"})
    entries = [t.get_text() for t in fig.legends[0].get_texts()]
    assert entries == ["RTN", "OMSE", "AWQ", "RTN cfg 3", "RTN cfg 9", "AWQ cfg 50"]
    assert all(len(ax.collections) == 3 + 3 and not ax.texts for ax in fig.axes)


def test_show_displays_and_closes(monkeypatch) -> None:
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    fig = plots.plot_table(study_rows(3))
    plots.show(fig)
    assert shown == [fig] and not plt.fignum_exists(fig.number)
