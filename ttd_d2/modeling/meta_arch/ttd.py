"""The ``TTD`` meta-architecture: a dense CLIP backbone + masker, with TTD training."""
import logging
import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.utils import comm
from open_clip.loss import ClipLoss
from torch import nn
from torch.nn.utils import parametrize
from torch.profiler import record_function

from ...data.collate import stack_field
from ..backbone.clip_loading import resolve_arch
from ..masker import Masker, build_masker
from ..kernel_choice import KernelChoice
from ..pamr import PAMR
from ..stitch_kernel import KEY as STITCH_KEY
from ..test_time_augmentation import CLASS_SCORES
from ..ttd.scoring import SCORING_METHODS
from ..ttd.text_cache import TextEmbeddingCache
from .inference import TTDInference
from .ttd_distillation import TTDDistillation
from .ttd_lora import setup_lora

logger = logging.getLogger(__name__)
TEACHERS = ("self", "frozen", "ema")
MAX_LOGIT_SCALE = 100.0


@META_ARCH_REGISTRY.register()
class TTD(TTDDistillation, TTDInference, nn.Module):
    """Open-vocabulary segmentation with any ``CLIPDense`` backbone, trainable with TTD.

    Training (``batched_inputs`` with "image" and "caption") returns a dict of losses:
    ``loss_distill`` and ``loss_tag`` when ``ttd_enabled``, ``loss_contrastive`` when
    ``contrastive_weight > 0`` (plain CLIP training when TTD is off), and the backbone's own
    ``training_losses`` when it has an objective (TCL's, ``MODEL.TCL.LOSS``). Inference returns
    ``{"sem_seg": [C, H, W]}`` for images, or the caption analysis of ``docs/INTERFACES.md``
    for inputs that carry a "caption". The TTD training step's parts (tag batch, teacher
    views, distillation losses, statistics) are in ``TTDDistillation`` (``ttd_distillation.py``),
    eval mode in ``TTDInference`` (``inference.py``), the LoRA set-up in ``ttd_lora.py``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        masker: Masker,
        ttd_enabled: bool = False,
        tag_scoring: str = "s_pixel",
        tag_threshold: float = 0.5,
        remove_stopwords: bool = True,
        max_tags: int = 32,
        teacher: str = "frozen",
        ema_decay: float = 0.999,
        loss_distance: str = "l1",
        target_norm: str = "minmax",
        distill_weight: float = 1.0,
        tag_weight: float = 1.0,
        contrastive_weight: float = 0.0,
        lora: Optional[Dict] = None,
        background_threshold: float = -1.0,
        slide_crop: int = 0,
        slide_stride: int = 0,
        window_batch: int = 8,
        stitch_kernel: str = "auto",
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        pamr: Optional[nn.Module] = None,
        class_scores: str = "ttd",
        logit_scale: float = 40.0,
        prob_threshold: float = 0.0,
        default_dataset: str = "",
        compile_mode: str = "",
        compile_backend: str = "inductor",
        compile_text_mode: str = "same",
    ):
        """
        Args:
            backbone: a ``CLIPDense`` (forward -> {"dense", "global"}, ``encode_text``).
            masker: turns cosine maps into mask probabilities.
            ttd_enabled: add LoRA adapters and train with the TTD losses.
            tag_scoring: s_pixel | s_image | s_text | image_text | nltk: how tags are selected.
            tag_threshold: a tag is selected when its score >= this.
            remove_stopwords: drop NLTK stopwords from candidate tags.
            max_tags: candidate tags kept per caption (the first ones inside the text window).
            teacher: self | frozen | ema: the model the targets come from.
            ema_decay: decay of the EMA teacher's adapted weights.
            loss_distance: l1 | mse | bce.
            target_norm: minmax | none: how a selected tag's teacher mask becomes its target.
            distill_weight, tag_weight: weights of L_distill and L_tag.
            contrastive_weight: weight of CLIP's contrastive loss.
            lora: dict(rank, alpha, targets, towers, image_layers, weights, merge, arch) of
                ``_setup_lora``; used when ``ttd_enabled`` or a LoRA file ``weights`` is given.
            background_threshold: constant background score (< 0: the dataset's metadata).
            slide_crop, slide_stride: sliding-window inference (crop 0 = whole image).
            window_batch: windows per forward in sliding-window inference, pooled over scales and flips (0 = all of a size).
            stitch_kernel: auto | eager | triton: how the windows' maps become a pass's scores
                (``stitch_kernel.py``; ``kernel_choice``).
            flip: add a horizontally flipped pass at inference (of every scale).
            scales: resize factors of the multi-scale inference (``multi_scale_flip``).
            pamr: a ``PAMR`` refining the class scores at inference, or None.
            class_scores: ttd (masker probabilities) | softmax (softmax over the names of
                ``logit_scale`` x cosine, background = ``prob_threshold``): docs/EVALUATION.md.
            default_dataset: metadata used when an input carries no "dataset_name".
            compile_mode, compile_backend: ``torch.compile`` of the towers' blocks
                (``MODEL.CLIP.COMPILE``; "" = eager), applied last, over the adapters;
                compile_text_mode: the text blocks' mode ("same" = compile_mode).
        """
        super().__init__()
        if tag_scoring not in SCORING_METHODS + ("nltk",):
            raise ValueError(f"MODEL.TTD.TAG_SCORING '{tag_scoring}' unknown; use one of {SCORING_METHODS + ('nltk',)}")
        if teacher not in TEACHERS:
            raise ValueError(f"MODEL.TTD.TEACHER '{teacher}' unknown; use one of {TEACHERS}")
        self.backbone = backbone
        self.masker = masker
        self.ttd_enabled = ttd_enabled
        self.tag_scoring = tag_scoring
        self.tag_threshold = tag_threshold
        self.remove_stopwords = remove_stopwords
        if max_tags < 1:
            raise ValueError(f"MODEL.TTD.MAX_TAGS must be >= 1 (tags kept per caption), got {max_tags}")
        self.max_tags = max_tags
        self.teacher = teacher
        self.ema_decay = ema_decay
        self.loss_distance = loss_distance
        self.target_norm = target_norm
        self.distill_weight = distill_weight
        self.tag_weight = tag_weight
        self.contrastive_weight = contrastive_weight
        self.background_threshold = background_threshold
        self.slide_crop, self.slide_stride, self.flip = slide_crop, slide_stride, flip
        self.window_batch = window_batch
        self.stitch = KernelChoice(stitch_kernel, STITCH_KEY)
        if class_scores not in CLASS_SCORES:
            raise ValueError(f"MODEL.SEG_INFERENCE.CLASS_SCORES '{class_scores}' unknown; use one of {CLASS_SCORES}")
        self.scales, self.pamr, self.class_scores = tuple(scales), pamr, class_scores
        self.logit_scale, self.prob_threshold = logit_scale, prob_threshold
        self.default_dataset = default_dataset
        self.register_buffer("pixel_mean", torch.tensor(backbone.pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(backbone.pixel_std).view(-1, 1, 1), False)
        self._class_cache: Dict = {}
        self._feature_cache: Optional[Dict] = None  # reusing_image_features(): backbone outputs by input
        self.ema_teacher = nn.Module()  # EMA of the adapters' deltas as buffers: saved and resumed with the model
        self.tag_statistics: Dict = {}
        self._teacher_text_cache = TextEmbeddingCache(self._teacher_encode_tags)
        self.shared_image_blocks = 0
        self._contrastive_loss = ClipLoss(gather_with_grad=True, rank=comm.get_rank(), world_size=comm.get_world_size())
        self.lora_settings: Optional[Dict] = None  # of the adapters, recorded in LoRA files
        if ttd_enabled or (lora or {}).get("weights"):
            self._setup_lora(**(lora or {}))
        if not ttd_enabled and backbone.objective is None:
            masker.requires_grad_(False)  # no loss reads it (see ttd_lora: what trains)
        backbone.compile_towers(compile_mode, compile_backend, compile_text_mode)

    @classmethod
    def from_config(cls, cfg):
        # Every key is checked before CLIP is loaded. Imported here: config_checks imports
        # the modeling package (its lists of valid values), which imports this module.
        from ...config_checks import check_model_config

        check_model_config(cfg)
        ttd, test = cfg.MODEL.TTD, cfg.MODEL.SEG_INFERENCE
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "masker": build_masker(cfg, backbone),
            "ttd_enabled": ttd.ENABLED,
            "tag_scoring": ttd.TAG_SCORING,
            "tag_threshold": ttd.TAG_THRESHOLD,
            "remove_stopwords": ttd.REMOVE_STOPWORDS,
            "max_tags": ttd.MAX_TAGS,
            "teacher": ttd.TEACHER,
            "ema_decay": ttd.EMA_DECAY,
            "loss_distance": ttd.LOSS.DISTANCE,
            "target_norm": ttd.TARGET_NORM,
            "distill_weight": ttd.LOSS.DISTILL_WEIGHT,
            "tag_weight": ttd.LOSS.TAG_WEIGHT,
            "contrastive_weight": cfg.MODEL.CLIP.CONTRASTIVE_WEIGHT,
            "lora": {
                "rank": ttd.LORA.RANK,
                "alpha": ttd.LORA.ALPHA,
                "targets": list(ttd.LORA.TARGETS),
                "towers": list(ttd.LORA.TOWERS),
                "image_layers": ttd.LORA.IMAGE_LAYERS,
                "weights": ttd.LORA.WEIGHTS,
                "merge": ttd.LORA.MERGE_FOR_INFERENCE,
                "arch": resolve_arch(cfg.MODEL.CLIP.ARCH),
            },
            "background_threshold": test.BACKGROUND_THRESHOLD,
            "slide_crop": test.SLIDE_CROP,
            "slide_stride": test.SLIDE_STRIDE,
            "window_batch": test.WINDOW_BATCH,
            "stitch_kernel": test.STITCH_KERNEL,
            "flip": test.FLIP,
            "scales": tuple(test.SCALES),
            "pamr": PAMR(test.PAMR.NUM_ITER, test.PAMR.DILATIONS, test.PAMR.KERNEL) if test.PAMR.NUM_ITER > 0 else None,
            "class_scores": test.CLASS_SCORES,
            "logit_scale": test.LOGIT_SCALE,
            "prob_threshold": test.PROB_THRESHOLD,
            "default_dataset": cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "",
            "compile_mode": cfg.MODEL.CLIP.COMPILE.MODE,
            "compile_backend": cfg.MODEL.CLIP.COMPILE.BACKEND,
            "compile_text_mode": cfg.MODEL.CLIP.COMPILE.TEXT_MODE,
        }

    def _setup_lora(self, **lora):
        """Adapters, LoRA file, EMA teacher: :func:`.ttd_lora.setup_lora`."""
        setup_lora(self, **lora)

    @property
    def ema_state(self) -> Dict[str, torch.Tensor]:
        """{adapted weight name: EMA of its delta s·B·A [out, in]} (empty unless the teacher is
        "ema"); updated in place. The teacher runs with W + EMA(delta)."""
        return {name.replace("__", "."): buf for name, buf in self.ema_teacher.named_buffers()}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8/float images [(B,) 3, H, W] in [0, 255] RGB -> normalised float on the model's device."""
        return (image.to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std

    def forward(self, batched_inputs: Sequence[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        # The ``ttd.*`` ranges label the step's stages for profiles (ttd_d2/utils/profiling.py);
        # without a profiler they cost a microsecond each.
        with record_function("ttd.trunk"):
            images = self.normalize(stack_field(batched_inputs, "image"))
            captions = [x["caption"] for x in batched_inputs]
            # With TTD the base weights are frozen: leading image blocks without adapters need no
            # graph and are shared by student and teacher.
            shared = self.shared_image_blocks if self.ttd_enabled else 0
            with torch.set_grad_enabled(not self.ttd_enabled):
                tokens, grid = self.backbone.forward_trunk(images, shared)
        tag_batch = teacher = None
        if self.ttd_enabled:
            with record_function("ttd.tags"):
                given = [x["candidate_tags"] for x in batched_inputs] if all(
                    "candidate_tags" in x for x in batched_inputs) else None  # extracted by the loader workers
                tag_batch = self._tag_batch(captions, given)
            if self.teacher != "self":
                with record_function("ttd.teacher"):
                    teacher = self._teacher_views(tokens, grid, shared, batched_inputs, tag_batch)
        # Only the contrastive loss reads the global embedding with grad; the self teacher's
        # tag scoring reads it detached, so it is computed without a graph (see ttd_lora).
        need_global = self._global_grad or (self.teacher == "self" and self._scoring_needs_global)
        # Adapted weights (W + BA) are built once per step instead of at every access.
        with parametrize.cached():
            with_dense = self.ttd_enabled or self.backbone.objective is not None
            with record_function("ttd.student_image"):
                student = self.backbone.forward_head(
                    tokens, grid, shared, with_global=need_global, with_dense=with_dense, global_grad=self._global_grad
                )
            with record_function("ttd.student_text"):
                caption_emb, student_tag_emb = self._student_text(batched_inputs, tag_batch)
            with record_function("ttd.losses"):
                losses = self._losses(captions, tag_batch, student, caption_emb, teacher, student_tag_emb)
                if self.backbone.objective is not None:  # the backbone's own (TCL's, modeling/tcl)
                    losses.update(self.backbone.training_losses(images, student["dense"], caption_emb, self.masker))
            return losses

    def _caption_tokens(self, batched_inputs: Sequence[Dict]) -> torch.Tensor:
        """Caption token ids [B, L] on the CPU: the loader's "caption_tokens" when every input has them."""
        if all("caption_tokens" in x for x in batched_inputs):
            return stack_field(batched_inputs, "caption_tokens")
        return self.backbone.tokenizer([x["caption"] for x in batched_inputs])

    def _encode_captions(self, batched_inputs: Sequence[Dict]) -> torch.Tensor:
        """Caption embeddings [B, D]."""
        return self.backbone.encode_token_ids(self._caption_tokens(batched_inputs))

    def _student_text(self, batched_inputs: Sequence[Dict], tag_batch: Optional[Dict]):
        """The student's caption embeddings [B, D] and, with a tag batch, its tag embeddings
        [B, K, D] (else None), both from one text-tower pass (``encode_tokens_and_words``)."""
        if tag_batch is None:
            return self._encode_captions(batched_inputs), None
        caption_emb, word_emb = self.backbone.encode_tokens_and_words(self._caption_tokens(batched_inputs), tag_batch["unique"])
        return caption_emb, self._tag_embeddings(tag_batch, lambda _: word_emb, caption_emb.shape[1])

    def _losses(self, captions, tag_batch, student, caption_emb, teacher, tag_emb=None) -> Dict[str, torch.Tensor]:
        losses = {}
        if self.contrastive_weight > 0:
            tau = self.backbone.clip.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
            image_emb = F.normalize(student["global"], dim=-1)
            losses["loss_contrastive"] = self.contrastive_weight * self._contrastive_loss(image_emb, caption_emb, tau)
        if self.ttd_enabled:
            losses.update(self.distillation_losses(captions, tag_batch, student, caption_emb, teacher, tag_emb))
        return losses
