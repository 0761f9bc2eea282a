"""``CLIPDense``: an open_clip ViT as a Detectron2 backbone with training-free dense heads."""
import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .clip_loading import build_tokenizer, load_clip
from ..compile import CompiledWithFallback, compile_blocks
from ..lora.side_branch import use_batch_first_attention
from .token_cache import CachedTokenizer
from .dense_heads import DENSE_MODES, dense_last_block
from .embeddings import interpolate_pos_embed, patch_embedding
from .prompt_templates import resolve_prompt_templates
from .text_encoding import TextTowerMethods


def cpu_has_native_bf16() -> bool:
    """Whether this CPU executes bfloat16 matrix products natively (AVX512-BF16 or AMX), the
    condition under which ``MODEL.CLIP.BF16_CPU`` pays; elsewhere oneDNN emulates bfloat16."""
    cpu = torch.cpu
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


@BACKBONE_REGISTRY.register()
class CLIPDense(TextTowerMethods, Backbone):
    """open_clip CLIP whose image tower returns dense patch embeddings in the joint space.

    ``forward(x)`` on a normalised image [B, 3, H, W] of any size returns
    ``{"dense": [B, D, H/p, W/p], "global": [B, D]}``: ``dense`` from the last block run as
    the chosen dense head, ``global`` the model's own pooled embedding (vanilla last block).
    ``encode_text`` embeds strings in the same space (:class:`TextTowerMethods`). The open_clip
    model is ``self.clip``.
    docs/BACKBONES.md lists what the TTD meta-architecture uses (subclasses such as ``TCL``
    override ``forward_head`` and the hooks below).
    """

    # The masker's trained {"w", "b"} a backbone brings (TCL's checkpoint), or None:
    # ``build_masker`` starts the meta-architecture's masker there instead of MODEL.MASKER.
    masker_state: Optional[Dict[str, torch.Tensor]] = None
    # The config key ``dense_mode`` comes from (named when a LoRA file's setting differs)
    DENSE_MODE_KEY = "MODEL.CLIP.DENSE_MODE"

    @configurable
    def __init__(
        self,
        *,
        clip_model: torch.nn.Module,
        tokenizer,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        dense_mode: str = "maskclip",
        attn_scale: float = 0.0,
        naclip_sigma: float = 5.0,
        prompt_templates: Sequence[str] = ("a photo of a {}.",),
        bf16: bool = True,
        bf16_cpu: bool = False,
    ):
        """
        Args:
            clip_model: an open_clip ``CLIP`` with a ``VisionTransformer`` image tower.
            tokenizer: open_clip tokenizer of that model (callable: list[str] -> [N, L] ids).
            pixel_mean, pixel_std: normalisation of [0, 255] RGB input, from open_clip's
                preprocessing config.
            dense_mode: one of ``DENSE_MODES``.
            attn_scale: temperature of the self-self attention heads (0 = 1/sqrt(head_dim)).
            naclip_sigma: NACLIP Gaussian prior's standard deviation in patches.
            prompt_templates: templates averaged by ``encode_text(..., use_templates=True)``.
            bf16: autocast the towers to bfloat16 on CUDA.
            bf16_cpu: autocast the towers to bfloat16 on the CPU too (``MODEL.CLIP.BF16_CPU``):
                about 2x the float32 rate of convolutions and matrix products on CPUs with
                bfloat16 instructions (AVX512-BF16, AMX; :func:`cpu_has_native_bf16`).
        """
        super().__init__()
        if dense_mode not in DENSE_MODES:
            raise ValueError(f"MODEL.CLIP.DENSE_MODE '{dense_mode}' unknown; choose one of {DENSE_MODES}")
        if not prompt_templates or any("{}" not in t for t in prompt_templates):
            raise ValueError(f"MODEL.CLIP.PROMPT_TEMPLATES must be non-empty strings with '{{}}': {prompt_templates}")
        self.clip = clip_model
        use_batch_first_attention(clip_model)  # every block, adapted or not (lora/side_branch.py: why)
        self.tokenizer = tokenizer
        # Prompted words (tags, class names: a bounded vocabulary) are tokenised once per run.
        self.prompt_tokenizer = CachedTokenizer(tokenizer)
        self.dense_mode = dense_mode
        self.attn_scale = attn_scale
        self.naclip_sigma = naclip_sigma
        self.prompt_templates = list(prompt_templates)
        self.bf16 = bf16
        self.bf16_cpu = bf16_cpu
        # The backbone's own training objective (TCL's), or None: when set, the meta-architecture
        # adds ``training_losses(images, dense, caption_emb, masker)`` to its training losses.
        # (An instance attribute: a class attribute would hide a subclass's objective module.)
        self.objective: Optional[torch.nn.Module] = None
        self.pixel_mean = [255.0 * m for m in pixel_mean]
        self.pixel_std = [255.0 * s for s in pixel_std]
        self.patch_size = tuple(self.clip.visual.patch_size)
        self.embed_dim = self.clip.visual.output_dim
        self._out_features = ["dense"]
        self._out_feature_channels = {"dense": self.embed_dim}
        self._out_feature_strides = {"dense": self.patch_size[0]}

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        model, preprocess = load_clip(cfg.MODEL.CLIP.ARCH, cfg.MODEL.CLIP.PRETRAINED, cfg.MODEL.CLIP.CACHE_DIR)
        return {
            "clip_model": model,
            "tokenizer": build_tokenizer(cfg.MODEL.CLIP.ARCH),
            "pixel_mean": preprocess["mean"],
            "pixel_std": preprocess["std"],
            "dense_mode": cfg.MODEL.CLIP.DENSE_MODE,
            "attn_scale": cfg.MODEL.CLIP.ATTN_SCALE,
            "naclip_sigma": cfg.MODEL.CLIP.NACLIP_SIGMA,
            "prompt_templates": resolve_prompt_templates(cfg.MODEL.CLIP.PROMPT_TEMPLATE_SET, cfg.MODEL.CLIP.PROMPT_TEMPLATES),
            "bf16": cfg.MODEL.CLIP.BF16,
            "bf16_cpu": cfg.MODEL.CLIP.BF16_CPU,
        }

    def compile_towers(self, mode: str, backend: str = "inductor", text_mode: str = "same") -> int:
        """``torch.compile`` the image and text towers' transformer blocks, the dense head and
        the gradient-free dense tower (``MODEL.CLIP.COMPILE``, :mod:`ttd_d2.modeling.compile`:
        with a fallback to eager per block or region); returns the number of blocks.
        Image blocks get one graph per shape (a training run's images have one, the test-time
        protocol's windows a few); text blocks get dynamic shapes from their second shape on, since
        every step's tag count gives another padded batch (:meth:`encode_token_ids`), and one graph
        per shape kept compiling on the GPU host (benchmarks/README.md). ``text_mode``
        (``MODEL.CLIP.COMPILE.TEXT_MODE``): the text blocks' mode, "same" = ``mode``."""
        text_blocks = getattr(getattr(self.clip, "transformer", None), "resblocks", [])
        text_mode = mode if text_mode == "same" else text_mode
        for name in ("_dense_head", "_dense_tower"):
            if mode and not isinstance(self.__dict__.get(name), CompiledWithFallback):
                setattr(self, name, CompiledWithFallback(getattr(self, name), f"visual.{name[1:]}", mode, backend))
        return (compile_blocks(self.clip.visual.transformer.resblocks, "visual.transformer.resblocks", mode, backend)
                + compile_blocks(text_blocks, "transformer.resblocks", text_mode, backend, dynamic=None))

    @property
    def size_divisibility(self) -> int:
        return self.patch_size[0]

    @property
    def dense_scale(self) -> int:
        """Dense map cells per patch, per side: "dense" is [B, D, s * H/p, s * W/p] (1 here)."""
        return 1

    def lora_image_blocks(self) -> Tuple[List[torch.nn.Module], List[torch.nn.Module]]:
        """Where TTD puts image adapters (``ttd_lora``): (the blocks the dense path runs, in
        order, the last one as the dense head; the blocks only the global embedding runs).
        Here the tower's blocks, the last one shared by both paths, and none of its own."""
        return list(self.clip.visual.transformer.resblocks), []

    def ttd_trained_modules(self) -> Sequence[torch.nn.Module]:
        """Modules that TTD trains in full beside the adapters (none: only LoRA and the masker)."""
        return []

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's temperature tau = exp(logit_scale), a scalar tensor."""
        return self.clip.logit_scale.exp()

    def autocast(self, device: torch.device):
        """bf16 autocast on CUDA (``bf16``) or the CPU (``bf16_cpu``) when enabled, else a no-op."""
        if (self.bf16 and device.type == "cuda") or (self.bf16_cpu and device.type == "cpu"):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed_patches(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Patch + class + (interpolated) positional embeddings, then ln_pre: [B, 1 + h*w, C]."""
        visual = self.clip.visual
        tokens, grid = patch_embedding(visual.conv1, x)
        cls = visual.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        tokens = tokens + self._positional_embedding(grid).to(tokens.dtype)
        return visual.ln_pre(tokens), grid

    def _positional_embedding(self, grid: Tuple[int, int]) -> torch.Tensor:
        """The positional embedding resized to ``grid`` [1 + h*w, C]; kept per grid while the
        embedding is unchanged (its tensor version) and needs no gradient (frozen under TTD, and in
        evaluation). Why: the bicubic resize took 3.3 ms per forward on an H200, a fifth of the
        full test-time protocol's GPU time (benchmarks/README.md, bench_eval_protocol.py)."""
        pos = self.clip.visual.positional_embedding
        if torch.is_grad_enabled() and pos.requires_grad:
            return interpolate_pos_embed(pos, self.clip.visual.grid_size, grid)
        key = (tuple(grid), pos.data_ptr(), pos._version, pos.device, pos.dtype)
        cache = self.__dict__.setdefault("_pos_cache", {})  # not a buffer: never saved, never moved
        if key not in cache:
            if len(cache) >= 16:
                cache.clear()
            cache[key] = interpolate_pos_embed(pos.detach(), self.clip.visual.grid_size, grid)
        return cache[key]

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's own global embedding [B, D] from last-block tokens [B, 1 + h*w, C]."""
        visual = self.clip.visual
        if visual.attn_pool is not None:
            raise NotImplementedError("attentional pooling towers are not supported by CLIPDense")
        if visual.final_ln_after_pool:
            pooled = visual.ln_post(tokens[:, 1:].mean(1) if visual.pool_type == "avg" else tokens[:, 0])
        else:
            tokens = visual.ln_post(tokens)
            pooled = tokens[:, 1:].mean(1) if visual.pool_type == "avg" else tokens[:, 0]
        return pooled @ visual.proj

    def forward(self, x: torch.Tensor, with_global: bool = True) -> Dict[str, torch.Tensor]:
        """x: normalised images [B, 3, H, W] -> {"dense": [B, D, H/p, W/p], "global": [B, D]}
        (fp32). ``with_global=False`` skips the vanilla last block when only "dense" is needed."""
        tokens, grid = self.forward_trunk(x, 0)
        return self.forward_head(tokens, grid, 0, with_global)

    def forward_trunk(self, x: torch.Tensor, num_blocks: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Embeddings and the first ``num_blocks`` blocks: tokens [B, 1 + h*w, C] and the grid (h, w).

        Split from ``forward_head`` so that blocks without adapters run once for both the
        student and the teacher of TTD."""
        with self.autocast(x.device):
            tokens, grid = self.embed_patches(x)
            for block in self.clip.visual.transformer.resblocks[:num_blocks]:
                tokens = block(tokens)
        return tokens, grid

    def forward_head(
        self, tokens: torch.Tensor, grid: Tuple[int, int], first_block: int, with_global: bool = True,
        with_dense: bool = True, global_grad: bool = True,
    ) -> Dict[str, torch.Tensor]:
        """Blocks ``first_block``.. of ``forward_trunk`` tokens, the last one as the dense head
        ("dense") and/or as itself ("global"). ``global_grad=False``: "global" is computed
        without a graph (for callers that only read it detached)."""
        visual = self.clip.visual
        if with_dense and not with_global and not torch.is_grad_enabled():  # one region when compiled
            with self.autocast(tokens.device):
                dense = self._dense_tower(tokens, grid, first_block)
            return {"dense": dense.float().transpose(1, 2).reshape(tokens.shape[0], -1, *grid)}
        with self.autocast(tokens.device):
            *blocks, last = visual.transformer.resblocks[first_block:]
            for block in blocks:
                tokens = block(tokens)
            out = {}
            dense_tokens = None
            if with_dense:
                dense_tokens, dense = self._dense_head(last, tokens, grid)
                out["dense"] = dense.float().transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
            if with_global:
                # After the dense path: under parametrize.cached() the first read of an adapted
                # weight is cached, and with global_grad=False that read would carry no graph.
                with torch.set_grad_enabled(torch.is_grad_enabled() and global_grad):
                    vanilla = dense_tokens if self.dense_mode == "vanilla" and with_dense else last(tokens)
                    out["global"] = self.pool(vanilla).float()
        return out

    def _dense_tower(self, tokens: torch.Tensor, grid: Tuple[int, int], first_block: int) -> torch.Tensor:
        """Blocks ``first_block``.. and the last one as the dense head: the patch embeddings
        [B, h*w, D] of tokens [B, 1 + h*w, C], for ``forward_head``'s gradient-free dense-only calls
        (the test-time protocol's windows). ``compile_towers`` compiles it as one region:
        one graph instead of one per block, so CUDA graphs copy only its output, not each
        block's, and launch one graph instead of twelve (the paper's protocol on an H200: 23.3
        ms per image against 24.6 per block, benchmarks/README.md)."""
        *blocks, last = self.clip.visual.transformer.resblocks[first_block:]
        for block in blocks:
            tokens = block(tokens)
        return self._dense_head(last, tokens, grid)[1]

    def _dense_head(self, last: torch.nn.Module, tokens: torch.Tensor, grid: Tuple[int, int]):
        """The last block as the dense head: (its tokens [B, 1 + h*w, C] in "vanilla" mode, where
        they are the global path's too, else None; the patch embeddings [B, h*w, D] after
        ``ln_post`` and ``proj``). One function, so that ``compile_towers`` compiles it too
        (eagerly its layer norms, casts and copies cost ~1 ms per image of the paper's protocol
        on the GPU host, benchmarks/README.md)."""
        visual = self.clip.visual
        if self.dense_mode == "vanilla":
            dense_tokens = last(tokens)
        else:
            dense_tokens = dense_last_block(last, tokens, self.dense_mode, grid, self.attn_scale, self.naclip_sigma)
        dense = visual.ln_post(dense_tokens[:, 1:]) @ visual.proj
        return (dense_tokens if self.dense_mode == "vanilla" else None), dense
