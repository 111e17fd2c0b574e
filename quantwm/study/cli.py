"""``quantwm sweep`` runs a paper table's grid; ``quantwm notebooks`` executes the reports."""

from __future__ import annotations

import argparse
import logging
import sys

from quantwm.study.profiles import REPORT_PROFILE, STUDY_PROFILES
from quantwm.utils import REPO_DIR

SWEEP_EXAMPLES = """\
examples:
  quantwm sweep --dry-run --workers 2           each profile's cost on this machine; runs nothing
  quantwm sweep --table 1 --env wall            Table 1's Wall rows, quick profile (resumable)
  quantwm sweep --profile power --workers 2     the insights' rows on 200 episodes, 2 processes
  quantwm sweep --profile long --env pusht      Insight I / III / V rows over 30 MPC rounds
  quantwm sweep --profile full --executor ray --address auto   on a Ray cluster"""

NOTEBOOKS_EXAMPLES = f"""\
examples:
  quantwm notebooks                             what `make report` runs ({REPORT_PROFILE} profile)
  quantwm notebooks --only 02 03                two notebooks, by number prefix
  quantwm notebooks --profile power --no-input  the powered results, code left out (to share)
  quantwm notebooks --only 01 -p env pusht      a notebook parameter (papermill's -p)"""


def add_notebook_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=REPORT_PROFILE, choices=tuple(STUDY_PROFILES),
                        help="study profile whose stored results the notebooks read (default "
                             f"{REPORT_PROFILE}, shipped); smoke, quick, full and reference run "
                             "what is missing (smoke: a pipeline check that plans everything "
                             "itself, minutes), power and long show what is stored; costs: "
                             "`quantwm sweep --dry-run`")
    parser.add_argument("--output", default=str(REPO_DIR / "reports"),
                        help="folder for executed notebooks and HTML (default: reports/)")
    parser.add_argument("--only", nargs="*", metavar="NAME",
                        help="run only these notebooks (name or number prefix, e.g. 00)")
    parser.add_argument("--device", default=None, help="torch device passed to every notebook")
    parser.add_argument("--no-input", action="store_true",
                        help="leave the code out of the HTML reports (outputs only, to share)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="extra papermill parameter (repeatable)")


def run_notebooks_command(args: argparse.Namespace) -> int:
    from quantwm.study.interrupt import interruption
    from quantwm.study.notebooks import NotebooksFailed, run_notebooks

    params: dict[str, object] = {name: _literal(value) for name, value in args.parameter}
    if args.device:
        params["device"] = args.device
    failed: NotebooksFailed | None = None
    try:
        runs = run_notebooks(args.profile, args.output, args.only, params,
                             no_input=args.no_input, progress=True)
    except NotebooksFailed as err:  # each failure is already named on stderr
        runs, failed = err.runs, err
    except KeyboardInterrupt as err:
        stop = interruption(err)
        # the stopped cell's task ends unretrieved: asyncio would log it at exit
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        what = f"quantwm notebooks: interrupted by {stop.signal_name} {stop.detail}".rstrip()
        print(f"{what}; rerun the same command to run the notebooks again", file=sys.stderr,
              flush=True)
        return stop.exit_status
    for result in runs:
        print(f"{result.name}: {result.seconds:6.1f} s -> {result.html}")
    if failed is not None:
        print(f"quantwm notebooks: error: {failed}", file=sys.stderr, flush=True)
        return 1
    return 0


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", type=int, nargs="+", default=None, choices=range(1, 9),
                        metavar="N", help="paper table number(s), 1-8 (default: all tables, "
                        "with the figure rows and the width-scaled groups of Tables 1-2; "
                        "table profiles only)")
    parser.add_argument("--env", default=None, choices=("wall", "pusht"),
                        help="only this env's experiments")
    parser.add_argument("--profile", default=None, choices=tuple(STUDY_PROFILES),
                        help="study profile (default quick; `--dry-run` alone lists the cost "
                             "of every profile): " + ", ".join(STUDY_PROFILES))
    parser.add_argument("--variant", default="paper", choices=("paper", "designed"),
                        help="AWQ/OmniQuant as the reference ran them, or as designed")
    parser.add_argument("--seed", type=int, default=None,
                        help="evaluation episode and planner seed (default: the profile's)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--results", default=None, help="result store folder (data/results)")
    parser.add_argument("--figures", action="store_true",
                        help="with --table: add the RTN rows of Figs. 2-3 for the tables' envs")
    parser.add_argument("--force", action="store_true", help="rerun finished experiments")
    parser.add_argument("--workers", type=int, default=None,
                        help="experiments run in parallel processes, one torch thread each "
                             "when the machine's threads allow (default 1); with --executor "
                             "ray: tasks at a time (default: as many as the cluster holds)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would run and its expected / worst-case time")
    ray = parser.add_argument_group(
        "executor", "where experiments run: local processes, or Ray tasks on this machine or a "
        "cluster (the optional extra: pip install 'quantwm[ray]')")
    ray.add_argument("--executor", default="local", choices=("local", "ray"),
                     help="local: worker processes on this machine (default); ray: Ray tasks")
    ray.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                     help="ray: join this cluster (auto: the one this machine is part of); "
                          "default: start a local instance (127.0.0.1 only, token auth)")
    ray.add_argument("--cpus", type=_number("--cpus"), default=None,
                     help="ray: CPUs per task, and its torch threads (default 1)")
    ray.add_argument("--gpus", type=_number("--gpus"), default=None,
                     help="ray: GPUs per task; a task with a GPU plans on cuda (default 0)")
    ray.add_argument("--max-retries", type=int, default=None,
                     help="ray: reruns of a task whose process or node died (default 3)")
    ray.add_argument("--dashboard", action="store_true",
                     help="ray: start Ray's dashboard with a local instance (off by default)")


def _sweep_grid(args: argparse.Namespace, profile) -> list:
    from quantwm.study.grid import TABLE_ENV, TABLES

    envs = (args.env,) if args.env else None
    if args.table is not None:
        if profile.focused:
            raise ValueError(f"--table does not apply to the {profile.name!r} profile, which "
                             "runs chosen configurations; leave it out")
        tables = [t for t in args.table if args.env is None or TABLE_ENV[t] == args.env]
        if not tables:
            raise ValueError(f"none of tables {args.table} is a {args.env} table")
        return profile.study_experiments(tables, envs, args.variant, figures=args.figures,
                                         width=False, seed=args.seed)
    return profile.study_experiments(TABLES, envs, args.variant, seed=args.seed)


def run_sweep_command(args: argparse.Namespace) -> int:
    from quantwm.study.cost import format_hours, sweep_cost
    from quantwm.study.profiles import study_profile
    from quantwm.study.runner import ensure_latent_error, run_sweep
    from quantwm.study.store import RESULTS_DIR, ResultStore

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    ray_options = _ray_options(args)  # every check that needs no work, Ray's included
    workers = args.workers or 1
    if ray_options is not None:
        from quantwm.study.ray_executor import describe, local_slots

        workers = local_slots(ray_options) if ray_options.resolved_address() is None else 1
    store = ResultStore(args.results or RESULTS_DIR)
    if args.dry_run and args.profile is None and args.table is None:
        print(f"profile     experiments  to run   expected   worst case  "
              f"({workers} worker(s), measured from {store.root})")
        for name in STUDY_PROFILES:
            p = study_profile(name)
            grid = _sweep_grid(args, p)
            todo = store.missing(grid)
            c = sweep_cost(todo, store, workers)
            print(f"{name:<11} {len(grid):>11} {len(todo):>7} {format_hours(c['expected_s']):>10} "
                  f"{format_hours(c['worst_s']):>12}")
        return 0
    profile = study_profile(args.profile or "quick")
    grid = _sweep_grid(args, profile)
    todo = list(dict.fromkeys(grid)) if args.force else store.missing(grid)
    cost = sweep_cost(todo, store, workers)
    where = f"{workers} worker(s)" if ray_options is None else describe(ray_options)
    if ray_options is not None and ray_options.resolved_address() is not None:
        estimate = "time: see the progress bar's ETA (measured on this machine, not the cluster)"
    else:
        estimate = (f"expected {format_hours(cost['expected_s'])}, worst case "
                    f"{format_hours(cost['worst_s'])}")
    print(f"profile {profile.name}: {len(set(grid))} experiments, {len(todo)} to run with "
          f"{where}: {estimate}; results in {store.root}", flush=True)
    if args.dry_run:
        for e in todo:
            print("  ", e.key())
        return 0

    from quantwm.study.interrupt import RESUME_HINT, interruption

    progress = SweepProgress(len(todo))

    def done(exp, record) -> None:
        rates = " ".join(f"{k}:{v:.2f}" for k, v in record["success"].items())
        progress.done(f"{exp.env:<6} {record['label']:<45} {rates}  "
                      f"({record['seconds']['total']:.0f} s)")

    try:
        try:
            run_sweep(todo, store, args.device, force=args.force, on_done=done,
                      workers=args.workers or 1, executor=args.executor,
                      ray_options=ray_options)
        finally:
            progress.close()
        added = ensure_latent_error(grid, store, args.device)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: workers stopped, nothing half-written
        stop = interruption(err)
        left = len(store.missing(grid))
        print(f"quantwm sweep: interrupted by {stop.signal_name}: {left} of {len(set(grid))} "
              f"experiment(s) not stored yet; {RESUME_HINT}", file=sys.stderr, flush=True)
        return stop.exit_status
    if added:
        print(f"latent error added to {len(added)} stored record(s) that lacked it", flush=True)
    return 0


class SweepProgress:
    """A sweep's progress: a bar over its experiments with an ETA on a terminal (stderr), each
    finished experiment's line on stdout, ending ``[k/N, ETA left]`` where no bar is shown (a
    log file, a pipe). The ETA is the mean time per finished experiment so far times those
    left (experiments run side by side count as they finish)."""

    def __init__(self, total: int, file: object = None) -> None:
        import time

        from tqdm import tqdm

        self.total = total
        self.count = 0
        self.start = time.monotonic()
        self.bar = tqdm(total=total, desc="sweep", unit="exp", smoothing=0, dynamic_ncols=True,
                        file=file if file is not None else sys.stderr,
                        disable=None if total else True)  # None: shown on a terminal only

    def done(self, line: str) -> None:
        import time

        from tqdm import tqdm

        self.count += 1
        if self.bar.disable:
            elapsed = time.monotonic() - self.start
            left = elapsed / self.count * max(0, self.total - self.count)
            print(f"{line}  [{self.count}/{self.total}, {tqdm.format_interval(left)} left]",
                  flush=True)
        else:
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _number(flag: str):
    """An argparse type: a number (checked further where it is used), named on error."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag} takes a finite number, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _ray_options(args: argparse.Namespace):
    """The Ray executor's options, checked (Ray installed, the address reachable, a GPU for
    --gpus); None for the local executor, which refuses the Ray-only flags."""
    given = {"--address": args.address, "--cpus": args.cpus, "--gpus": args.gpus,
             "--max-retries": args.max_retries, "--dashboard": args.dashboard or None}
    if args.executor != "ray":
        flags = [flag for flag, value in given.items() if value is not None]
        if flags:
            raise ValueError(f"{flags[0]} applies to --executor ray only")
        return None
    if args.device not in (None, "cpu"):
        raise ValueError(f"--device {args.device} does not apply to --executor ray: a task plans "
                         "on cuda when --gpus > 0, else on cpu")
    from quantwm.study.ray_executor import RayOptions, check_ray_options

    defaults = RayOptions()
    options = RayOptions(address=args.address,
                         cpus=defaults.cpus if args.cpus is None else args.cpus,
                         gpus=defaults.gpus if args.gpus is None else args.gpus,
                         max_retries=(defaults.max_retries if args.max_retries is None
                                      else args.max_retries),
                         workers=args.workers, dashboard=args.dashboard)
    if args.dry_run:
        return options.check()
    return check_ray_options(options)


def _literal(text: str) -> object:
    """Parse a command-line value as a Python literal when it is one (4, 0.5, None), else str."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
