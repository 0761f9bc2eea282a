#!/usr/bin/env bash
# TTD ablations on the synthetic benchmark (CPU, ~3 min per row): the paper's Table 5 rows
# (losses, tag selection), the teacher choice and TTD's starting masker temperature. Each row is one quickstart run with one
# training override; results land in output/ablations/<row>/quickstart_results.json and
# benchmarks/collect_ablations.py prints the table of docs/RESULTS.md. The base model ("before")
# is evaluated by the first row only: the others read it from output/ablations/base_cache
# (quickstart --base-cache; re-evaluated whenever base model, config, splits or calibration change).
#   bash benchmarks/ablations.sh [extra quickstart args, e.g. --test-splits test test101 test102]
# ROWS="tags_s_image teacher_ema" runs only those rows (default: every row); rows whose results
# exist are skipped either way, so an interrupted run resumes where it stopped. ABLATIONS_DIR
# (default output/ablations) holds the rows, e.g. one folder per base model:
#   ABLATIONS_DIR=output/ablations_300_steps bash benchmarks/ablations.sh \
#     --ttd-config configs/synthetic/experiments/ttd_tcl_clearclip_128.yaml --test-splits test test101 test102
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ROWS=${ROWS:-}
DIR=${ABLATIONS_DIR:-output/ablations}
run() {  # run NAME [QUICKSTART OPTION ...] -- [TRAINING OVERRIDE ...]
  local name=$1 options=(); shift
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do options+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  if [ -n "$ROWS" ] && [[ " $ROWS " != *" $name "* ]]; then return 0; fi
  [ -f "$DIR/$name/quickstart_results.json" ] && return 0
  "$PY" tools/quickstart.py --output-dir "$DIR/$name" --base-cache "$DIR/base_cache" \
    "${EXTRA[@]}" "${options[@]}" -- "$@"
}
EXTRA=("$@")
run both --
run distill_only -- MODEL.TTD.LOSS.TAG_WEIGHT 0.0
run tag_only -- MODEL.TTD.LOSS.DISTILL_WEIGHT 0.0
run tags_s_image -- MODEL.TTD.TAG_SCORING s_image
run tags_nltk -- MODEL.TTD.TAG_SCORING nltk
run teacher_self -- MODEL.TTD.TEACHER self
run teacher_ema -- MODEL.TTD.TEACHER ema
run target_norm_none -- MODEL.TTD.TARGET_NORM none
run masker_w_as_trained --ttd-masker-temperature as_trained --
