#!/usr/bin/env python
"""Training-step throughput of TTD against a plain CLIP contrastive fine-tune, in one process.

Two models are built one after the other from the same config, on one device:

* ``ttd``:   ``MODEL.TTD.ENABLED True`` (LoRA adapters, TTD losses, teacher ``--teacher``);
* ``plain``: ``MODEL.TTD.ENABLED False``, ``MODEL.CLIP.CONTRASTIVE_WEIGHT 1.0``: CLIP's
  contrastive loss with every parameter trainable (full fine-tune).

Each one is trained exactly as ``TTDTrainer`` does (``model.train(); losses = model(batch);
sum(losses.values()).backward(); opt.step(); opt.zero_grad(set_to_none=True)``, optimizer from
``TTDTrainer.build_optimizer``) on synthetic uint8 images that sit on the device already (data
loading is not measured) and deterministic synthetic captions (``--tags-per-caption`` candidate
tags each after stopword removal). Each sample also carries what the trainer's loader workers
add (``CaptionTrainMapper``: ``caption_tokens``, and ``candidate_tags`` for TTD), so the step
does in the main process what a training step does there; ``--text-in-step`` leaves both to
the step, as measured before 2026-12-02. After ``--warmup`` steps, ``--steps`` steps are timed
between two ``torch.cuda.synchronize()``.

FLOPs (see benchmarks/README.md, "FLOP accounting"): fvcore's ``FlopCountAnalysis`` counts the
forward pieces (image tower at the benchmark size, text tower on captions and tag prompts);
``FLOPs = 2 x fvcore's count`` (fvcore counts one multiply-add as one flop) over matrix
products only. Step FLOPs use the convention ``step = teacher forward + 3 x student forward``
(backward = 2 x forward; no teacher in the plain step). As a cross-check, one warm-up step of
each model runs under ``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix
products executed in that step, backward included ("executed").

GPU host (one H200)::

    python benchmarks/bench_ttd_step.py --output output/bench_ttd_step.json

CPU smoke run (tiny model)::

    python benchmarks/bench_ttd_step.py --arch tests/fixtures/tiny_clip.json --image-size 32 \\
        --batch-size 4 --steps 2 --warmup 1 --device cpu

Trailing ``KEY VALUE`` pairs are merged into both configs, e.g.
``MODEL.TTD.LORA.TARGETS "['mlp.c_fc', 'mlp.c_proj']"``.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_ttd_step.py` without install
    sys.path.insert(0, str(REPO_ROOT))
if "NLTK_DATA" not in os.environ and (REPO_ROOT.parent / "shared" / "nltk_data").is_dir():
    os.environ["NLTK_DATA"] = str(REPO_ROOT.parent / "shared" / "nltk_data")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import record_function  # noqa: E402

from benchmarks.ttd_step_inputs import CONTENT_WORDS, make_captions, make_images  # noqa: E402,F401
from benchmarks.ttd_step_config import build_cfg, parse_args  # noqa: E402
from benchmarks.ttd_step_report import FLOP_ACCOUNTING, build_report, results_table  # noqa: E402

logger = logging.getLogger("bench_ttd_step")

# Issue "performance": TTD / plain >= 1.0 with the default adapters, >= 1.2 with
# MODEL.TTD.LORA.IMAGE_LAYERS 2 (adapters only in the last two image blocks).
TARGET_RATIO = 1.0
TARGET_RATIO_LATE_ADAPTERS = 1.2
GIB = float(1 << 30)


from ttd_d2.utils.analysis import ForwardFlops, executed_flop_counter, forward_flops_per_step  # noqa: E402


# ---------------------------------------------------------------------------------- timing
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: nn.Module, optimizer, batch: List[Dict]) -> Dict[str, torch.Tensor]:
    """One step, its parts labelled for ``--profile`` (the model labels its own stages inside)."""
    with record_function("ttd.forward"):
        losses = model(batch)
    total = sum(losses.values())
    if not total.requires_grad:
        raise SystemExit(f"bench_ttd_step: the losses {sorted(losses)} reach no trainable weight in this config "
                         f"(MODEL.BACKBONE.NAME {model.backbone.__class__.__name__}); the plain step is a contrastive "
                         "fine-tune of the CLIP's global embedding, which a frozen-CLIP backbone such as TCL does not "
                         "train: benchmark it on a CLIPDense config")
    with record_function("ttd.backward"):
        total.backward()
    with record_function("ttd.optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses


def measure(step: str, args: argparse.Namespace, images: List[torch.Tensor],
            caption_batches: List[List[str]]) -> Dict:
    """Build the ``step`` model, count its FLOPs, warm it up and time ``args.steps`` steps."""
    from detectron2.modeling import build_model

    from ttd_d2.engine.trainer import TTDTrainer

    cfg = build_cfg(args, step)
    device = torch.device(cfg.MODEL.DEVICE)
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    model.train()
    params = list(model.parameters())
    result: Dict = {
        "step": step,
        "teacher": cfg.MODEL.TTD.TEACHER if step == "ttd" else None,
        "lora_targets": list(cfg.MODEL.TTD.LORA.TARGETS) if step == "ttd" else None,
        "contrastive_weight": cfg.MODEL.CLIP.CONTRASTIVE_WEIGHT,
        "dense_mode": cfg.MODEL.CLIP.DENSE_MODE,
        "tag_scoring": cfg.MODEL.TTD.TAG_SCORING if step == "ttd" else None,
        "precision": "bf16 autocast" if device.type == "cuda" and cfg.MODEL.CLIP.BF16 else "fp32",
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
    }
    warm, timed = range(args.warmup), range(args.warmup, args.warmup + args.steps)
    flops = None
    if not args.skip_flops:
        t0 = time.perf_counter()
        counter = ForwardFlops(model, args.image_size)
        flops = forward_flops_per_step(model, counter, caption_batches, timed, args.cold_teacher_cache)
        flops["unsupported_ops"] = counter.unsupported_ops
        result["flop_count_seconds"] = time.perf_counter() - t0
    optimizer = TTDTrainer.build_optimizer(cfg, model)
    batches = [[{"image": img, "caption": cap} for img, cap in zip(images, caps)] for caps in caption_batches]
    if not args.text_in_step:  # what TTDTrainer's loader workers add to each sample (CaptionTrainMapper)
        for batch in batches:
            captions = [x["caption"] for x in batch]
            tags = model.candidate_tags(captions) if step == "ttd" else [None] * len(batch)
            for x, tokens, caption_tags in zip(batch, model.backbone.tokenizer(captions).numpy(), tags):
                x["caption_tokens"] = tokens
                if caption_tags is not None:
                    x["candidate_tags"] = caption_tags
    teacher_cache = getattr(model, "_teacher_text_cache", None)

    def run(i: int) -> Dict[str, torch.Tensor]:
        if args.cold_teacher_cache and teacher_cache is not None:
            teacher_cache.clear()
        return train_step(model, optimizer, batches[i])

    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        result["model_memory_gib"] = torch.cuda.memory_allocated(device) / GIB
        torch.cuda.reset_peak_memory_stats(device)
    for i in warm:
        if i == warm.stop - 1 and flops is not None:
            with executed_flop_counter() as executed:
                run(i)
            flops["step_executed"] = float(executed.get_total_flops())
        else:
            run(i)
    _synchronize(device)
    start = time.perf_counter()
    for i in timed:
        losses = run(i)
    _synchronize(device)
    elapsed = time.perf_counter() - start
    images_done = args.steps * args.batch_size
    result.update({
        "elapsed_s": elapsed,
        "step_time_ms": 1e3 * elapsed / args.steps,
        "images_per_s": images_done / elapsed,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
        "losses": {k: float(v.detach()) for k, v in losses.items()},
    })
    if args.profile:
        from ttd_d2.utils.profiling import profile_steps

        trace = os.path.join(args.trace_dir, f"{step}.json") if args.trace_dir else None
        if trace:
            os.makedirs(args.trace_dir, exist_ok=True)
        steps = iter(range(args.profile))
        profiled = profile_steps(lambda: run(warm.stop + next(steps) % args.steps), args.profile, device, trace)
        result["profile"] = profiled.to_dict()
        print(f"[{step}] " + profiled.table(), flush=True)
    if step == "ttd":
        stats = getattr(model, "tag_statistics", {}) or {}
        for key in ("candidates_per_caption", "selected_per_caption"):
            result[key] = float(stats[key]) if key in stats else None
    if flops is not None:
        flops["step_per_image"] = flops["step"] / args.batch_size
        result["flops"] = flops
        result["tflops_per_s"] = flops["step"] * args.steps / elapsed / 1e12
        if "step_executed" in flops:
            result["tflops_per_s_executed"] = flops["step_executed"] * args.steps / elapsed / 1e12
    del model, optimizer, batches, params
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Run the benchmark; print a table, write ``--output`` (if given) and return the numbers."""
    args = parse_args(argv)
    with warnings.catch_warnings():  # detectron2/fvcore imports trip torch.jit.script deprecation warnings
        warnings.simplefilter("ignore")
        import detectron2.modeling  # noqa: F401
        import fvcore.nn  # noqa: F401
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available (use --device cpu)")
    if args.no_cudnn_sdpa and hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)  # process-wide: both steps
    n_batches = args.warmup + args.steps
    caption_batches = [make_captions(args.batch_size, args.tags_per_caption, args.seed, i) for i in range(n_batches)]
    images = make_images(args.batch_size, args.image_size, device, args.seed)

    results = {}
    for step in ("ttd", "plain"):
        logger.info("%s: building, counting FLOPs, %d warm-up + %d timed steps ...",
                    step, args.warmup, args.steps)
        results[step] = measure(step, args, images, caption_batches)
    ratio = results["ttd"]["images_per_s"] / results["plain"]["images_per_s"]
    late = build_cfg(args, "ttd").MODEL.TTD.LORA.IMAGE_LAYERS
    target = TARGET_RATIO_LATE_ADAPTERS if 0 < late <= 2 else TARGET_RATIO
    report = build_report(args, results, ratio, target)
    print(results_table(results))
    print(f"TTD / plain throughput: {ratio:.3f} (target >= {target})"
          f"  [{args.arch}, {args.image_size} px, batch {args.batch_size}, teacher {args.teacher},"
          f" {results['ttd']['precision']}]")
    if not args.skip_flops:
        print("FLOP accounting: " + FLOP_ACCOUNTING)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, format="%(message)s")  # open_clip's random-init warning
    logger.setLevel(logging.INFO)
    main()
