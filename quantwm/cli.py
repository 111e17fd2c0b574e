"""The ``quantwm`` command line. Each sub-command lives beside the code it drives.

A sub-command is ``(module, help, add-arguments function, run function)``; the functions are
looked up by name in the module, which is imported when the command line is parsed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "data": ("quantwm.data.cli", "make and inspect trajectory datasets",
             "add_arguments", "run"),
    "train": ("quantwm.model.cli", "train the world model of an environment",
              "add_arguments", "run"),
    "eval": ("quantwm.plan.cli", "evaluate the FP32 planner on the shipped checkpoint",
             "add_arguments", "run"),
    "sweep": ("quantwm.study.cli", "run the experiments of the paper's tables (resumable)",
              "add_sweep_arguments", "run_sweep_command"),
    "notebooks": ("quantwm.study.cli", "execute the numbered notebooks and render HTML reports",
                  "add_notebook_arguments", "run_notebooks_command"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantwm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module, _run=run)
        getattr(importlib.import_module(module), add_arguments)(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(getattr(importlib.import_module(args._module), args._run)(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        print(f"quantwm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
