"""Tests for ttd_d2.modeling.ttd.scoring against hand values and loop formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from ttd_d2.modeling.ttd.scoring import (
    SCORING_METHODS,
    combined_image_text_scores,
    cosine_maps,
    image_tag_scores,
    pixel_tag_scores,
    score_tags,
    select_tags,
    text_tag_scores,
)


def _unit(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


def _loop_softmax_scores(query, tag_emb, valid, tau):
    """Reference Eq.(1)/(7): softmax over valid tags with math.exp, per caption."""
    batch, num_tags, _ = tag_emb.shape
    out = [[0.0] * num_tags for _ in range(batch)]
    for b in range(batch):
        kept = [k for k in range(num_tags) if valid[b, k]]
        logits = {k: tau * float(torch.dot(query[b], tag_emb[b, k])) for k in kept}
        total = sum(math.exp(v) for v in logits.values())
        for k in kept:
            out[b][k] = math.exp(logits[k]) / total
    return torch.tensor(out, dtype=torch.float64)


def test_pixel_scores_hand_example_2_tags_2x2():
    tau = 2.0
    tag_a = [[math.log(3) / 2, 0.0], [0.0, 0.0]]  # pixel (0,0): A gets 3/(3+1) = 0.75
    tag_b = [[0.0, 0.0], [0.0, math.log(4) / 2]]  # pixel (1,1): B gets 4/(4+1) = 0.8
    padding = [[0.9, 0.9], [0.9, 0.9]]  # an invalid tag that would win everywhere
    cos = torch.tensor([[tag_a, tag_b, padding]], dtype=torch.float64)
    valid = torch.tensor([[True, True, False]])
    scores = pixel_tag_scores(cos, valid, tau)
    # per-pixel softmaxes: (0,0) -> (.75,.25); (0,1),(1,0) -> (.5,.5); (1,1) -> (.2,.8)
    assert torch.allclose(scores, torch.tensor([[0.75, 0.8, 0.0]], dtype=torch.float64))


def test_pixel_scores_loop_reference():
    generator = torch.Generator().manual_seed(1)
    cos = torch.rand(2, 4, 3, 5, generator=generator, dtype=torch.float64) * 2 - 1
    valid = torch.tensor([[True, True, True, False], [True, False, True, True]])
    tau = 7.5
    scores = pixel_tag_scores(cos, valid, tau)
    for b in range(2):
        kept = [k for k in range(4) if valid[b, k]]
        for k in range(4):
            if k not in kept:
                assert scores[b, k] == 0
                continue
            best = 0.0
            for i in range(3):
                for j in range(5):
                    denominator = sum(math.exp(tau * float(cos[b, q, i, j])) for q in kept)
                    best = max(best, math.exp(tau * float(cos[b, k, i, j])) / denominator)
            assert scores[b, k].item() == pytest.approx(best, rel=1e-12)


def test_image_and_text_scores_match_math_exp_loop():
    global_emb, caption_emb, tag_emb = _unit(3, 8, seed=1), _unit(3, 8, seed=2), _unit(3, 4, 8, seed=3)
    valid = torch.tensor([[True, True, True, True], [True, True, False, False], [True, False, False, False]])
    tau = 100.0
    s_image = image_tag_scores(global_emb, tag_emb, valid, tau)
    s_text = text_tag_scores(caption_emb, tag_emb, valid, tau)
    assert torch.allclose(s_image, _loop_softmax_scores(global_emb, tag_emb, valid, tau))
    assert torch.allclose(s_text, _loop_softmax_scores(caption_emb, tag_emb, valid, tau))
    assert torch.allclose(s_image.sum(1), torch.ones(3, dtype=torch.float64))
    assert torch.equal(s_image[2], torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(combined_image_text_scores(s_image, s_text), (s_image + s_text) / 2)


def test_unnormalised_inputs_are_normalised():
    global_emb, tag_emb = _unit(2, 6, seed=4), _unit(2, 3, 6, seed=5)
    valid = torch.ones(2, 3, dtype=torch.bool)
    scaled = image_tag_scores(global_emb * 3.0, tag_emb * 0.5, valid, 10.0)
    assert torch.allclose(scaled, image_tag_scores(global_emb, tag_emb, valid, 10.0))


def test_tau_as_tensor():
    global_emb, tag_emb = _unit(2, 6, seed=6), _unit(2, 3, 6, seed=7)
    valid = torch.ones(2, 3, dtype=torch.bool)
    tau = torch.tensor(math.log(100.0), dtype=torch.float64).exp()
    assert torch.allclose(image_tag_scores(global_emb, tag_emb, valid, tau),
                          image_tag_scores(global_emb, tag_emb, valid, 100.0))


def test_padding_does_not_change_valid_scores():
    global_emb, caption_emb, tag_emb = _unit(2, 8, seed=8), _unit(2, 8, seed=9), _unit(2, 3, 8, seed=10)
    dense = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    valid = torch.ones(2, 3, dtype=torch.bool)
    padded_emb = torch.cat([tag_emb, _unit(2, 2, 8, seed=12)], dim=1)
    padded_emb[0, 4] = 0.0  # an all-zero padding row is allowed too
    padded_valid = torch.cat([valid, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    for name, compute in {
        "s_image": lambda e, v: image_tag_scores(global_emb, e, v, 50.0),
        "s_text": lambda e, v: text_tag_scores(caption_emb, e, v, 50.0),
        "s_pixel": lambda e, v: pixel_tag_scores(cosine_maps(dense, e), v, 50.0),
    }.items():
        plain, padded = compute(tag_emb, valid), compute(padded_emb, padded_valid)
        assert torch.allclose(padded[:, :3], plain), name
        assert torch.equal(padded[:, 3:], torch.zeros(2, 2, dtype=torch.float64)), name


def test_cosine_maps_matches_cosine_similarity():
    generator = torch.Generator().manual_seed(13)
    dense = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64) * 4
    text = _unit(2, 3, 5, seed=14)
    maps = cosine_maps(dense, text)
    assert maps.shape == (2, 3, 3, 4)
    for b in range(2):
        for k in range(3):
            expected = F.cosine_similarity(dense[b], text[b, k][:, None, None], dim=0)
            assert torch.allclose(maps[b, k], expected)


def test_cosine_maps_values_and_gradients_equal_normalising_the_map():
    """The division by |F(p)| on the K maps (scoring.cosine_maps) against normalising the map
    itself, F.normalize's definition, including a zero pixel (its norm clamped at 1e-12)."""
    generator = torch.Generator().manual_seed(21)
    dense = torch.randn(2, 6, 3, 4, generator=generator, dtype=torch.float64) * 3
    dense[1, :, 2, 3] = 0
    text = torch.randn(2, 4, 6, generator=generator, dtype=torch.float64)
    weights = torch.randn(2, 4, 3, 4, generator=generator, dtype=torch.float64)
    grads = []
    for forward in (cosine_maps, lambda d, t: torch.einsum("bdhw,bkd->bkhw", F.normalize(d, dim=1),
                                                              F.normalize(t, dim=-1))):
        d, t = dense.clone().requires_grad_(True), text.clone().requires_grad_(True)
        maps = forward(d, t)
        (maps * weights).sum().backward()
        grads.append((maps.detach(), d.grad, t.grad))
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(grads[0][0][1, :, 2, 3], torch.zeros(4, dtype=torch.float64))


def test_caption_without_valid_tags_scores_zero_without_nan():
    cos = torch.rand(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[False, False, False], [True, False, True]])
    emb = _unit(2, 3, 4, seed=15).requires_grad_(True)
    query = _unit(2, 4, seed=16)
    s_pixel = pixel_tag_scores(cos, valid, 100.0)
    s_image = image_tag_scores(query, emb, valid, 100.0)
    assert torch.equal(s_pixel[0], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(s_image[0], torch.zeros(3, dtype=torch.float64))
    (s_pixel.sum() + s_image.sum()).backward()
    assert torch.isfinite(cos.grad).all() and torch.isfinite(emb.grad).all()


def test_zero_tags():
    valid = torch.zeros(2, 0, dtype=torch.bool)
    assert pixel_tag_scores(torch.zeros(2, 0, 3, 3), valid, 10.0).shape == (2, 0)
    assert image_tag_scores(torch.randn(2, 4), torch.zeros(2, 0, 4), valid, 10.0).shape == (2, 0)
    assert cosine_maps(torch.randn(2, 4, 3, 3), torch.zeros(2, 0, 4)).shape == (2, 0, 3, 3)


def test_select_tags_threshold_inclusive_and_valid_only():
    scores = torch.tensor([[0.5, 0.49, 0.9], [1.0, 0.0, 0.7]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    assert select_tags(scores, valid, 0.5).tolist() == [[True, False, False], [True, False, True]]


def test_score_tags_dispatch():
    global_emb, caption_emb, tag_emb = _unit(2, 8, seed=17), _unit(2, 8, seed=18), _unit(2, 3, 8, seed=19)
    dense = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    cos = cosine_maps(dense, tag_emb)
    kwargs = dict(global_emb=global_emb, caption_emb=caption_emb, cos_maps=cos)
    expected = {
        "s_image": image_tag_scores(global_emb, tag_emb, valid, 20.0),
        "s_text": text_tag_scores(caption_emb, tag_emb, valid, 20.0),
        "s_pixel": pixel_tag_scores(cos, valid, 20.0),
    }
    expected["image_text"] = combined_image_text_scores(expected["s_image"], expected["s_text"])
    assert set(SCORING_METHODS) == set(expected)
    for method in SCORING_METHODS:
        assert torch.allclose(score_tags(method, tag_emb, valid, 20.0, **kwargs), expected[method])
    with pytest.raises(ValueError, match="cos_maps"):
        score_tags("s_pixel", tag_emb, valid, 20.0, global_emb=global_emb)
    with pytest.raises(ValueError, match="unknown"):
        score_tags("s_magic", tag_emb, valid, 20.0, **kwargs)
