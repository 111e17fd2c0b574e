"""Does OmniQuant's training lower the error of the model that ships? (prints)

    .venv/bin/python benchmarks/omniquant_epochs.py                 # Wall predictor
    .venv/bin/python benchmarks/omniquant_epochs.py --env pusht --epochs 0 3 20

For each setting (W4A16 G128, W4A8 and W4A4 per-tensor and per-token) and each epoch count it
quantizes the shipped model's predictor with OmniQuant on the quick profile's calibration data
and prints the mean calibration block-output MSE of the *deployed* quantized blocks (what
``quant_report`` records for the kept epoch: training measures the shipped quantizer), and the
same on held-out calibration rows (the rows OmniQuant did not train on).
"""

from __future__ import annotations

import argparse
import time

import torch

from quantwm.model import load
from quantwm.quant import QuantConfig, find_blocks, quantize
from quantwm.quant.blocks import capture_block_calls
from quantwm.study.runner import calibration_data

SETTINGS = {
    "W4A16 G128": {"predictor": (4, 16), "w_group_size": 128},
    "W4A8 per-tensor": {"predictor": (4, 8)},
    "W4A4 per-tensor": {"predictor": (4, 4)},
    "W4A8 per-token": {"predictor": (4, 8), "act_granularity": "per_token"},
    "W4A4 per-token": {"predictor": (4, 4), "act_granularity": "per_token"},
}


@torch.no_grad()
def block_errors(q: torch.nn.Module, model: torch.nn.Module, rows: list[torch.Tensor]) -> float:
    """Mean over predictor blocks of the deployed block's output MSE against the float block,
    each on the inputs it receives in its own model."""
    errors = []
    for name, fb in find_blocks(model.predictor):
        qb = q.predictor.get_submodule(name)
        qc = capture_block_calls(q.predictor, qb, rows)
        fc = capture_block_calls(model.predictor, fb, rows)
        errors.append(sum(float(torch.nn.functional.mse_loss(a.run(qb), b.run(fb)))
                          for a, b in zip(qc, fc, strict=True)) / len(rows))
    return sum(errors) / len(errors)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", choices=("wall", "pusht"), default="wall")
    p.add_argument("--epochs", type=int, nargs="+", default=[0, 3, 20])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.env).eval()
    calib = calibration_data(args.env, "cpu", episodes=10, model=model)
    half = len(calib["predictor"]) // 2
    train = {"predictor": calib["predictor"][:half]}
    held_out = calib["predictor"][half:][:16]
    print(f"{args.env} predictor, OmniQuant, mean block-output MSE (calibration | held-out)")
    for label, opts in SETTINGS.items():
        cells = []
        for epochs in args.epochs:
            t0 = time.perf_counter()
            q = quantize(model, QuantConfig("omniquant", epochs=epochs, **opts), train)
            info = q.quant_report.parts["predictor"].info["block_loss"]
            kept = sum(min(h) for h in info.values()) / len(info)
            cells.append(f"{epochs:>2} ep: {kept:.3e} | {block_errors(q, model, held_out):.3e} "
                         f"({time.perf_counter() - t0:.0f} s)")
        print(f"  {label:<16} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
