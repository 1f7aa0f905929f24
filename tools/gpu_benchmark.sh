#!/usr/bin/env bash
# The OFD benchmark on one CUDA GPU, meant to run once: resnet50 -> mobilenet_v3_large at 224 px,
# float32, bfloat16 and float16 teachers, at batch 4 (also under --amp bf16) and batch 64 (also
# with a torch.compile'd and a channels-last student).
#
# Writes <run>.json per run and gpu_benchmark.log into $OUT. Each run is capped by `timeout`
# (all of them together by 580 s); one that fails or times out leaves no JSON, and the next runs.
# Usage: OUT=results/gpu tools/gpu_benchmark.sh
# BENCH_EXTRA_ARGS is appended to every run (later options win), e.g. to try the script on a CPU:
#   OUT=/tmp/gpu_try BENCH_EXTRA_ARGS="--device cpu --input-size 64 --batch-size 2 --repeats 1 --warmup 0
#   --teacher resnet18 --student mobilenet_v3_small --loss-shape 2 16 8 8 --rewrite-model resnet18 --no-memory"
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
LOG="$OUT/gpu_benchmark.log"
read -r -a EXTRA <<<"${BENCH_EXTRA_ARGS:-}"
COMMON=(--teacher resnet50 --student mobilenet_v3_large --input-size 224 --device cuda
        --teacher-precisions bfloat16 float16 --repeats 15 --warmup 3)

{
  date -u
  timeout 5 nvidia-smi -L
  timeout 15 "$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
} >>"$LOG" 2>&1

run() {  # name, seconds, options...
  local name=$1 limit=$2
  shift 2
  local cmd=("$PYTHON" -m tools.bench "${COMMON[@]}" "$@" "${EXTRA[@]}" --json "$OUT/$name.json")
  echo "=== $name (timeout ${limit} s): PYTHONPATH=. ${cmd[*]}" | tee -a "$LOG"
  timeout --kill-after=5 "$limit" "${cmd[@]}" >>"$LOG" 2>&1
  echo "=== $name: exit $? after ${SECONDS} s in all" | tee -a "$LOG"
}

run b4 90 --batch-size 4
run b4_amp_bf16 90 --batch-size 4 --amp bf16
run b64 120 --batch-size 64
run b64_compile_channels_last 260 --batch-size 64 --compile --student-channels-last
