"""The report of benchmarks/bench_ttd_step.py: its FLOP accounting convention, in words, the
results table and the JSON report."""
import platform
from typing import Dict

FLOP_ACCOUNTING = (
    "FLOPs = 2 x multiply-adds of matrix products (linear, matmul, conv, attention), counted by "
    "fvcore FlopCountAnalysis on the forward pieces: image tower (CLIPDense forward at the "
    "benchmark size, with or without the vanilla last block as the step needs it) and text "
    "tower (captions; tag prompts; each at its own shortest context: the useful work; the "
    "student runs its tag prompts in the captions' pass, at their longer context, which only "
    "'executed' counts). "
    "plain step = 3 x (image + caption forward) [backward = 2 x forward]. "
    "TTD step = teacher forward (frozen/ema: image tower with adapters off/EMA, plus the text "
    "tower on tag prompts the teacher encodes in that step: cache misses for 'frozen', all "
    "for 'ema'; none for 'self') + 3 x student forward (image + caption + tag prompts, adapters "
    "on) [same backward = 2 x forward convention; LoRA skips the weight gradients of frozen, "
    "non-parametrised weights, so this overstates the TTD step's executed FLOPs]. Norms, "
    "elementwise ops, losses and the optimizer are not counted. 'executed' = "
    "torch.utils.flop_counter.FlopCounterMode over one whole warm-up step (forward + backward, "
    "matrix products as executed)."
)


def results_table(results: Dict[str, Dict]) -> str:
    from tabulate import tabulate

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    rows = []
    for name, r in results.items():
        f = r.get("flops") or {}
        rows.append([
            name, fmt(r["images_per_s"], ".1f"), fmt(r["step_time_ms"], ".1f"), fmt(r["peak_memory_gib"], ".2f"),
            fmt(r["trainable_params"] / 1e6, ".3g"), fmt(f["step_per_image"] / 1e9 if f else None, ".4g"),
            fmt(r.get("tflops_per_s"), ".4g"), fmt(r.get("tflops_per_s_executed"), ".4g"),
        ])
    headers = ["step", "img/s", "ms/step", "peak GiB", "trainable M", "GFLOP/img", "TFLOP/s", "TFLOP/s exec"]
    return tabulate(rows, headers=headers, tablefmt="github")


def build_report(args, results: Dict, ratio: float, target: float) -> Dict:
    """The JSON report: settings, environment, both steps' results, the ratio against its target."""
    import torch

    device = torch.device(args.device)
    return {
        "benchmark": "ttd_d2 training step: TTD vs plain CLIP contrastive full fine-tune",
        "settings": {
            "arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
            "steps": args.steps, "warmup": args.warmup, "teacher": results["ttd"]["teacher"],
            "lora_targets": results["ttd"]["lora_targets"], "tags_per_caption": args.tags_per_caption,
            "cold_teacher_cache": args.cold_teacher_cache, "no_cudnn_sdpa": args.no_cudnn_sdpa,
            "text_in_step": args.text_in_step,
            "device": args.device, "seed": args.seed,
            "config_file": args.config_file, "opts": list(args.opts),
            "optimizer": "TTDTrainer.build_optimizer (SOLVER.OPTIMIZER of the config)",
        },
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(),
            "cudnn_sdpa_enabled": (torch.backends.cuda.cudnn_sdp_enabled()
                                   if hasattr(torch.backends.cuda, "cudnn_sdp_enabled") else None),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "results": results,
        "ttd_over_plain_throughput": ratio,
        "target_ratio": target,
        "meets_target": ratio >= target,
        "flop_accounting": FLOP_ACCOUNTING,
    }
