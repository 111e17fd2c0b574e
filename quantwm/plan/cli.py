"""``quantwm eval``: the planner on the shipped checkpoint, success by iteration.

    quantwm eval --env wall                          # 50 evaluation episodes, cpu planner
    quantwm eval --env pusht --seed 1 --json out.json
    quantwm eval --env wall --planner reference      # PROTOCOL section 2 exactly (slow here)
    quantwm eval --env wall --quant rtn:W8A8 --lowered   # a quantized model on int8 kernels

``--quant SPEC`` plans with a quantized model (``quantwm.quant.deploy.parse_quant_spec``);
with ``--lowered`` its Linears run on integer kernels (``quantwm.quant.lower``), without it
they are fake-quantized in float as in the study.

``--planner`` picks the planner profile (``quantwm.plan.config``); ``--profile`` is its old
name, kept as a deprecated alias (``sweep`` and ``notebooks`` use ``--profile`` for a study
profile).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from typing import Any

from quantwm.cli import check_output_file, int_at_least, torch_device
from quantwm.plan.config import DEFAULT_PROFILE, PROFILES, PlannerConfig
from quantwm.utils import ENV_NAMES, parse_overrides

EXAMPLES = """\
examples:
  quantwm eval --env wall --planner smoke --episodes 2   seconds: check that planning runs
  quantwm eval --env wall                                50 episodes, the kit's cpu planner
  quantwm eval --env pusht --seed 1 --json out.json      other episodes, summary to a file
  quantwm eval --env wall --set samples=128 topk=16      the cpu planner with more samples
  quantwm eval --env pusht --planner reference --device cuda   PROTOCOL section 2 exactly
  quantwm eval --env wall --quant rtn:W8A8 --lowered     W8A8 on int8 kernels (CPU)
  quantwm eval --env pusht --quant rtn:W4A32:g128 --lowered   W4 weights packed, G128"""

_PLANNER_HELP = (f"planner profile (quantwm.plan.config), default {DEFAULT_PROFILE}: the kit's "
                 "budget for a 2-core CPU; reference: PROTOCOL section 2 exactly (slow on a "
                 "CPU); smoke: seconds (tests)")


_QUANT_HELP = (
    "plan with a quantized model: METHOD:W<w>A<a>[:g<N>][:per-tensor|per-token][:FIELD=VALUE "
    "...], e.g. rtn:W8A8 (encoder and predictor W8A8, static per-tensor activations), "
    "rtn:W8A8:per-token, rtn:W4A32:g128 (weight-only, group 128), omse:pred=W4A8 (enc=/pred= "
    "quantize one part only); W32/A32 = float; FIELD is a QuantConfig field (alpha=0.8, "
    "epochs=5). Calibration inputs, when the method needs them, are the cached FP32 planner "
    "inputs of --calib-episodes episodes (data/cache)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, choices=ENV_NAMES, help="environment")
    parser.add_argument("--episodes", type=int_at_least(1), default=50,
                        help="evaluation episodes, >= 1 (default 50)")
    parser.add_argument("--seed", type=int_at_least(0), default=0,
                        help="seed of the evaluation episodes and of the planner, >= 0 (default "
                             "0; --set seed=N plans the same episodes with another planner seed)")
    parser.add_argument("--planner", default=None, choices=PROFILES, help=_PLANNER_HELP)
    parser.add_argument("--profile", default=None, choices=PROFILES,
                        help="deprecated alias of --planner (in sweep and notebooks --profile "
                             "is a study profile)")
    parser.add_argument("--device", default="cpu",
                        help="torch device: cpu (default), cuda, cuda:N or mps")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint path (default: the shipped data/checkpoints/<env>.pt)")
    parser.add_argument("--max-batch", type=int_at_least(1), default=None,
                        help="most sequences per rollout call (memory; default from config)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override PlannerConfig fields, e.g. --set samples=100 execute=best "
                             f"(fields: {', '.join(_settable_fields())})")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write the summary here (config, timing, torch threads, success by "
                             "iters and per episode)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quant", default=None, metavar="SPEC", help=_QUANT_HELP)
    parser.add_argument("--lowered", action="store_true",
                        help="with --quant: run the quantized Linears on integer kernels "
                             "(W8A8: fbgemm int8 GEMMs, CPU only; weight-only: packed codes, "
                             "dequantized per forward); a configuration without a kernel fails "
                             "before any work")
    parser.add_argument("--calib-episodes", type=int_at_least(1), default=10,
                        help="with --quant: episodes of the FP32 calibration run, >= 1 "
                             "(default 10, as the quick study profile)")


def _settable_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(PlannerConfig) if f.name != "profile"]


def planner_profile(args: argparse.Namespace) -> str:
    """The planner profile asked for by ``--planner`` or its deprecated alias ``--profile``."""
    planner, alias = getattr(args, "planner", None), getattr(args, "profile", None)
    if alias is not None:
        if planner is not None and planner != alias:
            raise ValueError(f"--planner {planner} and --profile {alias} disagree; --profile is "
                             "the deprecated name of --planner: give only --planner")
        print("quantwm eval: note: --profile is deprecated here, use --planner", file=sys.stderr)
    return planner or alias or DEFAULT_PROFILE


def planner_overrides(items: list[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE ...`` as PlannerConfig fields, each value of its field's type."""
    overrides = parse_overrides(items)
    kinds = {f.name: f.type if isinstance(f.type, str) else f.type.__name__
             for f in dataclasses.fields(PlannerConfig)}
    for key, value in overrides.items():
        if key == "profile":
            raise ValueError(f"--set profile={value}: choose the planner profile with --planner "
                             f"({', '.join(PROFILES)}); PlannerConfig.profile only records it")
        kind = kinds.get(key)
        if kind is None:
            raise ValueError(f"--set {key}={value}: unknown PlannerConfig field {key!r}; "
                             f"expected one of {', '.join(_settable_fields())}")
        if kind == "float" and (not isinstance(value, int | float) or not math.isfinite(value)):
            raise ValueError(f"--set {key}={value}: {key} must be a finite number")
        if kind == "int" and not isinstance(value, int):
            raise ValueError(f"--set {key}={value}: {key} must be an integer")
        if key == "seed" and value < 0:
            raise ValueError(f"--set seed={value}: the planner seed must be >= 0")
        if kind == "float":
            overrides[key] = float(value)
    return overrides


def run(args: argparse.Namespace) -> int:
    import torch

    # every input is checked before the model and the episodes are loaded
    planner = planner_profile(args)
    device = torch_device(args.device)
    if args.json:
        check_output_file(args.json, "--json")
    overrides = planner_overrides(args.set)
    if args.max_batch is not None:
        overrides["max_batch"] = args.max_batch
    quant = quant_config(args, device)

    from quantwm.data import evaluation_episodes
    from quantwm.model import load
    from quantwm.plan.config import planner_config
    from quantwm.plan.mpc import plan_episodes
    from quantwm.utils import atomic_write_json, provenance

    config = planner_config(args.env, planner, **{"seed": args.seed, **overrides})
    model = load(args.checkpoint or args.env, device=device, env=args.env)
    quant_note = ""
    if quant is not None:
        model, quant_note = quantized_model(args, quant, model, planner, device)
    episodes = evaluation_episodes(args.env, n=args.episodes, seed=args.seed)
    extra = " + " + " ".join(args.set) if args.set else ""
    print(f"eval {args.env}: {args.episodes} episodes (seed {args.seed}), planner "
          f"{planner}{extra}: samples {config.samples}, topk {config.topk}, CEM steps "
          f"{config.cem_steps}, MPC rounds 0..{config.mpc_rounds}, device {device}")
    if quant_note:
        print(quant_note)
    t0 = time.perf_counter()
    result = plan_episodes(model, episodes, config, device=device,
                           progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    table = result.success_table()
    print("iters   " + "  ".join(f"{k:>5d}" for k in table))
    print("success " + "  ".join(f"{v:5.2f}" for v in table.values()))
    rounds = len(result.round_seconds)
    align = result.alignment()
    print("objective vs true distance (Spearman) "
          f"{_fmt(align['objective_vs_distance'])}; predicted vs reached objective "
          f"{_fmt(align['predicted_vs_reached'])}")
    print(f"time {seconds:.1f} s ({rounds} rounds, "
          f"{seconds / max(rounds, 1):.1f} s per round on average)")
    if args.json:
        summary = result.summary()
        # "profile" is the planner profile too (the key this file has always had)
        summary.update(seed=args.seed, planner=planner, profile=planner, overrides=args.set,
                       device=str(device), torch_threads=torch.get_num_threads(),
                       checkpoint=args.checkpoint or args.env, provenance=provenance())
        if quant is not None:
            summary.update(quant=args.quant, quant_label=quant.label(), lowered=args.lowered,
                           calib_episodes=args.calib_episodes,
                           lowering=getattr(getattr(model, "lowering_report", None), "kinds",
                                            None))
        atomic_write_json(args.json, summary)
        print(f"wrote {args.json}")
    return 0


def quant_config(args: argparse.Namespace, device: Any) -> Any:
    """The QuantConfig of ``--quant`` (None without it), checked before any work: the spec,
    ``--lowered`` without ``--quant``, and a kernel for every quantized part on ``device``."""
    if args.quant is None:
        if args.lowered:
            raise ValueError("--lowered needs --quant SPEC (the configuration to lower), "
                             "e.g. --quant rtn:W8A8 --lowered")
        return None
    from quantwm.quant.deploy import parse_quant_spec
    from quantwm.quant.lower import config_kinds

    try:
        config = parse_quant_spec(args.quant)
        if args.lowered:
            config_kinds(config, device)
    except ValueError as err:
        raise ValueError(f"--quant {args.quant}: {err}") from None
    return config


def quantized_model(args: argparse.Namespace, config: Any, model: Any, planner: str,
                    device: Any) -> tuple[Any, str]:
    """(the quantized, optionally lowered, model; a line saying what it is)."""
    from quantwm.quant.deploy import build_model
    from quantwm.quant.lower import weight_bytes

    t0 = time.perf_counter()
    qmodel = build_model(args.env, config, lowered=args.lowered, planner=planner,
                         calib_episodes=args.calib_episodes, device=device, model=model)
    built = time.perf_counter() - t0
    fp, q = weight_bytes(model), weight_bytes(qmodel)
    how = "fake-quantized (float kernels)"
    report = getattr(qmodel, "lowering_report", None)
    if report is not None:
        how = "lowered: " + ", ".join(f"{n} x {k}" for k, n in report.counts().items())
    note = (f"model: {config.label()}, {how}; Linear weights {q.linear / 2**20:.2f} MiB "
            f"({q.linear / fp.linear:.2f}x FP32), built in {built:.1f} s")
    return qmodel, note


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
