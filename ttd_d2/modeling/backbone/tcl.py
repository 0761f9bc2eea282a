"""``TCL`` (Cha et al., CVPR 2023) as a backbone of the TTD meta-architecture, beside ``CLIPDense``.

The image tower is a frozen CLIP up to its second-last block, shared by two paths:

- **dense**: a trainable copy of the last block run with the MaskCLIP value path
  (``dense_last_block(..., "maskclip")``), the patch tokens reshaped to the grid, TCL's gated
  decoder (``tcl_decoder.py``: 4x upsampling), then copies of ``ln_post`` and ``proj``:
  ``{"dense": [B, D, 4h, 4w]}`` for an image [B, 3, H, W] on the patch grid h x w;
- **global**: the frozen CLIP's own last block and pooled embedding, as in ``CLIPDense``.

At initialisation (copies of the CLIP's weights, decoder gates 0) the dense map equals
``CLIPDense``'s MaskCLIP map of the same CLIP upsampled 4x by nearest neighbour, exactly (or
that of the head ``MODEL.TCL.DENSE_PATH`` names, a lever of the synthetic benchmark where the
CLIP's MaskCLIP path does not localise): the
decoder is then a nearest upsampling, and ``ln_post`` and ``proj`` act per position (TCL applies
them after the decoder). ``MODEL.TCL.WEIGHTS`` loads TCL's trained head and masker
(``tcl_checkpoint.py``).
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY
from torch import nn

from ..tcl.objective import TCLObjective
from .clip_dense import CLIPDense
from .dense_heads import DENSE_MODES, HEADS_WITHOUT_LAST_MLP, dense_last_block
from .tcl_checkpoint import load_tcl_checkpoint
from .tcl_decoder import GatedDecoder

HEAD_NAME = "tcl_head"  # registered in the open_clip image tower: clip.visual.tcl_head


class TCLHead(nn.Module):
    """TCL's dense path after the shared trunk: copied last block (MaskCLIP value path, or the
    training-free head ``dense_path``), gated decoder, copied ``ln_post`` and ``proj``. Starts as
    copies of ``visual``'s own weights."""

    def __init__(self, visual: nn.Module, decoder_blocks: int = 2, dense_path: str = "maskclip",
                 attn_scale: float = 0.0, naclip_sigma: float = 5.0, decoder_conv: str = "auto"):
        super().__init__()
        if dense_path not in DENSE_MODES:
            raise ValueError(f"MODEL.TCL.DENSE_PATH '{dense_path}' unknown; choose one of {DENSE_MODES}")
        self.dense_path, self.attn_scale, self.naclip_sigma = dense_path, attn_scale, naclip_sigma
        self.block = copy.deepcopy(visual.transformer.resblocks[-1])
        self.decoder = GatedDecoder(visual.transformer.width, num_blocks=decoder_blocks, conv=decoder_conv)
        self.ln_post = copy.deepcopy(visual.ln_post)
        self.proj = nn.Parameter(visual.proj.detach().clone())

    def forward(self, tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """tokens [B, 1 + h*w, C] (input of the last block) -> dense embeddings [B, D, 4h, 4w]."""
        x = dense_last_block(self.block, tokens, self.dense_path, grid, self.attn_scale, self.naclip_sigma)[:, 1:]
        x = self.decoder(x.reshape(x.shape[0], *grid, x.shape[-1]).permute(0, 3, 1, 2))  # channels-last view
        x = self.ln_post(x.permute(0, 2, 3, 1)) @ self.proj
        return x.permute(0, 3, 1, 2)


@BACKBONE_REGISTRY.register()
class TCL(CLIPDense):
    """TCL's image tower on an open_clip CLIP, with ``CLIPDense``'s interface (text tower,
    tokenizer, ``forward_trunk`` / ``forward_head``, ``logit_scale``, ``autocast``...).

    ``forward(x)`` on a normalised image [B, 3, H, W] (H, W multiples of the patch size p)
    returns ``{"dense": [B, D, 4H/p, 4W/p], "global": [B, D]}``. The head lives inside the open_clip
    model, as ``clip.visual.tcl_head`` (``self.head``), so that everything the meta-architecture
    does to ``clip`` (LoRA adapters, switching them off for the frozen teacher, LoRA files,
    checkpoints) covers it too. The CLIP's own weights are frozen; the head is trainable (TCL's
    objective trains it; under TTD it gets LoRA adapters instead, see ``lora_image_blocks``).
    """

    DENSE_MODE_KEY = "MODEL.TCL.DENSE_PATH"  # ``dense_mode`` is the path of TCL's copied block

    @configurable
    def __init__(
        self,
        *,
        weights: str = "",
        masker_from_weights: bool = True,
        train_decoder: bool = False,
        decoder_blocks: int = 2,
        dense_path: str = "maskclip",
        decoder_conv: str = "auto",
        objective: Optional[TCLObjective] = None,
        **clip_args,
    ):
        """
        Args:
            weights: a TCL checkpoint in the authors' format (``MODEL.TCL.WEIGHTS``), "" = the
                head starts as copies of the CLIP's last block, ``ln_post``, ``proj``, gates 0.
            masker_from_weights: expose the checkpoint's trained masker w, b as ``masker_state``
                (the meta-architecture starts its masker there instead of ``MODEL.MASKER``).
            train_decoder: under TTD, train the decoder in full beside the adapters.
            decoder_blocks: upsampling blocks of the decoder (TCL: 2, i.e. 4x).
            dense_path: how the head's copied last block runs (``MODEL.TCL.DENSE_PATH``): TCL's
                MaskCLIP value path, or another training-free head of ``dense_heads.py``.
            decoder_conv: how the decoder's 3x3 convolutions run (``MODEL.TCL.DECODER_CONV``:
                auto, winograd, direct; ``tcl_decoder.CONV_ALGORITHMS``).
            objective: TCL's own training objective (``MODEL.TCL.LOSS``), or None (every
                weight 0, e.g. under TTD): the meta-architecture adds ``training_losses``.
            clip_args: the arguments of ``CLIPDense`` (``clip_model``, ``tokenizer``,
                ``pixel_mean``, ``pixel_std``, ``prompt_templates``, ``bf16``); the dense mode
                is MaskCLIP's.
        """
        mode = clip_args.pop("dense_mode", "maskclip")
        if mode != "maskclip":
            raise ValueError(f"MODEL.CLIP.DENSE_MODE '{mode}': TCL runs its copied block as MaskCLIP; set it to maskclip")
        super().__init__(dense_mode="maskclip", **clip_args)
        visual = self.clip.visual
        if not isinstance(getattr(visual, "proj", None), torch.Tensor):
            raise ValueError("TCL needs an open_clip ViT with an output projection (visual.proj)")
        head = TCLHead(visual, decoder_blocks, dense_path, self.attn_scale, self.naclip_sigma, decoder_conv)
        self.clip.requires_grad_(False)  # TCL's CLIP is frozen; only its head trains
        if dense_path in HEADS_WITHOUT_LAST_MLP:  # what the path skips gets no gradient: frozen (DDP needs it)
            for name in ("ln_2", "mlp", "ls_2"):
                getattr(head.block, name).requires_grad_(False)
        visual.add_module(HEAD_NAME, head)
        self.dense_mode = dense_path  # the path the adapters serve (ttd_lora's plan, LoRA files' settings)
        self.train_decoder = train_decoder
        self.objective = objective
        self.masker_state: Optional[Dict[str, torch.Tensor]] = None
        if weights:
            masker = load_tcl_checkpoint(head, weights)
            self.masker_state = masker if masker_from_weights else None
        scale = head.decoder.scale
        self._out_feature_strides = {"dense": max(1, self.patch_size[0] // scale)}

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        args = super().from_config(cfg, input_shape)
        tcl = cfg.MODEL.TCL
        if len(tcl.PIXEL_MEAN):  # [] = the CLIP's own (open_clip's preprocessing config)
            args["pixel_mean"], args["pixel_std"] = list(tcl.PIXEL_MEAN), list(tcl.PIXEL_STD)
        args.update(weights=tcl.WEIGHTS, masker_from_weights=tcl.MASKER_FROM_WEIGHTS, train_decoder=tcl.TRAIN_DECODER,
                    dense_path=tcl.DENSE_PATH, decoder_conv=tcl.DECODER_CONV)
        objective = TCLObjective(cfg)
        args["objective"] = objective if objective.enabled else None
        return args

    @property
    def head(self) -> TCLHead:
        return getattr(self.clip.visual, HEAD_NAME)

    @property
    def dense_scale(self) -> int:
        """Dense map cells per patch, per side (4)."""
        return self.head.decoder.scale

    def lora_image_blocks(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        """The dense path runs the trunk and the head's copied block; only the global
        embedding runs the CLIP's own last block."""
        resblocks = self.clip.visual.transformer.resblocks
        return list(resblocks[:-1]) + [self.head.block], [resblocks[-1]]

    def ttd_trained_modules(self) -> Sequence[nn.Module]:
        """The decoder with ``MODEL.TCL.TRAIN_DECODER``, else nothing."""
        return [self.head.decoder] if self.train_decoder else []

    def training_losses(self, images: torch.Tensor, dense: torch.Tensor, caption_emb: torch.Tensor,
                        masker: nn.Module) -> Dict[str, torch.Tensor]:
        """TCL's objective (``ttd_d2/modeling/tcl/objective.py``) for normalised ``images``
        [B, 3, H, W], their ``dense`` embeddings [B, D, 4h, 4w] (with grad), caption embeddings
        [B, D] and the meta-architecture's masker; {} without an objective."""
        if self.objective is None:
            return {}
        return self.objective(dense, caption_emb, masker, images, self.encode_image)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen CLIP's own global embedding [B, D] of normalised images [B, 3, H, W],
        differentiable in the images (TCL's objective sends gradients through it to its masks)."""
        tokens, grid = self.forward_trunk(images, 0)
        return self.forward_head(tokens, grid, 0, with_dense=False)["global"]

    def _dense_tower(self, tokens: torch.Tensor, grid: Tuple[int, int], first_block: int) -> torch.Tensor:
        """Trunk blocks ``first_block``.. up to the second-last, then the head: dense embeddings
        [B, D, 4h, 4w], for ``forward_head``'s gradient-free dense-only calls (the test-time
        protocol's windows). ``compile_towers`` compiles it as one region, as ``CLIPDense``'s:
        per block, the paper's protocol ran 77 compiled regions per image at TCL's window batch 8."""
        for block in self.clip.visual.transformer.resblocks[first_block:-1]:
            tokens = block(tokens)
        return self.head(tokens, grid)

    def decoder_only_frozen_parameters(self) -> List[nn.Parameter]:
        """What TCL's decoder-only warm-up (``MODEL.TCL.DECODER_ONLY_ITERS``) holds still: the
        trainable weights of the head's copied last block (the decoder, ``ln_post`` / ``proj``
        copies, masker and temperatures train from the start)."""
        return [p for p in self.head.block.parameters() if p.requires_grad]

    def forward_head(
        self, tokens: torch.Tensor, grid: Tuple[int, int], first_block: int, with_global: bool = True,
        with_dense: bool = True, global_grad: bool = True,
    ) -> Dict[str, torch.Tensor]:
        """Trunk blocks ``first_block``.. up to the second-last, then the head ("dense",
        [B, D, 4h, 4w]) and/or the CLIP's own last block and pooling ("global", [B, D])."""
        resblocks = self.clip.visual.transformer.resblocks
        if with_dense and not with_global and not torch.is_grad_enabled():  # one region when compiled
            with self.autocast(tokens.device):
                return {"dense": self._dense_tower(tokens, grid, first_block).float()}
        with self.autocast(tokens.device):
            for block in resblocks[first_block:-1]:
                tokens = block(tokens)
            out = {}
            if with_dense:
                out["dense"] = self.head(tokens, grid).float()
            if with_global:
                with torch.set_grad_enabled(torch.is_grad_enabled() and global_grad):
                    out["global"] = self.pool(resblocks[-1](tokens)).float()
        return out
