"""The fused window stitching (MODEL.SEG_INFERENCE.STITCH_KERNEL triton) against the eager
upsample-masker-add of ``slide_inference``, in Triton's CPU interpreter; the auto / eager /
triton choice and its fallback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build
from ttd_d2.modeling import kernel_choice, stitch_kernel
from ttd_d2.modeling.kernel_choice import KernelChoice
from ttd_d2.modeling.meta_arch.segmentation import sliding_windows, split_synonyms, window_maps

REPO = Path(__file__).resolve().parents[2]

STITCH_CHECK = r"""
import sys
import torch
sys.path.insert(0, "tests")
from conftest import build, make_tiny_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from ttd_d2.modeling.meta_arch.segmentation import (
    max_over_synonyms, maps_to_image, padded_size, slide_inference, sliding_windows)
from ttd_d2.modeling.stitch_kernel import stitch_windows_triton, synonym_layout

torch.manual_seed(0)


def eager(maps, num_images, size, crop, stride, patch, owner, num_classes, masker):
    # slide_inference with window predictions made from the given low-resolution maps
    def window(crops):
        up = maps_to_image(maps, padded_size(crops.shape[-2:], patch), crops.shape[-2:])
        if masker is not None:
            up = torch.sigmoid(masker[0] * up + masker[1])
            up = max_over_synonyms(up.transpose(0, 1), owner, num_classes).transpose(0, 1)
        return up
    return slide_inference(window, torch.zeros(num_images, 3, *size), crop, stride)


# (images, size, crop, stride, patch, grid scale): overlapping windows on the patch grid; one
# window smaller than the crop, padded to the grid and cropped; no sliding at all; maps at 4x
# the patch grid (TCL's)
for num_images, size, crop, stride, patch, up in ((2, (37, 53), 24, 10, 8, 1), (1, (20, 30), 32, 16, 8, 1),
                                                  (2, (21, 19), 0, 0, 4, 1), (1, (40, 33), 16, 8, 8, 4)):
    if crop > 0:
        windows = sliding_windows(*size, crop, stride)
    else:
        windows = [(0, 0, *size)]
    y0, x0, y1, x1 = windows[0]
    win = (y1 - y0, x1 - x0)
    padded = padded_size(win, patch)
    grid = (padded[0] // patch * up, padded[1] // patch * up)
    corners = [w[:2] for w in windows]
    owner = torch.tensor([0, 0, 1, 2, 2, 2])  # synonyms: classes of 2, 1 and 3 names
    maps = torch.rand(len(windows) * num_images, len(owner), *grid) * 2 - 1
    masker = torch.tensor([7.5, -1.25])
    for blocks in ((256, 4), (64, 2), (128, 1)):
        got = stitch_windows_triton(maps, corners, num_images, size, win, padded, synonym_layout(owner, 6, 3, maps.device),
                                    masker, *blocks)
        torch.testing.assert_close(got, eager(maps, num_images, size, crop, stride, patch, owner, 3, masker),
                                   atol=1e-6, rtol=1e-5)
    plain = stitch_windows_triton(maps, corners, num_images, size, win, padded, synonym_layout(None, 6, 6, maps.device))
    torch.testing.assert_close(plain, eager(maps, num_images, size, crop, stride, patch, None, 6, None),
                               atol=1e-6, rtol=1e-5)

# the whole protocol through the model: windows, two scales, flips, synonyms, both class scores,
# caption masks
name = "stitch_check_dataset"
DatasetCatalog.register(name, lambda: [])
MetadataCatalog.get(name).set(stuff_classes=["background", "circle, ring", "square"], background_threshold=0.4)
protocol = {"MODEL.SEG_INFERENCE.SLIDE_CROP": 32, "MODEL.SEG_INFERENCE.SLIDE_STRIDE": 16,
            "MODEL.SEG_INFERENCE.SCALES": [1.0, 1.5], "MODEL.SEG_INFERENCE.FLIP": True,
            "MODEL.SEG_INFERENCE.WINDOW_BATCH": 3}
image = torch.randint(0, 256, (3, 40, 52), dtype=torch.uint8).float()
for scores in ("ttd", "softmax"):
    outs = []
    for kernel in ("eager", "triton"):
        model = build(make_tiny_cfg(), **protocol, **{"MODEL.SEG_INFERENCE.STITCH_KERNEL": kernel,
                                                      "MODEL.SEG_INFERENCE.CLASS_SCORES": scores})
        with torch.no_grad():
            outs.append((model([{"image": image, "dataset_name": name}])[0]["sem_seg"],
                         model.analyse_caption(model.normalize(image)[None], "a circle", (40, 52))["caption_mask"]))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-4)
print("ok")
"""


@pytest.mark.skipif(not kernel_choice.available(), reason="Triton is not installed (CUDA builds of torch ship it)")
def test_triton_stitching_equals_the_eager_windows():
    """Run by Triton's interpreter on the CPU (switched on before Triton is imported, hence a fresh
    interpreter): the kernel equals ``slide_inference``'s eager stitching for overlapping,
    padded and single windows, synonyms, with and without the masker; the model's sem-seg and
    caption outputs under the full protocol are the same with either STITCH_KERNEL."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", STITCH_CHECK], env=env, capture_output=True, text=True, timeout=900,
                          cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_synonym_layout_follows_the_owners():
    names, owner = split_synonyms(["person, people", "car", "tree, plant, bush"])
    assert names == ["person", "people", "car", "tree", "plant", "bush"]
    starts, most = stitch_kernel.synonym_layout(owner, 6, 3, torch.device("cpu"))
    assert starts.tolist() == [0, 2, 3, 6] and starts.dtype == torch.int32 and most == 3
    starts, most = stitch_kernel.synonym_layout(None, 4, 4, torch.device("cpu"))
    assert starts.tolist() == [0, 1, 2, 3, 4] and most == 1
    with pytest.raises(ValueError, match="non-decreasing"):
        stitch_kernel.synonym_layout(torch.tensor([1, 0]), 2, 2, torch.device("cpu"))


def test_window_maps_lay_windows_out_window_major():
    """Window i of image b at i * B + b, in batches of any size; crop 0 = the whole images."""
    images = torch.arange(2 * 1 * 5 * 7, dtype=torch.float).view(2, 1, 5, 7).expand(2, 3, 5, 7)
    corner = lambda crops: crops[:, :1, :1, :1]  # noqa: E731 -- each window's top-left pixel
    windows = sliding_windows(5, 7, 4, 2)
    for batch in (0, 1, 3):
        maps, got_windows = window_maps(corner, images, 4, 2, batch)
        assert got_windows == windows
        expected = [images[b, 0, y0, x0] for y0, x0, _, _ in windows for b in range(2)]
        assert maps.flatten().tolist() == [float(v) for v in expected]
    maps, whole = window_maps(corner, images, 0, 0)
    assert whole == [(0, 0, 5, 7)] and maps.flatten().tolist() == [0.0, 35.0]


def test_stitch_kernel_choice_errors_and_key(tiny_cfg, monkeypatch):
    """auto stitches eagerly on CPU tensors; triton on CPU without the interpreter, an unknown
    kernel and a missing Triton fail with the fix named; the key reaches the model."""
    assert build(tiny_cfg).stitch.kernel == "auto"
    assert not build(tiny_cfg).stitch.uses_triton(torch.device("cpu"))
    assert build(tiny_cfg, **{"MODEL.SEG_INFERENCE.STITCH_KERNEL": "eager"}).stitch.kernel == "eager"
    with pytest.raises(ValueError, match="STITCH_KERNEL = 'fused' is unknown"):
        build(tiny_cfg, **{"MODEL.SEG_INFERENCE.STITCH_KERNEL": "fused"})
    if kernel_choice.available():
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(ValueError, match="runs on CUDA tensors.*STITCH_KERNEL eager or auto"):
            stitch_kernel.stitch_windows_triton(torch.rand(1, 1, 2, 2), [(0, 0)], 1, (4, 4), (4, 4), (4, 4),
                                                (torch.tensor([0, 1], dtype=torch.int32), 1))
    monkeypatch.setattr(kernel_choice, "triton", None)
    with pytest.raises(ValueError, match="STITCH_KERNEL 'triton' needs Triton"):
        KernelChoice("triton", stitch_kernel.KEY)


def test_auto_stitching_falls_back_to_eager(tiny_cfg, register, monkeypatch, caplog):
    """A Triton failure under auto (here: the kernel refuses CPU tensors without the interpreter)
    logs one warning and gives the eager scores; STITCH_KERNEL triton raises it."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kernel_choice, "triton", object())  # "importable", whatever is installed
    monkeypatch.setattr(kernel_choice, "interpreting", lambda: False)
    monkeypatch.setattr(KernelChoice, "uses_triton", lambda self, device: self.kernel != "eager" and not self.failed)
    dataset = register(stuff_classes=["circle", "square"])
    protocol = {"MODEL.SEG_INFERENCE.SLIDE_CROP": 32, "MODEL.SEG_INFERENCE.SLIDE_STRIDE": 16}
    x = {"image": torch.rand(3, 40, 48) * 255, "dataset_name": dataset}
    auto, eager = build(tiny_cfg, **protocol), build(tiny_cfg, **protocol, **{"MODEL.SEG_INFERENCE.STITCH_KERNEL": "eager"})
    with torch.no_grad(), caplog.at_level("WARNING"):
        got = auto([x])[0]["sem_seg"]
        want = eager([x])[0]["sem_seg"]
    assert auto.stitch.failed and "running the window stitching eagerly" in caplog.text
    torch.testing.assert_close(got, want)
    strict = build(tiny_cfg, **protocol, **{"MODEL.SEG_INFERENCE.STITCH_KERNEL": "triton"})
    with pytest.raises(ValueError, match="runs on CUDA tensors"), torch.no_grad():
        strict([x])
