"""The two configs benchmarks/bench_ttd_step.py builds from its arguments: the TTD step's and
the plain contrastive fine-tune's."""
import argparse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _resolve(path: str) -> str:
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return str(p)
    return str(REPO_ROOT / p) if (REPO_ROOT / p).is_file() else str(p)


def build_cfg(args: argparse.Namespace, step: str):
    """The config of ``step`` ("ttd" | "plain"): base file, benchmark keys, then the trailing opts;
    the keys that define the step are applied last."""
    from detectron2.config import get_cfg

    from ttd_d2 import add_ttd_config

    cfg = get_cfg()
    add_ttd_config(cfg)
    if args.config_file:
        cfg.merge_from_file(_resolve(args.config_file))
    arch = args.arch
    if arch.endswith(".json") and not Path(arch).is_file() and (REPO_ROOT / arch).is_file():
        arch = str(REPO_ROOT / arch)
    cfg.MODEL.CLIP.ARCH = arch
    cfg.MODEL.CLIP.PRETRAINED = ""
    cfg.MODEL.CLIP.BF16 = True
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.TTD.TEACHER = args.teacher
    if args.lora_targets:
        cfg.MODEL.TTD.LORA.TARGETS = list(args.lora_targets)
    cfg.INPUT.TRAIN_SIZE = args.image_size
    cfg.SOLVER.IMS_PER_BATCH = args.batch_size
    cfg.merge_from_list(list(args.opts))
    if step == "ttd":
        cfg.MODEL.TTD.ENABLED = True
    else:
        cfg.MODEL.TTD.ENABLED = False
        cfg.MODEL.CLIP.CONTRASTIVE_WEIGHT = 1.0
    cfg.freeze()
    return cfg
