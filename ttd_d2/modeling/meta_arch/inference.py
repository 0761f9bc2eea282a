"""Inference of the TTD meta-architecture: semantic segmentation, caption analysis, tag scores."""
import hashlib
import os
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import MetadataCatalog
from detectron2.modeling.postprocessing import sem_seg_postprocess

from ...data.image_io import read_image_checked
from ..ttd.scoring import SCORING_METHODS, cosine_maps, score_tags
from ..test_time_augmentation import mean_of_passes, scale_passes
from ..ttd.tags import candidate_tags, nltk_noun_adjective_mask, token_window
from ..stitch_kernel import stitch_windows_triton, synonym_layout
from .segmentation import (
    max_over_synonyms, maps_to_image, pad_to_patch_grid, padded_size, split_synonyms, stitch_windows, upsample,
    window_maps_of_passes,
)

METHOD_ALIASES = {"pixel": "s_pixel", "image": "s_image", "text": "s_text", "image+text": "image_text"}


class TTDInference:
    """Mixin of ``TTD`` holding everything its eval mode does. Expects ``backbone``,
    ``masker``, the ``normalize`` method, the tag options (``remove_stopwords``, ``max_tags``)
    and the test options set by ``TTD.__init__``."""

    # ------------------------------------------------------------------ class embeddings
    def class_embeddings(self, dataset_name: str) -> Tuple[torch.Tensor, Optional[torch.Tensor], int, bool]:
        """(synonym embeddings [S, D], owner [S] or None when every class has one name, number of
        text classes, has_background) for a dataset's ``stuff_classes``, cached per dataset, both
        tensors on the model's device (a CPU ``owner`` would be copied to the GPU by every pass
        of the test-time protocol, and a host-to-device copy of pageable memory blocks the host;
        one per pass matches the 8 syncs per image of ``bench_eval_protocol --profile``). A dataset has a background class (index 0,
        scored by a constant) when its metadata has ``background_threshold``."""
        if dataset_name in self._class_cache:
            return self._class_cache[dataset_name]
        meta = MetadataCatalog.get(dataset_name)
        classes = list(getattr(meta, "stuff_classes", []) or [])
        if not classes:
            raise ValueError(f"dataset '{dataset_name}' has no stuff_classes metadata to segment")
        has_background = hasattr(meta, "background_threshold")
        if has_background:
            classes = classes[1:]
        names, owner = split_synonyms(classes)
        embeddings = self.backbone.encode_text(names, use_templates=True)
        # one name per class: no pooling at all (it read and wrote every window's class maps at
        # full resolution, 48 windows per image in the paper's protocol)
        owner = None if torch.equal(owner, torch.arange(len(classes))) else owner.to(embeddings.device)
        entry = (embeddings, owner, len(classes), has_background)
        self._class_cache[dataset_name] = entry
        return entry

    def background_score(self, dataset_name: str) -> float:
        """The constant background score: the model's own if set (>= 0), else the dataset's."""
        if self.background_threshold >= 0:
            return self.background_threshold
        return float(MetadataCatalog.get(dataset_name).background_threshold)

    def train(self, mode: bool = True):
        self._class_cache.clear()  # text tower may change while training
        return super().train(mode)

    # ------------------------------------------------------------------ image tower
    @contextmanager
    def reusing_image_features(self) -> Iterator[None]:
        """Inside the block, the backbone's outputs are kept per input (by its content) and reused,
        and so are the text tower's embeddings of captions and tags (by their text): evaluating one
        model under several masker or threshold settings (tools/quickstart.py: as trained and
        calibrated) runs each tower once per input. Only the heads after the towers may change
        inside (masker, thresholds, which texts are asked for): both towers must stay as they
        are, so the block is for eval mode only. Memory: one entry per distinct input; an image's
        key hashes its bytes on the host (a GPU input is copied there once per call)."""
        if self.training:
            raise RuntimeError("reusing_image_features() is for evaluation: call model.eval() first")
        self._feature_cache = {}
        try:
            yield
        finally:
            self._feature_cache = None

    def _image_features(self, image: torch.Tensor, with_global: bool = True) -> Tuple[Dict, Tuple[int, int]]:
        """The backbone on normalised images [B, 3, H, W] of any size, padded to the patch grid
        (``pad_to_patch_grid``): ({"dense": [B, D, ceil(H/p), ceil(W/p)], "global"?}, padded size).
        Map the dense results back with ``maps_to_image(maps, padded_size, (H, W), out_size)``.
        Inside ``reusing_image_features`` an input seen before returns its stored outputs."""
        padded = pad_to_patch_grid(image, self.backbone.size_divisibility)
        size = tuple(padded.shape[-2:])
        cache = self._feature_cache
        if cache is None or self.training:
            return self.backbone(padded, with_global=with_global), size
        key = (tuple(padded.shape), hashlib.sha1(padded.detach().cpu().numpy().tobytes()).digest())
        feats = cache.get(key)
        if feats is None or (with_global and "global" not in feats):
            feats = cache[key] = self.backbone(padded, with_global=with_global)
        return feats, size

    def _encode_text(self, texts: Sequence[str], use_templates: bool = False) -> torch.Tensor:
        """``backbone.encode_text``; inside ``reusing_image_features`` the result for the same
        texts is kept and reused."""
        cache = self._feature_cache
        if cache is None or self.training:
            return self.backbone.encode_text(list(texts), use_templates=use_templates)
        key = ("text", tuple(texts), use_templates)
        if key not in cache:
            cache[key] = self.backbone.encode_text(list(texts), use_templates=use_templates)
        return cache[key]

    # ------------------------------------------------------------------ semantic segmentation
    def _synonym_layout(self, owner: Optional[torch.Tensor], num_names: int, num_classes: int, device: torch.device):
        """``stitch_kernel.synonym_layout``, kept beside the class embeddings it belongs to (one
        host read of ``owner`` per dataset; ``owner`` stays cached with them, so its id is stable)."""
        key = ("synonym_layout", num_names, str(device)) if owner is None else ("synonym_layout", id(owner))
        if key not in self._class_cache:
            self._class_cache[key] = synonym_layout(owner, num_names, num_classes, device)
        return self._class_cache[key]

    def _protocol_scores(self, image: torch.Tensor, text_emb: torch.Tensor, owner: Optional[torch.Tensor],
                         num_classes: int, apply_masker: bool) -> torch.Tensor:
        """Scores [C, H, W] of a normalised image [1, 3, H, W] under the test-time protocol: its
        scale / flip passes (``scale_passes``), each by sliding windows (``slide_crop``,
        ``slide_stride``), the windows of every pass with one size through the image tower
        together, ``window_batch`` at a time (``window_maps_of_passes``); each pass's windows
        stitched (:meth:`_stitch_pass`), the passes averaged (``mean_of_passes``). With
        ``apply_masker`` the scores are masker probabilities max-pooled over synonyms
        (C = ``num_classes``), else cosine maps (C = the names of ``text_emb`` [S, D])."""
        passes = scale_passes(image, self.scales, self.flip)

        def window(crops):
            feats, _ = self._image_features(crops, with_global=False)
            return cosine_maps(feats["dense"], text_emb[None].expand(len(crops), -1, -1))

        maps = window_maps_of_passes(window, passes, self.slide_crop, self.slide_stride, self.window_batch)
        outputs = [self._stitch_pass(images, pass_maps, windows, owner, num_classes, apply_masker)
                   for images, (pass_maps, windows) in zip(passes, maps)]
        return mean_of_passes(outputs, tuple(image.shape[-2:]), self.flip)

    def _stitch_pass(self, images: torch.Tensor, maps: torch.Tensor, windows: List[Tuple[int, int, int, int]],
                     owner: Optional[torch.Tensor], num_classes: int, apply_masker: bool) -> torch.Tensor:
        """One pass's scores [N, C, H, W] from its windows' low-resolution maps (``window_maps``
        of images [N, 3, H, W]), averaged where windows overlap: ``stitch`` (STITCH_KERNEL) picks
        the eager ``stitch_windows`` (each window upsampled, the masker, the synonym maximum,
        added) or one Triton kernel (``stitch_kernel.py``; the same values up to float rounding)."""
        patch = self.backbone.size_divisibility

        def eager():
            def window_scores(full):
                return max_over_synonyms(self.masker(full).transpose(0, 1), owner, num_classes).transpose(0, 1)

            return stitch_windows(maps, windows, len(images), tuple(images.shape[-2:]), patch,
                                  window_scores if apply_masker else None, self.window_batch)

        def fused():
            y0, x0, y1, x1 = windows[0]
            window_size = (y1 - y0, x1 - x0)
            layout = self._synonym_layout(owner if apply_masker else None, maps.shape[1], num_classes, maps.device)
            masker = torch.stack([self.masker.w, self.masker.b]).detach() if apply_masker else None
            return stitch_windows_triton(
                maps.float(), [w[:2] for w in windows], len(images), tuple(images.shape[-2:]), window_size,
                padded_size(window_size, patch), layout, masker)

        return self.stitch.run(images.device, fused, eager, "the window stitching")

    def semantic_segmentation(self, x: Dict, dataset_name: str) -> torch.Tensor:
        """Scores [C (+1 background), H, W] at the input's original size (docs/EVALUATION.md,
        "Test-time protocol"): sliding windows inside each scale / flip pass
        (``multi_scale_flip``), class scores by ``class_scores`` ("ttd": masker probabilities,
        max over synonyms, per window; "softmax": softmax over all names of ``logit_scale`` x the
        averaged cosines, then max over synonyms), PAMR on them if set, then the constant
        background channel (``background_score``, or ``prob_threshold`` under "softmax")."""
        text_emb, owner, num_classes, has_background = self.class_embeddings(dataset_name)
        image = self.normalize(x["image"])[None]
        softmax = self.class_scores == "softmax"
        scores = self._protocol_scores(image, text_emb, owner, num_classes, apply_masker=not softmax)
        if softmax:
            scores = max_over_synonyms((self.logit_scale * scores).softmax(dim=0), owner, num_classes)
        if self.pamr is not None:
            scores = self.pamr(image, scores[None])[0]
        if has_background:
            fill = self.prob_threshold if softmax else self.background_score(dataset_name)
            scores = torch.cat([scores.new_full((1, *scores.shape[1:]), fill), scores])
        height, width = x.get("height", scores.shape[-2]), x.get("width", scores.shape[-1])
        return sem_seg_postprocess(scores, scores.shape[-2:], height, width)

    # ------------------------------------------------------------------ captions
    def _single_pass(self) -> bool:
        """Whether the test-time protocol is one whole-image pass (no windows, scales, flips or PAMR)."""
        return tuple(self.scales) == (1.0,) and not self.flip and not self.slide_crop and self.pamr is None

    def _caption_probability(self, image: torch.Tensor, caption_emb: torch.Tensor, out_size: Tuple[int, int]):
        """The caption's mask [H_out, W_out] under the test-time protocol (docs/EVALUATION.md), as
        the TTD authors evaluate caption masks: the masker's probabilities of its cosine map in
        sliding windows inside each scale / flip pass, averaged, then PAMR; the steps of the
        "ttd" class scores of :meth:`semantic_segmentation`, for one caption [1, D]."""
        prob = self._protocol_scores(image, caption_emb, None, 1, apply_masker=True)  # [1, H, W]
        if self.pamr is not None:
            prob = self.pamr(image, prob[None])[0]
        return upsample(prob, out_size)[0].clamp(0, 1)

    def candidate_tags(self, captions: Sequence[str]) -> List[List[str]]:
        """Candidate tags of each caption, the same in training and inference: its words
        (stopwords removed when set) whose first occurrence lies inside the text tower's
        context window (the caption embedding never sees the rest), at most ``max_tags``."""
        fits = token_window(self.backbone.tokenizer, self.backbone.clip.context_length)
        return candidate_tags(captions, fits, self.remove_stopwords, self.max_tags)

    def analyse_caption(
        self, image: torch.Tensor, caption: str, out_size: Tuple[int, int], class_names: Sequence[str] = ()
    ) -> Dict:
        """Everything ``docs/INTERFACES.md`` lists for a caption input (one normalised image
        [1, 3, H, W] of any size): caption mask at ``out_size``, candidate tags and their scores
        (tag masks on the patch grid of the padded image), and zero-shot logits over
        ``class_names`` when given."""
        feats, padded_size = self._image_features(image)
        dense, global_emb = feats["dense"], F.normalize(feats["global"], dim=-1)
        tags = self.candidate_tags([caption])[0]
        caption_emb = self._encode_text([caption])
        cos_caption = maps_to_image(cosine_maps(dense, caption_emb[None])[0, 0], padded_size, image.shape[-2:], out_size)
        if self._single_pass():
            caption_mask = self.masker(cos_caption).clamp(0, 1)
        else:
            caption_mask = self._caption_probability(image, caption_emb, out_size)
        out = {"caption_mask": caption_mask, "caption_cos": cos_caption, "tags": tags, "tag_threshold": self.tag_threshold}
        tag_emb = self._encode_text(tags, use_templates=True)[None]  # [1, K, D]
        valid = torch.ones(1, len(tags), dtype=torch.bool, device=dense.device)
        cos_maps = cosine_maps(dense, tag_emb)
        tau = self.backbone.logit_scale
        out["tag_scores"] = {
            m: score_tags(m, tag_emb, valid, tau, global_emb, caption_emb, cos_maps)[0] for m in SCORING_METHODS
        }
        out["tag_scores"]["nltk"] = torch.tensor(nltk_noun_adjective_mask(caption, tags), dtype=torch.float)
        out["tag_caption_cos"] = (tag_emb[0] @ caption_emb[0]).float()
        out["tag_masks"] = self.masker(cos_maps[0])
        if class_names:
            key = ("zero_shot", tuple(class_names))
            if key not in self._class_cache:
                self._class_cache[key] = self.backbone.encode_text(list(class_names), use_templates=True)
            out["class_logits"] = tau * global_emb[0] @ self._class_cache[key].T
        return out

    @torch.no_grad()
    def score_tags(self, image_rgb: Union[np.ndarray, str, os.PathLike], caption: str,
                   method: str = "pixel") -> List[Tuple[str, float]]:
        """Score every candidate tag of ``caption`` (``candidate_tags``: its words inside the
        text tower's window, at most ``max_tags``) for an RGB uint8 image [H, W, 3], or the
        image file at a path (read as the data loaders read it, EXIF orientation applied).

        ``method``: pixel | image | text | image+text | nltk (or the s_* names). Returns
        [(tag, score)] in caption order ([] when no word of the caption is a candidate, e.g.
        only stop words); the model's selection is ``score >= tag_threshold``.
        """
        if not isinstance(caption, str):
            raise TypeError(f"caption must be a str, got {type(caption).__name__}")
        if not caption.strip():
            raise ValueError("empty caption: give the image's caption, e.g. 'a photo of a dog on a sofa'")
        method = METHOD_ALIASES.get(method, method)
        if method not in SCORING_METHODS + ("nltk",):
            raise ValueError(f"unknown method {method!r}; use pixel, image, text, image+text or nltk")
        if isinstance(image_rgb, (str, os.PathLike)):
            image_rgb = read_image_checked(os.fspath(image_rgb))  # OSError naming a missing or corrupt file
        image_rgb = np.asarray(image_rgb)
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8 or 0 in image_rgb.shape:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3] or an image file's path, got {image_rgb.dtype} "
                             f"{image_rgb.shape}: pass np.asarray(PIL.Image.open(path).convert('RGB')), or the path")
        was_training = self.training
        self.eval()
        try:
            chw = torch.as_tensor(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))
            image = self.normalize(chw)[None]
            out = self.analyse_caption(image, caption, tuple(image.shape[-2:]))
        finally:
            self.train(was_training)
        return [(t, float(s)) for t, s in zip(out["tags"], out["tag_scores"][method])]

    def inference(self, batched_inputs: Sequence[Dict]) -> List[Dict]:
        results = []
        for x in batched_inputs:
            dataset_name = x.get("dataset_name", self.default_dataset)
            if "caption" in x:
                image = self.normalize(x["image"])[None]
                size = (x.get("height", image.shape[-2]), x.get("width", image.shape[-1]))
                classes = getattr(MetadataCatalog.get(dataset_name), "thing_classes", ()) if dataset_name else ()
                results.append(self.analyse_caption(image, x["caption"], size, classes))
            else:
                results.append({"sem_seg": self.semantic_segmentation(x, dataset_name)})
        return results
