#!/usr/bin/env python
"""Print the ablation table of docs/RESULTS.md from output/ablations/*/quickstart_results.json.

    python benchmarks/collect_ablations.py [output/ablations]

The base model's row is the rows' common "before" (one evaluation, shared through
``quickstart.py --base-cache``); rows whose "before" differs (run on another base model, split
set or code) are named on stderr, since the table compares them with one base row.
"""
import json
import sys
from pathlib import Path

from tabulate import tabulate

from ttd_d2.evaluation.summary import TABLE_COLUMNS as COLUMNS, get_path

ROWS = ("both", "distill_only", "tag_only", "tags_s_image", "tags_nltk", "teacher_self", "teacher_ema", "target_norm_none",
        "masker_w_as_trained")


def main(root="output/ablations"):
    rows, before, other_base = [], None, []
    for name in ROWS:
        path = Path(root) / name / "quickstart_results.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        before = before or report["before"]
        if report["before"] != before:
            other_base.append(name)
        rows.append([name] + [get_path(report["after"], p) for _, p in COLUMNS])
    if before is None:
        raise SystemExit(f"no results under {root}: run benchmarks/ablations.sh first")
    rows.insert(0, ["no TTD (base model)"] + [get_path(before, p) for _, p in COLUMNS])
    if other_base:
        print(f"warning: {', '.join(other_base)} evaluated another base model than the first row "
              "(different \"before\"); re-run them together", file=sys.stderr)
    print(tabulate(rows, headers=["run"] + [c for c, _ in COLUMNS], tablefmt="pipe", floatfmt=".2f"))


if __name__ == "__main__":
    main(*sys.argv[1:])
