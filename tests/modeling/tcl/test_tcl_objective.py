"""TCLObjective (ttd_d2.modeling.tcl.objective) on tiny tensors: which terms, their values
written out with explicit loops, the cut-out images, gradients, a batch of one."""
import math

import pytest
import torch

from ttd_d2.modeling.masker import Masker
from ttd_d2.modeling.tcl.objective import TCLObjective

TCL_WEIGHTS = {"contrastive_weight": 0.1, "area_weight": 0.4, "tv_weight": 1.0}


def batch(seed=0, size=2):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(size, 3, 2, 2, generator=g, requires_grad=True)  # [B, D, h, w]
    captions = torch.nn.functional.normalize(torch.randn(size, 3, generator=g), dim=-1)
    images = torch.randn(size, 3, 4, 4, generator=g)  # the mask grid is 2 x 2: upsampled 2x
    projection = torch.randn(3, 3, generator=g)
    return dense, captions, images, lambda x: x.mean(dim=(2, 3)) @ projection


def cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def masks_by_hand(dense, captions, w=10.0, b=-2.5):
    """M[b][n][p] = sigmoid(w cos(F_b(p), t_n) + b), pixels p in row-major order."""
    d = dense.detach()
    return [[[1 / (1 + math.exp(-(w * cos(d[i, :, y, x].tolist(), captions[n].tolist()) + b)))
              for y in range(d.shape[2]) for x in range(d.shape[3])]
             for n in range(len(captions))] for i in range(d.shape[0])]


def cross_entropy(logits, label):
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


def test_weights_zero_compute_nothing_and_create_no_parameters():
    objective = TCLObjective()
    assert not objective.enabled and not list(objective.parameters())
    dense, captions, images, encode = batch()
    assert objective(dense, captions, Masker(), images, encode) == {}
    assert not list(TCLObjective(area_weight=0.4, tv_weight=1.0).parameters())  # no temperature without c


def test_area_and_tv_terms_equal_their_formulas_written_out():
    dense, captions, images, encode = batch()
    losses = TCLObjective(**TCL_WEIGHTS).train()(dense, captions, Masker(), images, encode)
    assert set(losses) == {"loss_tcl_area", "loss_tcl_neg_area", "loss_tcl_tv_image", "loss_tcl_tv_mask",
                           "loss_tcl_feature", "loss_tcl_image"}
    m = masks_by_hand(dense, captions)
    positive = [v for i in range(2) for v in m[i][i]]
    negative = [v for i in range(2) for v in m[i][1 - i]]
    assert losses["loss_tcl_area"].item() == pytest.approx(0.4 * abs(sum(positive) / 4 / 2 - 0.4), rel=1e-5)
    assert losses["loss_tcl_neg_area"].item() == pytest.approx(0.4 * sum(negative) / 8, rel=1e-5)
    d = dense.detach()
    tv = (d[..., :, 1:] - d[..., :, :-1]).abs().mean() + (d[..., 1:, :] - d[..., :-1, :]).abs().mean()
    assert losses["loss_tcl_tv_image"].item() == pytest.approx(tv.item(), rel=1e-6)
    # 2 x 2 masks, pixels (0, 1, 2, 3) row-major: horizontal pairs (0, 1), (2, 3); vertical (0, 2), (1, 3)
    pairs_h = [abs(mask[0] - mask[1]) + abs(mask[2] - mask[3]) for row in m for mask in row]
    pairs_v = [abs(mask[0] - mask[2]) + abs(mask[1] - mask[3]) for row in m for mask in row]
    assert losses["loss_tcl_tv_mask"].item() == pytest.approx(sum(pairs_h) / 8 + sum(pairs_v) / 8, rel=1e-5)


def test_feature_contrastive_term_written_out():
    dense, captions, images, encode = batch(seed=1)
    objective = TCLObjective(contrastive_weight=0.1)
    losses = objective(dense, captions, Masker(), images, encode)
    m = masks_by_hand(dense, captions)
    d = dense.detach()
    pixels = [d[:, :, y, x] for y in range(2) for x in range(2)]  # each [B, D]
    s = [[0.0, 0.0], [0.0, 0.0]]
    for i in range(2):
        for n in range(2):
            area = sum(m[i][n]) + 1e-6
            pooled = [sum(m[i][n][p] * pixels[p][i, k].item() for p in range(4)) / area for k in range(3)]
            s[i][n] = cos(pooled, captions[n].tolist())
    scale = 1 / 0.07
    by_image = sum(cross_entropy([scale * v for v in s[i]], i) for i in range(2)) / 2
    by_text = sum(cross_entropy([scale * s[j][n] for j in range(2)], n) for n in range(2)) / 2
    assert losses["loss_tcl_feature"].item() == pytest.approx(0.1 * 0.5 * (by_image + by_text), rel=1e-4)


def test_image_term_cuts_images_with_hard_gumbel_masks_in_training_and_soft_masks_in_eval():
    dense, captions, images, encode = batch(seed=2)
    seen = []

    def recording(x):
        seen.append(x.detach())
        return encode(x)

    objective = TCLObjective(contrastive_weight=0.1)
    first = objective(dense, captions, Masker(), images, recording, generator=torch.Generator().manual_seed(5))
    again = objective(dense, captions, Masker(), images, recording, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first["loss_tcl_image"], again["loss_tcl_image"]) and torch.equal(seen[0], seen[1])
    cut = seen[0] / images  # the mask, nearest-upsampled 2x: constant on 2 x 2 pixel squares
    assert set(cut.round().flatten().tolist()) <= {0.0, 1.0} and torch.allclose(cut, cut.round())
    assert torch.equal(cut[..., ::2, ::2], cut[..., 1::2, 1::2])
    objective.eval()
    objective(dense, captions, Masker(), images, recording)
    soft = torch.tensor([m[i] for i, m in enumerate(masks_by_hand(dense, captions))]).view(2, 1, 2, 2)
    upsampled = soft.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.allclose(seen[2], images * upsampled, atol=1e-6)
    embeddings = encode(images * upsampled)
    scale = 1 / 0.07
    c = [[cos(embeddings[i].tolist(), captions[n].tolist()) for n in range(2)] for i in range(2)]
    expected = 0.5 * (sum(cross_entropy([scale * v for v in c[i]], i) for i in range(2)) / 2
                      + sum(cross_entropy([scale * c[j][n] for j in range(2)], n) for n in range(2)) / 2)
    assert objective(dense, captions, Masker(), images, encode)["loss_tcl_image"].item() == pytest.approx(
        0.1 * expected, rel=1e-4)


def test_gradients_reach_dense_masker_and_temperatures():
    dense, captions, images, encode = batch(seed=3)
    masker = Masker()
    objective = TCLObjective(**TCL_WEIGHTS)
    sum(objective(dense, captions, masker, images, encode).values()).backward()
    for name, tensor in [("dense", dense), ("w", masker.w), ("b", masker.b)] + list(objective.named_parameters()):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0, name
    assert {n for n, _ in objective.named_parameters()} == {"image_temperature.logit_scale",
                                                           "feature_temperature.logit_scale"}


def test_batch_of_one_is_finite():
    dense, captions, images, encode = batch(seed=4, size=1)
    losses = TCLObjective(**TCL_WEIGHTS)(dense, captions, Masker(), images, encode)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_tcl_neg_area"].item() == 0.0 and losses["loss_tcl_feature"].item() == 0.0
    sum(losses.values()).backward()
    assert torch.isfinite(dense.grad).all()


def test_negative_weights_are_refused_with_the_key():
    with pytest.raises(ValueError, match="MODEL.TCL.LOSS.AREA_WEIGHT"):
        TCLObjective(area_weight=-1.0)
