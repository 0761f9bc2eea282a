"""read_image_checked: detectron2's pixels on every path, the PNG fast path where it applies."""
import io

import numpy as np
import pytest
from detectron2.data import detection_utils as utils
from PIL import Image

from ttd_d2.data import image_io
from ttd_d2.data.image_io import read_image_checked


def _save(tmp_path, name, array, mode=None, **save_kwargs):
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path, **save_kwargs) if mode else Image.fromarray(array).save(path, **save_kwargs)
    return str(path)


@pytest.fixture
def rgb_png(tmp_path):
    rng = np.random.default_rng(0)
    return _save(tmp_path, "rgb.png", rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))


def test_plain_rgb_png_takes_the_fast_path_with_pil_pixels(rgb_png):
    with open(rgb_png, "rb") as f:
        data = f.read()
    assert image_io._decode_png_rgb(data) is not None
    reference = utils.read_image(rgb_png, format="RGB")
    image = read_image_checked(rgb_png)
    assert image.shape == (37, 53, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    assert image_io._decode_png_rgb(data).shape == (37, 53, 3)
    np.testing.assert_array_equal(image, reference)
    np.testing.assert_array_equal(read_image_checked(rgb_png, data=data), reference)
    chw = read_image_checked(rgb_png, channels_first=True)
    assert chw.shape == (3, 37, 53)
    np.testing.assert_array_equal(chw, reference.transpose(2, 0, 1))


def _other_kinds(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when shown
    rotated = tmp_path / "exif.png"
    Image.fromarray(rgb).save(rotated, exif=exif)
    return {
        "rgba": _save(tmp_path, "rgba.png", rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)),
        "grey": _save(tmp_path, "grey.png", rng.integers(0, 256, (20, 30), dtype=np.uint8)),
        "grey16": _save(tmp_path, "grey16.png", rng.integers(0, 65536, (20, 30), dtype=np.uint16)),
        "palette": str(_palette(tmp_path, rgb)),
        "jpeg": _save(tmp_path, "rgb.jpg", rgb, quality=90),
        "exif": str(rotated),
    }


def _palette(tmp_path, rgb):
    path = tmp_path / "palette.png"
    Image.fromarray(rgb).quantize(16).save(path)
    return path


@pytest.mark.parametrize("kind", ["rgba", "grey", "grey16", "palette", "jpeg", "exif"])
def test_other_files_go_through_pil(tmp_path, kind):
    path = _other_kinds(tmp_path)[kind]
    with open(path, "rb") as f:
        assert image_io._decode_png_rgb(f.read()) is None
    reference = utils.read_image(path, format="RGB")
    np.testing.assert_array_equal(read_image_checked(path), reference)
    np.testing.assert_array_equal(read_image_checked(path, channels_first=True), reference.transpose(2, 0, 1))
    if kind == "exif":
        assert reference.shape[:2] == (30, 20)  # the orientation was applied


def test_bgr_format_is_detectron2s(rgb_png):
    np.testing.assert_array_equal(read_image_checked(rgb_png, "BGR"), utils.read_image(rgb_png, format="BGR"))


def test_a_failing_fast_decoder_falls_back_to_pil(rgb_png, monkeypatch):
    monkeypatch.setattr(image_io.cv2, "imdecode", lambda *args: None)  # what OpenCV returns for data it cannot read
    np.testing.assert_array_equal(read_image_checked(rgb_png), utils.read_image(rgb_png, format="RGB"))


def test_truncated_and_missing_files_name_the_file(tmp_path, rgb_png):
    with open(rgb_png, "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    for path in (str(truncated), str(tmp_path / "missing.png")):
        with pytest.raises(OSError, match="cannot read image '.*(truncated|missing).png'.*regenerate"):
            read_image_checked(path)
    with pytest.raises(OSError, match="member.png"):
        read_image_checked("member.png", data=data[: len(data) // 2])


def test_a_chunk_name_in_the_data_only_costs_the_fast_path():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert image_io._is_plain_rgb_png(data)
    assert not image_io._is_plain_rgb_png(data + b"eXIf")


def test_a_transparency_key_gives_pil_pixels_on_either_path(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    rgb[0, 0] = 0
    path = _save(tmp_path, "keyed.png", rgb, transparency=(0, 0, 0))
    np.testing.assert_array_equal(read_image_checked(path), utils.read_image(path, format="RGB"))
