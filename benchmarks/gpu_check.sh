#!/usr/bin/env bash
# The kit on a GPU, in one go (prints; not a test). Needs CUDA, ~10 min of an H100-class card.
#
#     bash benchmarks/gpu_check.sh [OUT_DIR] [DEVICE]        # default reports/gpu_check cuda
#
# 1. the device-aware tests (model, planner, quantizers) with `pytest --device cuda`;
# 2. the FP32 planner at the reference budget (PROTOCOL section 2), 50 episodes, rounds 0..5,
#    evaluation seeds 0 and 1 (issue 3's targets are "by 5 iters");
# 3. the quick profile of Table 1 (Wall) on the GPU, into OUT_DIR/results (compare with the
#    shipped CPU results: same configurations and seeds);
# 4. benchmarks/plan_speed.py on the GPU;
# 5. the FP32 Wall planner at the reference budget over every "iters" column (rounds 0..50).
# Each step has its own time limit, so a slow step costs only itself; logs go to OUT_DIR.
set -u -o pipefail
OUT=${1:-reports/gpu_check}
DEV=${2:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)";
         local t=$SECONDS; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 25;
         echo "== $name: exit ${PIPESTATUS[0]}, $((SECONDS - t)) s"; }
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
step pytest 150 $PY -m pytest -q -p no:cacheprovider --device "$DEV" tests/test_model.py \
    tests/test_plan.py tests/test_quant_methods.py tests/test_quant_world_model.py \
    tests/test_quant_primitives.py
for env in wall pusht; do
  for seed in 0 1; do
    step "eval-$env-ref5-s$seed" 120 $PY -m quantwm.cli eval --env "$env" --seed "$seed" \
        --profile reference --set mpc_rounds=5 --device "$DEV" --max-batch 16384 --no-progress \
        --json "$OUT/eval-$env-ref5-s$seed.json"
  done
done
step sweep-table1-quick 150 $PY -m quantwm.cli sweep --table 1 --env wall --profile quick \
    --device "$DEV" --results "$OUT/results"
step plan-speed 90 $PY benchmarks/plan_speed.py --device "$DEV" --measure-episodes 50 \
    --max-batch 16384
step eval-wall-ref50-s0 120 $PY -m quantwm.cli eval --env wall --seed 0 --profile reference \
    --device "$DEV" --max-batch 16384 --no-progress --json "$OUT/eval-wall-ref50-s0.json"
