"""TTD training of the meta-architecture: tag batches, teacher views, distillation losses and
the statistics the TTD hook logs (docs/METHOD.md, "Self-distillation")."""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from ..lora import lora_delta_override, lora_disabled, lora_ema_update
from ..ttd.losses import distillation_targets, ttd_losses
from ..ttd.scoring import cosine_maps, score_tags, select_tags
from ..ttd.tags import nltk_noun_adjective_mask, pad_tag_batch


class TTDDistillation:
    """Mixin of ``TTD`` holding what its TTD training step computes besides the forward.
    Expects ``backbone``, ``masker``, ``candidate_tags`` (from ``TTDInference``), the
    ``device`` property, ``ema_state`` and the TTD options set by ``TTD.__init__``
    (``tag_scoring``, ``tag_threshold``, ``teacher``, ``ema_decay``, ``loss_distance``,
    ``target_norm``, ``distill_weight``, ``tag_weight``, ``contrastive_weight``)."""

    @property
    def _global_grad(self) -> bool:
        """Whether a loss reads the global image embedding with grad (the contrastive loss)."""
        return self.contrastive_weight > 0

    @property
    def _scoring_needs_global(self) -> bool:
        return self.tag_scoring in ("s_image", "image_text")

    @property
    def _scoring_needs_caption(self) -> bool:
        return self.tag_scoring in ("s_text", "image_text")

    def _tag_batch(self, captions: List[str], given: Optional[List[List[str]]] = None) -> Dict:
        """Candidate tags per caption (``given``: the loader workers' ``"candidate_tags"``, else
        ``candidate_tags`` here), the batch's distinct tags, index [B, K] and valid [B, K]."""
        tags = [list(t) for t in given] if given is not None else self.candidate_tags(captions)
        unique, index, valid = pad_tag_batch(tags)
        # non_blocking: a blocking host-to-device copy waits for the GPU to drain (a sync per step each)
        return {"tags": tags, "unique": unique, "index": index.to(self.device, non_blocking=True),
                "valid": valid.to(self.device, non_blocking=True)}

    def _tag_embeddings(self, tag_batch: Dict, encode, dim: int) -> torch.Tensor:
        """[B, K, D] tag embeddings, each distinct tag encoded once by ``encode``."""
        if not tag_batch["unique"]:
            return torch.zeros(*tag_batch["index"].shape, dim, device=self.device)
        return encode(tag_batch["unique"])[tag_batch["index"]]

    def _encode_tags(self, tags: List[str]) -> torch.Tensor:
        return self.backbone.encode_text(tags, use_templates=True)

    def _teacher_encode_tags(self, tags: List[str]) -> torch.Tensor:
        with lora_disabled(self.backbone.clip):
            return self._encode_tags(tags)

    @torch.no_grad()
    def _teacher_views(self, tokens, grid, first_block: int, batched_inputs, tag_batch: Dict) -> Dict:
        """From trunk ``tokens`` [B, 1 + h*w, C] (blocks before ``first_block`` done), the
        frozen (adapters off) or EMA (W + EMA of the adapters' deltas) teacher's tag cos maps
        [B, K, h, w], tag embeddings [B, K, D], and global/caption embeddings when scoring needs them."""
        if self.teacher == "frozen":
            context, encode_tags = lora_disabled(self.backbone.clip), self._teacher_text_cache
        else:
            context, encode_tags = lora_delta_override(self.backbone.clip, self.ema_state), self._encode_tags
        with context:
            feats = self.backbone.forward_head(tokens, grid, first_block, with_global=self._scoring_needs_global)
            tag_emb = self._tag_embeddings(tag_batch, encode_tags, self.backbone.embed_dim)
            # the loader's caption tokens when it gave them (``TTD._encode_captions``)
            caption_emb = self._encode_captions(batched_inputs) if self._scoring_needs_caption else None
        return {
            "tag_cos": cosine_maps(feats["dense"], tag_emb),
            "tag_emb": tag_emb,
            "global": F.normalize(feats["global"], dim=-1) if self._scoring_needs_global else None,
            "caption": caption_emb,
        }

    def distillation_losses(self, captions, tag_batch: Dict, student: Dict, caption_emb: torch.Tensor, teacher=None,
                            tag_emb: Optional[torch.Tensor] = None):
        """L_distill and L_tag (docs/METHOD.md, "Self-distillation") for one batch.

        ``student``: {"dense": [B, D, h, w], "global"?: [B, D]}; ``caption_emb`` [B, D];
        ``teacher``: ``_teacher_views`` output, or None for the model's own (detached) views;
        ``tag_emb``: the student's tag embeddings [B, K, D] if computed already (``TTD.forward``
        encodes them with the captions), else encoded here.
        """
        dense, valid = student["dense"], tag_batch["valid"]
        if tag_emb is None:
            tag_emb = self._tag_embeddings(tag_batch, self._encode_tags, dense.shape[1])
        # the caption's and the tags' maps in one pass over the dense map
        cos = cosine_maps(dense, torch.cat([caption_emb[:, None], tag_emb], dim=1))
        caption_mask, tag_cos = self.masker(cos[:, 0]), cos[:, 1:]  # [B, h, w], [B, K, h, w]
        tag_masks = self.masker(tag_cos)
        with torch.no_grad():
            if teacher is None:
                teacher = {
                    "tag_cos": tag_cos.detach(),
                    "tag_emb": tag_emb.detach(),
                    "global": F.normalize(student["global"].detach(), dim=-1) if self._scoring_needs_global else None,
                    "caption": caption_emb.detach(),
                }
            if self.tag_scoring == "nltk":
                selected = self._nltk_selection(captions, tag_batch["tags"], valid)
                scores = selected.float()
            else:
                scores = score_tags(
                    self.tag_scoring, teacher["tag_emb"], valid, self.backbone.logit_scale,
                    teacher["global"], teacher["caption"], teacher["tag_cos"],
                )
                selected = select_tags(scores, valid, self.tag_threshold)
            targets, union = distillation_targets(self.masker(teacher["tag_cos"]), selected, self.target_norm)
        losses = ttd_losses(caption_mask, tag_masks, targets, union, valid, self.loss_distance)
        self._record_statistics(valid, selected, scores, caption_mask.detach(), union)
        return {"loss_distill": self.distill_weight * losses["loss_distill"], "loss_tag": self.tag_weight * losses["loss_tag"]}

    def _nltk_selection(self, captions, tags, valid):
        selected = torch.zeros_like(valid)
        for b, (caption, caption_tags) in enumerate(zip(captions, tags)):
            if caption_tags:
                selected[b, : len(caption_tags)] = torch.tensor(nltk_noun_adjective_mask(caption, caption_tags))
        return selected

    def update_teacher(self) -> None:
        """Advance the EMA teacher by one step (called by the TTD hook after each iteration)."""
        if self.teacher == "ema":
            lora_ema_update(self.ema_state, self.backbone.clip, self.ema_decay)

    def _record_statistics(self, valid, selected, scores, caption_mask, union):
        """Tensors (read by the TTD hook after the step, so the step itself never syncs)."""
        caption_region, target_region = caption_mask > 0.5, union > 0.5
        inter = (caption_region & target_region).flatten(1).sum(1).float()
        uni = (caption_region | target_region).flatten(1).sum(1).float()
        self.tag_statistics = {
            "candidates_per_caption": valid.sum(1).float().mean(),
            "selected_per_caption": selected.sum(1).float().mean(),
            "target_caption_iou": (inter / uni.clamp_min(1)).mean(),
            "scores": scores.detach().float(),  # masked by the hook: boolean indexing syncs
            "valid": valid,
        }
