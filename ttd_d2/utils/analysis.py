"""FLOP accounting of ``TTD`` models (the detectron2.utils.analysis of ttd_d2): fvcore counts of
the forward pieces a training step runs, and a ``FlopCounterMode`` for the executed step.
Used by benchmarks/bench_ttd_step.py; its README explains the convention ("FLOP accounting")."""
import contextlib
import math
import warnings
from typing import Dict, List, Sequence

import torch
from torch import nn

__all__ = ["MATMUL_OPS", "ForwardFlops", "forward_flops_per_step", "executed_flop_counter"]


def _sdpa_flop_jit(inputs, outputs):
    """fvcore handle of aten::scaled_dot_product_attention: q k^T and attn v multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


MATMUL_OPS = ("linear", "matmul", "mm", "addmm", "bmm", "einsum", "conv", "scaled_dot_product_attention")


class _TextTower(nn.Module):
    """The text forward that ``CLIPDense.encode_text`` runs (shortest context), as a module."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        from ttd_d2.modeling.backbone.text_encoding import encode_tokens

        return encode_tokens(self.clip, tokens)


class _BoundForward(nn.Module):
    """``backbone(x, with_global)`` with the flag fixed (jit tracing takes tensors only)."""

    def __init__(self, backbone: nn.Module, with_global: bool):
        super().__init__()
        self.backbone, self.with_global = backbone, with_global

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.backbone(x, with_global=self.with_global)


class ForwardFlops:
    """fvcore FLOPs (2 x multiply-adds of matrix products) of a model's forward pieces.

    Costs are affine in the number of sequences (the LoRA parametrisation ``W + s B A`` is
    computed once per call), so each piece is traced at 1 and 2 sequences and extrapolated
    exactly. Counting runs in fp32 (no autocast); FLOPs do not depend on the dtype.
    """

    def __init__(self, model: nn.Module, image_size: int):
        self.model, self.image_size = model, image_size
        self.backbone = model.backbone
        self._fits: Dict = {}
        self.unsupported_ops: Dict[str, int] = {}

    def _lora_context(self, lora: str):
        from ttd_d2.modeling.lora import lora_disabled

        return lora_disabled(self.backbone.clip) if lora == "off" else contextlib.nullcontext()

    def _count(self, module: nn.Module, inputs) -> int:
        from fvcore.nn import FlopCountAnalysis

        fca = FlopCountAnalysis(module, inputs).set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_jit)
        fca.unsupported_ops_warnings(False)
        fca.uncalled_modules_warnings(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            by_op = fca.by_operator()
            for name, n in fca.unsupported_ops().items():
                self.unsupported_ops[name] = max(self.unsupported_ops.get(name, 0), n)
        return 2 * sum(n for op, n in by_op.items() if op in MATMUL_OPS)

    def _affine(self, key, make_module, make_input):
        if key not in self._fits:
            bf16 = self.backbone.bf16, self.backbone.bf16_cpu
            self.backbone.bf16 = self.backbone.bf16_cpu = False
            try:
                with self._lora_context(key[-1]):
                    f1, f2 = (self._count(make_module(), (make_input(n),)) for n in (1, 2))
            finally:
                self.backbone.bf16, self.backbone.bf16_cpu = bf16
            self._fits[key] = (f1 - (f2 - f1), f2 - f1)  # (per call, per sequence)
        return self._fits[key]

    def image(self, n: int, with_global: bool, lora: str = "on") -> int:
        """Image tower forward of ``n`` images (``lora``: on | off)."""
        device, s = self.model.device, self.image_size
        a, b = self._affine(("image", with_global, lora), lambda: _BoundForward(self.backbone, with_global),
                            lambda k: torch.randn(k, 3, s, s, device=device))
        return a + b * n

    def text(self, texts: Sequence[str], templates: Sequence[str] = ("{}",), lora: str = "on") -> int:
        """Text tower forward of ``texts`` through ``templates``, as ``encode_text`` runs it."""
        from ttd_d2.modeling.backbone.text_encoding import shortest_context

        prompts = [t.format(x) for x in texts for t in templates]
        if not prompts:
            return 0
        tokens = self.backbone.tokenize(prompts)
        ctx = shortest_context(tokens)
        device = tokens.device
        a, b = self._affine(("text", ctx, lora), lambda: _TextTower(self.backbone.clip),
                            lambda k: torch.ones(k, ctx, dtype=torch.long, device=device))
        return a + b * len(prompts)


def forward_flops_per_step(model: nn.Module, counter: ForwardFlops, caption_batches: List[List[str]],
                           timed: range, cold_teacher_cache: bool) -> Dict[str, float]:
    """Mean forward FLOPs of the timed steps' pieces, following ``TTD.forward``."""
    batch_size = len(caption_batches[0])
    templates = model.backbone.prompt_templates
    ttd = model.ttd_enabled
    teacher = model.teacher if ttd else None
    needs_global = ttd and model._scoring_needs_global
    needs_caption = ttd and model._scoring_needs_caption
    student_global = model.contrastive_weight > 0 or (teacher == "self" and needs_global)
    pieces = {k: 0.0 for k in ("image", "caption", "tags", "teacher_image", "teacher_text")}
    seen, misses, uniques = set(), 0, 0
    for i, captions in enumerate(caption_batches[: timed.stop]):
        unique = model._tag_batch(captions)["unique"] if ttd else []  # the tags training encodes
        missing = [t for t in unique if cold_teacher_cache or t not in seen]
        seen.update(unique)
        if i not in timed:
            continue
        uniques += len(unique)
        pieces["caption"] += counter.text(captions)
        if ttd:
            pieces["tags"] += counter.text(unique, templates)
            if teacher in ("frozen", "ema"):
                lora = "off" if teacher == "frozen" else "on"
                encoded = missing if teacher == "frozen" else unique
                misses += len(encoded)
                pieces["teacher_text"] += counter.text(encoded, templates, lora)
                if needs_caption:
                    pieces["teacher_text"] += counter.text(captions, lora=lora)
    n = len(timed)
    out = {k: v / n for k, v in pieces.items()}
    out["image"] = float(counter.image(batch_size, student_global))
    if teacher in ("frozen", "ema"):
        out["teacher_image"] = float(counter.image(batch_size, needs_global, "off" if teacher == "frozen" else "on"))
    out["student_forward"] = out["image"] + out["caption"] + out["tags"]
    out["teacher_forward"] = out["teacher_image"] + out["teacher_text"]
    out["step"] = out["teacher_forward"] + 3 * out["student_forward"]
    out["unique_tags_per_step"] = uniques / n
    out["teacher_encoded_tags_per_step"] = misses / n
    return out


def executed_flop_counter():
    """``FlopCounterMode`` that also counts CPU attention (torch registers only the CUDA kernels)."""
    from torch.utils import flop_counter as fc

    aten, custom = torch.ops.aten, {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v))
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v))
    return fc.FlopCounterMode(display=False, custom_mapping=custom)
