#!/usr/bin/env bash
# The replica-scaling benchmark on a multi-GPU host: in-process engine, then 1 and 2 Ray replicas, same load.
#   bash bench/replicas_run.sh        (ARGS="--requests 128 --prompt 4096 --max-tokens 256" to resize)
set -uo pipefail
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/engine:$PWD/server:$PWD/client:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/replicas_card.txt"
rc=0
for n in ${REPLICAS:-0 1 2}; do
  python bench/replicas_bench.py run --replicas "$n" --out "$OUT/replicas_$n.json" ${ARGS:-} 2>&1 \
    | tr '\r' '\n' | grep -v "req/s]$" | grep -v "GGUF\|Loading weights" > "$OUT/replicas_$n.log"
  st=${PIPESTATUS[0]}; rc=$((rc | st)); tail -5 "$OUT/replicas_$n.log"
done
python bench/replicas_bench.py report "$OUT"/replicas_[0-9].json --plot "$OUT/replicas.png" | tee "$OUT/replicas.md"
exit $rc
