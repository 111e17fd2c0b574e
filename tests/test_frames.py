"""The kit's tables speak one language: every frame a user sees spells a value the same way,
and the tables are numbers (formatting belongs to Stylers)."""

from __future__ import annotations

import pandas as pd

from quantwm.plan.config import PROFILES
from quantwm.study import ResultStore, analysis
from quantwm.study.profiles import STUDY_PROFILES, study_profile
from quantwm.study.store import RESULTS_DIR
from quantwm.study.summary import profile_records, records_frame

GRANULARITIES = {"per-tensor", "per-token"}


def test_every_frame_spells_the_activation_granularity_alike() -> None:
    store = ResultStore(RESULTS_DIR)
    quick = study_profile("quick")
    frames = {
        "ResultStore.frame": store.frame(),
        "analysis.study_frame": pd.concat([analysis.study_frame(t, quick.experiments(t), store)
                                           for t in (3, 5)]),
        "summary.records_frame": records_frame(profile_records(store, quick)),
    }
    for name, frame in frames.items():
        assert len(frame), name
        spelled = set(frame["act_granularity"].dropna())
        assert spelled and spelled <= GRANULARITIES, (name, spelled)
    assert GRANULARITIES <= set(frames["ResultStore.frame"]["act_granularity"])


def test_store_frame_names_the_planner_and_the_study_profile() -> None:
    frame = ResultStore(RESULTS_DIR).frame()
    assert "profile" not in frame.columns
    assert set(frame["planner"]) <= set(PROFILES)
    assert set(frame["study_profile"].dropna()) <= set(STUDY_PROFILES)
    quick = frame[(frame["episodes"] == 10) & (frame["planner"] == "cpu")]
    assert len(quick) and (quick["study_profile"] == "quick").all()
    for name in ("power", "long"):  # the focused profiles' runs, where the store holds them
        p = STUDY_PROFILES[name]
        made = frame[(frame["planner"] == p.planner) & (frame["episodes"] == p.episodes)]
        assert (made["study_profile"] == name).all()


def test_a_run_of_no_study_profile_has_none(tmp_path) -> None:
    import json
    import shutil

    src = next((RESULTS_DIR / "wall").glob("wall-fp32-cpu-n10-c10-s0-*.json"))
    (tmp_path / "wall").mkdir()
    record = json.loads(src.read_text())
    record["experiment"]["episodes"] = 7  # as `quantwm sweep --episodes 7` would
    (tmp_path / "wall" / src.name).write_text(json.dumps(record))
    shutil.copy(src, tmp_path / "wall" / ("x" + src.name))
    frame = ResultStore(tmp_path).frame()
    assert frame["study_profile"].isna().sum() == len(record["success"])
    assert (frame["study_profile"].dropna() == "quick").all()
