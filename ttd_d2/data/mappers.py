"""Dataset mappers: image-caption pairs for training, any record for evaluation."""
import copy
import logging
import sys
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from ..modeling.backbone.clip_loading import build_tokenizer
from ..modeling.backbone.token_cache import CachedTokenizer
from ..modeling.ttd.tags import candidate_tags, token_window
from .image_io import read_image_checked

logger = logging.getLogger(__name__)

# Captions whose token ids a loader worker keeps (CachedTokenizer, about 0.6 KB each): a
# repeated caption then costs a lookup instead of open_clip's text cleaning and BPE (0.05 ms on a
# 2-core CPU, an eighth of a 128 px sample's mapping). The synthetic benchmark's 20k training
# scenes have 6,667 distinct captions; web captions rarely repeat, and the memo is emptied when full.
CAPTION_TOKEN_CACHE_SIZE = 8192


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, H, W] uint8 tensor."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


class CaptionTrainMapper:
    """Image-caption record -> {"image": [3, S, S] uint8 RGB numpy array, "caption": str,
    "caption_tokens": [L] int64 numpy array (with a tokenizer), ...}.

    Images are resized (short side S) and randomly cropped to S x S, optionally flipped.
    Captions are tokenised here, in the loader workers: in the main process, tokenising a
    batch of 1024 captions costs tens of milliseconds per step. Image and tokens are numpy
    arrays, which the trainer's collator packs into one tensor per batch (``data/collate.py``).
    Records of streamed shards carry the image's bytes (``"image_bytes"``), decoded here.
    A sample whose image cannot be read is skipped with a warning (returns None, so
    detectron2's MapDataset, or the shard stream, draws another one): one bad file must not stop
    a long run (the training loaders count the skips: ``data/records.py``, ``data/streams``).
    """

    @configurable
    def __init__(self, *, train_size: int, image_format: str = "RGB", flip: str = "horizontal", tokenizer=None,
                 tag_options: Optional[Tuple[bool, int]] = None):
        """
        Args:
            train_size: side S of the square training crop.
            image_format: detectron2 image format of the model input.
            flip: "horizontal", "vertical" or "none" (random flip).
            tokenizer: the model's open_clip tokenizer (list[str] -> [N, L] ids), or None to
                leave tokenisation to the model.
            tag_options: (remove_stopwords, max_tags) of TTD's candidate tags
                (``MODEL.TTD.REMOVE_STOPWORDS``, ``MAX_TAGS``): each sample then carries its
                caption's candidate tags (``"candidate_tags"``, the model's
                ``candidate_tags`` exactly), extracted here rather than in the main process.
                None (TTD off, or no tokenizer): none.
        """
        crop_flip = [T.RandomCrop("absolute", (train_size, train_size))]
        if flip != "none":
            crop_flip.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
        self.train_size = train_size
        self.resize = T.ResizeShortestEdge(train_size, sys.maxsize)
        self.crop_flip = T.AugmentationList(crop_flip)
        self.image_format = image_format
        self.tokenizer = CachedTokenizer(tokenizer, CAPTION_TOKEN_CACHE_SIZE) if tokenizer is not None else None
        self.tag_options = tag_options if tokenizer is not None else None
        self._fits = token_window(tokenizer, tokenizer.context_length) if self.tag_options else None

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "train_size": cfg.INPUT.TRAIN_SIZE,
            "image_format": cfg.INPUT.FORMAT,
            "flip": cfg.INPUT.RANDOM_FLIP,
            "tokenizer": build_tokenizer(cfg.MODEL.CLIP.ARCH),
            "tag_options": (cfg.MODEL.TTD.REMOVE_STOPWORDS, cfg.MODEL.TTD.MAX_TAGS) if cfg.MODEL.TTD.ENABLED else None,
        }

    def __call__(self, record: Dict) -> Optional[Dict]:
        try:
            # a view, whatever the decoder's layout: the crop and flip below keep it a view, and
            # the sample's one copy is the CHW array it returns
            image = read_image_checked(record["file_name"], self.image_format, record.get("image_bytes"),
                                       channels_first=True).transpose(1, 2, 0)
        except OSError as e:
            logger.warning("skipping a training sample: %s", e)
            return None
        # The resize is drawn as always (the same random stream: seeded runs do not change) but
        # applied only when it changes the size: resizing to its own size returns the same pixels
        # (PIL copies the image) after two conversions, about 0.1 of the 0.76 ms that a 128 px
        # sample costs a loader worker (benchmarks/README.md, the tiny CLIP's pretraining).
        resize = self.resize.get_transform(image)
        if (resize.new_h, resize.new_w) != image.shape[:2]:
            image = resize.apply_image(image)
        aug = T.AugInput(image)
        self.crop_flip(aug)
        sample = {
            "image": np.ascontiguousarray(aug.image.transpose(2, 0, 1)),
            "caption": record["caption"],
            "file_name": record["file_name"],
            "height": self.train_size,
            "width": self.train_size,
        }
        if self.tokenizer is not None:
            sample["caption_tokens"] = self.tokenizer([record["caption"]])[0].numpy()
        if self.tag_options is not None:
            sample["candidate_tags"] = candidate_tags([record["caption"]], self._fits, *self.tag_options)[0]
        return sample


class TestMapper:
    """Any evaluation record -> the record plus "image" [3, H', W'] (short side resized to
    ``min_size``, 0 = unchanged). Ground truth stays on disk for the evaluators."""

    @configurable
    def __init__(self, *, min_size: int, max_size: int, image_format: str = "RGB"):
        self.resize = T.ResizeShortestEdge(min_size, max_size) if min_size > 0 else None
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg):
        return {"min_size": cfg.INPUT.MIN_SIZE_TEST, "max_size": cfg.INPUT.MAX_SIZE_TEST, "image_format": cfg.INPUT.FORMAT}

    def __call__(self, record: Dict) -> Dict:
        record = copy.deepcopy(record)
        image = read_image_checked(record["file_name"], self.image_format)
        record.setdefault("height", image.shape[0])
        record.setdefault("width", image.shape[1])
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        record["image"] = to_chw_tensor(image)
        return record
