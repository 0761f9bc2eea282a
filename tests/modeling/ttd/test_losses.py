"""Tests for ttd_d2.modeling.ttd.losses against hand values and stop-gradient checks."""
import math

import pytest
import torch

from ttd_d2.modeling.ttd.losses import (
    distillation_targets,
    mask_distance,
    masker,
    minmax_normalize,
    ttd_losses,
)


def test_masker_hand_values_and_gradients():
    cos = torch.tensor([0.25, 0.0, 0.5])
    w = torch.tensor(10.0, requires_grad=True)
    b = torch.tensor(-2.5, requires_grad=True)
    masks = masker(cos, w, b)
    expected = [0.5, 1 / (1 + math.exp(2.5)), 1 / (1 + math.exp(-2.5))]
    assert masks.tolist() == pytest.approx(expected, rel=1e-6)
    masks.sum().backward()
    assert w.grad is not None and b.grad is not None
    assert masker(cos, 10.0, -2.5).tolist() == pytest.approx(expected, rel=1e-6)


def test_minmax_known_map():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[-1.0, -1.0], [1.0, -1.0]]])
    assert minmax_normalize(maps).tolist() == [[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0], [1.0, 0.0]]]


def test_minmax_constant_and_tiny_range_maps():
    constant = torch.full((2, 3, 4, 4), 0.7)
    assert torch.equal(minmax_normalize(constant), torch.zeros_like(constant))
    tiny = torch.tensor([[0.5, 0.5 + 1e-9]], dtype=torch.float64)
    normalised = minmax_normalize(tiny)
    assert torch.isfinite(normalised).all() and (normalised >= 0).all() and (normalised <= 1).all()


def test_distillation_targets_selected_rejected_invalid_and_union():
    tag_masks = torch.tensor([[
        [[0.2, 0.6], [0.4, 1.0]],   # selected -> minmax
        [[0.9, 0.1], [0.5, 0.3]],   # rejected -> 0
        [[0.1, 0.3], [0.2, 0.5]],   # selected -> minmax
    ], [
        [[0.2, 0.2], [0.8, 0.8]],   # rejected
        [[0.9, 0.9], [0.1, 0.9]],   # padding (never selected)
        [[0.0, 0.0], [0.0, 0.0]],   # padding
    ]]).requires_grad_(True)
    selected = torch.tensor([[True, False, True], [False, False, False]])
    targets, union = distillation_targets(tag_masks, selected)
    assert not targets.requires_grad and not union.requires_grad
    assert torch.allclose(targets[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(targets[0, 1], torch.zeros(2, 2))
    assert torch.allclose(targets[0, 2], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(targets[1], torch.zeros(3, 2, 2))
    assert torch.allclose(union[0], torch.maximum(targets[0, 0], targets[0, 2]))
    assert torch.equal(union[1], torch.zeros(2, 2))


def test_distillation_targets_without_normalisation_keep_the_masks():
    tag_masks = torch.tensor([[[[0.2, 0.6], [0.4, 1.0]], [[0.9, 0.1], [0.5, 0.3]], [[0.1, 0.3], [0.2, 0.5]]]])
    selected = torch.tensor([[True, False, True]])
    targets, union = distillation_targets(tag_masks, selected, norm="none")
    assert torch.equal(targets[0, 0], tag_masks[0, 0]) and torch.equal(targets[0, 1], torch.zeros(2, 2))
    assert torch.equal(targets[0, 2], tag_masks[0, 2])
    assert torch.allclose(union[0], torch.tensor([[0.2, 0.6], [0.4, 1.0]]))  # max of masks 0 and 2
    with pytest.raises(ValueError, match="target normalisation"):
        distillation_targets(tag_masks, selected, norm="softmax")


def test_distillation_targets_union_is_pixelwise_max():
    generator = torch.Generator().manual_seed(0)
    tag_masks = torch.rand(3, 4, 5, 6, generator=generator)
    selected = torch.rand(3, 4, generator=generator) > 0.4
    targets, union = distillation_targets(tag_masks, selected)
    for b in range(3):
        expected = torch.zeros(5, 6)
        for k in range(4):
            if selected[b, k]:
                assert torch.allclose(targets[b, k], minmax_normalize(tag_masks[b, k]))
                expected = torch.maximum(expected, targets[b, k])
            else:
                assert torch.equal(targets[b, k], torch.zeros(5, 6))
        assert torch.allclose(union[b], expected)


def test_distillation_targets_without_tags():
    targets, union = distillation_targets(torch.zeros(2, 0, 3, 4), torch.zeros(2, 0, dtype=torch.bool))
    assert targets.shape == (2, 0, 3, 4) and torch.equal(union, torch.zeros(2, 3, 4))


def test_mask_distance_hand_values():
    pred = torch.tensor([[0.5, 1.0], [0.0, 0.25]], dtype=torch.float64)
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    assert mask_distance(pred, target, "l1").item() == pytest.approx(0.1875)
    assert mask_distance(pred, target, "mse").item() == pytest.approx(0.078125)
    bce = (math.log(2) + math.log(4 / 3)) / 4  # the p=1,t=1 and p=0,t=0 pixels cost ~1e-6
    assert mask_distance(pred, target, "bce").item() == pytest.approx(bce, abs=1e-5)


def test_mask_distance_reduce_dims_and_unknown_kind():
    pred, target = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    assert mask_distance(pred, target).shape == (2, 3)
    assert torch.allclose(mask_distance(pred, target, "l1", reduce_dims=(1, 2, 3)),
                          (pred - target).abs().flatten(1).mean(1))
    with pytest.raises(ValueError, match="unknown"):
        mask_distance(pred, target, "huber")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bce_is_finite_at_saturated_predictions(dtype):
    pred = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=dtype, requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=dtype)
    loss = mask_distance(pred, target, "bce")
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(-math.log(1e-6) / 2, rel=1e-2)
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def _hand_example():
    caption_mask = torch.tensor([[[0.2, 0.8]], [[0.5, 0.5]]], requires_grad=True)
    union = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])
    tag_masks = torch.tensor([[[[0.1, 0.9]], [[0.6, 0.6]]],
                              [[[0.3, 0.7]], [[9.0, 9.0]]]], requires_grad=True)
    targets = torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]]],
                            [[[1.0, 0.0]], [[1.0, 1.0]]]])
    valid = torch.tensor([[True, True], [True, False]])
    return caption_mask, tag_masks, targets, union, valid


def test_ttd_losses_hand_values():
    losses = ttd_losses(*_hand_example(), distance="l1")
    assert losses["loss_distill"].item() == pytest.approx((0.2 + 0.5) / 2)
    # per caption: (0.1 + 0.6) / 2 and 0.7 / 1, then the mean over the two captions
    assert losses["loss_tag"].item() == pytest.approx(((0.1 + 0.6) / 2 + 0.7) / 2)
    losses = ttd_losses(*_hand_example(), distance="mse")
    assert losses["loss_distill"].item() == pytest.approx((0.04 + 0.25) / 2)
    assert losses["loss_tag"].item() == pytest.approx(((0.01 + 0.36) / 2 + 0.49) / 2)
    assert torch.isfinite(ttd_losses(*_hand_example(), distance="bce")["loss_tag"])


def test_ttd_losses_match_loop_formula():
    generator = torch.Generator().manual_seed(3)
    caption_mask = torch.rand(3, 4, 4, generator=generator)
    tag_masks = torch.rand(3, 5, 4, 4, generator=generator)
    valid = torch.tensor([[True] * 5, [True, True, False, False, False], [True, False, False, False, False]])
    selected = valid & (torch.rand(3, 5, generator=generator) > 0.5)
    targets, union = distillation_targets(tag_masks, selected)
    losses = ttd_losses(caption_mask, tag_masks, targets, union, valid, distance="l1")
    distill = sum((caption_mask[b] - union[b]).abs().mean() for b in range(3)) / 3
    per_caption = [
        sum((tag_masks[b, k] - targets[b, k]).abs().mean() for k in range(5) if valid[b, k]) / int(valid[b].sum())
        for b in range(3)
    ]
    tag = sum(per_caption) / 3
    assert losses["loss_distill"].item() == pytest.approx(distill.item())
    assert losses["loss_tag"].item() == pytest.approx(tag.item())


def test_caption_without_valid_tags_is_excluded():
    caption_mask, tag_masks, targets, union, valid = _hand_example()
    extra_mask = torch.tensor([[[0.9, 0.9]]])
    losses = ttd_losses(
        torch.cat([caption_mask, extra_mask]),
        torch.cat([tag_masks, torch.full((1, 2, 1, 2), 0.3)]),
        torch.cat([targets, torch.zeros(1, 2, 1, 2)]),
        torch.cat([union, torch.zeros(1, 1, 2)]),
        torch.cat([valid, torch.zeros(1, 2, dtype=torch.bool)]),
    )
    reference = ttd_losses(caption_mask, tag_masks, targets, union, valid)
    assert losses["loss_distill"].item() == pytest.approx(reference["loss_distill"].item())
    assert losses["loss_tag"].item() == pytest.approx(reference["loss_tag"].item())


@pytest.mark.parametrize("num_tags", [0, 3])
@pytest.mark.parametrize("distance", ["l1", "mse", "bce"])
def test_nothing_valid_gives_zero_losses_attached_to_graph(num_tags, distance):
    w = torch.tensor(10.0, requires_grad=True)
    cos = torch.rand(2, 1 + num_tags, 4, 4)
    masks = masker(cos, w, -2.5)
    caption_mask, tag_masks = masks[:, 0], masks[:, 1:]
    valid = torch.zeros(2, num_tags, dtype=torch.bool)
    targets, union = distillation_targets(tag_masks, valid)
    losses = ttd_losses(caption_mask, tag_masks, targets, union, valid, distance)
    for value in losses.values():
        assert value.dim() == 0 and value.item() == 0.0 and value.requires_grad
    sum(losses.values()).backward()
    assert w.grad is not None and w.grad.item() == 0.0


def test_stop_gradient_on_targets_and_union():
    caption_mask, tag_masks, _, _, valid = _hand_example()
    target_source = torch.rand(2, 2, 1, 2, requires_grad=True)
    targets = target_source * 1.0
    union = targets.amax(dim=1)
    losses = ttd_losses(caption_mask, tag_masks, targets, union, valid)
    (losses["loss_distill"] + losses["loss_tag"]).backward()
    assert target_source.grad is None
    assert caption_mask.grad is not None and caption_mask.grad.abs().sum() > 0
    assert tag_masks.grad is not None and tag_masks.grad[0].abs().sum() > 0
    assert torch.equal(tag_masks.grad[1, 1], torch.zeros(1, 2))  # padding gets no gradient


def test_end_to_end_gradients_reach_masker_parameters():
    generator = torch.Generator().manual_seed(5)
    w = torch.tensor(10.0, requires_grad=True)
    b = torch.tensor(-2.5, requires_grad=True)
    caption_cos = torch.rand(2, 6, 6, generator=generator)
    tag_cos = torch.rand(2, 3, 6, 6, generator=generator)
    caption_mask, tag_masks = masker(caption_cos, w, b), masker(tag_cos, w, b)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    targets, union = distillation_targets(tag_masks, valid)
    losses = ttd_losses(caption_mask, tag_masks, targets, union, valid)
    (losses["loss_distill"] + losses["loss_tag"]).backward()
    assert w.grad is not None and w.grad.item() != 0.0 and b.grad.item() != 0.0


def test_loss_tag_is_a_mean_per_caption_then_over_captions():
    """Caption 0 has three tags at distance 0.9 each, caption 1 one tag at distance 0.1: the
    per-caption mean gives (0.9 + 0.1) / 2 = 0.5; the all-pairs mean would give 0.7."""
    tag_masks = torch.tensor([[0.9, 0.9, 0.9], [0.1, 0.0, 0.0]])[:, :, None, None]
    targets = torch.zeros(2, 3, 1, 1)
    valid = torch.tensor([[True, True, True], [True, False, False]])
    caption_mask, union = torch.zeros(2, 1, 1), torch.zeros(2, 1, 1)
    losses = ttd_losses(caption_mask, tag_masks, targets, union, valid, distance="l1")
    assert losses["loss_tag"].item() == pytest.approx(0.5)
    # a third caption without valid tags changes nothing
    losses = ttd_losses(
        torch.zeros(3, 1, 1), torch.cat([tag_masks, torch.ones(1, 3, 1, 1)]), torch.zeros(3, 3, 1, 1),
        torch.zeros(3, 1, 1), torch.cat([valid, torch.zeros(1, 3, dtype=torch.bool)]), distance="l1",
    )
    assert losses["loss_tag"].item() == pytest.approx(0.5)
