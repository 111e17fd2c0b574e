"""Lowering to integer kernels (quantwm.quant.lower), the quant spec (quantwm.quant.deploy),
``quantwm eval --quant --lowered`` and the deployment notebook 07.

The claims: each lowered kind computes what the fake-quant Linear computes (packed weights bit
for bit; int8 kernels to float rounding, odd widths and partial groups included); through a
whole model the lowered one is no further from the exact (float64) fake-quant function than
the float32 fake-quant model itself; a lowered model plans the smoke episodes to the same
success; requests without a kernel fail with one line naming what is missing.
"""

from __future__ import annotations

import copy
import importlib
import json

import numpy as np
import pytest
import torch
from torch import nn
from toy_blocks import ToyPredictor, plant_outliers

from quantwm.quant import ActQuantizer, QuantConfig, QuantLinear, quantize
from quantwm.quant.deploy import (
    DEPLOY_CONFIGS,
    FP32,
    deployment_verdict,
    needs_calibration,
    pareto_front,
    parse_quant_spec,
    tradeoff,
)
from quantwm.quant.lower import (
    Int8Linear,
    PackedLinear,
    config_kinds,
    lower,
    lowering_kind,
    weight_bytes,
)
from quantwm.utils import DATA_DIR

pytestmark = pytest.mark.usefixtures("one_thread")
lower_mod = importlib.import_module("quantwm.quant.lower")  # the module; quantwm.quant.lower
# as an attribute is the function lower()

HAVE_CHECKPOINTS = all((DATA_DIR / "checkpoints" / f"{e}.pt").exists() for e in ("wall", "pusht"))
needs_checkpoints = pytest.mark.skipif(not HAVE_CHECKPOINTS, reason="no shipped checkpoints")


def _inputs(k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 40, k, generator=g)
    x[..., 3] *= 8  # an outlier channel, as the model's LayerNorm outputs have
    return x


def _quant_linear(k: int, n: int, w_bits: int, a_bits: int, gran: str = "per_tensor",
                  group: int | None = None, w_sym: bool = True, a_sym: bool = False,
                  inplace: bool = True) -> QuantLinear:
    torch.manual_seed(1)
    lin = nn.Linear(k, n)
    act = None
    if a_bits < 16:
        act = ActQuantizer(a_bits, gran, a_sym, inplace=inplace)
        if act.static:  # calibrated on a narrower range: some inputs are clamped
            x = 0.8 * _inputs(k, seed=5)
            act.set_range(x.min(), x.max())
    return QuantLinear.from_linear(lin, w_bits, w_group_size=group, w_symmetric=w_sym, act=act)


# (w_bits, a_bits, granularity, group, w_symmetric, a_symmetric) -> kind
LAYER_CASES = {
    "W8A8-static": ((8, 8, "per_tensor", None, True, False), "int8_static"),
    "W8A8-static-sym-a": ((8, 8, "per_tensor", None, True, True), "int8_static"),
    "W4A6-static": ((4, 6, "per_tensor", None, True, False), "int8_static"),
    "W8A8-token": ((8, 8, "per_token", None, True, False), "int8_dynamic"),
    "W8A8-token-sym-a": ((8, 8, "per_token", None, True, True), "int8_dynamic"),
    "W4A4-token": ((4, 4, "per_token", None, True, False), "int8_dynamic"),
    "W8": ((8, 16, "per_tensor", None, True, False), "packed"),
    "W8-G128": ((8, 16, "per_tensor", 128, True, False), "packed"),
    "W6-asym": ((6, 16, "per_tensor", None, False, False), "packed"),
    "W4": ((4, 16, "per_tensor", None, True, False), "packed"),
    "W4-G128": ((4, 16, "per_tensor", 128, True, False), "packed"),
    "W3-G48-asym": ((3, 16, "per_tensor", 48, False, False), "packed"),
    "W2-G64": ((2, 16, "per_tensor", 64, True, False), "packed"),
}


@pytest.mark.parametrize("k", [148, 149])  # 148 = 128 + 20 (a partial group), 149 odd
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_each_kind_computes_what_the_fake_quant_linear_computes(case: str, k: int) -> None:
    (w, a, gran, group, w_sym, a_sym), kind = LAYER_CASES[case]
    q = _quant_linear(k, 37, w, a, gran, group, w_sym, a_sym)
    lowered = PackedLinear(q) if kind == "packed" else Int8Linear(q)
    assert lowered.kind == kind
    x = _inputs(k)
    with torch.inference_mode():
        want, got = q(x.clone()), lowered(x.clone())
    assert got.shape == want.shape == (3, 40, 37)
    if kind == "packed":
        assert torch.equal(lowered.dequantized_weight(), q.weight)
        assert torch.equal(got, want)  # the same float GEMM on the same weight
    else:  # exact integer codes and int32 sums, rounded once to float
        err = float((got - want).abs().max() / want.abs().max())
        assert err < 2e-6, err


@pytest.mark.parametrize(("bits", "lo", "hi"), [(8, -11.5, 243.5), (4, -1.5, 13.5)])
def test_per_token_codes_that_overshoot_at_a_tie_are_clamped_as_fake_quant_does(
        bits: int, lo: float, hi: float) -> None:
    """s = 1 and both ends at .5 ties that round up: round(hi) + round(-lo) = qmax + 1."""
    q = _quant_linear(16, 5, 8, bits, "per_token")
    x = torch.linspace(lo, hi, 16).repeat(4, 1)
    x[:, 0], x[:, -1] = lo, hi
    with torch.inference_mode():
        want, got = q(x.clone()), Int8Linear(q)(x.clone())
    assert float((got - want).abs().max() / want.abs().max()) < 2e-6


def test_a_lowered_linear_leaves_a_shared_input_alone() -> None:
    q = _quant_linear(148, 37, 8, 8, inplace=False)
    x = _inputs(148)
    before = x.clone()
    with torch.inference_mode():
        Int8Linear(q)(x)
        Int8Linear(_quant_linear(148, 37, 8, 8, "per_token", inplace=False))(x)
    assert torch.equal(x, before)


def test_kernel_rounding_differs_at_near_ties_only() -> None:
    """fbgemm's own rounding, nearbyint(x * (1/s) + z) in float32: a few codes per million move
    by one, so a few rows differ by one activation step; the rest agree."""
    q = _quant_linear(148, 37, 8, 8)
    x = torch.randn(4096, 148, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want, got = q(x.clone()), Int8Linear(q, rounding="kernel")(x.clone())
    rows_off = float(((got - want).abs().amax(1) > 1e-5 * want.abs().max()).float().mean())
    assert rows_off < 0.01, rows_off
    assert float((got - want).norm() / want.norm()) < 1e-3
    with pytest.raises(ValueError, match="needs 8-bit activations"):
        Int8Linear(_quant_linear(148, 37, 8, 6), rounding="kernel")


def _toy(seed: int = 0) -> ToyPredictor:
    torch.manual_seed(seed)
    model = ToyPredictor(dim=148, depth=2, heads=4, patches=16)
    plant_outliers(model)
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kw", [
    {"predictor": (8, 8)},
    {"predictor": (8, 8), "act_granularity": "per_token"},
    {"predictor": (4, 8), "act_granularity": "per_token"},
    {"predictor": (8, 6)},
], ids=["W8A8-tensor", "W8A8-token", "W4A8-token", "W8A6-tensor"])
def test_a_lowered_model_is_as_close_to_exact_fake_quant_as_float32_fake_quant(kw) -> None:
    """Through several blocks, one-ulp differences move a later activation across a rounding
    tie now and then, in float32 fake quantization as much as in the lowered model: both are
    compared with the fake-quant model in float64 (the function both implement)."""
    fp = _toy()
    g = torch.Generator().manual_seed(2)
    calib = {"predictor": [torch.randn(32, 16, 148, generator=g) for _ in range(2)]}
    q = quantize(fp, QuantConfig("rtn", parts={"predictor": ""}, **kw), calib)
    low = lower(q)
    x = torch.randn(128, 16, 148, generator=g)
    with torch.inference_mode():
        exact = copy.deepcopy(q).double()(x.double()).float()
        fake, lowered = q(x.clone()), low(x.clone())
    assert set(low.lowering_report.kinds.values()) <= {"int8_static", "int8_dynamic"}
    assert _rel(lowered, exact) <= 2 * _rel(fake, exact) + 1e-6


def test_a_lowered_weight_only_model_is_the_fake_quant_model_bit_for_bit() -> None:
    fp = _toy()
    q = quantize(fp, QuantConfig("rtn", predictor=(4, 16), w_group_size=128,
                                 parts={"predictor": ""}))
    low = lower(q)
    x = torch.randn(16, 32, 148)
    with torch.inference_mode():
        assert torch.equal(low(x.clone()), q(x.clone()))
    assert low.lowering_report.counts() == {"packed": 8}


# ---------------------------------------------------------------------- bad requests
def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(("spec", "named"), [
    ("rtn:W16A8", "W32A8"),
    ("rtn:W8A8:g128", "group-128"),
    ("rtn:W4A8:per-token:g48", "group-48"),
    ("rtn:W8A8:asym-w", "asymmetric weights"),
])
def test_a_configuration_without_a_kernel_fails_with_one_line(spec: str, named: str) -> None:
    config = parse_quant_spec(spec)
    with pytest.raises(ValueError) as err:
        config_kinds(config)
    assert named in _one_line(err)
    q = quantize(_toy(), config.replace(parts={"predictor": ""}),
                 {"predictor": [torch.randn(8, 16, 148)]})
    with pytest.raises(ValueError) as err:
        lower(q)
    assert named in _one_line(err) and "blocks." in str(err.value)  # the Linear is named


def test_integer_kernels_on_another_device_fail_with_one_line() -> None:
    with pytest.raises(ValueError) as err:
        config_kinds(parse_quant_spec("rtn:W8A8"), "cuda")
    assert "device cuda" in _one_line(err) and "CPU only" in str(err.value)
    # weight-only packing is plain torch: any device
    assert config_kinds(parse_quant_spec("rtn:W4A32:g128"), "cuda") == {
        "encoder": "packed", "predictor": "packed"}


def test_a_cpu_whose_int8_kernel_would_differ_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(lower_mod, "_fbgemm_problem",
                        lambda: "fbgemm's uint8 x int8 kernel saturates (no VNNI)")
    with pytest.raises(ValueError) as err:
        lowering_kind(8, 8)
    assert "saturates" in _one_line(err) and "this CPU" in str(err.value)


def test_this_cpu_has_the_exact_int8_kernel() -> None:
    assert lower_mod._fbgemm_problem() == ""  # the probe: full-range codes sum exactly


def test_nothing_to_lower_and_a_bad_rounding_fail_with_one_line() -> None:
    with pytest.raises(ValueError) as err:
        lower(_toy())
    assert "nothing to lower" in _one_line(err)
    with pytest.raises(ValueError) as err:
        config_kinds(QuantConfig("rtn"))
    assert "nothing to lower" in _one_line(err)
    q = quantize(_toy(), QuantConfig("rtn", predictor=(8, 16), parts={"predictor": ""}))
    with pytest.raises(ValueError) as err:
        lower(q, rounding="stochastic")
    assert "stochastic" in _one_line(err)


def test_a_weight_moved_off_its_grid_is_refused() -> None:
    q = quantize(_toy(), QuantConfig("rtn", predictor=(4, 16), parts={"predictor": ""}))
    with torch.no_grad():
        q.blocks[0].mlp.fc1.weight.mul_(1.001)
    with pytest.raises(ValueError) as err:
        lower(q)
    assert "quantization grid" in _one_line(err)


# ------------------------------------------------------------------------------ the spec
@pytest.mark.parametrize(("spec", "fields"), [
    ("rtn:W8A8", {"encoder": (8, 8), "predictor": (8, 8), "act_granularity": "per_tensor"}),
    ("RTN:w8a8:per-token", {"predictor": (8, 8), "act_granularity": "per_token"}),
    ("rtn:W4A32:g128", {"predictor": (4, 32), "w_group_size": 128}),
    ("omse:pred=W4A8:per-token", {"encoder": (16, 16), "predictor": (4, 8)}),
    ("smoothquant:enc=W8A8:pred=W6A8:alpha=0.8", {"encoder": (8, 8), "predictor": (6, 8),
                                                   "alpha": 0.8}),
    ("rtn:W4A32:g64:asym-w:gch", {"w_group_size": None, "w_symmetric": False}),
])
def test_quant_specs(spec: str, fields: dict) -> None:
    config = parse_quant_spec(spec)
    for key, value in fields.items():
        assert tuple(getattr(config, key)) == value if isinstance(value, tuple) \
            else getattr(config, key) == value


@pytest.mark.parametrize(("spec", "named"), [
    ("foo:W8A8", "unknown method"), ("rtn", "gives no bits"), ("rtn:W8A8:bogus", "'bogus'"),
    ("rtn:W9A8", "w_bits=9"), ("awq:W4A8", "weight-only"), ("rtn:W8A8:epochs=-1", "epochs"),
])
def test_bad_quant_specs_fail_with_one_line(spec: str, named: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_quant_spec(spec)
    assert named in _one_line(err)


def test_deploy_configs_lower_on_cpu_and_know_their_calibration() -> None:
    for spec in DEPLOY_CONFIGS.values():
        config_kinds(parse_quant_spec(spec))
    assert needs_calibration(parse_quant_spec("rtn:W8A8"))
    assert not needs_calibration(parse_quant_spec("rtn:W8A8:per-token"))
    assert not needs_calibration(parse_quant_spec("rtn:W4A32:g128"))


def test_pareto_front_and_verdict() -> None:
    assert pareto_front([1, 2, 3, 1], [0.5, 0.9, 0.9, 0.4]) == [True, True, False, False]
    ok = np.array([True] * 6 + [False] * 4)
    rows = [{"config": FP32, "seconds": 10.0, "linear_bytes": 100, "success": ok},
            {"config": "fast", "seconds": 5.0, "linear_bytes": 30, "success": ok},
            {"config": "small", "seconds": 12.0, "linear_bytes": 14, "success": ok},
            {"config": "broken", "seconds": 1.0, "linear_bytes": 10,
             "success": np.zeros(10, bool)}]
    frame = tradeoff(rows)
    assert list(frame["within_noise"]) == [True, True, True, False]
    text = deployment_verdict({"wall": frame}, "quick")
    assert "**fast**" in text and "**small**" in text and "consistent" in text
    assert "Not faster than FP32 here: small" in text


# ------------------------------------------------------------------ the world model
@needs_checkpoints
def test_weight_bytes_of_the_deploy_configs() -> None:
    from quantwm.model import load

    fp = load("wall").eval()
    base = weight_bytes(fp)
    for spec, most in (("rtn:W4A32:g128", 0.2), ("rtn:W4A32", 0.2), ("rtn:W8A32", 0.27)):
        low = lower(quantize(fp, parse_quant_spec(spec)))
        assert weight_bytes(low).linear / base.linear <= most, spec
    assert weight_bytes(quantize(fp, parse_quant_spec("rtn:W4A32"))).linear == base.linear


@needs_checkpoints
@pytest.mark.parametrize("spec", ["rtn:W8A8:per-tensor", "rtn:W8A8:per-token",
                                  "rtn:W4A32:g128"])
def test_a_lowered_model_plans_the_smoke_episodes_to_the_same_success(spec: str) -> None:
    from quantwm.data import evaluation_episodes
    from quantwm.model import load
    from quantwm.plan import plan_episodes, planner_config
    from quantwm.quant.deploy import build_model

    env = "pusht"  # the smoke planner succeeds on some of its episodes (Wall's on none)
    base = load(env).eval()
    fake = build_model(env, spec, lowered=False, planner="smoke", calib_episodes=2, model=base)
    low = lower(fake)
    episodes = evaluation_episodes(env, n=4, seed=0)
    config = planner_config(env, "smoke")
    a = plan_episodes(fake, episodes, config, progress=False)
    b = plan_episodes(low, episodes, config, progress=False)
    assert np.array_equal(a.success_by_round, b.success_by_round)
    assert a.success_by_round.any()
    if spec.endswith("g128"):  # exact weights: the very same plans
        assert np.array_equal(a.actions, b.actions, equal_nan=True)


# ---------------------------------------------------------------------------- the CLI
EVAL = ["eval", "--env", "wall", "--planner", "smoke", "--episodes", "1", "--no-progress"]


@pytest.fixture
def no_eval_work(monkeypatch):
    import quantwm.data
    import quantwm.model

    def never(*args, **kwargs):
        raise AssertionError("the work started although an input was bad")

    monkeypatch.setattr(quantwm.model, "load", never)
    monkeypatch.setattr(quantwm.data, "evaluation_episodes", never)


@pytest.mark.parametrize(("argv", "named"), [
    (["--lowered"], "--lowered needs --quant"),
    (["--quant", "rtn:W8A8:g128", "--lowered"], "group-128"),
    (["--quant", "rtn:W16A8", "--lowered"], "W32A8"),
    (["--quant", "nope:W8A8"], "unknown method"),
    (["--quant", "rtn:W8A8:asym-w", "--lowered"], "asymmetric"),
])
def test_eval_bad_quant_requests_fail_before_the_work(capsys, no_eval_work, argv, named) -> None:
    from quantwm.cli import main

    assert main([*EVAL, *argv]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in err


@needs_checkpoints
def test_eval_plans_with_a_lowered_model(tmp_path, capsys) -> None:
    from quantwm.cli import main

    out = tmp_path / "eval.json"
    assert main([*EVAL, "--quant", "rtn:W4A32:g128", "--lowered", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lowered: 32 x packed" in printed and "0.14x FP32" in printed
    summary = json.loads(out.read_text())
    assert summary["lowered"] is True and summary["quant"] == "rtn:W4A32:g128"
    assert set(summary["lowering"].values()) == {"packed"}


# ------------------------------------------------------------------------ the notebook
@needs_checkpoints
def test_the_deployment_notebook_runs_in_smoke(tmp_path) -> None:
    import ast

    import nbformat
    import papermill

    from quantwm.study.notebooks import NOTEBOOK_DIR

    path = NOTEBOOK_DIR / "07_deployment.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    names = {(n.target if isinstance(n, ast.AnnAssign) else n.targets[0]).id  # typed or not
             for n in ast.parse(first.source).body}
    assert {"profile", "device", "results_dir", "cache_dir", "env", "variant"} <= names
    out = tmp_path / "07.ipynb"
    papermill.execute_notebook(
        str(path), str(out), progress_bar=False, kernel_name="python3",
        parameters={"profile": "smoke", "env": "wall", "results_dir": str(tmp_path / "r"),
                    "cache_dir": str(tmp_path / "cache")})
    done = nbformat.read(str(out), as_version=4)
    outputs = [o for c in done.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    verdict = "".join(o.get("data", {}).get("text/markdown", "")
                      for o in done.cells[-1].outputs)
    assert "consistent" in verdict and "smoke" in verdict
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert all(label in shown for label in [FP32, *DEPLOY_CONFIGS])
    assert not (tmp_path / "r").exists()  # nothing stored


def test_stored_success_is_the_study_record_of_the_same_configuration(tmp_path) -> None:
    """Notebook 07 reads a lowered configuration's success from the study's record of the
    same (fake-quant) configuration: success within the record's last round, per episode."""
    from quantwm.quant.deploy import stored_success
    from quantwm.study import Experiment, ResultStore
    from quantwm.study.profiles import study_profile

    quick, store = study_profile("quick"), ResultStore(tmp_path)
    exp = Experiment("wall", "rtn", (8, 8), (8, 8), None, "per_token", **quick.run_fields())
    store.write(exp, {"success": {"0": 1 / 3, "5": 2 / 3}, "planner": {"mpc_rounds": 5},
                      "episodes": {"first_success_round": [None, 0, 4]}})
    assert stored_success(store, "wall", "rtn:W8A8:per-token", quick).tolist() == [
        False, True, True]
    assert stored_success(store, "wall", "rtn:W8A8:per-tensor", quick) is None
    assert stored_success(store, "wall", "rtn:W8A8:per-token:asym-w", quick) is None
    assert stored_success(store, "pusht", "rtn:W8A8:per-token", quick) is None
    assert stored_success(store, "wall", "rtn:W8A8:per-token", study_profile("full")) is None
    assert stored_success(store, "wall", None, quick) is None  # FP32: another record


def test_stored_success_counts_every_planned_round_not_only_the_stored_columns(tmp_path):
    """The smoke planner plans rounds 0..1 but a record stores only the paper's columns within
    them (0): an episode that succeeded in round 1 still succeeded."""
    from quantwm.quant.deploy import stored_success
    from quantwm.study import Experiment, ResultStore
    from quantwm.study.profiles import study_profile

    smoke, store = study_profile("smoke"), ResultStore(tmp_path)
    store.write(Experiment("wall", **smoke.run_fields()), {
        "success": {"0": 0.0}, "planner": {"mpc_rounds": 1},
        "episodes": {"first_success_round": [1, None]}})
    assert stored_success(store, "wall", None, smoke).tolist() == [True, False]
