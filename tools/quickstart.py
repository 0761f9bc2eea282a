#!/usr/bin/env python
"""The README's main job: single tag bias on the synthetic benchmark, before and after TTD.

    python tools/quickstart.py --output-dir output/quickstart

1. generates the synthetic benchmark under $DETECTRON2_DATASETS/synthetic if missing;
2. evaluates the shipped tiny CLIP (checkpoints/tiny_clip_synthetic.pt) zero-shot, with the
   background threshold calibrated on the validation split;
3. TTD-fine-tunes it through tools/train_net.py (LoRA, frozen teacher);
4. evaluates the LoRA-only result the same way; prints a before/after table and writes
   ``<output-dir>/quickstart_results.json`` = {"before": ..., "after": ...}.
``--test-splits test test101 test102`` evaluates several held-out generator seeds (and their mean);
training overrides follow a ``--``: ``--test-splits test test101 -- MODEL.TTD.TEACHER ema``.
"""
import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from ttd_d2 import TTDTrainer, add_ttd_config  # importing ttd_d2 registers datasets and models
from ttd_d2.data.datasets.builtin import synthetic_root
from ttd_d2.data.synthetic.writer import generate, quickstart_splits
from ttd_d2.evaluation.calibration import calibrate_background_threshold, calibrate_masker_bias
from ttd_d2.evaluation.summary import before_after_table, mean_summary, summarize

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("quickstart")


def load_cfg(config_file: str, opts=()):
    cfg = get_cfg()
    add_ttd_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def ensure_data(workers: int) -> None:
    root = synthetic_root()
    for spec in quickstart_splits():
        generate(root, spec.layout, spec.split, spec.num_images, spec.seed, workers=workers)


def build_eval_model(cfg):
    model = TTDTrainer.build_model(cfg)
    return model.eval()


def evaluate(model, cfg, test_splits, output_dir: Path):
    """Calibrate the background on semseg/val, then evaluate every test split.
    Returns {split: summary}."""
    threshold, sweep = calibrate_background_threshold(model, TTDTrainer.build_test_loader(cfg, "synth_semseg_val"), "synth_semseg_val")
    model.background_threshold = threshold
    summaries = {}
    for split in test_splits:
        cfg_split = cfg.clone()
        cfg_split.defrost()
        cfg_split.DATASETS.TEST = (f"synth_semseg_{split}", f"synth_captions_{split}")
        cfg_split.OUTPUT_DIR = str(output_dir)
        results = TTDTrainer.test(cfg_split, model)
        summaries[split] = summarize(results, threshold)
    return summaries


def train_ttd(config_file: str, output_dir: Path, opts) -> Path:
    """Run tools/train_net.py; return the LoRA-only checkpoint it wrote."""
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", config_file,
           "OUTPUT_DIR", str(output_dir), *opts]
    logger.info("training: %s", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=os.getcwd())
    lora = output_dir / "model_lora_final.pth"
    if not lora.is_file():
        raise RuntimeError(f"training finished without writing {lora}")
    return lora


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/quickstart")
    parser.add_argument("--base-config", default=str(ROOT / "configs" / "clearclip.yaml"))
    parser.add_argument("--ttd-config", default=str(ROOT / "configs" / "ttd_clearclip.yaml"))
    parser.add_argument("--test-splits", nargs="+", default=["test"])
    parser.add_argument("--workers", type=int, default=2, help="processes that render the benchmark")
    parser.add_argument("--skip-training", action="store_true", help="reuse <output-dir>/ttd/model_lora_final.pth")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...) for training")
    args = parser.parse_args()
    args.opts = [o for o in args.opts if o != "--"]  # "--" ends --test-splits before overrides

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(str(output_dir / "log.txt"))
    setup_logger(str(output_dir / "log.txt"), name="quickstart")
    setup_logger(str(output_dir / "log.txt"), name="ttd_d2")
    device = ["MODEL.DEVICE", "cuda" if torch.cuda.is_available() else "cpu"]
    base_cfg = load_cfg(args.base_config, device)
    pretrained = base_cfg.MODEL.CLIP.PRETRAINED
    if pretrained and not Path(pretrained).is_file():
        raise FileNotFoundError(
            f"base model '{pretrained}' not found: run from the repository root, or pretrain it with "
            "configs/pretrain_tiny_clip.yaml (see docs/SYNTHETIC_BENCHMARK.md)"
        )
    ensure_data(args.workers)

    base_model = build_eval_model(base_cfg)
    # The masker's bias is calibrated for the base model on the caption validation split;
    # TTD starts from it and trains w, b further.
    bias, _ = calibrate_masker_bias(base_model, TTDTrainer.build_test_loader(base_cfg, "synth_captions_val"), "synth_captions_val")
    with torch.no_grad():
        base_model.masker.b.fill_(bias)
    before = evaluate(base_model, base_cfg, args.test_splits, output_dir / "before")
    lora = output_dir / "ttd" / "model_lora_final.pth"
    if not args.skip_training:
        lora = train_ttd(args.ttd_config, output_dir / "ttd", [*device, "MODEL.MASKER.INIT_B", str(bias), *args.opts])
    after_cfg = load_cfg(args.ttd_config, [*device, "MODEL.TTD.LORA.WEIGHTS", str(lora),
                                           "MODEL.TTD.LORA.MERGE_FOR_INFERENCE", "True"])
    after = evaluate(build_eval_model(after_cfg), after_cfg, args.test_splits, output_dir / "after")

    report = {"before": before[args.test_splits[0]], "after": after[args.test_splits[0]]}
    if len(args.test_splits) > 1:
        report = {"before": mean_summary(list(before.values())), "after": mean_summary(list(after.values())),
                  "per_split": {s: {"before": before[s], "after": after[s]} for s in args.test_splits}}
    with open(output_dir / "quickstart_results.json", "w") as f:
        json.dump(report, f, indent=2)
    table = before_after_table(report["before"], report["after"])
    splits = ", ".join(args.test_splits)
    print(f"\nSingle tag bias on the synthetic benchmark (held-out split(s): {splits}):\n{table}")
    print(f"\nwrote {output_dir / 'quickstart_results.json'}")


if __name__ == "__main__":
    main()
