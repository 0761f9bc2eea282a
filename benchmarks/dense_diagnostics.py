#!/usr/bin/env python
"""How well a model's dense maps localise, independent of any threshold (docs/RESULTS.md).

    python benchmarks/dense_diagnostics.py --config-file configs/clearclip.yaml [--modes clearclip naclip] [-- KEY VALUE ...]

For each dense head, on the validation splits of the synthetic benchmark:
- class accuracy with the true background given: among ground-truth object pixels of
  ``semseg/val``, the fraction whose highest-scoring class is right (chance = 1/12);
- tag-map AUC: for each object of ``captions/val`` named by a candidate tag, the probability
  that a pixel of the object scores higher on the tag's map than a pixel outside it (0.5 =
  no localisation), averaged over dominant and over secondary objects.
- target quality: 2-class IoU, against the ground-truth caption mask, of the TTD target (the
  union of the min-max normalised masks of the tags that s_pixel selects) and of the caption's
  own mask (both thresholded at 0.5); TTD can only help when the target is the better one.
Also zero-shot accuracy on training-split images whose training caption names exactly one
class (a proxy for fitting the training data, to compare with the held-out accuracy).
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from PIL import Image
from tabulate import tabulate

import ttd_d2
from ttd_d2.data.mappers import TestMapper
from ttd_d2.data.synthetic.render import CLASSES
from ttd_d2.modeling.ttd import minmax_normalize


def class_accuracy(model, mapper, records):
    correct = total = 0
    for record in records:
        scores = model([mapper(record)])[0]["sem_seg"]
        gt = np.asarray(Image.open(record["sem_seg_file_name"]))
        pred = scores[1:].argmax(0).cpu().numpy() + 1
        objects = (gt > 0) & (gt < 255)
        correct += int((pred[objects] == gt[objects]).sum())
        total += int(objects.sum())
    return 100.0 * correct / max(total, 1)


def auc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(a random inside value > a random outside value), ties counted half."""
    outside = np.sort(outside)
    below = np.searchsorted(outside, inside, side="left")
    not_above = np.searchsorted(outside, inside, side="right")
    return float(((below + not_above) / 2).mean() / len(outside))


def tag_map_auc(model, mapper, records):
    found = {True: [], False: []}
    for record in records:
        out = model([mapper(record)])[0]
        instances = np.asarray(Image.open(record["instance_mask_file"]))
        maps = F.interpolate(out["tag_masks"][None], size=instances.shape, mode="bilinear")[0].cpu().numpy()
        for i, obj in enumerate(record["objects"]):
            mask = instances == i + 1
            if obj["category"] in out["tags"] and mask.any() and not mask.all():
                tag_map = maps[out["tags"].index(obj["category"])]
                found[obj["dominant"]].append(auc(tag_map[mask], tag_map[~mask]))
    return float(np.mean(found[True])), float(np.mean(found[False]))


def two_class_iou(conf):
    tp = np.diag(conf).astype(float)
    return 100.0 * float(np.mean(tp / (conf.sum(0) + conf.sum(1) - tp)))


def target_quality(model, mapper, records):
    """(target IoU, caption-mask IoU), 2-class, in percent."""
    target_conf, caption_conf = np.zeros((2, 2), int), np.zeros((2, 2), int)
    for record in records:
        out = model([mapper(record)])[0]
        gt = np.asarray(Image.open(record["caption_mask_file"])) > 0
        selected = out["tag_scores"]["s_pixel"] >= out["tag_threshold"]
        union = torch.zeros(1, *out["tag_masks"].shape[-2:]) if not selected.any() else \
            minmax_normalize(out["tag_masks"][selected]).amax(0, keepdim=True)
        union = F.interpolate(union[None], size=gt.shape, mode="bilinear")[0, 0].cpu().numpy()
        for conf, pred in ((target_conf, union >= 0.5), (caption_conf, out["caption_mask"].cpu().numpy() >= 0.5)):
            conf += np.bincount(gt.ravel() * 2 + pred.ravel(), minlength=4).reshape(2, 2)
    return two_class_iou(target_conf), two_class_iou(caption_conf)


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
    return 100.0 * correct / max(total, 1), total


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/clearclip.yaml")
    parser.add_argument("--modes", nargs="+", default=["clearclip", "naclip", "maskclip", "sclip", "vanilla"])
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    rows = []
    for mode in args.modes:
        cfg = get_cfg()
        ttd_d2.add_ttd_config(cfg)
        cfg.merge_from_file(args.config_file)
        opts = [o for o in args.opts if o != "--"]
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.CLIP.DENSE_MODE", mode, *opts])
        model = ttd_d2.TTDTrainer.build_model(cfg).eval()
        mapper = TestMapper(cfg)
        accuracy = class_accuracy(model, mapper, DatasetCatalog.get("synth_semseg_val")[: args.num_images])
        captions = DatasetCatalog.get("synth_captions_val")[: args.num_images]
        dominant, secondary = tag_map_auc(model, mapper, captions)
        rows.append([mode, accuracy, dominant, secondary, *target_quality(model, mapper, captions)])
    zero_shot, count = train_zero_shot(model, mapper, DatasetCatalog.get("synth_image_text_train")[: 4 * args.num_images])
    print(tabulate(rows, headers=["head", "class acc. (true bg)", "tag-map AUC dominant", "AUC secondary",
                                  "target IoU", "caption-mask IoU"],
                   tablefmt="pipe", floatfmt=".3f"))
    print(f"zero-shot accuracy on {count} training images whose caption names one class: {zero_shot:.1f}")


if __name__ == "__main__":
    main()
