"""quantwm.study: experiments, the result store, paper-style tables, notebook batch runs."""

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

__all__ = [
    "METHOD_VARIANTS", "TABLES", "TABLE_ENV", "Experiment", "ResultStore", "build_model",
    "calibration_data", "mcnemar_exact", "paper_configs", "paper_iters", "paper_style_table",
    "paper_tables", "run_experiment", "run_sweep", "table_experiments", "wilson_interval",
]
