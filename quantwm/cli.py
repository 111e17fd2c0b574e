"""The ``quantwm`` command line. Each sub-command lives beside the code it drives.

A sub-command module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("quantwm.data.cli", "make and inspect trajectory datasets"),
    "train": ("quantwm.model.cli", "train the world model of an environment"),
    "eval": ("quantwm.plan.cli", "evaluate the FP32 planner on the shipped checkpoint"),
    "notebooks": ("quantwm.study.cli", "execute the numbered notebooks and render HTML reports"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantwm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"quantwm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
