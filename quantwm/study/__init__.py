"""quantwm.study: experiments, the result store, paper-style tables, notebook batch runs.

    from quantwm.study import ResultStore, run_sweep, table_experiments
    store = ResultStore()                                   # data/results
    run_sweep(table_experiments(1), store)                  # resumable
    store.frame()                                           # one row per stored record

The names below are imported on first use (PEP 562), as are the submodules (``from
quantwm.study import analysis, plots, report``): ``quantwm sweep --help`` does not wait
seconds for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantwm.utils import lazy_exports

#: public name -> the submodule that defines it
_SOURCES = {
    "METHOD_VARIANTS": "grid", "TABLES": "grid", "TABLE_ENV": "grid", "Experiment": "grid",
    "paper_configs": "grid", "paper_iters": "grid", "paper_tables": "grid",
    "table_experiments": "grid",
    "build_model": "runner", "calibration_data": "runner", "run_experiment": "runner",
    "run_sweep": "runner",
    "ResultStore": "store",
    "mcnemar_exact": "tables", "paper_style_table": "tables", "wilson_interval": "tables",
}

__all__ = [
    "METHOD_VARIANTS", "TABLES", "TABLE_ENV", "Experiment", "ResultStore", "build_model",
    "calibration_data", "mcnemar_exact", "paper_configs", "paper_iters", "paper_style_table",
    "paper_tables", "run_experiment", "run_sweep", "table_experiments", "wilson_interval",
]

if TYPE_CHECKING:
    from quantwm.study.grid import (
        METHOD_VARIANTS,
        TABLE_ENV,
        TABLES,
        Experiment,
        paper_configs,
        paper_iters,
        paper_tables,
        table_experiments,
    )
    from quantwm.study.runner import build_model, calibration_data, run_experiment, run_sweep
    from quantwm.study.store import ResultStore
    from quantwm.study.tables import mcnemar_exact, paper_style_table, wilson_interval


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, __all__)
