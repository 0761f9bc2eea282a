"""``TTD.reusing_image_features``: inside the block the backbone runs once per distinct input, the
text tower once per distinct caption and tag list, and every output equals the one computed
without the block, under two masker biases (the
quickstart's two settings), for semantic segmentation and caption analysis."""
import pytest
import torch

from conftest import build

CLASSES = ["circle, round", "square", "triangle"]


@pytest.fixture
def dataset(register):
    return register(stuff_classes=CLASSES)


def inputs(dataset, count=3):
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 40, 48), generator=g, dtype=torch.uint8) for _ in range(count)]
    return [{"image": im, "dataset_name": dataset} for im in images] + [
        {"image": im, "caption": "a red circle and a blue square", "dataset_name": ""} for im in images]


def outputs(model, batch, biases):
    results = []
    for bias in biases:
        with torch.no_grad():
            model.masker.b.fill_(bias)
            results.append(model(batch))
    return results


@pytest.mark.parametrize("backbone", ["CLIPDense", "TCL"])
def test_outputs_equal_the_uncached_ones_and_the_backbone_runs_once_per_input(tiny_cfg, dataset, backbone):
    tiny_cfg.MODEL.BACKBONE.NAME = backbone
    model = build(tiny_cfg)
    batch, biases = inputs(dataset), (-2.0, 0.5)
    expected = outputs(model, batch, biases)
    calls, texts = [], []
    forward, encode_text = model.backbone.forward, model.backbone.encode_text
    model.backbone.forward = lambda *a, **k: calls.append(k.get("with_global")) or forward(*a, **k)
    model.backbone.encode_text = lambda t, **k: texts.append((tuple(t), k.get("use_templates"))) or encode_text(t, **k)
    with model.reusing_image_features():
        got = outputs(model, batch, biases)
    assert len(calls) == 3 + 3  # semseg (no global) once per image; captions need the global embedding
    caption, tags = (("a red circle and a blue square",), False), (("red", "circle", "blue", "square"), True)
    assert texts.count(caption) == texts.count(tags) == 1  # three images, two settings: encoded once
    for want, have in zip(expected, got):
        for a, b in zip(want, have):
            assert a.keys() == b.keys()
            for key, value in a.items():
                if torch.is_tensor(value):
                    assert torch.equal(value, b[key]), key
                elif isinstance(value, dict):
                    assert all(torch.equal(value[m], b[key][m]) for m in value), key
                else:
                    assert value == b[key], key
    assert model._feature_cache is None  # released at the end of the block
    calls.clear()
    texts.clear()
    outputs(model, batch, biases)
    assert len(calls) == 2 * 6  # outside the block nothing is reused
    assert texts.count(caption) == texts.count(tags) == 2 * 3


def test_the_block_refuses_training_mode(tiny_cfg):
    model = build(tiny_cfg, train=True)
    with pytest.raises(RuntimeError, match="model.eval"):
        with model.reusing_image_features():
            pass
