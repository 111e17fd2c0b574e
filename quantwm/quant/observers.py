"""Calibration observers: input statistics of Linear layers, collected by forward pre-hooks.

For an input ``X`` of a Linear (any leading shape, last dim = input channels ``j``) an
:class:`ActObserver` accumulates over every calibration forward:

- ``min`` / ``max``: the per-tensor range (static per-tensor activation quantization);
- ``absmax[j] = max |X_j|`` (SmoothQuant), ``mean_abs[j] = mean |X_j|`` (AWQ);
- ``ch_min[j]`` / ``ch_max[j]`` (OmniQuant's shift init ``(ch_max + ch_min) / 2``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn


class ActObserver:
    """Running statistics of the inputs of one layer (see module doc)."""

    def __init__(self) -> None:
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None
        self.absmax: torch.Tensor | None = None
        self.abssum: torch.Tensor | None = None
        self.ch_min: torch.Tensor | None = None
        self.ch_max: torch.Tensor | None = None
        self.count = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        ch_min, ch_max = x.amin(dim=0), x.amax(dim=0)
        absmax = torch.maximum(ch_max.abs(), ch_min.abs())
        abssum = x.abs().sum(dim=0)
        if self.count == 0:
            self.ch_min, self.ch_max, self.absmax, self.abssum = ch_min, ch_max, absmax, abssum
        else:
            self.ch_min = torch.minimum(self.ch_min, ch_min)
            self.ch_max = torch.maximum(self.ch_max, ch_max)
            self.absmax = torch.maximum(self.absmax, absmax)
            self.abssum = self.abssum + abssum
        self.min, self.max = self.ch_min.min(), self.ch_max.max()
        self.count += x.shape[0]

    @property
    def mean_abs(self) -> torch.Tensor:
        if self.count == 0:
            raise RuntimeError("observer saw no data: run calibration inputs through the model")
        return self.abssum / self.count


@contextlib.contextmanager
def observe_inputs(modules: Mapping[str, nn.Module]) -> Iterator[dict[str, ActObserver]]:
    """Attach an :class:`ActObserver` to the first input of each module while the block runs."""
    observers = {name: ActObserver() for name in modules}
    handles = [
        m.register_forward_pre_hook(_hook(observers[name])) for name, m in modules.items()
    ]
    try:
        yield observers
    finally:
        for h in handles:
            h.remove()


def _hook(observer: ActObserver):
    def hook(_module: nn.Module, args: tuple) -> None:
        observer.update(args[0])

    return hook


@torch.no_grad()
def collect_input_stats(
    part: nn.Module, modules: Mapping[str, nn.Module], inputs: Sequence[torch.Tensor]
) -> dict[str, ActObserver]:
    """Run ``part`` on every calibration input and return the observers of ``modules``' inputs."""
    from quantwm.quant.blocks import run_part

    with observe_inputs(modules) as observers:
        for x in inputs:
            run_part(part, x)
    return observers
