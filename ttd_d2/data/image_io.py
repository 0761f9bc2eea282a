"""Reading images: the one implementation every mapper and tool calls.

detectron2's ``read_image`` (PIL) is the reference. For 8-bit truecolour PNGs, the synthetic
benchmark's images and Cityscapes', OpenCV's decoder (a dependency already) gives the same
pixels about 0.08 ms sooner per 128 px image (0.20 against 0.29 ms with the layout change the
training mapper makes, on a 2-core EPYC): PIL keeps RGB as four bytes a pixel and repacks it
for numpy. At 1,024 images per step that is loader-worker time the tiny CLIP's pretraining
waits for (benchmarks/README.md). Everything else (JPEG, whose decoders may round
differently; palette, grey, alpha or 16-bit PNGs, whose conversions to RGB PIL defines; PNGs
with an EXIF chunk; formats other than RGB; anything OpenCV refuses) goes through PIL.
"""
import io
from typing import Optional

import cv2
import numpy as np
from detectron2.data import detection_utils as utils
from PIL import Image

__all__ = ["read_image_checked"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_plain_rgb_png(data: bytes) -> bool:
    """Whether ``data`` is a PNG whose header says 8 bits per channel, colour type 2 (RGB),
    and that holds no ``eXIf`` chunk (whose orientation PIL's path applies). The chunk name is
    searched in the whole file: a match inside compressed data only sends the file to PIL."""
    return (len(data) > 26 and data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR"
            and data[24] == 8 and data[25] == 2 and data.find(b"eXIf") < 0)


def _decode_png_rgb(data: bytes) -> Optional[np.ndarray]:
    """[H, W, 3] uint8 RGB (a view of OpenCV's BGR array) of a plain 8-bit RGB PNG
    (:func:`_is_plain_rgb_png`), or None when the file is another kind or OpenCV does not give
    three channels of it (corrupt data, a transparency key: PIL then decides, and names the error)."""
    if not _is_plain_rgb_png(data):
        return None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if bgr is None or bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        return None
    return bgr[:, :, ::-1]


def _read_pil(file_name: str, image_format: str, data: Optional[bytes]) -> np.ndarray:
    if data is None:
        return utils.read_image(file_name, format=image_format)
    return utils.convert_PIL_to_numpy(utils._apply_exif_orientation(Image.open(io.BytesIO(data))), image_format)


def read_image_checked(file_name: str, image_format: str = "RGB", data: Optional[bytes] = None,
                       channels_first: bool = False) -> np.ndarray:
    """Read an image from ``file_name``, or decode ``data`` (its bytes, e.g. a tar member;
    ``file_name`` then names it), with the pixels of detectron2's ``read_image`` (EXIF orientation
    applied); or raise an ``OSError`` that names the file and the fix.

    Returns:
        uint8 [H, W, C] (C-contiguous), or with ``channels_first`` [C, H, W] (a transposed view
        of the decoded array: the caller makes its one copy, in the layout it needs).
    """
    try:
        if data is None and image_format == "RGB" and file_name.lower().endswith(".png"):
            with open(file_name, "rb") as f:
                data = f.read()
        image = _decode_png_rgb(data) if data is not None and image_format == "RGB" else None
        if image is None:
            image = _read_pil(file_name, image_format, data)
        elif not channels_first:
            image = np.ascontiguousarray(image)
    except Exception as e:  # PIL raises several types for missing, truncated or corrupt files
        raise OSError(
            f"cannot read image '{file_name}' ({type(e).__name__}: {e}). Replace or remove the file, "
            "or regenerate the dataset (tools/generate_synthetic.py for the synthetic benchmark)."
        ) from e
    return image.transpose(2, 0, 1) if channels_first else image
