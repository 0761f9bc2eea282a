#!/usr/bin/env bash
# Zero-shot vs TTD for every backbone and dense mode on the synthetic benchmark (issue 8's table):
# one quickstart run per row, each with its own base model evaluation. Rows: the tiny CLIP's
# training-free heads (CLIPDense, MODEL.CLIP.DENSE_MODE; configs/synthetic/clearclip.yaml and
# configs/synthetic/ttd_clearclip.yaml with --dense-mode) and the shipped TCL (configs/synthetic/tcl.yaml).
# Results land in output/backbones/<row>/quickstart_results.json (a finished row is skipped);
# benchmarks/collect_backbones.py prints the table of docs/RESULTS.md.
#   bash benchmarks/backbones.sh [extra quickstart args, e.g. --test-splits test test101 test102]
# CPU, 2 cores, three test seeds: about 7 min per CLIPDense row, 15 for TCL.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
EXTRA=("$@")
run() {
  local name=$1; shift
  [ -f "output/backbones/$name/quickstart_results.json" ] && return 0
  "$PY" tools/quickstart.py --output-dir "output/backbones/$name" "$@" "${EXTRA[@]}"
}
for mode in maskclip sclip clearclip naclip vanilla; do
  run "$mode" --base-config configs/synthetic/clearclip.yaml --ttd-config configs/synthetic/ttd_clearclip.yaml --dense-mode "$mode"
done
run tcl --base-config configs/synthetic/tcl.yaml --ttd-config configs/synthetic/ttd_tcl.yaml
