"""CaptionTrainMapper's augmentation: resize to the short side S, random S x S crop, flip. An
image already at S skips the resize's pixel work, and every image gets exactly what detectron2's
AugmentationList of the three gives under the same seed (the same random stream)."""
import sys

import detectron2.data.transforms as T
import numpy as np
import pytest
from PIL import Image

from ttd_d2.data.mappers import CaptionTrainMapper


def _reference(image, size):
    augs = T.AugmentationList([T.ResizeShortestEdge(size, sys.maxsize), T.RandomCrop("absolute", (size, size)),
                               T.RandomFlip(horizontal=True)])
    aug = T.AugInput(image)
    augs(aug)
    return aug.image.transpose(2, 0, 1)


@pytest.mark.parametrize("shape", [(32, 32), (32, 48), (40, 64), (24, 24)])
def test_same_pixels_and_random_stream_as_detectron2s_list(tmp_path, shape):
    rng = np.random.default_rng(0)
    files = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    mapper = CaptionTrainMapper(train_size=32, tokenizer=None)
    np.random.seed(3)
    got = [mapper({"file_name": f, "caption": "a cat"})["image"] for f in files]
    next_after_mapper = np.random.rand()
    np.random.seed(3)
    expected = [_reference(np.asarray(Image.open(f).convert("RGB")), 32) for f in files]
    next_after_reference = np.random.rand()
    for a, b in zip(got, expected):
        assert a.shape == (3, 32, 32)
        np.testing.assert_array_equal(a, b)
    assert next_after_mapper == next_after_reference  # the mapper drew as many numbers as the list


def test_an_image_at_the_train_size_is_not_resized(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    calls = []
    monkeypatch.setattr(T.ResizeTransform, "apply_image", lambda self, img, interp=None: calls.append(1) or img)
    CaptionTrainMapper(train_size=32, tokenizer=None)({"file_name": str(path), "caption": "x"})
    assert calls == []
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(path)  # short side 32 already: no resize
    CaptionTrainMapper(train_size=32, tokenizer=None)({"file_name": str(path), "caption": "x"})
    assert calls == []
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(path)
    CaptionTrainMapper(train_size=32, tokenizer=None)({"file_name": str(path), "caption": "x"})
    assert calls == [1]


def test_caption_tokens_are_the_tokenizers_and_repeats_are_cached(tmp_path, monkeypatch):
    """Each sample's caption_tokens equal open_clip's tokenizer on its caption, repeated captions
    come from the memo (the tokenizer runs once per distinct caption until the memo of
    CAPTION_TOKEN_CACHE_SIZE captions is full and emptied), and every sample gets its own array."""
    from conftest import TINY_ARCH

    from ttd_d2.data import mappers
    from ttd_d2.modeling.backbone.clip_loading import build_tokenizer

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    tokenizer = build_tokenizer(TINY_ARCH)
    calls = []

    class Counting:
        context_length = tokenizer.context_length

        def __call__(self, texts, context_length=None):
            calls.append(list(texts))
            return tokenizer(texts, context_length=context_length)

    monkeypatch.setattr(mappers, "CAPTION_TOKEN_CACHE_SIZE", 2)
    mapper = CaptionTrainMapper(train_size=32, tokenizer=Counting())
    captions = ["a red cat", "two dogs", "a red cat", "a tree", "two dogs", "a tree"]
    samples = [mapper({"file_name": str(path), "caption": c}) for c in captions]
    for caption, sample in zip(captions, samples):
        assert sample["caption_tokens"].dtype == np.int64
        np.testing.assert_array_equal(sample["caption_tokens"], tokenizer([caption])[0].numpy())
    # "a tree" found the memo full (emptied), so "two dogs" was tokenised again
    assert calls == [["a red cat"], ["two dogs"], ["a tree"], ["two dogs"]]
    samples[-1]["caption_tokens"][:] = 0  # a sample's array is its own, not the memo's row
    np.testing.assert_array_equal(mapper({"file_name": str(path), "caption": "a tree"})["caption_tokens"],
                                  tokenizer(["a tree"])[0].numpy())
    assert len(calls) == 4
