#!/usr/bin/env bash
# GPU check of univseg, for the day a GPU is lent: one script, about 4-7 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh            # from the repository root or anywhere
#
# 1. the CUDA-only tests (tests/test_cuda_precision.py: bf16 and fp16 training and resume on CUDA);
# 2. the real-pair config (configs/camvid_idd_mobilenet.yaml) trained 300 iterations in bf16;
# 3. the same in fp16 (GradScaler), stopped by SIGTERM after iteration 100 and resumed to 300;
# 4. the same in bf16 under torchrun with one process;
# 5. bench_speed.py --profile on that config: a profiled step (GFLOP, convolution share of the
#    GPU kernel time, peak CUDA memory);
# then a table: step time, images/s, data wait, peak GPU memory and mean mIoU per run.
#
# Environment: PYTHON (default .venv/bin/python, else python3), UNIVSEG_DATA_ROOT (default
# ../shared/data: camvid/ and idd_lite/), GPU_CHECK_OUT (default: a new /tmp/univseg-gpu-check.*).
# ImageNet weights are used when `univseg weights verify mobilenet_v2` finds them, else random init.
#
# Exit status: 0 every stage passed, or no GPU (it says "no GPU" and runs nothing);
# 1 a stage failed (named on stderr, its log kept in GPU_CHECK_OUT); 2 python/torch or the data missing.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null); then
  echo "gpu_check: cannot import torch with $PY; set PYTHON to the interpreter of univseg's environment" >&2
  exit 2
fi
if [ "$cuda" != 1 ]; then
  echo "gpu_check: no GPU (torch.cuda.is_available() is False on $(hostname)); nothing was run."
  exit 0
fi

DATA=${UNIVSEG_DATA_ROOT:-../shared/data}
for d in camvid idd_lite; do
  if [ ! -d "$DATA/$d" ]; then
    echo "gpu_check: no $DATA/$d; set UNIVSEG_DATA_ROOT to the folder holding camvid/ and idd_lite/" >&2
    exit 2
  fi
done
export UNIVSEG_DATA_ROOT=$DATA OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
OUT=${GPU_CHECK_OUT:-$(mktemp -d /tmp/univseg-gpu-check.XXXXXX)}
mkdir -p "$OUT"
CFG=configs/camvid_idd_mobilenet.yaml
ITERS=300
STOP_AT=100
COMMON=(--set train.iters=$ITERS --set train.num_workers=6 --set train.log_interval=25
        --set train.checkpoint_interval=$STOP_AT --device cuda --no-progress)
if ! "$PY" -m univseg weights verify mobilenet_v2 >/dev/null 2>&1; then
  echo "gpu_check: mobilenet_v2's ImageNet weights are not cached: training from random init"
  COMMON+=(--set model.pretrained=null)
fi
"$PY" - <<'EOF'
import torch
p = torch.cuda.get_device_properties(0)
print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
EOF
echo "gpu_check: logs and work dirs in $OUT"

START=$SECONDS
fail() { echo "gpu_check: FAILED: $1 (log: $2)" >&2; tail -n 30 "$2" >&2; exit 1; }
stage() { echo "gpu_check: [$((SECONDS - START))s] $1"; }

stage "1/5 CUDA-only tests"
timeout 180 "$PY" -m pytest tests/test_cuda_precision.py -q -p no:cacheprovider > "$OUT/tests.log" 2>&1 \
  || fail "CUDA-only tests" "$OUT/tests.log"
tail -n 1 "$OUT/tests.log"

stage "2/5 bf16, $ITERS iterations"
timeout 240 "$PY" -m univseg train "$CFG" --work-dir "$OUT/bf16" --amp bf16 "${COMMON[@]}" > "$OUT/bf16.log" 2>&1 \
  || fail "bf16 training" "$OUT/bf16.log"

stage "3/5 fp16 (GradScaler), SIGTERM after iteration $STOP_AT, then --resume"
"$PY" -m univseg train "$CFG" --work-dir "$OUT/fp16" --amp fp16 "${COMMON[@]}" > "$OUT/fp16.log" 2>&1 &
pid=$!
for _ in $(seq 1 1800); do  # up to 180 s for the first 100 iterations
  grep -q "INFO iter $STOP_AT/$ITERS" "$OUT/fp16.log" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
kill -TERM $pid 2>/dev/null
wait $pid
status=$?
[ $status -eq 75 ] || fail "fp16 training did not stop on SIGTERM with status 75 (got $status)" "$OUT/fp16.log"
timeout 240 "$PY" -m univseg train "$CFG" --work-dir "$OUT/fp16" --amp fp16 --resume "${COMMON[@]}" > "$OUT/fp16_resume.log" 2>&1 \
  || fail "fp16 resume" "$OUT/fp16_resume.log"
grep "resumed at iteration" "$OUT/fp16_resume.log" || fail "no resume line" "$OUT/fp16_resume.log"

stage "4/5 torchrun, one process, bf16, $ITERS iterations"
timeout 240 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m univseg train "$CFG" \
  --work-dir "$OUT/torchrun" --amp bf16 "${COMMON[@]}" > "$OUT/torchrun.log" 2>&1 \
  || fail "torchrun training" "$OUT/torchrun.log"

stage "5/5 profiled step (bench_speed.py --profile)"
BENCH_SET=(--set train.num_workers=6)
[[ " ${COMMON[*]} " == *"model.pretrained=null"* ]] && BENCH_SET+=(--set model.pretrained=null)
timeout 180 "$PY" benchmarks/bench_speed.py --configs "$CFG" --methods univ-full --amp bf16 --device cuda --profile \
  --iters 30 --time-budget 20 --eval-images 4 "${BENCH_SET[@]}" --json "$OUT/bench_speed.json" > "$OUT/bench.log" 2>&1 \
  || fail "bench_speed --profile" "$OUT/bench.log"

echo
"$PY" benchmarks/gpu_check_summary.py "$OUT/bf16" "$OUT/fp16" "$OUT/torchrun" --bench "$OUT/bench_speed.json" \
  || fail "summary" "$OUT/bench.log"
echo "gpu_check: all stages passed in $((SECONDS - START)) s (the fp16 row includes its resumed part; logs in $OUT)"
