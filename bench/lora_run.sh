#!/usr/bin/env bash
# SWA-aware fine-tuning of the embedded model on a GPU host, in stages that fit one device call each:
#   bash bench/lora_run.sh train   # swaa distill (full-attention teacher) → swaa finetune for two SWAA configs
#   bash bench/lora_run.sh eval    # swaa eval: FA and the two configs before, then each with its adapter
# Work files live in $WORK (default /tmp/lora, kept while the host is warm); logs and a results tarball go to $OUT.
# MODEL: the SmolLM2 GGUF file (default: the embedded package's). Sizes: DISTILL_SAMPLES, EVAL_SAMPLES.
set -uo pipefail
OUT=${OUT:-bench/out}; WORK=${WORK:-/tmp/lora}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/engine:$PWD/server:$PWD/client:$PWD${PYTHONPATH:+:$PYTHONPATH}"
swaa() { local t0=$SECONDS; python -m swaa_server.cli "$@"; local st=$?; echo "[swaa $1: exit $st, wall $((SECONDS - t0)) s]"; return $st; }
model=(); [[ -n ${MODEL:-} ]] && model=(--model "$MODEL")
W=1024; S=64
DEFAULT=(--window $W --sinks $S --fa-decode --fa-tail 32)   # the service's default for this model
RING=(--window $W --sinks $S --fa-layers odd)                # ring layers: the memory-saving config
rc=0
case ${1:-} in
train)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
  python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/card.txt"
  swaa distill "${model[@]}" --out "$WORK/distill.jsonl" \
      --samples "${DISTILL_SAMPLES:-40}" 2>&1 | tr '\r' '\n' | grep -v "it/s]$" | tee "$OUT/distill.log"
  for run in default ring; do
    [[ $run == default ]] && swaa_args=("${DEFAULT[@]}") || swaa_args=("${RING[@]}")
    for kernel in auto sdpa; do  # sdpa if FlexAttention fails to compile on this host (the log says so)
      swaa finetune "${model[@]}" --data "$WORK/distill.jsonl" \
          --out "$WORK/ft-$run" --kernel $kernel --max-batch-tokens 8192 "${swaa_args[@]}" 2>&1 \
          | tr '\r' '\n' | grep -v "it/s]$" | tee -a "$OUT/finetune-$run.log"
      st=${PIPESTATUS[0]}; [[ $st == 0 ]] && break
    done
    rc=$((rc | st))
    cp "$WORK/ft-$run/log.jsonl" "$OUT/finetune-$run.jsonl" 2>/dev/null
  done
  ;;
eval)
  common=("${model[@]}" --window $W --sinks $S --tail 32 --lengths 2048,4096,7936 --samples "${EVAL_SAMPLES:-20}")
  run_eval() { swaa eval "${common[@]}" --out "$WORK/$1" "${@:2}" 2>&1 \
               | tr '\r' '\n' | grep -v "sample/s]$" | tee "$OUT/$1.log"; rc=$((rc | PIPESTATUS[0])); }
  run_eval eval-base --configs "FA,SWA+sinks+FA-decode+tail32,SWA+sinks+1/2 FA"
  run_eval eval-ft-default --configs "SWA+sinks+FA-decode+tail32" --lora "$WORK/ft-default/adapter"
  run_eval eval-ft-ring --configs "SWA+sinks+1/2 FA" --lora "$WORK/ft-ring/adapter"
  ;;
*) echo "usage: $0 train|eval" >&2; exit 2 ;;
esac
# everything but weights and checkpoints, in one file (the host returns few files)
tar -C "$WORK" -czf "$OUT/lora_results.tgz" --exclude='*.safetensors' --exclude=checkpoint --exclude='*.pt' . 2>/dev/null
exit $rc
