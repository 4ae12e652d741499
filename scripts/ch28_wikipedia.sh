#!/usr/bin/env bash
# Reproduce the book's Ch.28 run: wikitext-103-raw-v1 (train+valid+test, "= Heading =" lines
# removed, 516.7 MB), BPE with 1024 merges trained on the first 50 MB, a 2.16M-parameter
# Llama-style model (RMSNorm, RoPE, GQA), 10,000 steps of batch 16 x 256, cosine schedule.
#
#   scripts/ch28_wikipedia.sh mlx|torch [--project-only] [more `mygpt train` flags...]
#
# Steps: download (cached, resumable; skipped when CORPUS is set), prepare the token cache (timed;
# reused by the run), measure a short run and print the projected total time from its steps/s,
# then the full run (unless --project-only).
#
# Environment:
#   CORPUS=path        train on this text file/dir instead of downloading wikitext-103
#   DATA_DIR=dir       where wikitext-103 text goes           [data/wikitext-103]
#   OUT_DIR=dir        where checkpoints go                    [runs/ch28_<backend>]
#   PRECISION=p        auto | fp32 | bf16 (the book ran bf16 on an M1 GPU; auto picks bf16 only
#                      where it is native, fp32 on CPUs without bf16 units)   [auto]
#   DEVICE=d           auto | cpu | cuda | mps | gpu           [auto]
#   PROJECT_STEPS=n    steps of the timing run                 [30]
#   OFFLINE=1          use the Hugging Face cache only (also HF_HUB_OFFLINE=1)
set -euo pipefail

BACKEND="${1:-}"
case "$BACKEND" in
  mlx|torch) shift ;;
  *) echo "usage: $0 mlx|torch [--project-only] [more mygpt train flags...]" >&2; exit 2 ;;
esac
PROJECT_ONLY=0
if [[ "${1:-}" == "--project-only" ]]; then PROJECT_ONLY=1; shift; fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/.."
RUN=(uv run)
PRECISION="${PRECISION:-auto}"
DEVICE="${DEVICE:-auto}"
PROJECT_STEPS="${PROJECT_STEPS:-30}"
OUT_DIR="${OUT_DIR:-runs/ch28_${BACKEND}}"

if [[ -n "${CORPUS:-}" ]]; then
  DATA="$CORPUS"
else
  DATA="${DATA_DIR:-data/wikitext-103}"
  OFFLINE_FLAG=()
  if [[ "${OFFLINE:-0}" == "1" ]]; then OFFLINE_FLAG=(--offline); fi
  "${RUN[@]}" mygpt data download wikitext-103 --out "$DATA" "${OFFLINE_FLAG[@]}"
fi

echo "== prepare (BPE, 1024 merges, --bpe-train-bytes 50000000) ==" >&2
"${RUN[@]}" mygpt data prepare "$DATA" --tokenizer bpe --num-merges 1024 --bpe-train-bytes 50000000

echo "== projection: $PROJECT_STEPS steps on $BACKEND ==" >&2
"${RUN[@]}" python scripts/project_ch28.py "$DATA" --no-prepare --backend "$BACKEND" \
  --device "$DEVICE" --precision "$PRECISION" --steps "$PROJECT_STEPS"

if [[ "$PROJECT_ONLY" == "1" ]]; then exit 0; fi

read -r -a BOOK_FLAGS <<< "$("${RUN[@]}" python scripts/project_ch28.py --print-book-flags x)"
mkdir -p "$OUT_DIR"
echo "== full run: 10000 steps on $BACKEND, checkpoints in $OUT_DIR ==" >&2
set -x
"${RUN[@]}" mygpt train "$DATA" "${BOOK_FLAGS[@]}" --steps 10000 --checkpoint-every 2500 \
  --backend "$BACKEND" --device "$DEVICE" --precision "$PRECISION" \
  --output "$OUT_DIR/ch28.safetensors" "$@"
