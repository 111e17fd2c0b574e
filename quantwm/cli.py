"""The ``quantwm`` command line. Each sub-command lives beside the code it drives.

A sub-command is ``(module, help, add-arguments function, run function)``; the functions are
looked up by name in the module. Only the module of the sub-command being run is imported (and
none for ``quantwm --help`` / ``--version``): most of them import torch, which takes seconds on
a loaded machine. A module may define ``EXAMPLES``, shown at the end of its ``--help``.

The argument types and checks shared by the sub-commands live here too (``int_at_least``,
``float_in``, ``check_output_file``, ``torch_device``): a bad value fails with one line naming
it, before any work.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

DESCRIPTION = """\
quantwm: post-training quantization of world models used for planning (Wall and PushT).

The study itself is two commands: 'make test' and 'make report' (see README.md). The command
line below runs its parts one at a time."""

EPILOG = """\
examples:
  quantwm eval --env wall --planner smoke     check that planning runs (seconds)
  quantwm eval --env pusht --json out.json    FP32 planning success of the shipped model
  quantwm sweep --table 1 --dry-run           list the experiments of the paper's Table 1
  quantwm sweep --table 1 2 --workers 2       run them (resumable; results in data/results)
  quantwm notebooks --profile quick           execute the notebooks, HTML reports in reports/
  quantwm data show --env pusht               summary of a trajectory dataset
  quantwm train --env wall --minutes 22       retrain the Wall world model

'quantwm COMMAND --help' lists a command's options."""

COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "data": ("quantwm.data.cli", "make and inspect trajectory datasets",
             "add_arguments", "run"),
    "train": ("quantwm.model.cli", "train the world model of an environment",
              "add_arguments", "run"),
    "eval": ("quantwm.plan.cli", "plan with a shipped checkpoint, FP32 or quantized (--quant)",
             "add_arguments", "run"),
    "sweep": ("quantwm.study.cli", "run the experiments of the paper's tables (resumable)",
              "add_sweep_arguments", "run_sweep_command"),
    "notebooks": ("quantwm.study.cli", "execute the numbered notebooks and render HTML reports",
                  "add_notebook_arguments", "run_notebooks_command"),
}

#: exit status after the reader of our output went away (128 + SIGPIPE, as a C tool's)
BROKEN_PIPE_EXIT = 141


def version() -> str:
    """The installed distribution's version (the package's own when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("quantwm")
    except PackageNotFoundError:
        import quantwm

        return quantwm.__version__


class _VersionAction(argparse.Action):
    """``--version``; looks the version up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the sub-commands in ``commands`` (default: all) get their arguments."""
    wanted = set(COMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(prog="quantwm", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")
    for name, (module_name, help_text, add_arguments, run) in COMMANDS.items():
        if name not in wanted:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog=getattr(module, f"{name.upper()}_EXAMPLES", None)
                           or getattr(module, "EXAMPLES", None),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(_module=module_name, _run=run)
        getattr(module, add_arguments)(p)
    return parser


def _command_of(argv: Sequence[str]) -> list[str]:
    """The sub-command named in ``argv`` (top-level options are flags, so the first word)."""
    for word in argv:
        if not word.startswith("-"):
            return [word] if word in COMMANDS else []
    return []


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse's 2 for bad usage too)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        status = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:  # `quantwm sweep --dry-run | head`: the reader has all it wanted
        _discard_stdout()
        return BROKEN_PIPE_EXIT


def _run(argv: list[str]) -> int:
    try:
        args = build_parser(_command_of(argv)).parse_args(argv)
    except SystemExit as done:  # --help, --version or a usage error, already printed
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    try:
        return int(getattr(importlib.import_module(args._module), args._run)(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        message = " ".join(str(err).split())
        print(f"quantwm {args.command}: error: {message}", file=sys.stderr)
        return 2


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (captured in tests)
        pass


# ---- argument types and checks shared by the sub-commands ------------------------------------
def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``lo``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def float_in(lo: float, hi: float = math.inf, *, lo_open: bool = False,
             hi_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in the interval from ``lo`` to ``hi``."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = (value > lo if lo_open else value >= lo) and (value < hi if hi_open
                                                                 else value <= hi)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text}")
        return value

    parse.__name__ = f"number in {interval}"
    return parse


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` if a file can be written there (its folders may be missing), else ValueError.

    For outputs written at the end of a long run: a directory, or a place that cannot be
    written, fails before the work instead of after it.
    """
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file name")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: no permission to write in {folder}")
    return out


def torch_device(name: str, flag: str = "--device") -> Any:
    """``torch.device(name)`` if this machine has it, else a ValueError naming ``name``."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{flag} {name!r} is not a torch device; expected e.g. cpu, cuda, "
                         "cuda:1 or mps") from None
    if device.type == "meta":
        raise ValueError(f"{flag} {name!r} holds no data; expected e.g. cpu, cuda or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} {name!r}: torch sees no CUDA device on this machine "
                         "(use --device cpu)")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise ValueError(f"{flag} {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), numbered from 0")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:  # mps/xpu/... not built in or not present
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{flag} {name!r} is not available here: {reason}") from None
    return device


if __name__ == "__main__":
    sys.exit(main())
