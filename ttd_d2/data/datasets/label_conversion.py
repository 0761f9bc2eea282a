"""One implementation of the prepare scripts' label conversion (``tools/prepare_*.py``) and of
reading a label image (:func:`read_label`: the prepare scripts' inputs, the evaluators' ground truth).

Pure functions map label arrays through lookup tables; :func:`convert_files` runs a conversion
over many files with a tqdm bar, skipping outputs that exist (idempotent) and writing each to a
temporary name renamed when complete (an interrupted run leaves nothing half-written).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Mapping, Sequence, Tuple, Union

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image
from tqdm import tqdm

from .record_fields import CorruptFileError

__all__ = ["LABEL_MODES", "lookup_table", "apply_table", "read_label", "write_label", "convert_files",
           "require_input", "write_text_atomic", "voc_palette"]

LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B")  # PIL modes of single-channel integer images
_FIX = "replace it, or re-run the command that wrote it"


def lookup_table(mapping: Mapping[int, int], ignore_label: int, size: int = 65536) -> np.ndarray:
    """A table ``t`` of ``size`` entries with ``t[k] = mapping[k]`` and ``ignore_label``
    elsewhere (dtype uint16 if ``ignore_label`` > 255, else uint8)."""
    dtype = np.uint16 if ignore_label > 255 else np.uint8
    table = np.full(size, ignore_label, dtype=dtype)
    for source, target in mapping.items():
        table[source] = target
    return table


def apply_table(label: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[label]``: label [H, W] integer -> [H, W] of ``table``'s dtype."""
    label = np.asarray(label)
    if label.size and int(label.max()) >= len(table):
        raise ValueError(f"label value {int(label.max())} outside the table (size {len(table)})")
    return table[label]


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map [256, 3] uint8 (index i's bits spread over R, G, B)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def read_label(path: Union[str, Path], fix: str = _FIX) -> np.ndarray:
    """A single-channel label image as stored, fully decoded: palette indices for mode "P",
    16-bit values for "I;16" (no EXIF transform, no resize; ``PathManager`` paths).

    Raises ``FileNotFoundError`` (missing) or ``CorruptFileError`` (undecodable, truncated, or a
    mode not in :data:`LABEL_MODES`, e.g. RGB), naming ``path`` and ``fix`` (what to do).
    """
    try:
        with PathManager.open(str(path), "rb") as f, Image.open(f) as image:
            mode = image.mode
            label = np.array(image) if mode in LABEL_MODES else None
    except FileNotFoundError as e:
        raise FileNotFoundError(f"missing label file {path}: {fix}") from e
    except Exception as e:  # PIL raises several types for truncated or corrupt files
        raise CorruptFileError(f"cannot read label file {path} ({type(e).__name__}: {e}): {fix}") from e
    if label is None:
        raise CorruptFileError(f"label file {path} has PIL mode {mode}, not a single-channel label image "
                               f"({', '.join(LABEL_MODES)}): {fix}")
    return label


def write_label(path: Union[str, Path], label: np.ndarray) -> None:
    """``label`` [H, W] uint8 or uint16 as a PNG (16-bit for uint16), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    if label.dtype == np.uint16:
        Image.fromarray(label.astype(np.uint16)).save(tmp)  # PIL writes mode "I;16" as 16-bit PNG
    elif label.dtype == np.uint8:
        Image.fromarray(label).save(tmp)
    else:
        raise TypeError(f"labels are uint8 or uint16, got {label.dtype}")
    os.replace(tmp, path)


def write_text_atomic(path: Union[str, Path], text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def require_input(path: Union[str, Path], what: str) -> Path:
    """``path`` if it exists, else ``FileNotFoundError`` naming it and what it should be."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"expected {what} at {path}: is the official release extracted there? "
                                "(datasets/README.md has the layout)")
    return path


def convert_files(jobs: Sequence[Tuple[Path, Path]], convert: Callable[[Path], np.ndarray],
                  desc: str) -> Dict[str, int]:
    """Write ``convert(source)`` to ``target`` for each (source, target) whose target is missing.

    Returns:
        {"written": n, "skipped": m}.
    """
    written = skipped = 0
    for source, target in tqdm(jobs, desc=desc, unit="img"):
        if Path(target).is_file():
            skipped += 1
            continue
        write_label(target, convert(source))
        written += 1
    return {"written": written, "skipped": skipped}
