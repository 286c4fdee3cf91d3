#!/usr/bin/env bash
# Everything for the GPU host in one call: `pytest -m gpu`, then the benchmarks; logs and JSON go to $OUT.
#   bash bench/gpu_run.sh [all|tests|bench]      (BENCH_ARGS="--only kernels" to narrow the benchmarks)
# Needs flash-attn-4 importable (see bench/RESULTS.md for how the wheels travel to an offline host).
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/engine:$PWD/server:$PWD/client:$PWD${PYTHONPATH:+:$PYTHONPATH}"
what=${1:-all}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_card.txt"
rc=0
if [[ $what == all || $what == tests ]]; then
  # the GPU suite, plus the Triton kernel checks compiled for the card (on CPU they run interpreted)
  python -m pytest -q -p no:cacheprovider tests/gpu tests/engine/test_triton_kernels.py \
    tests/engine/test_attention_backend.py tests/engine/test_fused_kernels.py -m "gpu or triton" 2>&1 | tee "$OUT/gpu_tests.log"
  rc=${PIPESTATUS[0]}
fi
if [[ $what == all || $what == bench ]]; then
  python bench/gpu_bench.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu_bench.log"
  rc=$((rc | PIPESTATUS[0]))
fi
exit $rc
