"""TCL's objective as pure functions (ttd_d2.modeling.tcl.losses) against hand-computed values."""
import math

import pytest
import torch

from ttd_d2.modeling.ttd.losses import masker
from ttd_d2.modeling.tcl.losses import (
    area_prior_losses,
    extended_info_nce,
    gumbel_sigmoid,
    info_nce,
    masked_pool,
    sample_masks,
    text_grounded_similarity,
    total_variation,
)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def cross_entropy(logits, label):
    """-log softmax(logits)[label], written out."""
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


# ---------------------------------------------------------------- Gumbel-sigmoid
def test_gumbel_sigmoid_is_the_logistic_noise_formula_and_reproducible():
    logits = torch.tensor([[-2.0, 0.0], [0.5, 3.0]], dtype=torch.float64)
    tau = 0.5
    first = gumbel_sigmoid(logits, tau, generator=torch.Generator().manual_seed(7))
    again = gumbel_sigmoid(logits, tau, generator=torch.Generator().manual_seed(7))
    other = gumbel_sigmoid(logits, tau, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).tolist()
    for i in range(2):
        for j in range(2):
            noise = math.log(u[i][j] / (1 - u[i][j]))
            assert first[i, j].item() == pytest.approx(sigmoid((logits[i, j].item() + noise) / tau), rel=1e-12)


def test_hard_gumbel_sigmoid_is_binary_with_the_soft_gradient():
    logits = torch.tensor([-1.0, 0.2, 1.5, 4.0], requires_grad=True)
    hard = gumbel_sigmoid(logits, 2.0, hard=True, generator=torch.Generator().manual_seed(3))
    soft = gumbel_sigmoid(logits, 2.0, generator=torch.Generator().manual_seed(3))
    assert set(hard.tolist()) <= {0.0, 1.0}
    assert torch.equal(hard, (soft > 0.5).float())
    (hard * torch.arange(1.0, 5.0)).sum().backward()
    expected = (soft * (1 - soft) / 2.0 * torch.arange(1.0, 5.0)).detach()  # d sigmoid(z / tau) / d logit
    assert torch.allclose(logits.grad, expected, rtol=1e-5)


def test_hard_gumbel_sigmoid_is_one_with_probability_sigmoid_of_the_logit():
    # P(logit + Logistic noise > 0) = sigmoid(logit), for any tau: the masker's mean is kept.
    logits = torch.tensor([-1.0, 0.0, 2.0]).repeat(40000, 1)
    hard = gumbel_sigmoid(logits, 3.0, hard=True, generator=torch.Generator().manual_seed(0))
    assert hard.mean(0).tolist() == pytest.approx([sigmoid(-1.0), 0.5, sigmoid(2.0)], abs=0.01)


def test_gumbel_sigmoid_refuses_a_non_positive_temperature():
    with pytest.raises(ValueError, match="MODEL.TCL.GUMBEL_TAU"):
        gumbel_sigmoid(torch.zeros(2), 0.0)


def test_sample_masks_eval_is_the_masker_and_training_a_reproducible_hard_sample():
    cos = torch.tensor([[0.1, 0.25], [0.3, -0.2]])
    w, b = torch.tensor(10.0, requires_grad=True), torch.tensor(-2.5, requires_grad=True)
    evaluated = sample_masks(cos, w, b, training=False)
    assert torch.equal(evaluated, masker(cos, w, b))
    assert evaluated.tolist()[0] == pytest.approx([sigmoid(-1.5), 0.5])
    first = sample_masks(cos, w, b, 1.0, training=True, generator=torch.Generator().manual_seed(11))
    again = sample_masks(cos, w, b, 1.0, training=True, generator=torch.Generator().manual_seed(11))
    assert torch.equal(first, again) and set(first.flatten().tolist()) <= {0.0, 1.0}
    expected = gumbel_sigmoid(w * cos + b, 1.0, hard=True, generator=torch.Generator().manual_seed(11))
    assert torch.equal(first, expected)
    first.sum().backward()
    assert w.grad is not None and b.grad is not None and b.grad.item() > 0  # straight-through reaches the masker


# ---------------------------------------------------------------- mask pooling
def test_masked_pool_hand_values_and_empty_mask():
    dense = torch.tensor([[[[1.0, 3.0]], [[0.0, 4.0]]]])  # [1, D=2, 1, 2]: F(p0) = (1, 0), F(p1) = (3, 4)
    masks = torch.tensor([[[[1.0, 1.0]], [[0.25, 0.75]], [[0.0, 0.0]]]])  # [1, N=3, 1, 2]
    pooled = masked_pool(dense, masks)
    assert pooled.shape == (1, 3, 2)
    assert pooled[0, 0].tolist() == pytest.approx([4 / (2 + 1e-6), 4 / (2 + 1e-6)])
    assert pooled[0, 1].tolist() == pytest.approx([(0.25 + 2.25) / (1 + 1e-6), 3 / (1 + 1e-6)])
    assert pooled[0, 2].tolist() == [0.0, 0.0]


def test_text_grounded_similarity_hand_values():
    dense = torch.tensor([[[[1.0, 3.0]], [[0.0, 4.0]]]])
    masks = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 0.0]]]])
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    similarity = text_grounded_similarity(dense, masks, text)
    # caption 0 pools F(p1) = (3, 4): cos with (1, 0) = 0.6; caption 1 pools F(p0) = (1, 0): cos with
    # (0, 2) = 0; caption 2's mask is empty: cosine 0.
    assert similarity.shape == (1, 3) and similarity[0].tolist() == pytest.approx([0.6, 0.0, 0.0], abs=1e-6)


# ---------------------------------------------------------------- contrastive losses
def test_info_nce_hand_value_and_temperature_gradient():
    image = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    scale = torch.tensor(2.0, requires_grad=True)
    loss = info_nce(image, text, scale)
    r = 1 / math.sqrt(2)
    cos = [[1.0, r], [0.0, r]]  # cos(image b, caption n)
    by_image = [cross_entropy([2 * c for c in cos[b]], b) for b in range(2)]
    by_text = [cross_entropy([2 * cos[m][b] for m in range(2)], b) for b in range(2)]
    assert loss.item() == pytest.approx(0.5 * (sum(by_image) / 2 + sum(by_text) / 2), rel=1e-6)
    loss.backward()
    assert scale.grad is not None and scale.grad.item() < 0  # a sharper temperature helps here


def test_extended_info_nce_hand_value():
    similarity = torch.tensor([[0.9, 0.1], [0.3, 0.5]], requires_grad=True)
    loss = extended_info_nce(similarity, torch.tensor(10.0))
    rows = [[9.0, 1.0], [3.0, 5.0]]
    by_image = (cross_entropy(rows[0], 0) + cross_entropy(rows[1], 1)) / 2
    by_text = (cross_entropy([9.0, 3.0], 0) + cross_entropy([1.0, 5.0], 1)) / 2
    assert loss.item() == pytest.approx(0.5 * (by_image + by_text), rel=1e-6)
    loss.backward()
    # d/dS[i, j] of 1/2 [mean_b CE(row b) + mean_b CE(column b)]
    #   = 1/4 [softmax(row i)_j + softmax(column j)_i - 2 [i = j]]
    row_p = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in rows]
    columns = [[rows[0][j], rows[1][j]] for j in range(2)]
    column_p = [[math.exp(v) / sum(math.exp(u) for u in col) for v in col] for col in columns]
    expected = [[10 / 4 * (row_p[i][j] + column_p[j][i] - 2 * (i == j)) for j in range(2)] for i in range(2)]
    for i in range(2):
        assert similarity.grad[i].tolist() == pytest.approx(expected[i], abs=1e-6)


def test_contrastive_losses_of_a_batch_of_one_are_zero():
    assert extended_info_nce(torch.tensor([[0.3]]), torch.tensor(10.0)).item() == 0.0
    assert info_nce(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]), torch.tensor(10.0)).item() == 0.0


def test_extended_info_nce_refuses_an_inconsistent_batch():
    with pytest.raises(ValueError, match="world_size"):
        extended_info_nce(torch.zeros(2, 3), torch.tensor(1.0))


# ---------------------------------------------------------------- area priors
def test_area_priors_hand_values_with_an_offset():
    # rank 1 of 2: local images 0, 1 have captions 2, 3 as positives.
    masks = torch.tensor([[[[0.2, 0.4]], [[0.0, 0.2]], [[1.0, 0.6]], [[0.1, 0.1]]],
                          [[[0.3, 0.3]], [[0.5, 0.5]], [[0.0, 0.0]], [[0.2, 0.0]]]], requires_grad=True)
    positive, negative = area_prior_losses(masks, offset=2)
    positive_mean = (1.0 + 0.6 + 0.2 + 0.0) / 4
    negative_mean = (0.2 + 0.4 + 0.0 + 0.2 + 0.1 + 0.1 + 0.3 + 0.3 + 0.5 + 0.5 + 0.0 + 0.0) / 12
    assert positive.item() == pytest.approx(abs(positive_mean - 0.4), rel=1e-6)
    assert negative.item() == pytest.approx(negative_mean, rel=1e-6)
    other = area_prior_losses(masks, offset=2, positive_prior=0.6, negative_prior=0.5)
    assert other[0].item() == pytest.approx(abs(positive_mean - 0.6), rel=1e-6)
    assert other[1].item() == pytest.approx(abs(negative_mean - 0.5), rel=1e-6)


def test_area_priors_of_a_batch_of_one_have_no_negative_term():
    masks = torch.full((1, 1, 2, 2), 0.9, requires_grad=True)
    positive, negative = area_prior_losses(masks)
    assert positive.item() == pytest.approx(0.5) and negative.item() == 0.0
    (positive + negative).backward()
    assert torch.allclose(masks.grad, torch.full_like(masks, 0.25))  # d |mean - 0.4| / d pixel


# ---------------------------------------------------------------- total variation
def test_total_variation_hand_value():
    x = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # [1, 2, 2, 2]
    # horizontal |2-1|, |8-4|, 0, 0 -> 5/4; vertical |4-1|, |8-2|, 0, 0 -> 9/4
    assert total_variation(x).item() == pytest.approx(5 / 4 + 9 / 4)


def test_total_variation_of_a_single_row_or_pixel():
    row = torch.tensor([[[[1.0, 3.0, 0.0]]]], requires_grad=True)
    assert total_variation(row).item() == pytest.approx((2 + 3) / 2)
    pixel = torch.ones(2, 3, 1, 1, requires_grad=True)
    loss = total_variation(pixel)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pixel.grad, torch.zeros_like(pixel))
