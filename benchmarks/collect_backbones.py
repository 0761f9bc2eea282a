#!/usr/bin/env python
"""Print the backbone table of docs/RESULTS.md from output/backbones/*/quickstart_results.json
(benchmarks/backbones.sh): for each backbone and dense mode, its base model zero-shot and after
TTD (calibrated maskers, the quickstart's headline), and the change.

    python benchmarks/collect_backbones.py [output/backbones]
"""
import json
import sys
from pathlib import Path

from tabulate import tabulate

from ttd_d2.evaluation.summary import TABLE_COLUMNS, get_path

ROWS = ("maskclip", "sclip", "clearclip", "naclip", "vanilla", "tcl")


def main(root="output/backbones"):
    rows = []
    for name in ROWS:
        path = Path(root) / name / "quickstart_results.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        before = [get_path(report["before"], p) for _, p in TABLE_COLUMNS]
        after = [get_path(report["after"], p) for _, p in TABLE_COLUMNS]
        splits = ", ".join(report.get("per_split", {})) or "test"
        rows.append([name, "zero-shot", *before, splits])
        rows.append([name, "TTD", *after, ""])
        rows.append([name, "change", *(a - b for a, b in zip(after, before)), ""])
    if not rows:
        raise SystemExit(f"no results under {root}: run benchmarks/backbones.sh first")
    headers = ["backbone / head", "model", *(c for c, _ in TABLE_COLUMNS), "test splits"]
    print(tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".2f"))


if __name__ == "__main__":
    main(*sys.argv[1:])
