"""The kit's packaging promises: pinned requirements agree between pip and conda."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    return {_normalise(r) for r in reqs}


def _environment_yml_requirements() -> set[str]:
    # The file is simple enough to read without a YAML dependency: take the pip section's items.
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s*-\s*pip:\s*$", line))
    reqs = set()
    for line in lines[start + 1 :]:
        match = re.match(r"\s+-\s+(\S.*)$", line)
        if not match:
            break
        item = match.group(1).strip()
        if not item.startswith("-e"):
            reqs.add(_normalise(item))
    return reqs


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower().replace("_", "-")


def test_environment_yml_matches_pyproject() -> None:
    assert _environment_yml_requirements() == _pyproject_requirements()


def test_every_requirement_is_pinned_and_torch_is_the_cpu_wheel_pin() -> None:
    reqs = _pyproject_requirements()
    assert all("==" in r for r in reqs), sorted(r for r in reqs if "==" not in r)
    assert "torch==2.13.0" in reqs


def test_environment_yml_uses_python_311() -> None:
    assert re.search(r"^\s*-\s*python=3\.11\s*$", (ROOT / "environment.yml").read_text(), re.M)
