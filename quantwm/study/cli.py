"""``quantwm notebooks``: execute the numbered notebooks headless and render HTML reports."""

from __future__ import annotations

import argparse

from quantwm.utils import REPO_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", choices=("smoke", "quick", "full"),
                        help="smoke: seconds (tests); quick: minutes; full: the paper's grid")
    parser.add_argument("--output", default=str(REPO_DIR / "reports"),
                        help="folder for executed notebooks and HTML (default: reports/)")
    parser.add_argument("--only", nargs="*", metavar="NAME",
                        help="run only these notebooks (name or number prefix, e.g. 00)")
    parser.add_argument("--device", default=None, help="torch device passed to every notebook")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="extra papermill parameter (repeatable)")


def run(args: argparse.Namespace) -> int:
    from quantwm.study.notebooks import run_notebooks

    params: dict[str, object] = {name: _literal(value) for name, value in args.parameter}
    if args.device:
        params["device"] = args.device
    for result in run_notebooks(args.profile, args.output, args.only, params):
        print(f"{result.name}: {result.seconds:6.1f} s -> {result.html}")
    return 0


def _literal(text: str) -> object:
    """Parse a command-line value as a Python literal when it is one (4, 0.5, None), else str."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
