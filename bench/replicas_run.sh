#!/usr/bin/env bash
# The replica-scaling benchmark: in-process engine, then 1 and 2 Ray replicas, same load. The load generator runs in
# its own process; each replica's engine step counters are read from /metrics during every run (JSON: replica_steps,
# step_samples); then one more 2-replica run records replica 0 with py-spy (kept out of the table: py-spy samples it).
#   bash bench/replicas_run.sh        (ARGS="--requests 128 --prompt 4096 --max-tokens 256" to resize)
#   REPLICAS="1 2"   which runs go in the table (0 = in-process, no Ray)
#   PROFILE=2        replica count of the profiled run ("" = none); needs py-spy (the test extra), else noted in JSON
# CPU smoke run (tiny model): ARGS="--tiny --dtype float32 --requests 8 --prompt 32 --max-tokens 16 --max-num-seqs 8"
set -uo pipefail
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/engine:$PWD/server:$PWD/client:$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python}
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/replicas_card.txt"
else
  echo "cpu: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/replicas_card.txt"
fi
"$PY" -c "import torch, ray, grpc; print('torch', torch.__version__, 'ray', ray.__version__, 'grpcio', grpc.__version__)" \
  | tee -a "$OUT/replicas_card.txt"
bench() {  # $1 replicas, $2 JSON/log name, then extra flags
  local n=$1 name=$2; shift 2
  "$PY" bench/replicas_bench.py run --replicas "$n" --out "$OUT/$name.json" ${ARGS:-} "$@" 2>&1 \
    | tr '\r' '\n' | grep -v "req/s]$" | grep -v "GGUF\|Loading weights" > "$OUT/$name.log"
  local st=${PIPESTATUS[0]}; tail -2 "$OUT/$name.log"; return "$st"
}
rc=0
for n in ${REPLICAS:-0 1 2}; do
  bench "$n" "replicas_$n"; rc=$((rc | $?))
done
"$PY" bench/replicas_bench.py report "$OUT"/replicas_[0-9].json --plot "$OUT/replicas.png" | tee "$OUT/replicas.md"
rc=$((rc | PIPESTATUS[0]))
if [[ -n ${PROFILE-2} ]]; then
  bench "${PROFILE-2}" "replicas_${PROFILE-2}_profiled" --profile-out "$OUT"; rc=$((rc | $?))
  { echo; echo "Profiled run (py-spy on one replica; not in the table above):"
    "$PY" bench/replicas_bench.py report "$OUT/replicas_${PROFILE-2}_profiled.json"; } | tee -a "$OUT/replicas.md"
fi
exit $rc
