"""TCL's training objective as a module of the ``TCL`` backbone (``MODEL.TCL.LOSS``, ``MODEL.TCL.GUMBEL_TAU``).

It trains TCL's head (copied last block, decoder, copied ``ln_post`` / ``proj``) and the masker
from a frozen CLIP on image-caption pairs, with the losses of :mod:`.losses`. Every weight
defaults to 0 (TTD's configs); a config that trains TCL sets TCL's (``configs/synthetic/pretrain_tcl.yaml``).
"""
import math
from typing import Callable, Dict

import torch
from detectron2.config import configurable
from detectron2.utils import comm
from torch import nn

from ..ttd.scoring import cosine_maps
from .losses import (
    area_prior_losses,
    extended_info_nce,
    gather_rows,
    info_nce,
    sample_masks,
    text_grounded_similarity,
    total_variation,
)

__all__ = ["MAX_LOGIT_SCALE", "TCLObjective", "Temperature"]

MAX_LOGIT_SCALE = 100.0  # TCL's (and CLIP's) clamp of exp(logit_scale)


class Temperature(nn.Module):
    """A learnable contrastive temperature: ``forward()`` = min(exp(logit_scale), 100), with
    logit_scale initialised to log(1 / ``init``) (TCL's ``InfoNCE(T_init=0.07)``). The parameter
    is named ``logit_scale`` so that the trainer does not decay it (``NO_WEIGHT_DECAY``)."""

    def __init__(self, init: float = 0.07):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init)))

    def forward(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


class TCLObjective(nn.Module):
    """TCL's losses for one batch of this rank's B images and their captions.

    With F the TCL backbone's dense embedding [B, D, h, w] (its 4x grid), t_n the caption
    embeddings of the global batch (N = B x world size, gathered from every rank), the masks
    M[b, n] = sigmoid(w cos(F_b, t_n) + b) [B, N, h, w] of the meta-architecture's masker and
    the positive of image b its own caption n = rank * B + b:

    - ``loss_tcl_image`` = c * InfoNCE(CLIP(x_b * up(G_b)), t_b): the frozen CLIP's own embedding
      of the image cut out by its caption's mask G_b (a hard Gumbel-sigmoid sample in training,
      straight-through, temperature ``gumbel_tau``; nearest-upsampled to the image) against the
      captions (TCL's ``tcli_loss``);
    - ``loss_tcl_feature`` = c * ExtendedInfoNCE(cos(pool(F_b, M[b, n]), t_n)) (``tclf_loss``);
    - ``loss_tcl_area`` = a * |mean M[b, own] - 0.4|, ``loss_tcl_neg_area`` = a * |mean M[b, other] - 0|;
    - ``loss_tcl_tv_image`` = v * TV(F), ``loss_tcl_tv_mask`` = v * TV(M);

    with c, a, v = ``contrastive_weight``, ``area_weight``, ``tv_weight`` (TCL: 0.1, 0.4, 1.0).
    A term whose weight is 0 is not computed. The two InfoNCE losses have their own learnable
    temperatures, created only when c > 0 (so that every trainable parameter gets a gradient).

    Differs from TCL: the cut-out image's embedding is the CLIP's own pooled embedding (CLS
    token or patch average, as its config says; TCL's ViTs use the CLS token); the priors are
    keys; losses with nothing to average are 0 (:mod:`.losses`).
    """

    @configurable
    def __init__(
        self,
        *,
        contrastive_weight: float = 0.0,
        area_weight: float = 0.0,
        tv_weight: float = 0.0,
        positive_area_prior: float = 0.4,
        negative_area_prior: float = 0.0,
        init_temperature: float = 0.07,
        gumbel_tau: float = 1.0,
    ):
        """
        Args:
            contrastive_weight: c, of both text-grounded contrastive losses (TCL's tcl_w).
            area_weight: a, of both area priors (area_w).
            tv_weight: v, of both total-variation terms (tv_w).
            positive_area_prior, negative_area_prior: the mean mask area each pair is pulled to.
            init_temperature: initial temperature T of both InfoNCE losses (logit scale 1 / T).
            gumbel_tau: temperature of the Gumbel-sigmoid that samples the cut-out masks.
        """
        super().__init__()
        for name, value in (("CONTRASTIVE_WEIGHT", contrastive_weight), ("AREA_WEIGHT", area_weight),
                            ("TV_WEIGHT", tv_weight)):
            if value < 0:
                raise ValueError(f"MODEL.TCL.LOSS.{name} must be >= 0, got {value}")
        self.contrastive_weight = contrastive_weight
        self.area_weight = area_weight
        self.tv_weight = tv_weight
        self.positive_area_prior = positive_area_prior
        self.negative_area_prior = negative_area_prior
        self.gumbel_tau = gumbel_tau
        if contrastive_weight > 0:
            self.image_temperature = Temperature(init_temperature)
            self.feature_temperature = Temperature(init_temperature)

    @classmethod
    def from_config(cls, cfg):
        loss = cfg.MODEL.TCL.LOSS
        return {
            "contrastive_weight": loss.CONTRASTIVE_WEIGHT,
            "area_weight": loss.AREA_WEIGHT,
            "tv_weight": loss.TV_WEIGHT,
            "positive_area_prior": loss.POSITIVE_AREA_PRIOR,
            "negative_area_prior": loss.NEGATIVE_AREA_PRIOR,
            "init_temperature": loss.INIT_TEMPERATURE,
            "gumbel_tau": cfg.MODEL.TCL.GUMBEL_TAU,
        }

    @property
    def enabled(self) -> bool:
        """Whether any term has a positive weight."""
        return max(self.contrastive_weight, self.area_weight, self.tv_weight) > 0

    def forward(
        self,
        dense: torch.Tensor,
        caption_emb: torch.Tensor,
        masker: nn.Module,
        images: torch.Tensor,
        encode_image: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            dense: [B, D, h, w] the TCL backbone's dense embeddings (with grad).
            caption_emb: [B, D] this rank's caption embeddings (the frozen text tower).
            masker: the meta-architecture's ``Masker`` (its w, b train with these losses).
            images: [B, 3, H, W] the normalised images the dense embeddings come from.
            encode_image: normalised images [B, 3, H, W] -> the frozen CLIP's global embedding
                [B, D], differentiable in the images (gradients reach the cut-out masks).
            generator: for the Gumbel noise (None: torch's global generator, seeded by SEED).
        Returns: {loss name: weighted scalar} for the terms with a positive weight.
        """
        rank, world_size = comm.get_rank(), comm.get_world_size()
        batch = dense.shape[0]
        offset = rank * batch
        with torch.no_grad():  # the text tower is frozen: no gradient to send back
            texts = gather_rows(caption_emb.detach().float(), world_size)  # [N, D]
        cos = cosine_maps(dense, texts.expand(batch, -1, -1))  # [B, N, h, w]
        masks = masker(cos)
        losses = {}
        if self.area_weight > 0:
            positive, negative = area_prior_losses(masks, offset, self.positive_area_prior, self.negative_area_prior)
            losses["loss_tcl_area"] = self.area_weight * positive
            losses["loss_tcl_neg_area"] = self.area_weight * negative
        if self.tv_weight > 0:
            losses["loss_tcl_tv_image"] = self.tv_weight * total_variation(dense)
            losses["loss_tcl_tv_mask"] = self.tv_weight * total_variation(masks)
        if self.contrastive_weight > 0:
            similarity = text_grounded_similarity(dense, masks, texts)  # [B, N]
            feature = extended_info_nce(similarity, self.feature_temperature(), rank, world_size)
            own = torch.arange(batch, device=dense.device)
            cut = sample_masks(cos[own, own + offset], masker.w, masker.b, self.gumbel_tau, self.training, generator)
            cut = nn.functional.interpolate(cut[:, None], size=images.shape[-2:], mode="nearest")
            image_emb = encode_image(images * cut)
            image = info_nce(image_emb.float(), caption_emb.float(), self.image_temperature(), rank, world_size)
            losses["loss_tcl_feature"] = self.contrastive_weight * feature
            losses["loss_tcl_image"] = self.contrastive_weight * image
        return losses
