"""Detectron2 registration of the synthetic benchmark.

Dataset names: ``synth_semseg_<split>``, ``synth_captions_<split>``,
``synth_image_text_<split>`` for the folders ``<root>/<layout>/<split>`` written by
:mod:`ttd_d2.data.synthetic.writer` (layouts documented there; records and metadata in
``docs/INTERFACES.md``).

Registration reads nothing but the split's small ``meta.json``; the loader functions read the
index files, check their records (as many as ``meta.json``'s num_images; every field present and
of its type: ``record_fields``) and that every referenced file exists and starts like a PNG when
``DatasetCatalog.get`` calls them. A split that is missing makes the loader raise
``FileNotFoundError`` that names the command generating it; a missing or corrupt file, or a bad
record, raises an error that names the file (and the record and field) and the fix.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..synthetic.render import CLASSES
from ..synthetic.writer import DEFAULT_BACKGROUND_THRESHOLD, IGNORE_LABEL, LAYOUTS, META_FILE
from .record_fields import CorruptFileError, record_field

__all__ = ["CorruptFileError", "dataset_name", "missing_split_message", "require_split_dir", "read_png",
           "load_synthetic_semseg", "load_synthetic_captions", "load_synthetic_image_text", "synthetic_metadata",
           "register_synthetic_split", "register_synthetic"]

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EVALUATOR_TYPES = {"semseg": "sem_seg", "captions": "caption", "image_text": "none"}
_registered_roots: Dict[str, Path] = {}  # dataset name -> root, for names this module registered


def dataset_name(layout: str, split: str) -> str:
    """``synth_<layout>_<split>``."""
    return f"synth_{layout}_{split}"


def missing_split_message(root: Union[str, Path], layout: str, split: str) -> str:
    """The error text for a split that is not on disk, naming the fix."""
    folder = Path(root) / layout / split
    return (
        f"Dataset '{dataset_name(layout, split)}' is not on disk: {folder} has no {META_FILE}. "
        f"Generate it with `python tools/generate_synthetic.py --root {root} --preset quickstart` "
        f"(quickstart splits) or `python tools/generate_synthetic.py --root {root} --layout {layout} "
        f"--split {split} --seed SEED --num-images N`, or set DETECTRON2_DATASETS to the folder "
        "that holds `synthetic/`."
    )


def require_split_dir(root: Union[str, Path], layout: str, split: str) -> Path:
    """``root/<layout>/<split>`` if it holds a finished split (its ``meta.json``), else
    ``FileNotFoundError`` with :func:`missing_split_message`."""
    folder = Path(root) / layout / split
    if not (folder / META_FILE).is_file():
        raise FileNotFoundError(missing_split_message(root, layout, split))
    return folder


def _read_json(path: Path, fix: str = ""):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"missing dataset file {path}{fix and '; ' + fix}") from e
    except ValueError as e:
        raise CorruptFileError(f"corrupt JSON file {path}: {e}{fix and '; ' + fix}") from e


def read_png(path: Union[str, Path], flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an image file; RGB order for colour images.

    Returns:
        uint8 [H, W] or [H, W, 3].
    Raises:
        FileNotFoundError or CorruptFileError naming ``path``.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing image file {path}")
    image = cv2.imread(path, flags)
    if image is None:
        raise CorruptFileError(f"corrupt or unreadable image file {path}")
    return image[:, :, ::-1].copy() if image.ndim == 3 else image


class _FileChecker:
    """Cheap checks of referenced files: one directory listing per folder, and the first
    eight bytes of each image."""

    def __init__(self) -> None:
        self._listings: Dict[Path, set] = {}

    def exists(self, path: Path) -> None:
        listing = self._listings.get(path.parent)
        if listing is None:
            listing = set(os.listdir(path.parent)) if path.parent.is_dir() else set()
            self._listings[path.parent] = listing
        if path.name not in listing:
            raise FileNotFoundError(f"missing dataset file {path}")

    def png(self, path: Path) -> None:
        self.exists(path)
        with open(path, "rb") as f:
            if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise CorruptFileError(f"corrupt image file {path}: not a PNG")


def _rerender(folder: Path) -> str:
    """The fix for a damaged split (the generator skips a split that looks complete)."""
    return (f"delete {folder} and render it again with tools/generate_synthetic.py (its parameters are in "
            f"{folder / META_FILE}; `--preset quickstart` for the quickstart splits)")


def _checked_count(records: list, path: Path, meta: dict, folder: Path) -> list:
    """``records`` if there are as many as ``meta.json``'s num_images (an empty index fails too)."""
    if len(records) != int(meta["num_images"]):
        raise CorruptFileError(f"{path} holds {len(records)} records, {folder / META_FILE} says num_images "
                               f"{meta['num_images']}; {_rerender(folder)}")
    return records


def load_synthetic_semseg(root: Union[str, Path], split: str) -> List[dict]:
    """Records of ``root/semseg/<split>``: file_name, sem_seg_file_name, height, width,
    image_id, dataset_name."""
    folder = require_split_dir(root, "semseg", split)
    meta = _read_json(folder / META_FILE)
    size, checker, records = int(meta["image_size"]), _FileChecker(), []
    for index in range(int(meta["num_images"])):
        name = f"{index:06d}.png"
        image, label = folder / "images" / name, folder / "labels" / name
        checker.png(image)
        checker.png(label)
        records.append({
            "file_name": str(image), "sem_seg_file_name": str(label), "height": size, "width": size,
            "image_id": index, "dataset_name": dataset_name("semseg", split),
        })
    return records


def load_synthetic_captions(root: Union[str, Path], split: str) -> List[dict]:
    """Records of ``root/captions/<split>``: file_name, height, width, image_id, caption,
    tags, caption_mask_file, instance_mask_file, objects, dataset_name. A record with a missing
    or mistyped field raises ``CorruptFileError`` naming the file, the record and the field."""
    folder = require_split_dir(root, "captions", split)
    meta, checker, records = _read_json(folder / META_FILE), _FileChecker(), []
    annotations_path, fix = folder / "annotations.json", _rerender(folder)
    entries = _read_json(annotations_path, fix)
    if not isinstance(entries, list):
        raise CorruptFileError(f"{annotations_path}: must hold a JSON list of records; {fix}")
    size = int(meta["image_size"])
    for index, entry in enumerate(_checked_count(entries, annotations_path, meta, folder)):
        where = f"{annotations_path}, record {index}"
        image, caption_mask, instance_mask = (folder / record_field(entry, k, str, where, fix)
                                              for k in ("image", "caption_mask", "instance_mask"))
        caption, tags = record_field(entry, "caption", str, where, fix), record_field(entry, "tags", list, where, fix)
        objects = record_field(entry, "objects", "objects", where, fix)
        for path in (image, caption_mask, instance_mask):
            checker.png(path)
        records.append({
            "file_name": str(image), "height": size, "width": size, "image_id": index,
            "caption": caption, "tags": list(tags), "caption_mask_file": str(caption_mask),
            "instance_mask_file": str(instance_mask),
            "objects": [dict(o) for o in objects], "dataset_name": dataset_name("captions", split),
        })
    return records


def load_synthetic_image_text(root: Union[str, Path], split: str) -> List[dict]:
    """Records of ``root/image_text/<split>``: file_name, height, width, image_id, caption,
    dataset_name. A bad line raises ``CorruptFileError`` naming the file, the line and the field."""
    folder = require_split_dir(root, "image_text", split)
    meta, checker, records = _read_json(folder / META_FILE), _FileChecker(), []
    captions_path, fix = folder / "captions.jsonl", _rerender(folder)
    try:
        lines = captions_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"missing dataset file {captions_path}; {fix}") from e
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    size = int(meta["image_size"])
    for line_number, line in _checked_count(numbered, captions_path, meta, folder):
        where = f"{captions_path}, line {line_number}"
        try:
            entry = json.loads(line)
        except ValueError as e:
            raise CorruptFileError(f"{where}: not valid JSON ({e}); {fix}") from e
        image = folder / record_field(entry, "image", str, where, fix)
        caption = record_field(entry, "caption", str, where, fix)
        checker.png(image)
        records.append({
            "file_name": str(image), "height": size, "width": size, "image_id": len(records),
            "caption": caption, "dataset_name": dataset_name("image_text", split),
        })
    return records


_LOADERS = {
    "semseg": load_synthetic_semseg,
    "captions": load_synthetic_captions,
    "image_text": load_synthetic_image_text,
}


def synthetic_metadata(root: Union[str, Path], layout: str, split: str) -> dict:
    """Metadata of a split (docs/INTERFACES.md); ``background_threshold`` comes from the
    split's ``meta.json`` when present there."""
    folder = Path(root) / layout / split
    metadata = {"evaluator_type": _EVALUATOR_TYPES[layout], "image_root": str(folder / "images"),
                "dataset_root": str(folder),
                "prepare": "python tools/generate_synthetic.py --preset quickstart (other splits: --layout "
                           f"{layout} --split {split} --seed SEED)"}
    if layout == "semseg":
        threshold = DEFAULT_BACKGROUND_THRESHOLD
        meta_path = folder / META_FILE
        if meta_path.is_file():
            threshold = float(_read_json(meta_path).get("background_threshold", threshold))
        metadata.update(
            stuff_classes=["background", *CLASSES], ignore_label=IGNORE_LABEL,
            background_threshold=threshold, sem_seg_root=str(folder / "labels"),
        )
    elif layout == "captions":
        metadata.update(
            thing_classes=list(CLASSES), ignore_label=IGNORE_LABEL,
            caption_mask_root=str(folder / "caption_masks"), instance_mask_root=str(folder / "instance_masks"),
        )
    return metadata


def _loader(root: Path, layout: str, split: str):
    def load() -> List[dict]:
        return _LOADERS[layout](root, split)

    return load


def register_synthetic_split(root: Union[str, Path], layout: str, split: str) -> Optional[str]:
    """Register ``synth_<layout>_<split>`` for ``root/<layout>/<split>``, present or not (a
    missing split's loader raises the FileNotFoundError of :func:`require_split_dir`).

    Idempotent: a name already registered is left alone, except that a registration of this
    module whose split is missing on disk is replaced by one whose split exists.

    Returns:
        the dataset name if this call registered it, else None.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    root = Path(os.path.abspath(os.path.expanduser(root)))
    name = dataset_name(layout, split)
    if name in DatasetCatalog.list():
        previous = _registered_roots.get(name)
        if previous == root:
            return None
        replace = (
            previous is not None
            and not (previous / layout / split / META_FILE).is_file()
            and (root / layout / split / META_FILE).is_file()
        )
        if not replace:
            logger.warning("dataset %s is already registered (root %s); not registering %s",
                           name, previous or "unknown", root / layout / split)
            return None
        logger.info("replacing registration of missing %s with %s", name, root / layout / split)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, _loader(root, layout, split))
    MetadataCatalog.get(name).set(**synthetic_metadata(root, layout, split))
    _registered_roots[name] = root
    return name


def register_synthetic(root: Union[str, Path]) -> List[str]:
    """Register every split found under ``root`` (folders ``<layout>/<split>`` holding a
    ``meta.json``; hidden temporary folders are skipped).

    Returns:
        the names this call registered.
    """
    root, names = Path(root), []
    for layout in LAYOUTS:
        layout_dir = root / layout
        if not layout_dir.is_dir():
            continue
        for folder in sorted(layout_dir.iterdir()):
            if folder.name.startswith(".") or not (folder / META_FILE).is_file():
                continue
            name = register_synthetic_split(root, layout, folder.name)
            if name is not None:
                names.append(name)
    return names
