#!/usr/bin/env python
"""The gate of the synthetic benchmark: can TTD improve a base model's caption masks?
(docs/SYNTHETIC_BENCHMARK.md, "The gate"; the metrics are ttd_d2/evaluation/gate.py)

    python benchmarks/dense_diagnostics.py --config-file configs/synthetic/clearclip.yaml --modes clearclip naclip \\
        [--output gate.json] [-- KEY VALUE ...]

For each dense head (MODEL.CLIP.DENSE_MODE), on validation splits only:
1. the masker is calibrated on word-level segmentation of the sem-seg split, as the quickstart's
   TTD starts from it: its boundary (each present class word's mask against its region), then its
   temperature w (the union of the present classes' min-max targets against their regions);
   --calibrate words fits b only, captions fits b to the caption mask instead, none keeps the
   config's MODEL.MASKER;
2. on the caption split, with that b: the target IoU of each tag selection (s_pixel, s_pixel
   without background words (moot on splits of generator version >= 2, whose evaluation
   captions never name the background), its object words only, the ground-truth tags), with and without
   min-max normalisation, against the caption mask's own IoU (2-class CaptionIoU, masks >=
   MODEL.SEG_INFERENCE.CAPTION_MASK_THRESHOLD), the coverage of dominant and secondary objects
   by the caption mask and by the min-max targets of s_pixel and of the ground-truth tags, and the tag-map AUC of dominant and secondary objects (P(an object pixel
   scores higher on its word's map than a pixel outside it); 0.5 = no localisation);
3. class accuracy on the sem-seg split with the true background given (among object pixels,
   the fraction whose best class is right; chance = 1/12);
   ``--masker-scale K`` then multiplies w and b by K (same boundary, softer or sharper masks);
4. the verdict: PASS when target IoU (s_pixel, min-max) >= caption-mask IoU + 5 and coverage
   dominant - secondary >= 20, with both margins.
Also zero-shot accuracy on training images whose caption names exactly one class (a proxy for
fitting the training data, to compare with held-out accuracy), for the last head.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from tabulate import tabulate
from tqdm import tqdm

import ttd_d2  # registers the datasets and models
from ttd_d2.config_loading import merge_config_file, merge_config_opts
from ttd_d2.data.datasets.label_conversion import write_text_atomic
from ttd_d2.data.mappers import TestMapper
from ttd_d2.data.synthetic.render import CLASSES
from ttd_d2.evaluation.calibration import calibrate_masker_bias
from ttd_d2.evaluation.word_calibration import calibrate_word_masker, calibrate_word_masker_bias
from ttd_d2.evaluation.caption_seg import caption_image_statistics, read_label_png
from ttd_d2.evaluation.metrics import to_numpy
from ttd_d2.utils.json_report import report_json
from ttd_d2.evaluation.gate import (
    GATE_BIAS_MARGIN, GATE_IOU_MARGIN, NORMALIZATIONS, SELECTIONS, names_background, object_aucs, summarize_gate,
    tag_selections, target_counts, target_union,
)
from ttd_d2.modeling.backbone import DENSE_MODES
from ttd_d2.modeling.meta_arch.segmentation import maps_to_image, padded_size
from ttd_d2.utils.cli import require_output_folder, run_tool

CALIBRATIONS = {"words+temperature": ("semseg", calibrate_word_masker), "words": ("semseg", calibrate_word_masker_bias),
                "captions": ("captions", calibrate_masker_bias)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/synthetic/clearclip.yaml")
    parser.add_argument("--modes", nargs="+", choices=DENSE_MODES, default=["clearclip", "naclip", "maskclip", "sclip", "vanilla"],
                        help="the dense heads (MODEL.CLIP.DENSE_MODE) to report")
    parser.add_argument("--num-images", type=int, default=100, help="first N >= 1 images of each split (training: 4N)")
    parser.add_argument("--calibrate", choices=[*CALIBRATIONS, "none"],
                        default="words+temperature",
                        help="where the masker comes from: b (and w) calibrated on word-level segmentation as the "
                        "quickstart's TTD start (words+temperature: calibrate_word_masker), b only (words, captions), "
                        "or the config's (none); the gate is defined on word-level segmentation (the first two)")
    parser.add_argument("--masker-scale", type=float, default=1.0, metavar="K",
                        help="after calibration, multiply the masker's w and b by K: the same decision boundary "
                        "(binary masks unchanged), softer (K < 1) or sharper (K > 1) masks, hence other min-max targets")
    parser.add_argument("--semseg-dataset", default="synth_semseg_val")
    parser.add_argument("--captions-dataset", default="synth_captions_val")
    parser.add_argument("--train-dataset", default="synth_image_text_train")
    parser.add_argument("--output", help="also write the report as JSON to this file (its folder is made)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...), after --")
    args = parser.parse_args(argv)
    if args.masker_scale <= 0:  # before any model is built
        parser.error(f"--masker-scale {args.masker_scale}: must be > 0")
    if args.num_images < 1:  # a negative N sliced images off the end, 0 failed in the calibration
        parser.error(f"--num-images {args.num_images}: must be at least 1")
    if args.output is not None:  # before the run, not after it
        if Path(args.output).is_dir():
            parser.error(f"--output {args.output} is a folder: name the JSON file to write, e.g. {Path(args.output) / 'gate.json'}")
        require_output_folder(parser, "the folder of --output", Path(args.output).parent)
    return args


def build_head(args, mode):
    cfg = get_cfg()
    ttd_d2.add_ttd_config(cfg)
    merge_config_file(cfg, args.config_file)
    merge_config_opts(cfg, ["MODEL.DEVICE", "cpu", *[o for o in args.opts if o != "--"], "MODEL.CLIP.DENSE_MODE", mode])
    return cfg, ttd_d2.TTDTrainer.build_model(cfg).eval(), TestMapper(cfg)


def calibrate(model, mapper, args):
    """Sets the model's masker bias (and with ``words+temperature`` its w) as ``--calibrate``
    says; returns what it did."""
    if args.calibrate == "none":
        return {"calibrated_on": None, "b": float(model.masker.b)}
    kind, calibration = CALIBRATIONS[args.calibrate]
    name = args.semseg_dataset if kind == "semseg" else args.captions_dataset
    records = DatasetCatalog.get(name)[: args.num_images]
    loader = ([mapper(r)] for r in tqdm(records, desc=f"calibrating the masker on {name}", leave=False))
    if args.calibrate == "words+temperature":  # TTD's start in the quickstart
        found = calibration(model, loader, name)
        model.masker.w.fill_(found["w"])
        model.masker.b.fill_(found["b"])
        return {"calibrated_on": name, "w": found["w"], "b": found["b"], "best_iou": found["word_iou"],
                "word_target_iou": found["target_iou"], "w_best": found["w_best"], "word_target_sweep": found["target_sweep"],
                "word_target_se": found["target_se"]}
    bias, sweep = calibration(model, loader, name)
    model.masker.b.fill_(bias)
    return {"calibrated_on": name, "b": bias, "best_iou": max(sweep.values())}


def scale_masker(model, scale: float) -> dict:
    """w, b -> scale * w, scale * b (``--masker-scale``): sigmoid(w cos + b) >= 0.5 exactly where
    it was, so the caption mask and every binary mask stay the same; the soft masks, and with them
    the min-max targets, get softer or sharper. Returns the masker it leaves."""
    with torch.no_grad():
        model.masker.w.mul_(scale)
        model.masker.b.mul_(scale)
    return {"scale": scale, "w_scaled": float(model.masker.w), "b_scaled": float(model.masker.b)}


def class_accuracy(model, mapper, records):
    correct = total = 0
    for record in records:
        pred = model([mapper(record)])[0]["sem_seg"][1:].argmax(0).cpu().numpy() + 1
        gt = read_label_png(record["sem_seg_file_name"])
        objects = (gt > 0) & (gt < 255)
        correct += int((pred[objects] == gt[objects]).sum())
        total += int(objects.sum())
    return 100.0 * correct / max(total, 1)


def caption_statistics(record, out, image_size, patch, threshold):
    """One caption's statistics for ``summarize_gate``, from the model's output ``out`` for the
    record's image resized to ``image_size`` (the mapper's) and padded to the ``patch`` grid."""
    gt = read_label_png(record["caption_mask_file"]) > 0
    instances = read_label_png(record["instance_mask_file"])
    padded = padded_size(image_size, patch)  # any map resolution (TCL's: 4x the grid)

    def to_image(maps):  # dense maps of the padded image -> the record's pixels
        return maps_to_image(maps, padded, tuple(image_size), gt.shape)

    tags = out["tags"]
    selections = tag_selections(tags, out["tag_scores"]["s_pixel"] >= out["tag_threshold"], record["tags"])
    def target_statistics(selection):  # the min-max target of one selection, as the caption mask's
        target = to_numpy(to_image(target_union(out["tag_masks"], selections[selection], "minmax"))) >= threshold
        return caption_image_statistics(target, gt, instances, record["objects"])

    return {
        "targets": target_counts(out["tag_masks"], selections, gt, to_image, threshold),
        "target": target_statistics("s_pixel"),
        "target_gt_tags": target_statistics("gt_tags"),
        "names_background": names_background(record["caption"]),
        "caption": caption_image_statistics(out["caption_mask"].cpu().numpy() >= threshold, gt, instances, record["objects"]),
        "aucs": object_aucs(to_image(out["tag_masks"]), tags, instances, record["objects"]) if tags else [],
    }


def caption_split_statistics(model, mapper, records, threshold, desc):
    per_image = []
    for record in tqdm(records, desc=desc, leave=False):
        x = mapper(record)
        out = model([x])[0]
        per_image.append(caption_statistics(record, out, x["image"].shape[-2:], model.backbone.size_divisibility, threshold))
    return per_image


def train_zero_shot(model, mapper, records):
    class_emb = model.backbone.encode_text(list(CLASSES), use_templates=True)
    correct = total = 0
    for record in records:
        named = [c for c in CLASSES if c in record["caption"].replace(",", " ").split()]
        if len(named) != 1:
            continue
        image = model.normalize(mapper(record)["image"])[None]
        emb = F.normalize(model.backbone(image)["global"], dim=-1)
        correct += int(CLASSES[int((emb @ class_emb.T).argmax())] == named[0])
        total += 1
    return {"accuracy": 100.0 * correct / max(total, 1), "num_images": total}


def print_report(report):
    heads = report["heads"]
    print(tabulate([[m, h["class_accuracy"], h["tag_map_auc"]["dominant"], h["tag_map_auc"]["secondary"],
                     h["masker"]["b"]] for m, h in heads.items()],
                   headers=["head", "class acc. (true bg)", "tag-map AUC dominant", "AUC secondary", "masker b"],
                   tablefmt="pipe", floatfmt=".3f"))
    rows = [[f"target: {sel}, {norm}", *(h["target_iou"][sel][norm] for h in heads.values())]
            for sel in SELECTIONS for norm in NORMALIZATIONS]
    rows += [[f"target: s_pixel, minmax, {label}", *(h["target_iou_s_pixel_minmax"][k] for h in heads.values())]
             for k, label in (("names_background", "captions naming the background"), ("others", "other captions"))]
    rows += [["caption mask", *(h["caption_mask"]["CaptionIoU"] for h in heads.values())]]
    rows += [[f"{what} coverage {k}", *(h[key][f"coverage_{k}"] for h in heads.values())]
             for what, key in (("caption mask", "caption_mask"), ("target (s_pixel, minmax)", "target_mask"),
                               ("target (gt_tags, minmax)", "target_mask_gt_tags"))
             for k in ("dominant", "secondary")]
    print(f"\n2-class IoU on {report['settings']['captions_dataset']} ({report['settings']['num_images']} images):")
    print(tabulate(rows, headers=["", *heads], tablefmt="pipe", floatfmt=".1f"))
    if all(np.isnan(h["target_iou_s_pixel_minmax"]["names_background"]) for h in heads.values()):
        print("(no caption names the background, as in every caption split of generator version >= 2: the "
              "s_pixel_no_background rows equal the s_pixel ones)")
    zero_shot = report["train_zero_shot"]
    print(f"\nzero-shot accuracy on {zero_shot['num_images']} training images whose caption names one class: "
          f"{zero_shot['accuracy']:.1f}")
    print(f"\nThe gate: target IoU (s_pixel, minmax) >= caption-mask IoU + {GATE_IOU_MARGIN:g} and coverage "
          f"dominant - secondary >= {GATE_BIAS_MARGIN:g}, masker b calibrated on {report['settings']['calibrate']}")
    for mode, head in heads.items():
        g = head["gate"]
        print(f"{mode}: {g['verdict']}  target - caption IoU {g['target_minus_caption_iou']:+.1f} (margin "
              f"{g['iou_margin']:+.1f}), coverage dominant - secondary {g['dominant_minus_secondary']:+.1f} "
              f"(margin {g['bias_margin']:+.1f})")
    if CALIBRATIONS.get(report["settings"]["calibrate"], ("config",))[0] != "semseg":
        print("note: the gate is defined with the masker calibrated on word-level segmentation "
              "(--calibrate words+temperature or words)")


@torch.no_grad()
def main(argv=None):
    args = parse_args(argv)
    for name in (args.semseg_dataset, args.captions_dataset, args.train_dataset):
        if name not in DatasetCatalog.list():
            raise SystemExit(f"dataset '{name}' is not registered: python tools/generate_synthetic.py --preset "
                             "quickstart (or name another split with --semseg-dataset / --captions-dataset / --train-dataset)")
    report = {"settings": {**{k: v for k, v in vars(args).items() if k != "output"}, "opts": [o for o in args.opts if o != "--"]},
              "heads": {}}
    for mode in args.modes:
        cfg, model, mapper = build_head(args, mode)
        masker = calibrate(model, mapper, args)
        masker.update(scale_masker(model, args.masker_scale))
        threshold = cfg.MODEL.SEG_INFERENCE.CAPTION_MASK_THRESHOLD
        captions = DatasetCatalog.get(args.captions_dataset)[: args.num_images]
        per_image = caption_split_statistics(model, mapper, captions, threshold, desc=mode)
        report["heads"][mode] = {
            "masker": masker,
            "class_accuracy": class_accuracy(model, mapper, DatasetCatalog.get(args.semseg_dataset)[: args.num_images]),
            **summarize_gate(per_image),
        }
    report["train_zero_shot"] = train_zero_shot(model, mapper, DatasetCatalog.get(args.train_dataset)[: 4 * args.num_images])
    print_report(report)
    if args.output:
        write_text_atomic(args.output, report_json(report))  # an undefined IoU (NaN) as null
    return report


if __name__ == "__main__":
    run_tool(main)  # a missing or corrupt input: its message, no traceback
