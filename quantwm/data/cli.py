"""``quantwm data``: make a trajectory dataset, add training trajectories to one, or show one.

quantwm data make --env wall|pusht [--seed S] [--out PATH] [--n-traj N] [--n-steps T]
quantwm data extend --env wall|pusht --n-traj N --seed S [--path PATH] [--workers W] [--quiet]
quantwm data show --env wall|pusht [--path PATH]
"""

from __future__ import annotations

import argparse
import time

from quantwm.cli import check_output_file, int_at_least
from quantwm.utils import ENV_NAMES

EXAMPLES = """\
examples:
  quantwm data show --env pusht                       summary of the shipped PushT dataset
  quantwm data make --env wall --out /tmp/wall.npz    regenerate Wall's (seed 0, as shipped)
  quantwm data extend --env pusht --n-traj 4800 --seed 3   more training trajectories

'quantwm data ACTION --help' lists an action's options."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION",
                                title="actions")
    make = sub.add_parser("make", help="generate trajectories and write them as compressed npz",
                          description="generate trajectories and write them as compressed npz")
    make.add_argument("--env", required=True, choices=ENV_NAMES, help="environment")
    make.add_argument("--seed", type=int_at_least(0), default=None,
                      help="random seed, >= 0 (default 0, the shipped datasets' seed)")
    make.add_argument(
        "--out", default=None, help="output file (default data/<env>/trajectories.npz)"
    )
    make.add_argument("--n-traj", type=int_at_least(1), default=None,
                      help="trajectories (default per env: the shipped dataset's)")
    make.add_argument("--n-steps", type=int_at_least(1), default=None,
                      help="steps per trajectory (default per env: the shipped dataset's)")
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    extend = sub.add_parser(
        "extend", help="append training trajectories (the validation split stays as it is)",
        description="append training trajectories (the validation split stays as it is)",
    )
    extend.add_argument("--env", required=True, choices=ENV_NAMES, help="environment")
    extend.add_argument("--n-traj", type=int_at_least(1), required=True,
                        help="trajectories to append")
    extend.add_argument("--seed", type=int_at_least(0), required=True,
                        help="a seed >= 0 the dataset has not used yet")
    extend.add_argument(
        "--path", default=None, help="file, rewritten (default data/<env>/trajectories.npz)"
    )
    extend.add_argument("--workers", type=int_at_least(1), default=None,
                        help="processes generating chunks, >= 1 (default: every CPU; the data "
                             "do not depend on it)")
    extend.add_argument("--quiet", action="store_true", help="no progress bar")
    show = sub.add_parser("show", help="print the summary of a trajectory file",
                          description="print the summary of a trajectory file")
    show.add_argument("--env", required=True, choices=ENV_NAMES, help="environment")
    show.add_argument("--path", default=None, help="file (default data/<env>/trajectories.npz)")


def run(args: argparse.Namespace) -> int:
    from quantwm.data.trajectories import (
        DEFAULT_SEED,
        default_path,
        extend_trajectories,
        format_summary,
        load_trajectories,
        make_trajectories,
        summarize,
    )

    if args.action == "make":
        out = check_output_file(args.out if args.out is not None else default_path(args.env),
                                "--out")
        seed = DEFAULT_SEED if args.seed is None else args.seed
        start = time.perf_counter()
        trajs = make_trajectories(
            args.env, args.n_traj, args.n_steps, seed=seed, progress=not args.quiet
        )
        path = trajs.save(out)
        summary = summarize(trajs)
        summary["file"] = f"{path} ({path.stat().st_size / 1e6:.2f} MB)"
        summary["total_seconds"] = round(time.perf_counter() - start, 1)
        print(format_summary(summary))
        return 0
    if args.action == "extend":  # the file itself, not the shipped extensions of its default
        path = check_output_file(args.path if args.path is not None else default_path(args.env),
                                 "--path")
        trajs = extend_trajectories(load_trajectories(args.env, path), args.n_traj, args.seed,
                                    workers=args.workers, progress=not args.quiet)
        path = trajs.save(path)
        print(f"appended {args.n_traj} training trajectories (seed {args.seed}) -> {path}")
    else:
        trajs = load_trajectories(args.env, args.path)
    summary = summarize(trajs)
    summary["commit"] = trajs.meta.get("commit")
    summary["extensions"] = trajs.meta.get("extensions")
    print(format_summary(summary))
    return 0
