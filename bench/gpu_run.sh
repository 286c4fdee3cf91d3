#!/usr/bin/env bash
# Everything for the GPU host in one call: `pytest -m gpu`, then the benchmarks; logs and JSON go to $OUT.
#   bash bench/gpu_run.sh [all|tests|bench]      (BENCH_ARGS="--only kernels" to narrow the benchmarks)
#   bash bench/gpu_run.sh host       # issue 16: host time per decode step at batch 256 (full sampling and --plain),
#                                    #   batch-1 decode TPOT, and the peer load through gRPC against in process
#   bash bench/gpu_run.sh api        # issue 21: structured output and n samples on the card
# Needs flash-attn-4 importable (see bench/RESULTS.md for how the wheels travel to an offline host); `host` needs the
# service's wheels (grpcio 1.85 etc.: .gpu-wheels/grpc) and `api` xgrammar's (.gpu-wheels/xg), each installed with
#   pip install -q --no-index --no-deps --target /tmp/site .gpu-wheels/NAME/*.whl
# and the widened tokenizer (`python bench/host_step.py --save-tokenizer .gpu-data/tok`) carried as .gpu-data/tok.
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
TOK=${TOK:-.gpu-data/tok}
if [[ $what == host ]]; then
  python bench/host_step.py --device cuda --batch 256 --steps 32 --tokenizer "$TOK" 2>&1 | tee "$OUT/host_step.log"
  rc=$((rc | PIPESTATUS[0]))
  python bench/host_step.py --device cuda --batch 256 --steps 32 --tokenizer "$TOK" --plain 2>&1 | tee -a "$OUT/host_step.log"
  rc=$((rc | PIPESTATUS[0]))
  python bench/gpu_bench.py --out "$OUT" --only decode 2>&1 | tee "$OUT/gpu_decode.log"
  rc=$((rc | PIPESTATUS[0]))
  python bench/grpc_peer.py --device cuda --out "$OUT/grpc_peer.json" 2>&1 | tee "$OUT/grpc_peer.log"
  rc=$((rc | PIPESTATUS[0]))
fi
if [[ $what == api ]]; then
  python bench/structured_bench.py --device cuda --random-qwen3-4b --tokenizer "$TOK" --requests 64 --new 64 --reps 3 \
    --out "$OUT/structured_h200.json" 2>&1 | tee "$OUT/structured.log"
  rc=$((rc | PIPESTATUS[0]))
  python bench/n_samples_bench.py --device cuda --qwen3-4b --reps 3 --out "$OUT/n_samples_h200.json" 2>&1 | tee "$OUT/n_samples.log"
  rc=$((rc | PIPESTATUS[0]))
fi
exit $rc
