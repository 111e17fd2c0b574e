"""Properties of the quantization methods and of ``quantize`` on the toy world model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn
from toy_blocks import ToyWorldModel, make_calibration

from quantwm.quant import (
    DINO_WM_LAYOUT,
    Bits,
    QuantConfig,
    QuantLinear,
    awq,
    find_blocks,
    fold_into_norm,
    model_size_bits,
    omniquant,
    quantize,
    smoothquant,
)
from quantwm.quant.blocks import capture_block_calls
from quantwm.quant.config import METHODS
from quantwm.quant.context import PartContext
from quantwm.quant.omse import search_clip_mse
from quantwm.quant.primitives import fake_quantize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(device) -> ToyWorldModel:
    """The toy world model on the test device (``pytest --device cuda``; default cpu)."""
    return ToyWorldModel(enc_depth=1, pred_depth=2).eval().to(device)


@pytest.fixture(scope="module")
def calib(model) -> dict:
    return make_calibration(model, n_batches=3, batch=4)


def _out(m: nn.Module, calib: dict, role: str = "predictor") -> torch.Tensor:
    return _part_out(m.get_submodule(role), calib[role])


def _part_out(part: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([part(x).flatten() for x in inputs])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _ctx(part: nn.Module, calib: dict, config: QuantConfig, role="predictor") -> PartContext:
    return PartContext(part, find_blocks(part), DINO_WM_LAYOUT, calib[role],
                       config.bits(role), config)


# --------------------------------------------------------------------------- the block walker
def test_blocks_are_found_by_layout_not_class(model):
    assert [n for n, _ in find_blocks(model.encoder)] == ["blocks.0"]
    assert [n for n, _ in find_blocks(model.predictor)] == ["blocks.0", "blocks.1"]
    assert len(find_blocks(model)) == 3  # the decoder Linear is no block
    q = quantize(model, QuantConfig("rtn", encoder=(8, 16), predictor=(8, 16)))
    assert isinstance(q.decoder, nn.Linear) and not isinstance(q.decoder, QuantLinear)
    assert sum(isinstance(m, QuantLinear) for m in q.modules()) == 3 * 4


# ------------------------------------------------------------ transforms keep the float model
@pytest.mark.parametrize("seed", [0, 1])
def test_fold_into_norm_keeps_block_output(model, calib, seed):
    g = torch.Generator().manual_seed(seed)
    part = copy.deepcopy(model.predictor)
    before = _part_out(part, calib["predictor"])
    for _, block in find_blocks(part):
        for grp in DINO_WM_LAYOUT.groups:
            d = block.get_submodule(grp.norm).weight.shape[0]
            s = (torch.rand(d, generator=g) * 4 + 0.1).to(block.norm1.weight.device)
            shift = torch.randn(d, generator=g).to(s.device)
            fold_into_norm(block.get_submodule(grp.norm),
                           [block.get_submodule(p) for p in grp.linears], s, shift)
    torch.testing.assert_close(_part_out(part, calib["predictor"]), before,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method,bits,extra", [
    (smoothquant.run, (8, 8), {}),
    (awq.run, (4, 16), {}),
    (omniquant.run, (4, 8), {"epochs": 2}),
    (omniquant.run, (4, 16), {"epochs": 1, "omni_let": True}),
])
def test_equivalent_transforms_keep_float_output(model, calib, method, bits, extra):
    """The method's float-side rewrite (before any rounding) leaves the outputs unchanged."""
    part = copy.deepcopy(model.predictor)
    cfg = QuantConfig("rtn", predictor=bits, **extra)
    before = _part_out(part, calib["predictor"])
    method(_ctx(part, calib, cfg))
    assert all(type(m) is nn.Linear for _, b in find_blocks(part) for m in b.modules()
               if isinstance(m, nn.Linear))
    torch.testing.assert_close(_part_out(part, calib["predictor"]), before, rtol=1e-4,
                               atol=1e-4)


def test_smoothquant_moves_outliers_into_weights(model, calib):
    part = copy.deepcopy(model.predictor)
    ln = part.blocks[0].norm1
    gain_before = ln.weight.detach().abs().clone()
    smoothquant.run(_ctx(part, calib, QuantConfig("smoothquant", predictor=(8, 8))))
    ratio_before = gain_before.max() / gain_before.median()
    ratio_after = ln.weight.detach().abs().max() / ln.weight.detach().abs().median()
    assert ratio_after < ratio_before / 2


# ------------------------------------------------------------------------------- OMSE vs RTN
@pytest.mark.parametrize("group", [None, 128, 32])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_omse_error_never_above_rtn(bits, group):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(24, 148, generator=g)
    w[:, ::17] *= 8.0
    gran = "per_channel" if group is None else "per_group"
    r, _ = search_clip_mse(w, bits, gran, group, True)
    rtn = (fake_quantize(w, bits, gran, group) - w).square().sum()
    omse = (fake_quantize(w, bits, gran, group, clip_ratio=r) - w).square().sum()
    assert omse <= rtn
    assert ((r >= 0.35 - 1e-6) & (r <= 1.0)).all()


def test_omse_model_weight_error_not_above_rtn(model):
    cfg = QuantConfig("rtn", predictor=(3, 16), w_group_size=128)
    rtn = quantize(model, cfg)
    omse = quantize(model, cfg.replace(method="omse"))
    f = dict(model.predictor.named_parameters())
    for name, m in omse.predictor.named_modules():
        if isinstance(m, QuantLinear):
            w = f[f"{name}.weight"]
            r_err = (rtn.predictor.get_submodule(name).weight - w).square().sum()
            assert (m.weight - w).square().sum() <= r_err


# ----------------------------------------------------------------------------- OmniQuant loss
def test_omniquant_block_loss_decreases(model, calib):
    cfg = QuantConfig("omniquant", encoder=(16, 16), predictor=(3, 16), epochs=6,
                      search_rows=12, batch_size=4, lr_lwc=5e-2)
    q = quantize(model, cfg, calib)
    losses = q.quant_report.parts["predictor"].info["block_loss"]
    assert set(losses) == {"blocks.0", "blocks.1"}
    for history in losses.values():
        assert len(history) == 7 and history[-1] < history[0]


def test_omniquant_ref_is_untrained(model, calib):
    q = quantize(model, QuantConfig("omniquant_ref", predictor=(4, 16), epochs=5), calib)
    info = q.quant_report.parts["predictor"].info
    assert info["epochs"] == 0 and all(len(h) == 1 for h in info["block_loss"].values())


def test_awq_ref_searches_only_fc1_group(model, calib):
    designed = quantize(model, QuantConfig("awq", predictor=(4, 16)), calib)
    ref = quantize(model, QuantConfig("awq_ref", predictor=(4, 16)), calib)
    d = designed.quant_report.parts["predictor"].info["scale_exponent"]
    r = ref.quant_report.parts["predictor"].info["scale_exponent"]
    assert set(d) == {"blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2"}
    assert set(r) == {"blocks.0.norm2", "blocks.1.norm2"}
    y = _out(model, calib)
    assert _rel(_out(designed, calib), y) < _rel(_out(ref, calib), y)


# ----------------------------------------------------------------------- accuracy vs bit width
def test_w8a8_rtn_close_to_fp32_and_w3_is_not(model, calib):
    y = _out(model, calib)
    w8a8 = _rel(_out(quantize(model, QuantConfig("rtn", predictor=(8, 8)), calib), calib), y)
    w3 = _rel(_out(quantize(model, QuantConfig("rtn", predictor=(3, 16)), calib), calib), y)
    assert w8a8 < 0.05
    assert w3 > 0.15 and w3 > 5 * w8a8


@pytest.mark.parametrize("method", METHODS)
def test_every_method_stays_close_at_8_bits(model, calib, method):
    """Except awq_ref: its stale (pre-AWQ) weight scales saturate the up-scaled channels."""
    a = 16 if method.startswith("awq") else 8
    cfg = QuantConfig(method, encoder=(8, a), predictor=(8, a), w_group_size=128,
                      epochs=1, search_rows=8)
    q = quantize(model, cfg, calib)
    tol = 0.3 if method == "awq_ref" else 0.05
    for role in ("encoder", "predictor"):
        assert _rel(_out(q, calib, role), _out(model, calib, role)) < tol


# ------------------------------------------------------------------- parts, copies, determinism
@pytest.mark.parametrize("role,other", [("encoder", "predictor"), ("predictor", "encoder")])
def test_one_part_config_touches_only_that_part(model, calib, role, other):
    q = quantize(model, QuantConfig("smoothquant", **{role: (6, 6)}), calib)
    assert any(isinstance(m, QuantLinear) for m in q.get_submodule(role).modules())
    assert not any(isinstance(m, QuantLinear) for m in q.get_submodule(other).modules())
    fq, fm = q.get_submodule(other).state_dict(), model.get_submodule(other).state_dict()
    assert fq.keys() == fm.keys() and all(torch.equal(fq[k], fm[k]) for k in fm)


@pytest.mark.parametrize("method", ["smoothquant", "awq", "omniquant"])
def test_float_model_untouched(model, calib, method):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = 16 if method == "awq" else 8
    q = quantize(model, QuantConfig(method, predictor=(4, a), epochs=1, search_rows=8), calib)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert q is not model and not any(isinstance(m, QuantLinear) for m in model.modules())


@pytest.mark.parametrize("method,a", [("omniquant", 8), ("awq", 16)])
def test_same_config_and_seed_same_outputs(model, calib, method, a):
    cfg = QuantConfig(method, predictor=(4, a), epochs=2, search_rows=8, seed=3)
    y1 = _out(quantize(model, cfg, calib), calib)
    y2 = _out(quantize(model, cfg, calib), calib)
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("gran", ["per_tensor", "per_token"])
def test_inplace_input_quantizers_change_nothing(model, calib, gran):
    cfg = QuantConfig("smoothquant", encoder=(8, 6), predictor=(6, 6), act_granularity=gran)
    inplace = quantize(model, cfg, calib)
    copying = quantize(model, cfg, calib, dataclasses.replace(DINO_WM_LAYOUT, private_inputs=()))
    assert all(m.act.inplace for m in inplace.modules() if isinstance(m, QuantLinear))
    for role in ("encoder", "predictor"):
        assert torch.equal(_out(inplace, calib, role), _out(copying, calib, role))


def test_per_token_and_per_group_partial_run(model, calib):
    cfg = QuantConfig("rtn", predictor=(4, 8), w_group_size=128, act_granularity="per_token")
    q = quantize(model, cfg, calib)
    qkv = q.predictor.blocks[0].attn.qkv
    assert qkv.w_scale.shape == (3 * 148, 2) and qkv.act.granularity == "per_token"
    fc2 = q.predictor.blocks[0].mlp.fc2
    assert fc2.w_scale.shape == (148, 5)  # 592 = 4 * 128 + 80


# ----------------------------------------------------------------------------- size reporting
def test_size_report(model):
    fp = model_size_bits(model)
    assert fp.ratio == 1.0 and fp.total_bits == fp.fp32_bits
    w4 = model_size_bits(quantize(model, QuantConfig("rtn", encoder=(4, 16),
                                                     predictor=(4, 16), w_group_size=128)))
    w8 = model_size_bits(quantize(model, QuantConfig("rtn", encoder=(8, 16), predictor=(8, 16))))
    assert w4.fp32_bits == fp.fp32_bits
    assert w4.total_bits < w8.total_bits < fp.total_bits
    n_w = sum(m.weight.numel() for _, b in find_blocks(model) for m in b.modules()
              if isinstance(m, nn.Linear))
    assert w4.quant_weight_bits == 4 * n_w


# ------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize("kwargs,match", [
    ({"method": "gptq"}, "gptq"),
    ({"predictor": (1, 16)}, "w_bits=1"),
    ({"predictor": (4, 12)}, "a_bits=12"),
    ({"encoder": (4.0, 16)}, "4.0"),
    ({"predictor": (4,)}, r"\(4,\)"),
    ({"w_group_size": 0}, "0"),
    ({"w_group_size": -128}, "-128"),
    ({"act_granularity": "per_channel"}, "per_channel"),
    ({"method": "awq", "predictor": (4, 8)}, "weight-only"),
    ({"method": "awq_ref", "encoder": (4, 4)}, "weight-only"),
    ({"method": "smoothquant", "predictor": (4, 16)}, "weight-activation"),
    ({"alpha": 1.5}, "1.5"),
    ({"epochs": -1}, "-1"),
    ({"omse_grid": (0.0, 1.0, 101)}, "omse_grid"),
    ({"parts": {"decoder": "decoder"}}, "decoder"),
])
def test_bad_configs_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_missing_calibration_or_part_raises(model):
    with pytest.raises(ValueError, match="calibration"):
        quantize(model, QuantConfig("rtn", predictor=(8, 8)))
    with pytest.raises(ValueError, match="calibration"):
        quantize(model, QuantConfig("awq", predictor=(4, 16)), {"encoder": []})
    with pytest.raises(ValueError, match="dynamics"):
        quantize(model, QuantConfig("rtn", predictor=(8, 16), parts={"predictor": "dynamics"}))
    with pytest.raises(ValueError, match="no blocks"):
        quantize(model, QuantConfig("rtn", predictor=(8, 16), parts={"predictor": "decoder"}))


def test_config_is_hashable_and_normalises_bits():
    a = QuantConfig("rtn", predictor=(4, 8))
    b = QuantConfig("rtn", predictor=Bits(4, 8))
    assert a == b and hash(a) == hash(b) and len({a: 1, b: 2}) == 1
    assert a.predictor.w == 4 and a.encoder.is_float


def test_label():
    cfg = QuantConfig("omniquant_ref", predictor=(4, 8), w_group_size=128,
                      act_granularity="per_token")
    assert cfg.label() == "OmniQuant(ref) E:W32A32 P:W4A8 G128 per-token"
    assert QuantConfig("awq", predictor=(4, 16)).label() == "AWQ E:W32A32 P:W4A32 G-"


# ------------------------------------------------- OmniQuant trains the quantizer that ships
OMNI_SETTINGS = [
    pytest.param((4, 16), 4, "per_tensor", id="W4A16-G4"),
    pytest.param((4, 8), None, "per_tensor", id="W4A8-per-tensor"),
    pytest.param((4, 4), None, "per_tensor", id="W4A4-per-tensor"),
    pytest.param((4, 8), None, "per_token", id="W4A8-per-token"),
    pytest.param((4, 4), None, "per_token", id="W4A4-per-token"),
]


def _block_errors(q: nn.Module, model: nn.Module, cfg: QuantConfig, calib: dict) -> list[float]:
    """Per predictor block: MSE of the deployed quantized block against the float block, each
    on the inputs it receives in its own model, over the rows OmniQuant trains on."""
    rows = _ctx(model.predictor, calib, cfg).search_inputs()  # the same seeded draw
    errors = []
    for name, fb in find_blocks(model.predictor):
        qb = q.predictor.get_submodule(name)
        q_calls = capture_block_calls(q.predictor, qb, rows)
        f_calls = capture_block_calls(model.predictor, fb, rows)
        with torch.no_grad():
            errors.append(sum(float(torch.nn.functional.mse_loss(qc.run(qb), fc.run(fb)))
                              for qc, fc in zip(q_calls, f_calls, strict=True)) / len(rows))
    return errors


@pytest.mark.parametrize("bits,group,gran", OMNI_SETTINGS)
def test_omniquant_training_loss_is_the_deployed_loss(model, calib, bits, group, gran):
    """The first block's best training loss is the deployed block's error on the same rows:
    training quantizes activations with the static ranges (or per-token ranges) that ship."""
    cfg = QuantConfig("omniquant", predictor=bits, w_group_size=group, act_granularity=gran,
                      epochs=3, search_rows=12, batch_size=4)
    q = quantize(model, cfg, calib)
    history = q.quant_report.parts["predictor"].info["block_loss"]["blocks.0"]
    rows = _ctx(model.predictor, calib, cfg).search_inputs()
    name, fb = find_blocks(model.predictor)[0]
    qb = q.predictor.get_submodule(name)
    calls = capture_block_calls(q.predictor, qb, rows)  # block 0 sees float inputs
    with torch.no_grad():
        deployed = sum(float(torch.nn.functional.mse_loss(c.run(qb), c.run(fb)))
                       for c in calls) / len(calls)
    assert deployed == pytest.approx(min(history), rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("bits,group,gran", OMNI_SETTINGS)
def test_omniquant_epochs_never_worse_than_none(model, calib, bits, group, gran):
    """With epochs > 0 the deployed block-output error never exceeds the 0-epoch model's."""
    base = QuantConfig("omniquant", predictor=bits, w_group_size=group, act_granularity=gran,
                       search_rows=12, batch_size=4, lr_lwc=5e-2)
    untrained = _block_errors(quantize(model, base.replace(epochs=0), calib), model, base, calib)
    trained = _block_errors(quantize(model, base.replace(epochs=4), calib), model, base, calib)
    assert trained[0] <= untrained[0] * (1 + 1e-5) + 1e-12
    assert sum(trained) <= sum(untrained) * (1 + 1e-5) + 1e-12


def test_awq_ref_clips_qk_rows_as_the_reference_did(model, calib):
    """AWQ as designed leaves q and k rows unclipped; the reference's run clipped them."""
    cfg = QuantConfig("awq", predictor=(3, 16), search_rows=12, batch_size=4)
    ctx = _ctx(copy.deepcopy(model.predictor), calib, cfg)
    block = ctx.blocks[0][1]
    calls = capture_block_calls(ctx.part, block, ctx.search_inputs())
    qk = 2 * block.attn.qkv.out_features // 3
    designed = awq.clip_block(block, calls, ctx)["attn.qkv"]
    ref = awq.clip_block(block, calls, ctx, skip_qk=False)["attn.qkv"]
    assert (designed[:qk] == 1.0).all()
    assert (ref[:qk] < 1.0).any()
    torch.testing.assert_close(designed[qk:], ref[qk:])


def test_per_token_rtn_and_omse_need_no_calibration(model):
    for method in ("rtn", "omse"):
        q = quantize(model, QuantConfig(method, predictor=(4, 4), act_granularity="per_token"))
        assert sum(isinstance(m, QuantLinear) for m in q.predictor.modules()) == 8
        with pytest.raises(ValueError, match="calibration"):
            quantize(model, QuantConfig(method, predictor=(4, 4)))


def test_statistics_rows_are_drawn_once_per_part(model, calib):
    cfg = QuantConfig("smoothquant", predictor=(8, 8), calib_rows=5)
    ctx = _ctx(copy.deepcopy(model.predictor), calib, cfg)
    first, again = ctx.stat_inputs(), ctx.stat_inputs()
    assert len(first) == len(again) and all(a is b for a, b in zip(first, again, strict=True))
    # so SmoothQuant's scales and the static ranges come from the same rows: same model twice
    a, b = quantize(model, cfg, calib), quantize(model, cfg, calib)
    torch.testing.assert_close(_out(a, calib), _out(b, calib))


def test_numpy_integer_bits_are_accepted():
    import numpy as np

    cfg = QuantConfig("rtn", predictor=(np.int64(4), np.int32(8)), w_group_size=np.int64(32))
    assert cfg.predictor == Bits(4, 8) and type(cfg.predictor.w) is int
    with pytest.raises(ValueError, match="w_bits"):
        QuantConfig("rtn", predictor=(np.float64(4.0), 8))
