"""Shared test fixtures.

``pytest --device cuda`` runs the device-aware tests (model, planner, quantizers) on that device;
the default is ``cpu``. The tests that take the ``device`` fixture state the same properties
there, so the GPU run is the CPU suite's claims checked on the GPU, not a separate suite.
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu",
                     help="torch device for the device-aware tests (cpu, cuda, cuda:1, ...)")


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    dev = torch.device(pytestconfig.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {dev} was asked for but torch sees no CUDA device")
    return dev


@pytest.fixture
def one_thread():
    """Small tensors on a shared 2-core machine: one thread avoids OpenMP contention stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
