"""PAMR against a computation written from its definition with explicit loops over pixels and
neighbours (clamped indices = replicated border)."""
import math

import pytest
import torch

from ttd_d2.modeling.pamr import PAMR


def reference_pamr(image, masks, num_iter, dilations):
    """Loops over pixels, dilations and the 8 (resp. 9) offsets of a 3x3 window."""
    _, channels, height, width = image.shape
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]

    def at(t, k, y, x):
        return float(t[0, k, min(max(y, 0), height - 1), min(max(x, 0), width - 1)])

    weights = {}
    for y in range(height):
        for x in range(width):
            logits = []
            sigmas = []
            for k in range(channels):
                window = [at(image, k, y + dy * d, x + dx * d) for d in dilations for dy, dx in ring + [(0, 0)]]
                mean = sum(window) / len(window)
                sigmas.append(math.sqrt(sum((v - mean) ** 2 for v in window) / (len(window) - 1)))
            for d in dilations:
                for dy, dx in ring:
                    a = [-abs(at(image, k, y, x) - at(image, k, y + dy * d, x + dx * d)) / (1e-8 + 0.1 * sigmas[k])
                         for k in range(channels)]
                    logits.append(sum(a) / channels)
            top = max(logits)
            exp = [math.exp(v - top) for v in logits]
            weights[y, x] = [e / sum(exp) for e in exp]
    out = masks.clone().double()
    for _ in range(num_iter):
        prev = out.clone()
        for k in range(masks.shape[1]):
            for y in range(height):
                for x in range(width):
                    neigh = [at(prev, k, y + dy * d, x + dx * d) for d in dilations for dy, dx in ring]
                    out[0, k, y, x] = sum(w * v for w, v in zip(weights[y, x], neigh))
    return out


def test_pamr_matches_the_definition():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 5, 6)
    masks = torch.rand(1, 2, 5, 6)
    got = PAMR(num_iter=3, dilations=(1, 2))(image, masks)
    assert got.shape == (1, 2, 5, 6)
    torch.testing.assert_close(got.double(), reference_pamr(image, masks, 3, (1, 2)), atol=1e-5, rtol=1e-5)


def test_pamr_invariant_to_channel_scale_and_keeps_constants():
    torch.manual_seed(1)
    image, masks = torch.rand(2, 3, 8, 8), torch.rand(2, 4, 8, 8)
    pamr = PAMR(2, (1, 3))
    torch.testing.assert_close(pamr(image, masks), pamr(image * 3.0 - 0.5, masks), atol=1e-5, rtol=1e-4)
    const = torch.full((2, 1, 8, 8), 0.3)
    torch.testing.assert_close(pamr(image, const), const)  # weights sum to 1


def test_pamr_resizes_masks_and_rejects_bad_arguments():
    out = PAMR(1, (1,))(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 4, 4))
    assert out.shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="num_iter"):
        PAMR(0, (1,))
    with pytest.raises(ValueError, match="expects image"):
        PAMR(1, (1,))(torch.rand(3, 8, 8), torch.rand(1, 2, 8, 8))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_pamr_matches_the_definition_on_several_sizes(backend):
    """MODEL.SEG_INFERENCE.PAMR.COMPILE: the compiled iteration (inductor as on the GPU host, with
    dynamic shapes: image sizes vary) gives the definition's values, for more than one size."""
    torch._dynamo.reset()
    pamr = PAMR(num_iter=3, dilations=(1, 2), compile=True, compile_backend=backend)
    for size, seed in (((5, 6), 0), ((7, 4), 1), ((6, 9), 2)):
        torch.manual_seed(seed)
        image, masks = torch.rand(1, 3, *size), torch.rand(1, 2, *size)
        torch.testing.assert_close(pamr(image, masks).double(), reference_pamr(image, masks, 3, (1, 2)), atol=1e-5, rtol=1e-5)
    assert not pamr._step.failed
    torch._dynamo.reset()


def test_summed_step_equals_the_stacked_step():
    """The compiled path's iteration (a sum of shifted copies) equals the eager one (the stacked
    neighbours reduced), neighbour for neighbour, including dilations larger than the image."""
    from ttd_d2.modeling.pamr import _refine_step, _refine_step_summed

    torch.manual_seed(0)
    pamr = PAMR(num_iter=1, dilations=(1, 3, 8))
    for size in ((6, 9), (4, 4)):
        image, masks = torch.rand(2, 3, *size, dtype=torch.double), torch.rand(2, 4, *size, dtype=torch.double)
        weights = pamr.affinity(image).double()
        torch.testing.assert_close(_refine_step_summed(masks, weights, pamr.dilations),
                                   _refine_step(masks, weights, pamr.dilations))


def test_pamr_compile_key_reaches_the_model(tiny_cfg):
    from conftest import build

    model = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.PAMR.NUM_ITER": 2, "MODEL.SEG_INFERENCE.PAMR.COMPILE": True})
    assert model.pamr._step.backend == "inductor" and model.pamr._step.dynamic is None
    assert model.pamr._step.eager.__name__ == "_refine_step_summed"
    assert build(tiny_cfg, **{"MODEL.SEG_INFERENCE.PAMR.NUM_ITER": 2}).pamr._step.__name__ == "_refine_step"
