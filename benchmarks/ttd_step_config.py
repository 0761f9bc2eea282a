"""The command line of benchmarks/bench_ttd_step.py and the two configs it builds from it: the
TTD step's and the plain contrastive fine-tune's."""
import argparse
from pathlib import Path
from typing import Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/Base-TTD.yaml"


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
    from ttd_d2.config_loading import merge_config_file, merge_config_opts

    cfg = get_cfg()
    add_ttd_config(cfg)
    if args.config_file:
        merge_config_file(cfg, _resolve(args.config_file))
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
    merge_config_opts(cfg, args.opts)
    if step == "ttd":
        cfg.MODEL.TTD.ENABLED = True
    else:
        cfg.MODEL.TTD.ENABLED = False
        cfg.MODEL.CLIP.CONTRASTIVE_WEIGHT = 1.0
    cfg.freeze()
    return cfg


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Training-step throughput of TTD against a plain CLIP contrastive fine-tune, in one process.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Trailing KEY VALUE pairs (detectron2 config overrides) are merged into both configs.",
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG,
                        help="base ttd_d2 config (relative paths: the working directory, then the repo root)")
    parser.add_argument("--arch", default="ViT-B-16", help="MODEL.CLIP.ARCH (open_clip name or JSON model config)")
    parser.add_argument("--image-size", type=int, default=448, help="square training input size")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing (>= 1)")
    parser.add_argument("--teacher", default="frozen", choices=("self", "frozen", "ema"), help="MODEL.TTD.TEACHER")
    parser.add_argument("--lora-targets", nargs="+", default=None, metavar="TARGET",
                        help="MODEL.TTD.LORA.TARGETS (default: the config's)")
    parser.add_argument("--tags-per-caption", type=int, default=8, help="candidate tags per synthetic caption")
    parser.add_argument("--cold-teacher-cache", action="store_true",
                        help="clear the frozen teacher's tag-embedding cache before every step (worst case)")
    parser.add_argument("--no-cudnn-sdpa", action="store_true",
                        help="disable PyTorch's cuDNN attention backend (flash / memory-efficient kernels instead)")
    parser.add_argument("--device", default="cuda", help="MODEL.DEVICE (cuda, cuda:1, cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, images and captions")
    parser.add_argument("--skip-flops", action="store_true", help="do not count FLOPs")
    parser.add_argument("--text-in-step", action="store_true",
                        help="tokenise captions and extract tags in the step (before 2026-12-02) instead of "
                             "giving the batches the loader workers' caption_tokens and candidate_tags")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, profile N more steps of each model (ttd_d2.utils.profiling)")
    parser.add_argument("--trace-dir", default="", help="with --profile: write each model's Chrome trace here")
    parser.add_argument("--output", default="", help="write all numbers to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.batch_size < 1:
        parser.error("--warmup, --steps and --batch-size must be >= 1")
    if len(args.opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    return args
