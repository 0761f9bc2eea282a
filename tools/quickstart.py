#!/usr/bin/env python
"""The README's main job: single tag bias on the synthetic benchmark, before and after TTD.

    python tools/quickstart.py --output-dir output/quickstart

1. generates the synthetic benchmark under $DETECTRON2_DATASETS/synthetic if missing;
2. calibrates the shipped base model (a TCL-style head trained on the benchmark, checkpoints/tcl_synthetic.pth,
   on the tiny CLIP checkpoints/tiny_clip_synthetic.pt; --base-config) on the validation
   splits: the masker on word-level segmentation of semseg/val (its boundary, and the
   temperature w for TTD's min-max targets, the softest within one standard error of the best:
   ``calibrate_word_masker``), and
   (recorded, not applied) the tag-selection threshold on captions/val;
3. evaluates it zero-shot twice, with its masker as trained (the TCL checkpoint's, or the
   config's MODEL.MASKER) and as calibrated, each with the background threshold calibrated on
   semseg/val;
4. TTD-fine-tunes it through tools/train_net.py (LoRA, frozen teacher), from the calibrated masker
   (boundary and temperature; ``--ttd-masker-temperature as_trained`` keeps the base model's w);
5. evaluates the LoRA-only result the same two ways (as trained: the masker it learnt;
   calibrated: recalibrated exactly as in 2); prints the before/after tables, writes
   ``<output-dir>/quickstart_results.json`` = {"before": ..., "after": ... (both calibrated),
   "as_trained": {"before": ..., "after": ...}, "calibration": ...} and draws
   ``<output-dir>/quickstart_grid.png`` (a few test images: masks before and after, the
   teacher's selected tags and the TTD target).

Every run is seeded (``SEED`` of the configs): the same machine gives the same numbers. The
console shows one progress bar per stage and the tables; detectron2's log (training included)
goes to ``<output-dir>/log.txt``. What it measures: docs/SYNTHETIC_BENCHMARK.md.
``--test-splits test test101 test102`` evaluates several held-out generator seeds (and their mean);
training overrides follow a ``--``: ``--test-splits test test101 -- MODEL.TTD.TEACHER ema``.
``--dense-mode MODE`` sets MODEL.CLIP.DENSE_MODE in both configs (one row per head:
benchmarks/backbones.sh). ``--base-cache DIR`` evaluates the base model (step 3) once and reuses it while base model,
config, splits and calibration stay the same (benchmarks/ablations.sh: one base, many rows).
"""
import argparse
import json
import logging
import sys
import warnings
from contextlib import ExitStack
from pathlib import Path

# Warnings raised while importing (e.g. torch's deprecation of torch.jit.script, used by
# detectron2) are kept for the log file instead of the console.
with warnings.catch_warnings(record=True) as IMPORT_WARNINGS:
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.utils.env import seed_all_rng
    from tqdm import tqdm

    from ttd_d2 import TTDTrainer, load_config  # importing ttd_d2 registers datasets and models
    from ttd_d2.data.datasets.builtin import synthetic_root
    from ttd_d2.data.mappers import TestMapper
    from ttd_d2.data.synthetic.presets import ensure_splits, quickstart_splits
    from ttd_d2.evaluation.calibration import calibrate_tag_threshold
    from ttd_d2.evaluation.quickstart_protocol import MASKER_SPLIT, calibrate_masker, evaluate, evaluate_before
    from ttd_d2.evaluation.summary import print_quickstart_summary, quickstart_report
    from ttd_d2.evaluation.tag_selection import BINARY_METHODS
    from ttd_d2.modeling.backbone.clip_dense import cpu_has_native_bf16
    from ttd_d2.modeling.backbone.dense_heads import DENSE_MODES
    from ttd_d2.utils.cli import require_minimums, require_output_folder, run_tool
    from ttd_d2.utils.cpu_memory import keep_freed_cpu_memory
    from ttd_d2.utils.progress import Progress, run_logged
    from ttd_d2.utils.visualize import caption_grid, pick_images

ROOT = Path(__file__).resolve().parents[1]
LOG_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"

logger = logging.getLogger("quickstart")


def log_to_file(path: Path) -> None:
    """Every logger (detectron2, ttd_d2, warnings) to ``path`` and nothing to the console.
    detectron2's ``setup_logger`` always adds a console handler, hence a plain FileHandler."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%m/%d %H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    for w in IMPORT_WARNINGS:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def build_eval_model(cfg):
    model = TTDTrainer.build_model(cfg)
    return model.eval()


# --ttd-masker-temperature: TTD's masker starts at the calibrated boundary with the temperature
# calibrated for its min-max targets, or with the base model's own w
TEMPERATURES = ("calibrated", "as_trained")


def ttd_masker_start(masker: dict, temperature: str = "calibrated") -> tuple:
    """TTD's starting (w, b) from ``masker`` (``calibrate_masker``'s record): the calibrated
    boundary at the calibrated temperature (``target_w``, ``target_b``) or at the base model's w
    (``w``, ``b_calibrated``)."""
    if temperature not in TEMPERATURES:
        raise ValueError(f"unknown masker temperature {temperature!r}; expected one of {TEMPERATURES}")
    return (masker["target_w"], masker["target_b"]) if temperature == "calibrated" else (masker["w"], masker["b_calibrated"])


def ttd_masker_opts(masker: dict, temperature: str = "calibrated") -> list:
    """Config overrides that start TTD's masker at ``ttd_masker_start``, never at the w, b of a
    TCL checkpoint (``MODEL.TCL.MASKER_FROM_WEIGHTS``)."""
    w, b = ttd_masker_start(masker, temperature)
    return ["MODEL.MASKER.INIT_W", str(w), "MODEL.MASKER.INIT_B", str(b), "MODEL.TCL.MASKER_FROM_WEIGHTS", "False"]


def train_ttd(config_file: str, output_dir: Path, opts, max_iter: int, log_path: Path) -> Path:
    """Run tools/train_net.py (the users' entry point, seeded by its ``default_setup``) with its
    output appended to ``log_path``; a progress bar follows its iteration lines. Returns the
    LoRA-only checkpoint it wrote."""
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", config_file,
           "OUTPUT_DIR", str(output_dir), *opts]
    logger.info("training: %s", " ".join(cmd))
    with tqdm(total=max_iter, desc="training (TTD)", unit="it") as bar:
        run_logged(cmd, log_path, bar, "tools/train_net.py")
    lora = output_dir / "model_lora_final.pth"
    if not lora.is_file():
        raise RuntimeError(f"training finished without writing {lora}; see {log_path}")
    return lora


def draw_quickstart_grid(base_model, after_model, ttd_cfg, split: str, path: Path, count: int = 4) -> Path:
    """The picture of a few fixed images of captions/<split> (``pick_images``), both models with
    their calibrated maskers, the teacher's selection and target as ``ttd_cfg`` trains them."""
    records = DatasetCatalog.get(f"synth_captions_{split}")
    ttd = ttd_cfg.MODEL.TTD
    caption_grid(base_model, after_model, [records[i] for i in pick_images(records, count)], TestMapper(ttd_cfg), path,
                 ttd.TAG_SCORING, ttd.TAG_THRESHOLD, ttd.TARGET_NORM, ttd_cfg.MODEL.SEG_INFERENCE.CAPTION_MASK_THRESHOLD)
    return path


def use_cpu_bf16(choice: str) -> bool:
    """``--cpu-bf16``: on, off, or (auto) where this CPU runs bfloat16 natively. Only the CPU
    reads it: on a GPU the towers run under bf16 autocast anyway (MODEL.CLIP.BF16)."""
    return choice == "on" or (choice == "auto" and cpu_has_native_bf16())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/quickstart")
    parser.add_argument("--base-config", default=str(ROOT / "configs" / "synthetic" / "tcl.yaml"))
    parser.add_argument("--ttd-config", default=str(ROOT / "configs" / "synthetic" / "ttd_tcl.yaml"))
    parser.add_argument("--test-splits", nargs="+", default=["test"])
    parser.add_argument("--dense-mode", choices=DENSE_MODES, help="MODEL.CLIP.DENSE_MODE of both configs "
                        "(benchmarks/backbones.sh: one row per head)")
    parser.add_argument("--workers", type=int, default=2, help="processes that render the benchmark (0 or 1: this process)")
    parser.add_argument("--train-images", type=int, default=20000, help="size of image_text/train when generated")
    parser.add_argument("--val-images", type=int, default=200, help="size of each val split when generated")
    parser.add_argument("--test-images", type=int, default=300, help="size of each test split when generated")
    parser.add_argument("--base-cache", default="", help="folder caching the base model's evaluation "
                        "(benchmarks/ablations.sh); reused while model, config, splits and calibration match")
    parser.add_argument("--cpu-bf16", choices=("auto", "on", "off"), default="auto",
                        help="on the CPU, run the towers under bf16 autocast (MODEL.CLIP.BF16_CPU), as the GPU "
                        "does; auto: where the CPU has bf16 instructions (AVX512-BF16, AMX; ~2x faster there)")
    parser.add_argument("--ttd-masker-temperature", choices=TEMPERATURES, default="calibrated",
                        help="TTD's masker starts at the calibrated boundary with the temperature w calibrated for "
                        "its min-max targets on semseg/val (calibrated), or with the base model's w (as_trained)")
    parser.add_argument("--skip-training", action="store_true", help="reuse <output-dir>/ttd/model_lora_final.pth")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...) for training")
    args = parser.parse_args(argv)
    args.opts = [o for o in args.opts if o != "--"]  # "--" ends --test-splits before overrides
    # before any work or output (else found after the calibration and the evaluation before TTD)
    require_output_folder(parser, "--output-dir", args.output_dir)
    if args.base_cache:
        require_output_folder(parser, "--base-cache", args.base_cache)
    require_minimums(parser, args, {"workers": 0, "train_images": 1, "val_images": 1, "test_images": 1})
    lora = Path(args.output_dir) / "ttd" / "model_lora_final.pth"
    if args.skip_training and not lora.is_file():
        parser.error(f"--skip-training reuses {lora}, which is not there: drop --skip-training (it trains), "
                     "or give the --output-dir of a finished run")
    unknown = [s for s in args.test_splits if not {f"synth_semseg_{s}", f"synth_captions_{s}"} <= set(DatasetCatalog.list())]
    if unknown:
        preset = sorted({s.split for s in quickstart_splits() if s.layout == "captions"} - {"val"})
        parser.error(f"--test-splits {' '.join(unknown)}: no such synthetic split (synth_semseg_<split> and "
                     f"synth_captions_<split>); the quickstart generates {', '.join(preset)}; another: python "
                     "tools/generate_synthetic.py --split NAME --seed N --image-size <the base model's INPUT.TRAIN_SIZE>")
    return args


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "log.txt"
    log_to_file(log_path)
    device = ["MODEL.DEVICE", "cuda" if torch.cuda.is_available() else "cpu"]
    if device[1] == "cpu":
        keep_freed_cpu_memory()  # this process's calibrations and evaluations (train_net.py: its own)
    model_opts = [*device, *(["MODEL.CLIP.DENSE_MODE", args.dense_mode] if args.dense_mode else []),
                  "MODEL.CLIP.BF16_CPU", str(use_cpu_bf16(args.cpu_bf16))]
    base_cfg = load_config(args.base_config, model_opts)
    ttd_cfg = load_config(args.ttd_config, [*model_opts, *args.opts])
    pretrained = base_cfg.MODEL.CLIP.PRETRAINED
    if pretrained and not Path(pretrained).is_file():
        raise FileNotFoundError(
            f"base model '{pretrained}' not found: run from the repository root, or pretrain it with "
            "configs/synthetic/pretrain_tiny_clip.yaml (see docs/SYNTHETIC_BENCHMARK.md)"
        )
    splits = ("train", "val", *args.test_splits)
    specs = quickstart_splits(args.train_images, args.val_images, args.test_images)
    ensure_splits(synthetic_root(), [s for s in specs if s.split in splits], base_cfg.INPUT.TRAIN_SIZE, args.workers)
    seed_all_rng(None if base_cfg.SEED < 0 else base_cfg.SEED)  # as train_net.py's default_setup

    base_model = build_eval_model(base_cfg)
    # Both models are evaluated with the masker they come with and with the bias calibrated on
    # word-level segmentation of semseg/val (the masker TTD's targets are made of, the gate's);
    # TTD starts from the calibrated one and trains w, b further. The tag threshold is recorded
    # (training uses the config's: pass MODEL.TTD.TAG_THRESHOLD after -- to change it).
    tag_scoring = ttd_cfg.MODEL.TTD.TAG_SCORING
    masker_loader = TTDTrainer.build_test_loader(base_cfg, MASKER_SPLIT)
    tag_loader = TTDTrainer.build_test_loader(base_cfg, "synth_captions_val")
    with_tags = tag_scoring not in BINARY_METHODS
    # A model's masker calibration and its evaluation run under one reusing_image_features()
    # block: the two masker settings and the calibrations on semseg/val read the same images, whose
    # backbone outputs are then computed once (the settings change only the heads after it).
    # captions/val (the tag threshold) is read once, so it is calibrated outside the block.
    with ExitStack() as reuse:
        with tqdm(total=len(masker_loader) + with_tags * len(tag_loader), desc="calibration before TTD", unit="img") as bar:
            tag = calibrate_tag_threshold(base_model, Progress(tag_loader, bar), "synth_captions_val", tag_scoring) if with_tags else None
            reuse.enter_context(base_model.reusing_image_features())
            masker_before = calibrate_masker(base_model, masker_loader, bar)
        before = evaluate_before(base_model, base_cfg, args.test_splits, output_dir, masker_before, args.base_cache,
                                 code=[Path(__file__)])
    calibration = {"masker": {"calibration": "calibrate_word_masker", "dataset": MASKER_SPLIT, "before": masker_before,
                              "ttd_start_temperature": args.ttd_masker_temperature},
                   "tag_scoring": tag_scoring, "tag_threshold_used": ttd_cfg.MODEL.TTD.TAG_THRESHOLD}
    if tag is not None:
        threshold, sweep = tag
        calibration.update(tag_threshold_calibrated=threshold, tag_threshold_f1=sweep[threshold], tag_threshold_sweep=sweep)
    lora = output_dir / "ttd" / "model_lora_final.pth"
    if not args.skip_training:
        # DATASETS.TEST (): the quickstart evaluates the result itself, calibrated, below
        # The calibrated masker is the start (boundary and temperature calibrated above); a TCL
        # checkpoint's own masker would otherwise replace MODEL.MASKER (MASKER_FROM_WEIGHTS).
        opts = [*model_opts, *ttd_masker_opts(masker_before, args.ttd_masker_temperature), "DATASETS.TEST", "()",
                *args.opts]
        lora = train_ttd(args.ttd_config, output_dir / "ttd", opts, ttd_cfg.SOLVER.MAX_ITER, log_path)
    after_cfg = load_config(args.ttd_config, [*model_opts, "MODEL.TTD.LORA.WEIGHTS", str(lora),
                                           "MODEL.TTD.LORA.MERGE_FOR_INFERENCE", "True"])
    after_model = build_eval_model(after_cfg)
    masker_loader = TTDTrainer.build_test_loader(after_cfg, MASKER_SPLIT)
    with after_model.reusing_image_features():
        with tqdm(total=len(masker_loader), desc="calibration after TTD", unit="img") as bar:
            calibration["masker"]["after"] = calibrate_masker(after_model, masker_loader, bar)
        after = evaluate(after_model, after_cfg, args.test_splits, calibration["masker"]["after"], output_dir / "after",
                         "evaluation after TTD")

    report = quickstart_report(before, after, args.test_splits)
    report["calibration"] = calibration
    with open(output_dir / "quickstart_results.json", "w") as f:
        json.dump(report, f, indent=2)
    # the base model's soft masks and the targets drawn with TTD's starting masker (same boundary)
    start_w, start_b = ttd_masker_start(masker_before, args.ttd_masker_temperature)
    with torch.no_grad():
        base_model.masker.w.fill_(start_w)
        base_model.masker.b.fill_(start_b)
    grid = draw_quickstart_grid(base_model, after_model, ttd_cfg, args.test_splits[0], output_dir / "quickstart_grid.png")
    print_quickstart_summary(report, args.test_splits)
    print(f"wrote {output_dir / 'quickstart_results.json'} and {grid}; detectron2's log: {log_path}")


if __name__ == "__main__":
    run_tool(main)  # a missing or corrupt input: its message, no traceback
