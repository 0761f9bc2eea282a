"""Registration of real image-text training sources (docs/DATASETS.md):

- streamed webdataset tar shards (:mod:`ttd_d2.data.streams`): the names say where the shards
  are; ``TTDTrainer`` reads them. ``ttd_cc3m_train`` and ``ttd_cc12m_train`` are registered at
  import, from ``$DETECTRON2_DATASETS/{cc3m,cc12m}/*.tar`` (img2dataset's output folders);
- folders of images with per-image JSON (the TTD authors' layout), map-style:
  ``ttd_cc3m_folder_train``, ``ttd_cc3m_folder_validation``, ``ttd_cc12m_folder_train`` from
  ``$DETECTRON2_DATASETS/{cc3m,cc12m}/<split>/{image,json}``."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["SHARD_SOURCES", "FOLDER_SOURCES", "register_shard_source", "is_shard_source", "load_image_json_folder",
           "register_folder_source", "folder_source_names", "register_builtin_shard_sources"]

logger = logging.getLogger(__name__)

# name -> (folder under $DETECTRON2_DATASETS, how to make it)
SHARD_SOURCES = {
    "ttd_cc3m_train": ("cc3m", "img2dataset --url_list cc3m_train.tsv --input_format tsv --url_col url "
                               "--caption_col caption --output_format webdataset --output_folder $DETECTRON2_DATASETS/cc3m"),
    "ttd_cc12m_train": ("cc12m", "img2dataset --url_list cc12m.tsv --input_format tsv --url_col url "
                                 "--caption_col caption --output_format webdataset --output_folder $DETECTRON2_DATASETS/cc12m"),
}


def register_shard_source(name: str, shards: Union[str, Sequence[str]], prepare: str = "") -> str:
    """Register ``name`` as a stream of the tar shards ``shards`` (brace / glob patterns,
    expanded when training starts). ``DatasetCatalog.get(name)`` raises: a stream is no list."""
    patterns = [shards] if isinstance(shards, str) else list(shards)

    def as_list():
        raise TypeError(f"'{name}' is a stream of webdataset shards ({patterns}), not a list of records: "
                        "TTDTrainer reads it (ttd_d2.data.streams)")

    DatasetCatalog.register(name, as_list)
    folder = os.path.dirname(patterns[0].split("{")[0].split("*")[0]) or "."
    MetadataCatalog.get(name).set(source="webdataset", shards=patterns, image_root=folder,
                                  **({"prepare": prepare} if prepare else {}))
    return name


def is_shard_source(name: str) -> bool:
    return name in DatasetCatalog.list() and MetadataCatalog.get(name).get("source", None) == "webdataset"


# name -> folder under $DETECTRON2_DATASETS holding image/ and json/
FOLDER_SOURCES = {"ttd_cc3m_folder_train": "cc3m/train", "ttd_cc3m_folder_validation": "cc3m/validation",
                  "ttd_cc12m_folder_train": "cc12m/train"}
FOLDER_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def _folder_caption(path: Path) -> tuple:
    """(caption, None) or (None, bad kind) of a per-image JSON (``ttd_d2.data.streams.BAD_KINDS``)."""
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        return None, "caption_not_utf8"
    except (ValueError, OSError):
        return None, "caption_json_invalid"
    if not isinstance(meta, dict) or not isinstance(meta.get("caption", None), str):
        return None, "no_caption" if isinstance(meta, dict) and "caption" not in meta else "caption_json_invalid"
    caption = meta["caption"].strip()
    return (caption, None) if caption else (None, "empty_caption")


# The pairs each folder source skipped when its records were last loaded in this process, by
# name: the trainer adds them to the bad-sample counts (SkipCountsHook) once.
LOAD_SKIPPED: Dict[str, Dict[str, int]] = {}


def load_image_json_folder(root: Union[str, Path], name: str = "") -> List[Dict]:
    """Records ``{"file_name", "caption", "image_id"}`` of ``<root>/image/<stem>.<ext>`` and
    ``<root>/json/<stem>.json`` (``{"caption": str, ...}``; other fields ignored), in stem order.
    A pair with a missing image or JSON, or a caption that is missing, empty, not UTF-8 or in an
    invalid JSON is skipped and counted; the counts by kind are logged (and kept in
    ``LOAD_SKIPPED[name]``). Corrupt images are found, skipped and counted when training reads
    them (``CaptionTrainMapper``, ``data/records.py``)."""
    root = Path(root)
    image_dir, json_dir = root / "image", root / "json"
    for folder in (image_dir, json_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name or root}: '{folder}' does not exist: the layout is <root>/image/ and "
                                    "<root>/json/ (docs/DATASETS.md, 'Image-text folders')")
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in FOLDER_IMAGE_EXTENSIONS}
    jsons = {p.stem: p for p in sorted(json_dir.glob("*.json"))}
    skipped, records = Counter(), []
    skipped["no_image"] = len(set(jsons) - set(images))
    skipped["no_caption"] = len(set(images) - set(jsons))
    for stem in sorted(set(images) & set(jsons)):
        caption, problem = _folder_caption(jsons[stem])
        if problem is not None:
            skipped[problem] += 1
            continue
        records.append({"file_name": str(images[stem]), "caption": caption, "image_id": stem})
    bad = {k: v for k, v in skipped.items() if v}
    if name:
        LOAD_SKIPPED[name] = bad
    logger.info("%s: %d image-caption pairs from %s; skipped: %s", name or root, len(records), root,
                ", ".join(f"{k} {v}" for k, v in bad.items()) or "none")
    if not records:
        raise ValueError(f"{name or root}: no usable image-caption pair under {root} (skipped: {bad})")
    return records


def register_folder_source(name: str, root: Union[str, Path]) -> str:
    """Register ``name`` as the image-JSON folder ``root`` (:func:`load_image_json_folder`)."""
    DatasetCatalog.register(name, lambda: load_image_json_folder(root, name))
    MetadataCatalog.get(name).set(image_root=str(Path(root) / "image"), dataset_root=str(root),
                                  prepare="put the images in <root>/image/ and one JSON with a \"caption\" per image "
                                          "in <root>/json/ (docs/DATASETS.md)")
    return name


def folder_source_names(roots: Sequence[Union[str, Path]]) -> List[str]:
    """Dataset names of the folders ``roots`` (``DATASETS.IMAGE_TEXT.FOLDERS``), each registered
    once as ``ttd_folder:<absolute path>`` (:func:`register_folder_source`)."""
    names = []
    for root in roots:
        name = f"ttd_folder:{os.path.abspath(root)}"
        if name not in DatasetCatalog.list():
            register_folder_source(name, os.path.abspath(root))
        names.append(name)
    return names


def register_builtin_shard_sources(root: Optional[Union[str, Path]] = None) -> None:
    """The built-in names of both kinds (the module docstring)."""
    root = Path(root if root is not None else os.environ.get("DETECTRON2_DATASETS", "datasets"))
    for name, (folder, prepare) in SHARD_SOURCES.items():
        if name not in DatasetCatalog.list():
            register_shard_source(name, str(root / folder / "*.tar"), prepare)
    for name, folder in FOLDER_SOURCES.items():
        if name not in DatasetCatalog.list():
            register_folder_source(name, root / folder)


register_builtin_shard_sources()
