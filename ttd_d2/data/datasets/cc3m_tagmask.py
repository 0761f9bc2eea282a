"""CC3M-TagMask (the paper's benchmark of tag selection and caption segmentation): loader,
validation, GT-tag matching and registration. The schema is documented in docs/CC3M_TAGMASK.md.

Layout under ``<root>`` (``$DETECTRON2_DATASETS/cc3m_tagmask`` for the registered dataset)::

    image/<stem>.jpg            the image (.jpg, .jpeg or .png; or the JSON's "image")
    json_refined/<stem>.json    {"caption": str, "tags": [str, ...], "image"?: str, "mask"?: str}
    mask_using_HQ-SAM/<stem>.png  the caption's mask (single channel, > 0 = caption region)

Ground-truth tags are matched to the caption's words (``caption_to_tags``, the words candidate
tags are drawn from) by :func:`match_tags`; tags that match no word are kept in the record's
``tags_unmatched`` and counted by the tag-selection evaluator, never dropped silently.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ...modeling.ttd.tags import caption_to_tags
from .label_conversion import LABEL_MODES
from .record_fields import CorruptFileError, record_field

__all__ = ["CC3M_TAGMASK", "load_cc3m_tagmask", "match_tags", "register_cc3m_tagmask", "same_word"]

logger = logging.getLogger(__name__)
CC3M_TAGMASK = "cc3m_tagmask"  # the dataset name
IMAGE_DIR, JSON_DIR, MASK_DIR = "image", "json_refined", "mask_using_HQ-SAM"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _singular_forms(word: str) -> set:
    """``word`` and what it is with a final "s" or "es" removed, or a final "ies" made "y"."""
    forms = {word}
    if word.endswith("s") and len(word) > 2:
        forms.add(word[:-1])
    if word.endswith("es") and len(word) > 3:
        forms.add(word[:-2])
    if word.endswith("ies") and len(word) > 4:
        forms.add(word[:-3] + "y")
    return forms


def same_word(a: str, b: str) -> bool:
    """Two normalised words name the same tag: equal, or equal once a plural ending ("s",
    "es", "ies" -> "y") is taken off either (dogs ~ dog, boxes ~ box, horses ~ horse,
    cities ~ city). A rule, not a lemmatizer: NLTK's WordNet is not part of the required NLTK
    data; irregular plurals (men, mice) do not match."""
    return a == b or bool(_singular_forms(a) & _singular_forms(b))


def match_tags(caption: str, gt_tags: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(matched, unmatched): each GT tag as the caption word it names, and the GT tags that
    name none.

    A GT tag is normalised as the caption's words are (``caption_to_tags`` without stopword
    removal: lower case, edge punctuation stripped); it matches the first caption word equal to
    it, else the first one that is ``same_word``. A tag of several words, or of none, is
    unmatched. ``matched`` keeps caption order of first match, without repeats.
    """
    words = caption_to_tags(caption, remove_stopwords=False)
    matched, unmatched = [], []
    for tag in gt_tags:
        norm = caption_to_tags(tag, remove_stopwords=False)
        if len(norm) != 1:
            unmatched.append(tag)
            continue
        word = next((w for w in words if w == norm[0]), None) or next(
            (w for w in words if same_word(w, norm[0])), None)
        if word is None:
            unmatched.append(tag)
        elif word not in matched:
            matched.append(word)
    return matched, unmatched


def _field(path: Path, entry: Dict, key: str, kind, required: bool = True):
    return record_field(entry, key, kind, str(path), "the schema is in docs/CC3M_TAGMASK.md", required)


def _image_size(path: Path, what: str, json_path: Path, mask: bool = False) -> Tuple[int, int]:
    """(width, height) from the file's header. A mask must also be single-channel (its header's
    mode) and pass PIL's ``verify``: a PNG's chunk structure and checksums over the whole file,
    so a truncated or corrupted file fails. Verifying reads without decoding, 0.03 ms a 1024x768
    mask (700 fixture entries load in 0.3 s); decoding takes 2-17 ms a mask at 0.8-3 MP, 15 s or
    more per ``DatasetCatalog.get`` of the 7k-image release, which a run calls several times. The
    evaluator decodes each mask with ``read_label``, whose errors name the file too."""
    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
            if mask and mode in LABEL_MODES:
                im.verify()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{json_path}: its {what} {path} does not exist") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ... for unreadable files
        raise CorruptFileError(f"{json_path}: its {what} {path} is not a readable image "
                               f"({type(e).__name__}: {e}); replace it from the release") from e
    if mask and mode not in LABEL_MODES:
        raise CorruptFileError(f"{json_path}: its {what} {path} has PIL mode {mode}; a caption mask is a "
                               "single-channel (binary or greyscale) PNG, > 0 = caption region (docs/CC3M_TAGMASK.md)")
    return size


def _image_file(root: Path, stem: str, entry: Dict, json_path: Path) -> Path:
    named = _field(json_path, entry, "image", str, required=False)
    if named:
        return root / IMAGE_DIR / named
    for suffix in IMAGE_SUFFIXES:
        if (root / IMAGE_DIR / (stem + suffix)).is_file():
            return root / IMAGE_DIR / (stem + suffix)
    raise FileNotFoundError(f"{json_path}: no image {root / IMAGE_DIR / stem}{{{','.join(IMAGE_SUFFIXES)}}} "
                            "(or name it in the field 'image')")


def load_cc3m_tagmask(root: Union[str, Path], name: str = CC3M_TAGMASK) -> List[dict]:
    """Caption records (docs/INTERFACES.md) of every ``json_refined/*.json`` under ``root``, in
    file-name order: file_name, height, width, image_id, caption, tags (matched GT tags),
    tags_unmatched, gt_tags (as written), caption_mask_file, dataset_name.

    Raises ``FileNotFoundError`` / ``CorruptFileError`` naming the file (and the field) at the
    first problem: nothing half-loaded.
    """
    root = Path(root)
    json_dir = root / JSON_DIR
    files = sorted(json_dir.glob("*.json")) if json_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(f"CC3M-TagMask: no {JSON_DIR}/*.json under {root}; put the release there or set "
                                "DETECTRON2_DATASETS to the folder holding cc3m_tagmask/ (docs/CC3M_TAGMASK.md)")
    records, unmatched_total, gt_total, untagged = [], 0, 0, 0
    for path in files:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise CorruptFileError(f"{path}: not valid JSON: {e}") from e
        if not isinstance(entry, dict):
            raise CorruptFileError(f"{path}: must hold a JSON object, got {type(entry).__name__}")
        caption, gt_tags = _field(path, entry, "caption", str), _field(path, entry, "tags", list)
        image = _image_file(root, path.stem, entry, path)
        mask = root / MASK_DIR / (_field(path, entry, "mask", str, required=False) or path.stem + ".png")
        size, mask_size = _image_size(image, "image", path), _image_size(mask, "caption mask", path, mask=True)
        if size != mask_size:
            raise CorruptFileError(f"{path}: caption mask {mask} is {mask_size[0]}x{mask_size[1]}, its image {image} "
                                   f"is {size[0]}x{size[1]} (width x height)")
        tags, unmatched = match_tags(caption, gt_tags)
        unmatched_total, gt_total = unmatched_total + len(unmatched), gt_total + len(gt_tags)
        untagged += not gt_tags  # allowed: no caption word is image-relevant (every candidate is a negative)
        records.append({
            "file_name": str(image), "width": size[0], "height": size[1], "image_id": path.stem,
            "caption": caption, "tags": tags, "tags_unmatched": unmatched, "gt_tags": list(gt_tags),
            "caption_mask_file": str(mask), "dataset_name": name,
        })
    logger.info("CC3M-TagMask %s: %d captions (%d with no GT tags), %d of %d GT tags match no caption word (kept "
                "as tags_unmatched)", root, len(records), untagged, unmatched_total, gt_total)
    return records


def register_cc3m_tagmask(root: Optional[Union[str, Path]] = None, name: str = CC3M_TAGMASK) -> str:
    """Register ``name`` (records read on first use) with caption metadata: evaluator_type
    "caption", has_objects False (no instance masks: tag selection and caption segmentation
    only). ``root`` defaults to ``$DETECTRON2_DATASETS/cc3m_tagmask`` (``datasets/...``)."""
    if root is None:
        root = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "cc3m_tagmask"
    DatasetCatalog.register(name, lambda: load_cc3m_tagmask(root, name))
    MetadataCatalog.get(name).set(evaluator_type="caption", has_objects=False, root=str(root))
    return name
