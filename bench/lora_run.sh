#!/usr/bin/env bash
# SWA-aware fine-tuning on a GPU host, in stages that each fit one device call (< 600 s for SmolLM2-135M on one H200):
#   bash bench/lora_run.sh distill   # swaa distill: full-attention teacher, train plays only; retrieval + LM rows
#   bash bench/lora_run.sh train     # swaa finetune for each run in $RUNS on the mix (LM_RATIO LM rows per answer)
#   bash bench/lora_run.sh eval      # swaa eval: FA and the SWAA configs before, then each run's adapter
# Runs (RUNS, default "default ring fa"): default = the service's default SWAA config, ring = the memory-saving ring
# config, fa = the full-attention model fine-tuned on the same data (--full-attention: no SWAA mask; the fair baseline).
# Split train over calls if it runs long: RUNS="default fa" … train, then RUNS=ring … train.
# Work files live in $WORK (default /tmp/lora, kept only while the host is warm); logs and a results tarball go to $OUT.
#
# Model-agnostic: MODEL (a .gguf or HF folder; default the embedded SmolLM2 GGUF) and the knobs below. For Gemma 3 270M
# (32k context, native window 512) for instance:
#   MODEL=/path/gemma3-270m.gguf W=2048 S=64 DISTILL_LENGTHS=2048,4096,8192,16384 EVAL_LENGTHS=4096,8192,16384,32768 \
#   MAX_BATCH_TOKENS=16512 bash bench/lora_run.sh distill      (then train, eval with the same variables)
# Knobs: W, S, TAIL (SWAA window, sinks, question tail); DISTILL_SAMPLES, LM_SAMPLES (per task and length / LM rows per
# length), LM_TOP_K; LM_RATIO (LM rows per retrieval row; 0 = the issue-6 recipe), LM_WEIGHT; MAX_BATCH_TOKENS (>= the
# longest distilled example + its answer); MAX_STEPS (smoke runs); EVAL_SAMPLES; DTYPE (teacher and eval; float32 for a CPU smoke run); TAG (suffix of the run folders, to keep an A/B apart);
# DEFAULT_ARGS / RING_ARGS and DEFAULT_NAME / RING_NAME (the runs' SWAA flags and their `swaa eval` config names).
set -uo pipefail
OUT=${OUT:-bench/out}; WORK=${WORK:-/tmp/lora}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/engine:$PWD/server:$PWD/client:$PWD${PYTHONPATH:+:$PYTHONPATH}"
swaa() { local t0=$SECONDS; python -m swaa_server.cli "$@"; local st=$?; echo "[swaa $1: exit $st, wall $((SECONDS - t0)) s]"; return $st; }
quiet() { tr '\r' '\n' | grep -v -E '[0-9]+%\|'; }  # drop tqdm's progress lines
model=(); [[ -n ${MODEL:-} ]] && model=(--model "$MODEL")
W=${W:-1024}; S=${S:-64}; TAIL=${TAIL:-32}
read -r -a DEFAULT_ARGS <<< "${DEFAULT_ARGS:---window $W --sinks $S --fa-decode --fa-tail $TAIL}"  # the service's default
read -r -a RING_ARGS <<< "${RING_ARGS:---window $W --sinks $S --fa-layers odd}"                    # ring layers: saves memory
DEFAULT_NAME=${DEFAULT_NAME:-SWA+sinks+FA-decode+tail$TAIL}; RING_NAME=${RING_NAME:-SWA+sinks+1/2 FA}
RUNS=${RUNS:-default ring fa}; TAG=${TAG:-}
LM_RATIO=${LM_RATIO:-0.5}; LM_WEIGHT=${LM_WEIGHT:-1.0}; DTYPE=${DTYPE:-bfloat16}  # the teacher's and the eval's
DATA="$WORK/distill.jsonl"
rc=0
case ${1:-} in
distill)
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
  python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/card.txt"
  swaa distill "${model[@]}" --out "$DATA" --lengths "${DISTILL_LENGTHS:-1024,2048,4096,7936}" \
      --samples "${DISTILL_SAMPLES:-100}" --dtype "$DTYPE" --lm-samples "${LM_SAMPLES:-100}" --lm-top-k "${LM_TOP_K:-16}" 2>&1 \
      | quiet | tee -a "$OUT/distill.log"
  rc=${PIPESTATUS[0]}
  ls -l "$DATA" | tee -a "$OUT/distill.log"
  ;;
train)
  [[ -s $DATA ]] || { echo "no $DATA: run the distill stage first (on this warm host)" >&2; exit 2; }
  for run in $RUNS; do
    case $run in
      default) swaa_args=("${DEFAULT_ARGS[@]}") ;;
      ring) swaa_args=("${RING_ARGS[@]}") ;;
      fa) swaa_args=(--full-attention) ;;
      *) echo "unknown run $run (default|ring|fa)" >&2; exit 2 ;;
    esac
    for kernel in auto sdpa; do  # sdpa if FlexAttention fails to compile on this host (the log says so)
      swaa finetune "${model[@]}" --data "$DATA" --out "$WORK/ft-$run$TAG" --kernel $kernel \
          --max-batch-tokens "${MAX_BATCH_TOKENS:-8192}" --lm-ratio "$LM_RATIO" --lm-weight "$LM_WEIGHT" \
          ${MAX_STEPS:+--max-steps $MAX_STEPS} "${swaa_args[@]}" 2>&1 | quiet | tee -a "$OUT/finetune-$run$TAG.log"
      st=${PIPESTATUS[0]}; [[ $st == 0 ]] && break
    done
    rc=$((rc | st))
    cp "$WORK/ft-$run$TAG/log.jsonl" "$OUT/finetune-$run$TAG.jsonl" 2>/dev/null
  done
  ;;
eval)
  common=("${model[@]}" --window $W --sinks $S --tail $TAIL --lengths "${EVAL_LENGTHS:-2048,4096,7936}" --samples "${EVAL_SAMPLES:-20}" --dtype "$DTYPE")
  # resumable: a rerun skips the samples already in $WORK/eval-*/results.jsonl
  run_eval() { swaa eval "${common[@]}" --out "$WORK/$1" "${@:2}" 2>&1 | quiet | tee "$OUT/$1.log"; rc=$((rc | PIPESTATUS[0])); }
  run_eval eval-base --configs "FA,$DEFAULT_NAME,$RING_NAME"
  for run in $RUNS; do
    case $run in default) name=$DEFAULT_NAME ;; ring) name=$RING_NAME ;; fa) name=FA ;; esac
    run_eval "eval-ft-$run$TAG" --configs "$name" --lora "$WORK/ft-$run$TAG/adapter"
  done
  ;;
*) echo "usage: $0 distill|train|eval" >&2; exit 2 ;;
esac
# everything but weights, checkpoints and the distilled token ids, in one file (the host returns few files)
tar -C "$WORK" -czf "$OUT/lora_results.tgz" --exclude='*.safetensors' --exclude=checkpoint --exclude='*.pt' \
    --exclude=distill.jsonl . 2>/dev/null
exit $rc
