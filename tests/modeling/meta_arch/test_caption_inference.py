"""Caption inference of the TTD meta-architecture on the tiny random CLIP (CPU,
docs/INTERFACES.md): the caption mask, the candidate tags and their scores by every method, the
class logits; captions without a candidate tag; ``score_tags``."""
import numpy as np
import pytest
import torch

from conftest import build
from meta_arch_fixtures import SCORE_KEYS, random_image
from ttd_d2.modeling.ttd.tags import caption_to_tags


INTERFACE_KEYS = {"caption_mask", "tags", "tag_scores", "tag_threshold", "tag_caption_cos", "class_logits"}


def test_caption_inference_interface(tiny_cfg, register):
    thing_classes = ["circle", "square", "triangle", "star"]
    name = register(thing_classes=thing_classes, evaluator_type="caption")
    model = build(tiny_cfg, **{"MODEL.TTD.TAG_THRESHOLD": 0.3})
    caption = "A red circle next to a blue square, and the small star."
    with torch.no_grad():
        out = model([{"image": random_image(8, 32, 48), "height": 64, "width": 96, "caption": caption, "dataset_name": name}])
    assert len(out) == 1
    out = out[0]
    assert INTERFACE_KEYS <= set(out)
    tags = caption_to_tags(caption)
    assert out["tags"] == tags and len(tags) == 7
    K = len(tags)
    mask = out["caption_mask"]
    assert mask.shape == (64, 96) and mask.dtype == torch.float32
    assert mask.min() >= 0 and mask.max() <= 1
    assert set(out["tag_scores"]) == SCORE_KEYS
    for method, scores in out["tag_scores"].items():
        assert scores.shape == (K,), method
        assert torch.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1, method
    assert set(out["tag_scores"]["nltk"].tolist()) <= {0.0, 1.0}
    for method in ("s_image", "s_text"):
        assert float(out["tag_scores"][method].sum()) == pytest.approx(1.0, abs=1e-5)
    combined = 0.5 * (out["tag_scores"]["s_image"] + out["tag_scores"]["s_text"])
    assert torch.allclose(out["tag_scores"]["image_text"], combined, atol=1e-6)
    assert out["tag_threshold"] == pytest.approx(0.3)
    assert out["tag_caption_cos"].shape == (K,)
    assert out["tag_caption_cos"].abs().max() <= 1 + 1e-5
    assert out["class_logits"].shape == (len(thing_classes),)
    assert torch.isfinite(out["class_logits"]).all()


def test_caption_inference_without_size_or_classes(tiny_cfg):
    model = build(tiny_cfg)
    with torch.no_grad():
        out = model([{"image": random_image(9, 32, 40), "caption": "a green triangle"}])[0]
    assert out["caption_mask"].shape == (32, 40)
    assert out["tags"] == ["green", "triangle"]


def test_caption_inference_with_no_candidate_tag(tiny_cfg):
    model = build(tiny_cfg)
    with torch.no_grad():
        out = model([{"image": random_image(51), "caption": "the of and"}])[0]
    assert out["tags"] == [] and out["caption_mask"].shape == (32, 32)
    assert set(out["tag_scores"]) == SCORE_KEYS
    assert all(v.shape == (0,) for v in out["tag_scores"].values())
    assert out["tag_caption_cos"].shape == (0,)


# ---------------------------------------------------------------------------------- score_tags
def test_score_tags_api(tiny_cfg):
    model = build(tiny_cfg, train=True)
    rgb = random_image(10, 32, 32).permute(1, 2, 0).numpy().copy()
    caption = "A red circle and a blue square on grass"
    expected_tags = caption_to_tags(caption)
    for method in ("pixel", "image", "text", "image+text", "nltk", "s_pixel"):
        pairs = model.score_tags(rgb, caption, method=method)
        assert [t for t, _ in pairs] == expected_tags, method
        assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for _, s in pairs), method
    assert model.training  # mode restored
    pixel = model.score_tags(rgb, caption, method="pixel")
    with torch.no_grad():
        model.eval()
        ref = model([{"image": torch.from_numpy(rgb.transpose(2, 0, 1).copy()), "caption": caption}])[0]
    assert [s for _, s in pixel] == pytest.approx(ref["tag_scores"]["s_pixel"].tolist(), abs=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32, 3), np.float32),
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32, 4), np.uint8),
        np.zeros((3, 32, 32), np.uint8),
        np.zeros((1, 32, 32, 3), np.uint8),
        np.zeros((0, 32, 3), np.uint8),
    ],
    ids=["float", "gray", "rgba", "chw", "batched", "empty"],
)
def test_score_tags_bad_image_raises(tiny_cfg, bad):
    model = build(tiny_cfg)
    with pytest.raises(ValueError, match="expected an RGB uint8 image"):
        model.score_tags(bad, "a red circle")


def test_score_tags_edge_inputs(tiny_cfg):
    model = build(tiny_cfg)
    rgb = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="method"):
        model.score_tags(rgb, "a red circle", method="clip")
    for empty in ("", "   \n\t"):
        with pytest.raises(ValueError, match="empty caption: give the image's caption"):
            model.score_tags(rgb, empty, method="nltk")
    for not_text in (None, 42, b"a red circle", ["a red circle"]):
        with pytest.raises(TypeError, match="caption must be a str"):
            model.score_tags(rgb, not_text)
    assert model.score_tags(rgb, "the of and") == []  # a caption, but no candidate tag
    assert model.score_tags(rgb, "!!! ,,,", method="nltk") == []


def test_score_tags_reads_an_image_path_as_the_loaders_do(tiny_cfg, tmp_path):
    """A path (str or Path) scores the same as the decoded array; a missing or corrupt file is an
    OSError naming it."""
    from PIL import Image

    model = build(tiny_cfg)
    rgb = random_image(11, 32, 32).permute(1, 2, 0).numpy().copy()
    path = tmp_path / "scene.png"
    Image.fromarray(rgb).save(path)
    caption = "a red circle and a blue square"
    expected = model.score_tags(rgb, caption)
    assert model.score_tags(path, caption) == expected
    assert model.score_tags(str(path), caption) == expected
    with pytest.raises(OSError, match="missing.png"):
        model.score_tags(tmp_path / "missing.png", caption)
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    with pytest.raises(OSError, match="corrupt.png"):
        model.score_tags(tmp_path / "corrupt.png", caption)
