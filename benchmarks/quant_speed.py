"""How much fake quantization costs at planning time, and how long each method calibrates.

A predictor-sized toy (width 148, depth 4, 4 heads, MLP 592, block-causal mask over 16-token
frames) runs FP32 and three quantized variants on batches the planner uses (300 and 1500
samples, 1 and 3 frames = 16 and 48 tokens):

- W8A8 per-tensor (static activation ranges),
- W4A8 per-token (dynamic activation ranges), per-group 128 weights,
- W4 weight-only (per-channel).

The forwards are interleaved (each repeat runs every variant once, in a rotating order) and
the median time of each is reported with its ratio to FP32. Then the calibration time of each
method (W4, with A8 per-tensor where the method quantizes activations) on 256 recorded
predictor inputs.

    .venv/bin/python benchmarks/quant_speed.py            # full
    .venv/bin/python benchmarks/quant_speed.py --quick    # fewer repeats, smaller batches
    .venv/bin/python benchmarks/quant_speed.py --threads 1 --only speed

On a shared machine, report the load average beside the figures: with two threads and other
processes competing, small elementwise ops stall on thread synchronisation and the ratios
inflate; one thread is the steadier measurement there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from toy_blocks import ToyPredictor, plant_outliers  # noqa: E402

from quantwm.quant import METHODS, QuantConfig, quantize  # noqa: E402

PATCHES = 16
VARIANTS = {
    "W8A8 per-tensor": dict(predictor=(8, 8), act_granularity="per_tensor"),
    "W4A8 per-token g128": dict(predictor=(4, 8), act_granularity="per_token",
                                w_group_size=128),
    "W4A32 weight-only": dict(predictor=(4, 16)),
}


def make_predictor(seed: int = 0) -> ToyPredictor:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ToyPredictor(dim=148, depth=4, heads=4, patches=PATCHES)
        plant_outliers(model)
    return model.eval()


def calibration(n_batches: int, batch: int, seed: int = 1) -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {"predictor": [torch.randn(batch, PATCHES * (1 + i % 3), 148, generator=g)
                          for i in range(n_batches)]}


def time_forwards(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int
                  ) -> dict[str, float]:
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for m in models.values():  # warm-up
            m(x)
        for r in range(repeats):
            for n in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                models[n](x)
                times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def speed(args: argparse.Namespace) -> None:
    fp = make_predictor()
    calib = calibration(4, 64)
    models = {"FP32": fp}
    for name, kw in VARIANTS.items():
        models[name] = quantize(fp, QuantConfig("rtn", parts={"predictor": ""}, **kw), calib)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"forward time, median of {args.repeats} interleaved repeats "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads{load})")
    print(f"{'batch':>6} {'tokens':>6}  " + "  ".join(f"{n:>24}" for n in models))
    for batch in args.batches:
        for frames in (1, 3):
            x = torch.randn(batch, PATCHES * frames, 148)
            med = time_forwards(models, x, args.repeats)
            cells = [f"{1e3 * med['FP32']:9.1f} ms" + " " * 12]
            cells += [f"{1e3 * med[n]:9.1f} ms ({med[n] / med['FP32']:4.2f}x)" + " " * 3
                      for n in VARIANTS]
            print(f"{batch:>6} {PATCHES * frames:>6}  " + "  ".join(f"{c:>24}" for c in cells))


def calibration_times(args: argparse.Namespace) -> None:
    fp = make_predictor()
    calib = calibration(args.calib_batches, 64)
    rows = sum(x.shape[0] for x in calib["predictor"])
    print(f"\ncalibration time on {rows} recorded predictor inputs (16-48 tokens), "
          f"search_rows=64, OmniQuant {args.epochs} epochs, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    for method in METHODS:
        a = 16 if method.startswith("awq") else 8
        cfg = QuantConfig(method, predictor=(4, a), w_group_size=128, epochs=args.epochs,
                          parts={"predictor": ""})
        t0 = time.perf_counter()
        quantize(fp, cfg, calib)
        print(f"  {cfg.label():40s} {time.perf_counter() - t0:7.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--only", choices=("speed", "calibration"), default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.repeats = 5 if args.quick else 9
    args.batches = (300,) if args.quick else (300, 1500)
    args.calib_batches = 2 if args.quick else 4
    if args.only != "calibration":
        speed(args)
    if args.only != "speed":
        calibration_times(args)


if __name__ == "__main__":
    main()
