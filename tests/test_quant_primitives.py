"""Properties of the affine fake-quantization primitives and the quantized Linear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantwm.quant.linear import ActQuantizer, QuantLinear
from quantwm.quant.primitives import (
    check_bits,
    check_group_size,
    choose_qparams,
    dequantize,
    expand_to,
    fake_quantize,
    quantize,
    reduce_minmax,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _tensor(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x[..., 5] *= 30.0  # an outlier channel
    return x


CASES = [
    ("per_tensor", None, (6, 148)),
    ("per_channel", None, (6, 148)),
    ("per_group", 128, (6, 148)),  # partial last group of 20
    ("per_group", 32, (6, 148)),  # partial last group of 20
    ("per_group", 37, (6, 148)),  # divides exactly
    ("per_token", None, (2, 5, 148)),
]


@pytest.mark.parametrize("granularity,group,shape", CASES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("clip", [None, 0.6])
def test_error_at_most_half_scale_inside_clip_range(granularity, group, shape, symmetric, bits,
                                                    clip):
    x = _tensor(shape)
    qp = choose_qparams(x, bits, granularity, group, symmetric, clip)
    q = quantize(x, qp)
    assert torch.equal(q, q.round()) and q.min() >= qp.qmin and q.max() <= qp.qmax
    err = (dequantize(q, qp) - x).abs()
    d = x.shape[-1]
    scale = expand_to(qp.scale, granularity, group, d).expand_as(x)
    lo, hi = reduce_minmax(x, granularity, group)  # the clipping range: r * [min, max]
    r = 1.0 if clip is None else clip
    lo, hi = lo * r, hi * r
    if symmetric:
        hi = torch.maximum(hi.abs(), lo.abs())
        lo = -hi
    lo = expand_to(lo, granularity, group, d).expand_as(x)
    hi = expand_to(hi, granularity, group, d).expand_as(x)
    inside = (x >= lo) & (x <= hi)
    if clip is None:
        assert inside.all()
    assert (err[inside] <= scale[inside] / 2 * (1 + 1e-5) + 1e-7).all()


def test_partial_last_group_has_its_own_scale():
    x = torch.randn(3, 148)
    x[:, 128:] *= 1e-3  # the 20-wide last group is tiny
    qp = choose_qparams(x, 4, "per_group", 128, symmetric=True)
    assert qp.scale.shape == (3, 2)
    expected = x[:, 128:].abs().amax(dim=1) / qp.qmax
    torch.testing.assert_close(qp.scale[:, 1], expected)
    err = (fake_quantize(x, 4, "per_group", 128) - x)[:, 128:].abs()
    assert (err <= qp.scale[:, 1:] / 2 + 1e-9).all()


def test_group_larger_than_dim_is_per_channel():
    x = _tensor((4, 148))
    a = fake_quantize(x, 4, "per_group", 256)
    b = fake_quantize(x, 4, "per_channel", None)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bits", [16, 32])
def test_float_bits_are_the_identity(bits):
    x = _tensor((4, 148))
    assert fake_quantize(x, bits, "per_group", 128) is x
    qp = choose_qparams(x, bits)
    assert qp.is_float and torch.equal(dequantize(quantize(x, qp), qp), x)
    lin = nn.Linear(148, 7)
    q = QuantLinear.from_linear(lin, bits, w_group_size=128)
    assert torch.equal(q.weight, lin.weight) and torch.equal(q(x), lin(x))


@pytest.mark.parametrize("bits", [0, 1, 9, 12, 15, -4, 4.0, "8", True, None])
def test_bad_bits_raise_naming_the_value(bits):
    with pytest.raises(ValueError, match=repr(bits) if not isinstance(bits, int) else str(bits)):
        check_bits(bits)


@pytest.mark.parametrize("group", [0, -128, 1.5, "128"])
def test_bad_group_size_raises(group):
    with pytest.raises(ValueError, match="group size"):
        check_group_size(group)
    with pytest.raises(ValueError):
        fake_quantize(torch.randn(2, 8), 4, "per_group", group)


def test_unknown_granularity_raises():
    with pytest.raises(ValueError, match="per_row"):
        choose_qparams(torch.randn(2, 8), 4, "per_row")


def test_ste_gradient_reaches_clip_ratio():
    w = _tensor((8, 148))
    r = torch.full((8, 2), 0.9, requires_grad=True)
    y = fake_quantize(w, 3, "per_group", 128, clip_ratio=r, ste=True)
    (y - w).square().sum().backward()
    assert r.grad is not None and r.grad.abs().sum() > 0


@pytest.mark.parametrize("granularity", ["per_tensor", "per_token"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 8])
@pytest.mark.parametrize("seed", range(4))
def test_act_quantizer_matches_primitives(granularity, symmetric, bits, seed):
    x = _tensor((3, 50, 148), seed)
    x[0, :5] = x[0, :5].abs()  # tokens with no negative value
    x[1, 0] = 0.0  # an all-zero token
    act = ActQuantizer(bits, granularity, symmetric)
    if act.static:
        act.set_range(x.min(), x.max())
    expected = fake_quantize(x, bits, granularity, None, symmetric)
    assert torch.equal(act(x), expected)


def test_static_act_quantizer_needs_calibration():
    with pytest.raises(RuntimeError, match="calibration"):
        ActQuantizer(8, "per_tensor")(torch.randn(2, 4))


def test_quant_linear_weight_is_quantized_once():
    lin = nn.Linear(148, 5)
    q = QuantLinear.from_linear(lin, 4, w_group_size=128, act=ActQuantizer(8, "per_token"))
    w = q.weight.clone()
    q(torch.randn(2, 3, 148))
    assert torch.equal(q.weight, w)
    assert q.w_num_scales == 5 * 2 and q.w_scale.shape == (5, 2)
    assert torch.equal(w, fake_quantize(lin.weight.detach(), 4, "per_group", 128))


@pytest.mark.parametrize("granularity", ["per_tensor", "per_token"])
def test_inplace_act_quantizer_same_values_and_skipped_for_autograd(granularity):
    x = _tensor((3, 7, 148))
    act = ActQuantizer(8, granularity, inplace=True)
    if act.static:
        act.set_range(x.min(), x.max())
    expected = fake_quantize(x, 8, granularity, None, False)
    y = x.clone()
    out = act(y)
    assert out.data_ptr() == y.data_ptr() and torch.equal(out, expected)
    xg = x.clone().requires_grad_(True)
    out = act(xg)  # autograd needs xg: no in-place, straight-through gradient
    assert torch.equal(xg.detach(), x) and torch.equal(out.detach(), expected)
    out.sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))
    xt = x.transpose(0, 1)  # not contiguous: never overwritten
    act(xt)
    assert torch.equal(xt, x.transpose(0, 1))
