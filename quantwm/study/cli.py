"""``quantwm sweep`` runs a paper table's grid; ``quantwm notebooks`` executes the reports."""

from __future__ import annotations

import argparse

from quantwm.study.profiles import STUDY_PROFILES
from quantwm.utils import REPO_DIR


def add_notebook_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", choices=tuple(STUDY_PROFILES),
                        help="smoke: seconds (tests); quick: minutes; full: 50 episodes; "
                             "reference: the paper's planner too (GPU)")
    parser.add_argument("--output", default=str(REPO_DIR / "reports"),
                        help="folder for executed notebooks and HTML (default: reports/)")
    parser.add_argument("--only", nargs="*", metavar="NAME",
                        help="run only these notebooks (name or number prefix, e.g. 00)")
    parser.add_argument("--device", default=None, help="torch device passed to every notebook")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="extra papermill parameter (repeatable)")


def run_notebooks_command(args: argparse.Namespace) -> int:
    from quantwm.study.notebooks import run_notebooks

    params: dict[str, object] = {name: _literal(value) for name, value in args.parameter}
    if args.device:
        params["device"] = args.device
    for result in run_notebooks(args.profile, args.output, args.only, params):
        print(f"{result.name}: {result.seconds:6.1f} s -> {result.html}")
    return 0


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", type=int, nargs="+", required=True,
                        help="paper table number(s), 1-8")
    parser.add_argument("--env", default=None, help="only the tables of this env (wall|pusht)")
    parser.add_argument("--profile", default="quick", choices=tuple(STUDY_PROFILES))
    parser.add_argument("--variant", default="paper", choices=("paper", "designed"),
                        help="AWQ/OmniQuant as the reference ran them, or as designed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", default=None, help="result store folder (data/results)")
    parser.add_argument("--figures", action="store_true",
                        help="add the RTN rows of Figs. 2-3 for the tables' envs (notebooks "
                             "05-06 run them too, when missing)")
    parser.add_argument("--force", action="store_true", help="rerun finished experiments")
    parser.add_argument("--workers", type=int, default=1,
                        help="experiments run in parallel processes (threads are split)")
    parser.add_argument("--dry-run", action="store_true", help="list what would run")


def run_sweep_command(args: argparse.Namespace) -> int:
    from quantwm.study.grid import TABLE_ENV, check_table
    from quantwm.study.profiles import study_profile
    from quantwm.study.runner import run_sweep
    from quantwm.study.store import RESULTS_DIR, ResultStore
    from quantwm.utils import check_env_name

    profile = study_profile(args.profile)
    env = check_env_name(args.env) if args.env else None
    tables = [check_table(t) for t in args.table if env is None or TABLE_ENV[t] == env]
    if not tables:
        raise ValueError(f"none of tables {args.table} is a {env} table")
    store = ResultStore(args.results or RESULTS_DIR)
    grid = [e for t in tables for e in profile.experiments(t, args.variant, args.seed)]
    if args.figures:
        from quantwm.study.analysis import figure_experiments

        for figure_env in dict.fromkeys(TABLE_ENV[t] for t in tables):
            grid += figure_experiments(figure_env, profile, seed=args.seed).values()
    todo = list(dict.fromkeys(grid)) if args.force else store.missing(grid)
    print(f"tables {tables}{' + figure rows' if args.figures else ''}, profile "
          f"{profile.name}: {len(set(grid))} experiments, "
          f"{len(todo)} to run, results in {store.root}")
    if args.dry_run:
        for e in todo:
            print("  ", e.key())
        return 0

    def done(exp, record) -> None:
        rates = " ".join(f"{k}:{v:.2f}" for k, v in record["success"].items())
        print(f"{exp.env:<6} {record['label']:<45} {rates}  "
              f"({record['seconds']['total']:.0f} s)", flush=True)

    run_sweep(todo, store, args.device, force=True, on_done=done, workers=args.workers)
    return 0


def _literal(text: str) -> object:
    """Parse a command-line value as a Python literal when it is one (4, 0.5, None), else str."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
