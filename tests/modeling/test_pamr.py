"""PAMR against a computation written from its definition with explicit loops over pixels and
neighbours (clamped indices = replicated border)."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ttd_d2.modeling import kernel_choice, pamr_kernel
from ttd_d2.modeling.kernel_choice import KernelChoice
from ttd_d2.modeling.pamr import PAMR, _neighbours

REPO = Path(__file__).resolve().parents[2]


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



def test_pamr_of_lower_resolution_masks_refines_their_bilinear_resize():
    """Masks [h, w] below the image size are first resized bilinearly (align_corners False) to it."""
    torch.manual_seed(2)
    image, masks = torch.rand(1, 3, 6, 8), torch.rand(1, 2, 3, 4)
    resized = torch.nn.functional.interpolate(masks, size=(6, 8), mode="bilinear", align_corners=False)
    got = PAMR(2, (1, 2))(image, masks)
    torch.testing.assert_close(got.double(), reference_pamr(image, resized, 2, (1, 2)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pamr_returns_the_masks_dtype(dtype):
    """Half-precision scores (an autocast protocol) come back in their dtype, refined in float32."""
    torch.manual_seed(3)
    image, masks = torch.rand(1, 3, 6, 6), torch.rand(1, 2, 6, 6).to(dtype)
    got = PAMR(2, (1,))(image, masks)
    assert got.dtype == dtype
    torch.testing.assert_close(got, PAMR(2, (1,))(image, masks.float()).to(dtype))

TRITON_CHECK = r"""
import torch
from ttd_d2.modeling import kernel_choice, pamr_kernel
from ttd_d2.modeling.kernel_choice import KernelChoice
from ttd_d2.modeling.pamr import PAMR, _refine_step

torch.manual_seed(0)
# odd sizes (pixel and class blocks partly filled), two images, a dilation larger than the image
for (b, k, h, w), dilations in (((2, 5, 7, 9), (1, 2, 12)), ((1, 9, 3, 17), (1, 4)), ((1, 1, 16, 16), (1,))):
    image, masks = torch.rand(b, 3, h, w), torch.rand(b, k, h, w)
    weights = PAMR(1, dilations, kernel="eager").affinity(image)
    offsets = torch.tensor(pamr_kernel.neighbour_offsets(dilations), dtype=torch.int32)
    for class_blocks_fastest in (True, False):  # both grid orders (bench_pamr.py times both)
        pamr_kernel.CLASS_BLOCKS_FASTEST = class_blocks_fastest
        torch.testing.assert_close(pamr_kernel.refine_step_triton(masks, weights, offsets),
                                   _refine_step(masks, weights, dilations), atol=1e-6, rtol=1e-5)
    pamr_kernel.CLASS_BLOCKS_FASTEST = True
    torch.testing.assert_close(pamr_kernel.affinity_triton(image * 4 - 2, offsets, len(dilations)),
                               PAMR(1, dilations, kernel="eager").affinity(image * 4 - 2), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(PAMR(3, dilations, kernel="triton")(image, masks),
                               PAMR(3, dilations, kernel="eager")(image, masks), atol=1e-6, rtol=1e-5)
flat = torch.full((1, 3, 6, 5), 0.5)  # sigma 0: every neighbour alike, uniform weights
offsets = torch.tensor(pamr_kernel.neighbour_offsets((1, 2)), dtype=torch.int32)
torch.testing.assert_close(pamr_kernel.affinity_triton(flat, offsets, 2), torch.full((1, 1, 16, 6, 5), 1 / 16))
print("ok")
"""


@pytest.mark.skipif(not kernel_choice.available(), reason="Triton is not installed (CUDA builds of torch ship it)")
def test_triton_kernels_equal_the_eager_step_and_affinity():
    """MODEL.SEG_INFERENCE.PAMR.KERNEL triton, run on the CPU by Triton's interpreter (which must
    be switched on before Triton is imported, hence a fresh interpreter): the iteration and the
    affinity equal the eager ones (themselves checked against the definition above)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_neighbour_offsets_follow_the_eager_order():
    """The kernel's offsets are those of ``_neighbours`` (same neighbour order, same weights)."""
    image = torch.arange(7 * 8, dtype=torch.float).view(1, 1, 7, 8)
    stacked = _neighbours(image, (1, 3), with_centre=False)[0, 0]  # [P, H, W]
    for n, (dy, dx) in enumerate(pamr_kernel.neighbour_offsets((1, 3))):
        y, x = 3, 4
        assert stacked[n, y, x] == image[0, 0, min(max(y + dy, 0), 6), min(max(x + dx, 0), 7)]


def test_kernel_choice_and_errors(monkeypatch):
    """auto takes the eager step on CPU tensors; triton on CPU tensors without the interpreter,
    an unknown kernel and a missing Triton each fail with the fix named."""
    image, masks = torch.rand(1, 3, 6, 6), torch.rand(1, 2, 6, 6)
    auto = PAMR(2, (1,), kernel="auto")
    assert not auto._uses_triton(masks.device)
    torch.testing.assert_close(auto(image, masks), PAMR(2, (1,), kernel="eager")(image, masks))
    with pytest.raises(ValueError, match="PAMR.KERNEL 'fused' unknown"):
        PAMR(2, (1,), kernel="fused")
    if kernel_choice.available():
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(ValueError, match="runs on CUDA tensors.*KERNEL eager or auto"):
            PAMR(1, (1,), kernel="triton")(image, masks)
    monkeypatch.setattr(kernel_choice, "triton", None)
    with pytest.raises(ValueError, match="needs Triton"):
        PAMR(1, (1,), kernel="triton")
    assert not PAMR(1, (1,), kernel="auto")._uses_triton(torch.device("cuda"))


def test_pamr_kernel_key_reaches_the_model(tiny_cfg):
    from conftest import build

    model = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.PAMR.NUM_ITER": 2, "MODEL.SEG_INFERENCE.PAMR.KERNEL": "eager"})
    assert model.pamr.kernel == "eager" and model.pamr.num_iter == 2
    assert build(tiny_cfg, **{"MODEL.SEG_INFERENCE.PAMR.NUM_ITER": 2}).pamr.kernel == "auto"


def test_auto_falls_back_to_eager_when_triton_fails(monkeypatch, caplog):
    """KERNEL auto never fails where eager works: a Triton error (here: the kernels refuse CPU
    tensors without the interpreter) logs one warning and PAMR runs eagerly from then on;
    KERNEL triton raises it."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kernel_choice, "triton", object())  # "importable", whatever is installed
    monkeypatch.setattr(kernel_choice, "interpreting", lambda: False)
    image, masks = torch.rand(1, 3, 6, 7), torch.rand(1, 2, 6, 7)
    auto = PAMR(2, (1, 2), kernel="auto")
    monkeypatch.setattr(KernelChoice, "uses_triton",  # as on CUDA
                        lambda self, device: self.kernel != "eager" and not self.failed)
    with caplog.at_level("WARNING"):
        out = auto(image, masks)
    assert auto.choice.failed and "running PAMR eagerly" in caplog.text
    torch.testing.assert_close(out, PAMR(2, (1, 2), kernel="eager")(image, masks))
    strict = PAMR(2, (1, 2), kernel="triton")
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        strict(image, masks)
