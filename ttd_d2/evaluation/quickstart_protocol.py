"""The synthetic benchmark's evaluation as ``tools/quickstart.py`` runs it, before and after TTD:
the masker calibrated on word-level segmentation of semseg/val, then for each masker setting the
background threshold calibrated and every test split evaluated (docs/SYNTHETIC_BENCHMARK.md)."""
import logging
from pathlib import Path
from typing import Sequence

import torch
from detectron2.evaluation import inference_on_dataset, print_csv_format
from tqdm import tqdm

from ..data.datasets.builtin import synthetic_root
from ..data.synthetic.writer import read_meta, split_dir
from ..engine.trainer import TTDTrainer
from ..utils.progress import Progress
from .calibration import calibrate_background_threshold
from .result_cache import cached_call, evaluation_key
from .summary import summarize
from .word_calibration import calibrate_word_masker

__all__ = ["MASKER_SPLIT", "SETTINGS", "calibrate_masker", "evaluate", "evaluate_before", "set_masker_bias"]

PACKAGE = Path(__file__).resolve().parents[1]  # ttd_d2/: its code is part of the cache key
logger = logging.getLogger("quickstart")


# The masker settings every model is evaluated with: the masker it comes with ("as trained":
# the config's w, b for the base model, the learnt ones for the TTD result) and the bias
# calibrated on word-level segmentation of semseg/val, the same procedure for both models.
SETTINGS = ("as_trained", "calibrated")
MASKER_SPLIT = "synth_semseg_val"


def calibrate_masker(model, loader, bar) -> dict:
    """The masker calibrated on word-level segmentation of semseg/val's ``loader``
    (``calibrate_word_masker``); the model's masker is left as it was. Returns {"w",
    "b_as_trained", "b_calibrated" (the bias for the model's w: the evaluations' masker),
    "word_iou", "cos_threshold", "target_w", "target_b" (the same boundary at the softest
    temperature whose min-max word targets segment within one standard error of the best: TTD's
    start), "target_iou", "target_w_best", "target_iou_best", "target_iou_model_w",
    "target_sweep", "target_se"}."""
    found = calibrate_word_masker(model, Progress(loader, bar), MASKER_SPLIT)
    return {"w": float(model.masker.w), "b_as_trained": float(model.masker.b), "b_calibrated": found["b_for_model_w"],
            "word_iou": found["word_iou"], "cos_threshold": found["cos_threshold"], "target_w": found["w"],
            "target_b": found["b"], "target_iou": found["target_iou"], "target_w_best": found["w_best"],
            "target_iou_best": found["target_iou_best"], "target_iou_model_w": found["target_iou_model_w"],
            "target_sweep": found["target_sweep"], "target_se": found["target_se"]}


def set_masker_bias(model, bias: float) -> None:
    """Set the masker's bias b in place (the masker settings differ only in it)."""
    with torch.no_grad():
        model.masker.b.fill_(bias)


def evaluate(model, cfg, test_splits, masker: dict, output_dir: Path, desc: str):
    """For each masker setting (``SETTINGS``): calibrate the background on semseg/val, then
    evaluate every test split. Leaves the calibrated bias set. Returns {setting: {split: summary}}
    and writes the config it evaluated as ``output_dir``/config.yaml."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(cfg.dump())
    names = ["synth_semseg_val"] + [f"synth_{layout}_{s}" for s in test_splits for layout in ("semseg", "captions")]
    loaders = {name: TTDTrainer.build_test_loader(cfg, name) for name in names}
    summaries = {setting: {} for setting in SETTINGS}
    with tqdm(total=len(SETTINGS) * sum(len(loader) for loader in loaders.values()), desc=desc, unit="img") as bar:
        for setting in SETTINGS:
            set_masker_bias(model, masker["b_as_trained" if setting == "as_trained" else "b_calibrated"])
            threshold, _ = calibrate_background_threshold(model, Progress(loaders["synth_semseg_val"], bar), "synth_semseg_val")
            model.background_threshold = threshold
            for split in test_splits:
                results = {}
                for name in (f"synth_semseg_{split}", f"synth_captions_{split}"):
                    # DefaultTrainer.test's loop, with the stage's progress bar around the loader
                    evaluator = TTDTrainer.build_evaluator(cfg, name, str(output_dir / setting / "inference" / name))
                    results[name] = inference_on_dataset(model, Progress(loaders[name], bar), evaluator)
                    print_csv_format(results[name])
                summaries[setting][split] = summarize(results, threshold)
    return summaries


def evaluate_before(model, cfg, test_splits, output_dir: Path, masker: dict, cache_dir: str = "",
                    code: Sequence[Path] = ()):
    """``evaluate`` of the base model with ``masker`` (its biases as trained and calibrated).
    With ``cache_dir`` (``--base-cache``), once per key: the resolved config, the files it names,
    the splits' meta.json, ``masker`` and the code (the ttd_d2 package and the files ``code``
    names: the calling script; ``ttd_d2.evaluation.result_cache``); then read back. Either way
    the calibrated bias is left set, as ``evaluate`` leaves it."""
    def run():
        return evaluate(model, cfg, test_splits, masker, output_dir / "before", "evaluation before TTD")

    if not cache_dir:
        return run()
    root = synthetic_root()
    splits = [("semseg", "val")] + [(layout, s) for s in test_splits for layout in ("semseg", "captions")]
    datasets = {f"{layout}/{split}": read_meta(split_dir(root, layout, split)) for layout, split in splits}
    key = evaluation_key(cfg, datasets, {"masker": masker}, code=[PACKAGE, *code])
    before, hit = cached_call(cache_dir, key, run)
    set_masker_bias(model, masker["b_calibrated"])
    if hit:
        logger.info("evaluation before TTD: same base model, config, splits and calibration; reused from %s", cache_dir)
        print(f"evaluation before TTD: reused from {cache_dir} (same base model, config, splits and calibration)")
    return before
