#!/usr/bin/env python
"""Calibrate one inference setting of a config's model on a validation split and print the
config override that applies it.

    # the constant background score, on a sem-seg split whose class 0 is background (mIoU)
    python tools/calibrate.py --config-file configs/synthetic/clearclip.yaml --what background --dataset synth_semseg_val
    # the masker bias b, on a caption split with caption masks (2-class CaptionIoU)
    python tools/calibrate.py --config-file configs/synthetic/clearclip.yaml --what masker-bias --dataset synth_captions_val
    # ... or on word-level segmentation of a sem-seg split (the gate's b: docs/SYNTHETIC_BENCHMARK.md)
    python tools/calibrate.py --config-file configs/synthetic/clearclip.yaml --what masker-bias-words --dataset synth_semseg_val
    # ... with the temperature w for TTD's min-max targets at that boundary (the quickstart's TTD start)
    python tools/calibrate.py --config-file configs/synthetic/clearclip.yaml --what masker-words --dataset synth_semseg_val
    # the tag-selection threshold of MODEL.TTD.TAG_SCORING, on a caption split with ground-truth tags (F1)
    python tools/calibrate.py --config-file configs/synthetic/clearclip.yaml --what tag-threshold --dataset synth_captions_val \\
        MODEL.MASKER.INIT_B -2.2

Config overrides (KEY VALUE ...) follow the options, as for tools/train_net.py; a TTD result is
calibrated with ``MODEL.TTD.LORA.WEIGHTS <model_lora_final.pth>``. Never calibrate on a test split:
a --dataset one of whose ``_``-separated words starts with ``test`` (synth_captions_test101,
cityscapes_fine_sem_seg_test) is refused unless --allow-test-split.
"""
import argparse
import sys

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.env import seed_all_rng
from tabulate import tabulate
from tqdm import tqdm

from ttd_d2 import TTDTrainer, load_config  # importing ttd_d2 registers datasets and models
from ttd_d2.evaluation.calibration import calibrate_background_threshold, calibrate_masker_bias, calibrate_tag_threshold
from ttd_d2.evaluation.word_calibration import calibrate_word_masker, calibrate_word_masker_bias
from ttd_d2.utils.cli import run_tool

# --what -> (calibration, evaluator_type the split needs, config key it sets, metric of the sweep)
CALIBRATIONS = {
    "background": (calibrate_background_threshold, "sem_seg", "MODEL.SEG_INFERENCE.BACKGROUND_THRESHOLD", "mIoU"),
    "masker-bias": (calibrate_masker_bias, "caption", "MODEL.MASKER.INIT_B", "CaptionIoU"),
    "masker-bias-words": (calibrate_word_masker_bias, "sem_seg", "MODEL.MASKER.INIT_B", "IoU"),
    "masker-words": (calibrate_word_masker, "sem_seg", "MODEL.MASKER.INIT_W", "word-target IoU"),  # w and b
    "tag-threshold": (calibrate_tag_threshold, "caption", "MODEL.TTD.TAG_THRESHOLD", "F1"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the model's config")
    parser.add_argument("--what", choices=sorted(CALIBRATIONS), required=True, help="the setting to calibrate")
    parser.add_argument("--dataset", required=True, help="a registered validation split, e.g. synth_captions_val")
    parser.add_argument("--sweep", action="store_true", help="also print the metric of every candidate value")
    parser.add_argument("--allow-test-split", action="store_true",
                        help="calibrate on a test split all the same (its results are then no held-out measurement)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = parser.parse_args(argv)
    if is_test_split(args.dataset) and not args.allow_test_split:
        parser.error(f"--dataset {args.dataset} is a test split: calibrate on a validation split (e.g. "
                     f"{args.dataset.split('_test')[0]}_val), or pass --allow-test-split")
    return args


def is_test_split(name: str) -> bool:
    """Whether a dataset name names a test split: one of its ``_``-separated words starts with
    ``test`` (synth_captions_test101, cityscapes_fine_sem_seg_test, coco_2017_test-dev)."""
    return any(word.startswith("test") for word in name.split("_"))


def check_dataset(name: str, what: str) -> None:
    """A clear error when ``--dataset`` cannot serve the ``--what`` calibration."""
    if name not in DatasetCatalog.list():
        raise SystemExit(f"--dataset '{name}' is not registered (synthetic splits: python tools/generate_synthetic.py "
                         "--preset quickstart; your own: docs/DATASETS.md)")
    needed = CALIBRATIONS[what][1]
    meta = MetadataCatalog.get(name)
    if meta.get("evaluator_type", None) != needed:
        raise SystemExit(f"--what {what} needs a split of evaluator_type '{needed}', but --dataset '{name}' has "
                         f"'{meta.get('evaluator_type', None)}' (e.g. synth_{'semseg' if needed == 'sem_seg' else 'captions'}_val)")
    if what in ("background", "masker-bias-words", "masker-words") and not hasattr(meta, "background_threshold"):
        raise SystemExit(f"--dataset '{name}' has no background class (metadata background_threshold): "
                         f"--what {what} needs one (e.g. synth_semseg_val)")


def main(argv=None):
    args = parse_args(argv)
    # the device as the quickstart picks it, unless the overrides name one
    device = ["MODEL.DEVICE", "cuda" if torch.cuda.is_available() else "cpu"]
    cfg = load_config(args.config_file, device + list(args.opts))
    cfg.freeze()
    check_dataset(args.dataset, args.what)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)  # a randomly initialised model repeats too
    model = TTDTrainer.build_model(cfg).eval()
    loader = TTDTrainer.build_test_loader(cfg, args.dataset)
    calibration, _, key, metric = CALIBRATIONS[args.what]
    result = calibration(model, tqdm(loader, desc=f"calibrating {args.what}", unit="img"), args.dataset)
    if args.what == "masker-words":
        return print_masker(result, args, cfg)
    value, sweep = result
    if args.sweep:
        label = "cos threshold" if args.what.startswith("masker-bias") else "value"
        print(tabulate(sorted(sweep.items()), headers=(label, metric), tablefmt="pipe", floatfmt=".3f"))
    # the calibrated value is the sweep's best (masker-bias*: b = -w * the best cos threshold)
    print(f"{args.what} on {args.dataset}: {value:.3f} ({metric} {max(sweep.values()):.2f})")
    print(f"config override: {key} {value:.3f}")
    if args.what.startswith("masker-bias") and cfg.MODEL.TTD.LORA.WEIGHTS:
        print(f"note: {cfg.MODEL.TTD.LORA.WEIGHTS} holds its own masker, which replaces MODEL.MASKER.INIT_B")
    return 0


def print_masker(found: dict, args, cfg) -> int:
    """``--what masker-words``: both masker parameters (``calibrate_word_masker``'s record)."""
    if args.sweep:
        rows = [(w, iou, found["target_se"][w]) for w, iou in sorted(found["target_sweep"].items())]
        print(tabulate(rows, headers=("w", "word-target IoU", "SE of its deficit"), tablefmt="pipe", floatfmt=".3f"))
    print(f"masker-words on {args.dataset}: boundary cos {found['cos_threshold']:.3f} (word IoU {found['word_iou']:.2f}), "
          f"w {found['w']:.3f} (word-target IoU {found['target_iou']:.2f}, the softest within one standard error of "
          f"the best, {found['target_iou_best']:.2f} at w {found['w_best']:.3f}; {found['target_iou_model_w']:.2f} at "
          f"the model's w)")
    print(f"config override: MODEL.MASKER.INIT_W {found['w']:.3f} MODEL.MASKER.INIT_B {found['b']:.3f}"
          + (" MODEL.TCL.MASKER_FROM_WEIGHTS False" if cfg.MODEL.TCL.WEIGHTS else ""))
    if cfg.MODEL.TTD.LORA.WEIGHTS:
        print(f"note: {cfg.MODEL.TTD.LORA.WEIGHTS} holds its own masker, which replaces MODEL.MASKER")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))  # a missing or corrupt input: its message, no traceback
