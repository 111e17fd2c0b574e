"""``quantize`` on the kit's own (tiny, untrained) WorldModel: the walker finds its blocks and
only their four Linears per block become QuantLinears."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from quantwm.quant import DINO_WM_LAYOUT, QuantConfig, QuantLinear, find_blocks, quantize

pytestmark = pytest.mark.usefixtures("one_thread")

wm = pytest.importorskip("quantwm.model.world_model")


@pytest.fixture(scope="module")
def tiny(device):
    cfg = wm.WorldModelConfig.for_env(
        "pusht", img_size=16, patch_size=8, enc_dim=32, enc_depth=1, enc_heads=2,
        pred_depth=2, pred_heads=2, pred_head_dim=16, num_hist=3,  # windows of 1..3 frames
    )
    model = wm.WorldModel(cfg).eval().to(device)
    g = torch.Generator().manual_seed(0)
    n, d = cfg.num_patches, cfg.pred_dim
    calib = {
        "encoder": [torch.rand(4, 3, 16, 16, generator=g).to(device) for _ in range(2)],
        "predictor": [torch.randn(4, t * n, d, generator=g).to(device)
                      for t in (1, 3)],  # 1 and 3 frames
    }
    return model, calib


@pytest.mark.parametrize("method,bits", [("smoothquant", (8, 8)), ("awq", (4, 16)),
                                         ("omniquant", (4, 8))])
def test_world_model_quantizes_only_block_linears(tiny, method, bits):
    model, calib = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize(model, QuantConfig(method, encoder=bits, predictor=bits, epochs=1), calib)
    n_blocks = len(find_blocks(model.encoder)) + len(find_blocks(model.predictor))
    assert n_blocks == 3
    assert sum(isinstance(m, QuantLinear) for m in q.modules()) == 4 * n_blocks
    for name in ("decoder", "action_encoder", "proprio_encoder"):
        assert not any(isinstance(m, QuantLinear) for m in q.get_submodule(name).modules())
    with torch.no_grad():
        for x in calib["predictor"]:
            y, yq = model.predictor(x), q.predictor(x)
            assert float((yq - y).norm() / y.norm()) < 0.05
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(q.encoder.patch_embed, nn.Conv2d)


def test_world_model_inputs_are_private_to_their_linear(tiny):
    """Overwriting each quantized Linear's input in place gives the same outputs as copying."""
    model, calib = tiny
    cfg = QuantConfig("rtn", encoder=(8, 8), predictor=(8, 8), act_granularity="per_token")
    inplace = quantize(model, cfg, calib)
    copying = quantize(model, cfg, calib,
                       dataclasses.replace(DINO_WM_LAYOUT, private_inputs=()))
    with torch.no_grad():
        for role in ("encoder", "predictor"):
            for x in calib[role]:
                a = inplace.get_submodule(role)(x)
                b = copying.get_submodule(role)(x)
                assert torch.equal(a, b)
