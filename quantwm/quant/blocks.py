"""Finding transformer blocks generically and capturing what flows into them.

Blocks are found by their **child layout**, never by class: a module is a block when every path
of the :class:`BlockLayout` resolves to the right kind of leaf (``nn.LayerNorm`` for the norms,
``nn.Linear`` for the Linears). The default :data:`DINO_WM_LAYOUT` is the pre-LN ViT block::

    norm1 -> attn.qkv -> attention -> attn.proj      (x + ...)
    norm2 -> mlp.fc1 -> GELU -> mlp.fc2              (x + ...)

and its declarative map "which Linear reads which LayerNorm" is
``norm1 -> (attn.qkv,)`` and ``norm2 -> (mlp.fc1,)``: the two places where a per-channel scale
(and shift) can be folded into the LayerNorm's affine parameters.

Block-by-block methods need each block's input: :func:`capture_block_calls` runs the part on the
calibration inputs with a forward pre-hook on the block that records its positional and keyword
arguments (e.g. an attention mask the part builds itself) and stops the forward there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class NormGroup:
    """A LayerNorm and the Linears that read its output directly."""

    norm: str
    linears: tuple[str, ...]


@dataclass(frozen=True)
class BlockLayout:
    """Declarative description of a block: its norm groups and its Linears to quantize.

    ``linears`` lists every quantized Linear (forward order); ``fused_qkv`` names the Linears
    whose output rows are ``[q; k; v]`` stacked (AWQ's clipping search skips q and k rows, whose
    error the QK^T product amplifies); ``ref_awq_norms`` the norms whose group the reference
    AWQ run searched scales for (only the one before fc1); ``private_inputs`` the Linears whose
    input is a temporary that no other module reads (a LayerNorm / GELU / attention output used
    by that Linear alone), so their input quantizer may overwrite it in place. Leave it empty
    for a model that reuses such a tensor elsewhere.
    """

    groups: tuple[NormGroup, ...]
    linears: tuple[str, ...]
    fused_qkv: tuple[str, ...] = ()
    ref_awq_norms: tuple[str, ...] = ()
    private_inputs: tuple[str, ...] = ()

    def group(self, norm: str) -> NormGroup:
        for g in self.groups:
            if g.norm == norm:
                return g
        raise KeyError(f"no norm group {norm!r} in layout")


DINO_WM_LAYOUT = BlockLayout(
    groups=(NormGroup("norm1", ("attn.qkv",)), NormGroup("norm2", ("mlp.fc1",))),
    linears=("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
    fused_qkv=("attn.qkv",),
    ref_awq_norms=("norm2",),
    private_inputs=("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
)


def _leaf(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def is_block(module: nn.Module, layout: BlockLayout = DINO_WM_LAYOUT) -> bool:
    """True when ``module`` has every Linear and LayerNorm of ``layout`` at the stated paths."""
    for g in layout.groups:
        if not isinstance(_leaf(module, g.norm), nn.LayerNorm):
            return False
    return all(isinstance(_leaf(module, p), nn.Linear) for p in layout.linears)


def find_blocks(
    part: nn.Module, layout: BlockLayout = DINO_WM_LAYOUT
) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` of every block of ``part`` (in module order), outermost matches only."""
    found: list[tuple[str, nn.Module]] = []
    for name, m in part.named_modules():
        if any(b == "" or name.startswith(f"{b}.") for b, _ in found):
            continue
        if is_block(m, layout):
            found.append((name, m))
    return found


def set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` of ``root`` by ``new``."""
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, new)


def join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


@dataclass
class BlockCall:
    """The arguments one block received in one forward; :meth:`run` replays it."""

    args: tuple
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def x(self) -> torch.Tensor:
        return self.args[0]

    def run(self, block: nn.Module, x: torch.Tensor | None = None) -> torch.Tensor:
        """``block(x, *other args, **kwargs)``; the first output if the block returns a tuple."""
        out = block(self.x if x is None else x, *self.args[1:], **self.kwargs)
        return out[0] if isinstance(out, tuple) else out


class _Stop(Exception):
    pass


def run_part(part: nn.Module, x: torch.Tensor) -> Any:
    """Call ``part`` on one calibration input, moved to the part's device."""
    return part(x.to(_device(part)))


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def capture_block_calls(
    part: nn.Module, block: nn.Module, inputs: Sequence[torch.Tensor]
) -> list[BlockCall]:
    """One :class:`BlockCall` per input: what ``block`` received when ``part`` ran on it.

    The forward stops at the block (later blocks are not run). A block called several times in
    one forward (shared weights) is captured at its first call only.
    """
    calls: list[BlockCall] = []

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append(BlockCall(tuple(_detach(a) for a in args), dict(kwargs)))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for x in inputs:
            try:
                run_part(part, x)
            except _Stop:
                pass
    finally:
        handle.remove()
    return calls


def _detach(a: Any) -> Any:
    return a.detach() if isinstance(a, torch.Tensor) else a


@contextlib.contextmanager
def record_inputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the first input of each module (flattened to ``(tokens, in_features)``)."""
    store: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def make(name: str):
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            store[name].append(x.reshape(-1, x.shape[-1]))

        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in modules.items()]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def sample_rows(
    inputs: Sequence[torch.Tensor],
    n_rows: int | None,
    batch_size: int,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Draw ``n_rows`` rows (dim 0) uniformly without replacement from all ``inputs``.

    Rows of one input tensor stay together (inputs may differ in shape beyond dim 0) and are
    split into batches of at most ``batch_size`` rows. ``n_rows=None`` keeps every row.
    """
    sizes = [int(x.shape[0]) for x in inputs]
    total = sum(sizes)
    if n_rows is None or n_rows >= total:
        chosen = torch.arange(total)
    else:
        chosen = torch.randperm(total, generator=generator)[:n_rows].sort().values
    batches: list[torch.Tensor] = []
    start = 0
    for x, size in zip(inputs, sizes, strict=True):
        mask = (chosen >= start) & (chosen < start + size)
        rows = chosen[mask] - start
        start += size
        batches.extend(x[rows].split(batch_size) if len(rows) else [])
    return batches
