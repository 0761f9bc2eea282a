"""Sliding-window inference (MODEL.SEG_INFERENCE.SLIDE_CROP / SLIDE_STRIDE; ``sliding_windows``
and ``slide_inference`` of ttd_d2/modeling/meta_arch/segmentation.py): the windows cover every
pixel, their predictions are averaged, the windows of several images share the forwards."""
import pytest
import torch

from conftest import build
from meta_arch_fixtures import random_image
from ttd_d2.modeling.meta_arch.segmentation import sliding_windows, slide_inference


@pytest.mark.parametrize("crop", [48, 64, 100])
def test_slide_crop_at_least_image_equals_whole_image(tiny_cfg, register, crop):
    name = register(stuff_classes=["background", "circle, round", "square"], background_threshold=0.4)
    whole = build(tiny_cfg)
    slide = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.SLIDE_CROP": crop, "MODEL.SEG_INFERENCE.SLIDE_STRIDE": crop // 2})
    x = {"image": random_image(6, 32, 48), "height": 40, "width": 60, "dataset_name": name}
    with torch.no_grad():
        a = whole([x])[0]["sem_seg"]
        b = slide([x])[0]["sem_seg"]
    assert a.shape == b.shape == (3, 40, 60)
    assert torch.allclose(a, b, atol=1e-6)


def test_slide_crop_smaller_than_image(tiny_cfg, register):
    name = register(stuff_classes=["circle", "square"])
    slide = build(tiny_cfg, **{"MODEL.SEG_INFERENCE.SLIDE_CROP": 32, "MODEL.SEG_INFERENCE.SLIDE_STRIDE": 16})
    whole = build(tiny_cfg)
    x = {"image": random_image(7, 32, 64), "height": 32, "width": 64, "dataset_name": name}
    with torch.no_grad():
        a = slide([x])[0]["sem_seg"]
        b = whole([x])[0]["sem_seg"]
    assert a.shape == (2, 32, 64)
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, b, atol=1e-4)  # windows really were used


@pytest.mark.parametrize("batch_size, calls", [(0, [4]), (3, [3, 1]), (1, [1] * 4)])
def test_slide_inference_averages_windows(batch_size, calls):
    seen, count = [], [0]

    def predict(windows):  # [N, 3, h, w] -> [N, 1, h, w], value = window number (1-based)
        seen.append(len(windows))
        first = count[0]
        count[0] += len(windows)
        values = torch.arange(first + 1, first + len(windows) + 1, dtype=torch.float)
        return values.view(-1, 1, 1, 1).expand(len(windows), 1, *windows.shape[-2:])

    image = torch.zeros(1, 3, 10, 14)
    out = slide_inference(predict, image, crop=8, stride=6, batch_size=batch_size)
    windows = sliding_windows(10, 14, 8, 6)
    ref_sum, ref_count = torch.zeros(10, 14), torch.zeros(10, 14)
    for i, (y0, x0, y1, x1) in enumerate(windows):
        ref_sum[y0:y1, x0:x1] += i + 1
        ref_count[y0:y1, x0:x1] += 1
    assert len(windows) == 4 and seen == calls
    assert out.shape == (1, 1, 10, 14) and torch.allclose(out[0, 0], ref_sum / ref_count)


def test_slide_inference_batches_images_like_one_at_a_time():
    """The windows of several images share the forwards and each image gets its own average."""
    def predict(windows):  # depends on each window's content: its pixels minus the window's mean
        return windows[:, :2] - windows[:, :2].mean(dim=(-2, -1), keepdim=True)

    images = torch.randn(3, 3, 13, 21, generator=torch.Generator().manual_seed(0))
    together = slide_inference(predict, images, crop=8, stride=5, batch_size=5)
    alone = torch.cat([slide_inference(predict, im[None], crop=8, stride=5) for im in images])
    torch.testing.assert_close(together, alone)
    # bitwise what concatenating every prediction and adding window by window gives
    windows = sliding_windows(13, 21, 8, 5)
    preds = predict(torch.cat([images[..., y0:y1, x0:x1] for y0, x0, y1, x1 in windows])).view(len(windows), 3, 2, 8, 8)
    total, count = torch.zeros(3, 2, 13, 21), torch.zeros(13, 21)
    for pred, (y0, x0, y1, x1) in zip(preds, windows):
        total[..., y0:y1, x0:x1] += pred
        count[y0:y1, x0:x1] += 1
    assert torch.equal(together, total / count)
    assert torch.equal(slide_inference(predict, images, crop=0, stride=0), predict(images))


@pytest.mark.parametrize(
    "height, width, crop, stride",
    [(32, 48, 32, 16), (33, 47, 16, 8), (100, 37, 30, 30), (64, 64, 64, 32), (20, 70, 20, 7), (5, 5, 8, 4), (50, 9, 16, 1)],
)
def test_sliding_windows_cover_every_pixel(height, width, crop, stride):
    windows = sliding_windows(height, width, crop, stride)
    covered = torch.zeros(height, width, dtype=torch.int64)
    for y0, x0, y1, x1 in windows:
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        assert y1 - y0 <= crop and x1 - x0 <= crop
        covered[y0:y1, x0:x1] += 1
    assert (covered > 0).all()
    assert len(set(windows)) == len(windows)


def test_slide_inference_stride_larger_than_crop_is_rejected():
    """A stride above the crop would leave pixels no window covers: refused before any forward."""
    image = torch.zeros(1, 3, 100, 100)
    calls = []
    with pytest.raises(ValueError, match=r"0 < stride <= crop, got crop 32, stride 48"):
        slide_inference(lambda windows: calls.append(1) or windows[:, :1], image, crop=32, stride=48)
    assert not calls


def test_windows_of_one_size_share_forwards_across_passes():
    """window_maps_of_passes: the passes' same-size windows go through predict together, in pass
    order, batch_size at a time; each pass gets what window_maps gives it alone."""
    from ttd_d2.modeling.meta_arch.segmentation import window_maps, window_maps_of_passes

    torch.manual_seed(0)
    passes = [torch.randn(2, 3, 6, 7), torch.randn(2, 3, 8, 12), torch.randn(2, 3, 12, 16)]  # 1, 2 and 6 windows of crop 8
    calls = []

    def predict(crops):
        calls.append(tuple(crops.shape))
        return crops.mean(1, keepdim=True)[..., ::2, ::2] * 2  # low-resolution "maps" [N, 1, h/2, w/2]

    for batch, expected in ((0, [(2, 3, 6, 7), (16, 3, 8, 8)]), (5, [(2, 3, 6, 7)] + [(5, 3, 8, 8)] * 3 + [(1, 3, 8, 8)])):
        calls.clear()
        shared = window_maps_of_passes(predict, passes, crop=8, stride=4, batch_size=batch)
        assert calls == expected
        for images, (maps, windows) in zip(passes, shared):
            alone_maps, alone_windows = window_maps(predict, images, 8, 4)
            assert windows == alone_windows and torch.equal(maps, alone_maps)
    calls.clear()
    whole = window_maps_of_passes(predict, passes, crop=0, stride=0)  # no sliding: one forward per size
    assert calls == [(2, 3, 6, 7), (2, 3, 8, 12), (2, 3, 12, 16)] and [w for _, w in whole][2] == [(0, 0, 12, 16)]
    seen = []
    window_maps_of_passes(lambda crops: seen.append(crops) or predict(crops), passes[:1], crop=0, stride=0)
    assert seen[0].data_ptr() == passes[0].data_ptr()  # one whole image: predicted in place, not copied


@pytest.mark.parametrize("size,crop,stride,batch", [((13, 21), 8, 5, 0), ((13, 21), 8, 5, 4), ((6, 7), 8, 4, 0)])
def test_stitching_low_resolution_maps_equals_sliding_window_inference(size, crop, stride, batch):
    """stitch_windows (each window's maps upsampled to the window padded to the patch grid,
    cropped, scored, added, averaged) equals slide_inference over the same windows with the
    same per-window predictions."""
    from ttd_d2.modeling.meta_arch.segmentation import (
        maps_to_image, padded_size, stitch_windows, window_maps, sliding_windows as windows_of)

    torch.manual_seed(1)
    images, patch = torch.randn(2, 3, *size), 4
    lowres = lambda crops: torch.nn.functional.avg_pool2d(  # noqa: E731 -- maps on the padded patch grid
        torch.nn.functional.pad(crops, (0, -crops.shape[-1] % patch, 0, -crops.shape[-2] % patch)), patch)
    scores = lambda full: torch.sigmoid(3 * full[:, :2]) + full[:, 2:].amax(1, keepdim=True)  # noqa: E731

    def full_window(crops):
        return scores(maps_to_image(lowres(crops), padded_size(crops.shape[-2:], patch), crops.shape[-2:]))

    maps, windows = window_maps(lowres, images, crop, stride)
    assert windows == windows_of(*size, crop, stride)
    got = stitch_windows(maps, windows, 2, size, patch, scores, batch)
    torch.testing.assert_close(got, slide_inference(full_window, images, crop, stride), atol=1e-6, rtol=1e-6)
    assert stitch_windows(maps, windows, 2, size, patch).shape == (2, 3, *size)  # no scores: the maps' names
