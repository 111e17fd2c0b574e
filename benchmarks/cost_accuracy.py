"""How good is the sweep's cost estimate? Leave-one-out over the stored records (prints; not a test)

    .venv/bin/python benchmarks/cost_accuracy.py                 # every profile in data/results
    .venv/bin/python benchmarks/cost_accuracy.py --results /path/to/store

For each stored record of a study profile, the cost model of ``quantwm sweep --dry-run``
(:class:`quantwm.study.cost.CostModel`) is built from every *other* record and asked for the
record's expected and worst-case seconds; the record's own measured seconds (planning +
quantization, times its torch threads: one-thread seconds, as the model counts them) are the
truth. Per profile and env it prints the records, the median and range of actual / expected,
and the sums (actual, expected, worst case) in minutes of one worker, with their ratio (what
sets a sweep's wall time: divide by the workers). A sum of actual above the worst case means
the model undercounts. Records without measured seconds, and those of an env no other record
prices, are left out.

No planning runs here: it reads records. Their seconds were measured beside whatever else the
machine did (a 2-worker sweep's workers slow each other), which is what a sweep's estimate
has to predict.
"""

from __future__ import annotations

import argparse
import math
import statistics

from quantwm.study.cost import CostModel, measured_seconds
from quantwm.study.grid import Experiment
from quantwm.study.profiles import STUDY_PROFILES
from quantwm.study.store import ResultStore
from quantwm.study.summary import profile_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="data/results", help="the result store to read")
    args = ap.parse_args()

    records = list(ResultStore(args.results).records())
    print(f"{len(records)} records in {args.results}; leave-one-out per record")
    print(f"{'profile':8} {'env':6} {'n':>4} {'actual/expected':>16} {'[min, max]':>14} "
          f"{'actual':>8} {'expected':>9} {'worst':>8} {'sum ratio':>10}  (minutes of one worker)")
    for name, profile in STUDY_PROFILES.items():
        mine = profile_records(records, profile)
        for env in ("wall", "pusht"):
            rows = []
            for rec in (r for r in mine if r["experiment"]["env"] == env):
                try:
                    actual = sum(measured_seconds(rec))  # the cost model skips it too
                except (KeyError, TypeError, ValueError):
                    continue
                others = [r for r in records if r is not rec]
                expected, worst = CostModel.from_records(others).experiment_seconds(
                    Experiment.from_dict(rec["experiment"]))
                if math.isfinite(expected) and expected > 0:
                    rows.append((actual, expected, worst))
            if not rows:
                continue
            ratio = [a / e for a, e, _ in rows]
            actual, expected, worst = (sum(col) / 60 for col in zip(*rows, strict=True))
            print(f"{name:8} {env:6} {len(rows):>4} {statistics.median(ratio):>16.2f} "
                  f"{f'[{min(ratio):.2f}, {max(ratio):.2f}]':>14} {actual:>8.0f} "
                  f"{expected:>9.0f} {worst:>8.0f} {actual / expected:>10.2f}")


if __name__ == "__main__":
    main()
