"""One implementation of registering a real sem-seg benchmark (``docs/DATASETS.md``).

A :class:`Benchmark` names where its prepared images and labels lie under
``$DETECTRON2_DATASETS``, its class-name file and its prepare command. :func:`register_benchmark`
registers it without touching the disk; ``DatasetCatalog.get`` then checks the folders (a missing
one raises ``FileNotFoundError`` naming ``$DETECTRON2_DATASETS``, the folder and the prepare
command; an empty one too) and pairs images with labels by name: :func:`load_benchmark`.

Labels are single-channel PNGs (``label_conversion.read_label``, checked by ``SemSegRatesEvaluator``):
8-bit with ``ignore_label`` 255 for up to 255 classes, 16-bit with ``ignore_label`` 65535 for
the 459- and 847-class benchmarks.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["Benchmark", "CLASS_NAMES_DIR", "read_class_names", "datasets_root", "load_benchmark",
           "register_benchmark", "require_folder"]

CLASS_NAMES_DIR = Path(__file__).resolve().parent / "class_names"
IGNORE_8BIT = 255
IGNORE_16BIT = 65535


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A prepared sem-seg benchmark.

    Attributes:
        name: the registered name (``ttd_`` prefix: never one of detectron2's built-ins).
        image_dir, label_dir: folders relative to ``$DETECTRON2_DATASETS``.
        classes: the class-name file: a name under ``class_names/`` (package data), or a path
            relative to ``$DETECTRON2_DATASETS`` (written by the prepare script from the release).
        prepare: the command that writes ``label_dir``.
        background: prepend "background" to the file's classes (class 0).
        background_threshold: the constant score of class 0 (only with ``background``).
        image_ext, label_ext: the file endings of images and labels in flat folders.
        ignore_label: 255 (8-bit labels) or 65535 (16-bit labels).
        image_suffix: set for nested folders (Cityscapes, ADE20K-847): the label ``city/x.png``
            pairs with the image ``city/x<image_suffix>``; unset, ``x.<label_ext>`` pairs with
            ``x.<image_ext>`` in flat folders.
        split_list: the release's list of the split's ids, relative to ``$DETECTRON2_DATASETS``,
            where the image folder also holds other splits' images (VOC, Context); unset, every
            image of the folder is in the split.
    """

    name: str
    image_dir: str
    label_dir: str
    classes: str
    prepare: str
    background: bool = False
    background_threshold: Optional[float] = None
    image_ext: str = "jpg"
    label_ext: str = "png"
    ignore_label: int = IGNORE_8BIT
    image_suffix: Optional[str] = None  # nested folders: label ``a/b.png`` <-> image ``a/b<suffix>``
    split_list: Optional[str] = None


def datasets_root(root: Optional[Union[str, Path]] = None) -> Path:
    """``root``, else ``$DETECTRON2_DATASETS``, else ``datasets``."""
    return Path(root if root is not None else os.environ.get("DETECTRON2_DATASETS", "datasets"))


def read_class_names(path: Union[str, Path]) -> List[str]:
    """One class a line (comma-separated synonyms kept in the line); blank lines are errors."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or any(not line.strip() for line in lines):
        raise ValueError(f"{path}: a class-name file needs one non-empty line per class")
    return [line.strip() for line in lines]


def require_folder(folder: Path, benchmark: Benchmark) -> Path:
    """``folder`` if it is a directory holding something, else ``FileNotFoundError`` naming the fix."""
    state = "does not exist" if not folder.is_dir() else "is empty" if next(folder.iterdir(), None) is None else ""
    if state:
        raise FileNotFoundError(
            f"Dataset '{benchmark.name}' is not on disk: {folder} {state}. Set DETECTRON2_DATASETS "
            f"to the folder that holds the datasets (now {datasets_root()}) and run `{benchmark.prepare}` "
            "(datasets/README.md says what to download).")
    return folder


def _class_file(benchmark: Benchmark, root: Path) -> Path:
    packaged = CLASS_NAMES_DIR / benchmark.classes
    return packaged if packaged.is_file() else root / benchmark.classes


def benchmark_classes(benchmark: Benchmark, root: Optional[Union[str, Path]] = None) -> List[str]:
    """``stuff_classes`` of ``benchmark`` (``FileNotFoundError`` if its file is not prepared)."""
    path = _class_file(benchmark, datasets_root(root))
    if not path.is_file():
        require_folder(path.parent, benchmark)
        raise FileNotFoundError(f"Dataset '{benchmark.name}': {path} is missing; run `{benchmark.prepare}`.")
    names = read_class_names(path)
    return ["background", *names] if benchmark.background else names


def _set_metadata(benchmark: Benchmark, root: Path) -> None:
    meta = MetadataCatalog.get(benchmark.name)
    if meta.get("stuff_classes", None) is None:
        meta.set(stuff_classes=benchmark_classes(benchmark, root))


def load_benchmark(benchmark: Benchmark, root: Optional[Union[str, Path]] = None) -> List[dict]:
    """Records (``file_name``, ``sem_seg_file_name``, ``dataset_name``) of the prepared benchmark,
    in id order, each image paired with the label of its name (never by position).

    The split is the ids of ``split_list`` when set (other images of the folder are left out),
    else every label and every image: an id of the split without its label or its image raises
    ``FileNotFoundError`` naming the first few missing files, their count and the prepare command.
    """
    root = datasets_root(root)
    labels = require_folder(root / benchmark.label_dir, benchmark)
    images = require_folder(root / benchmark.image_dir, benchmark)
    _set_metadata(benchmark, root)  # classes read from the release are known only once prepared
    nested = benchmark.image_suffix is not None
    image_suffix = benchmark.image_suffix if nested else f".{benchmark.image_ext}"
    label_files = _files_by_id(labels, f".{benchmark.label_ext}", nested, benchmark)
    image_files = _files_by_id(images, image_suffix, nested, benchmark)
    if benchmark.split_list is None:
        ids = sorted(set(label_files) | set(image_files))
        scopes = {"label": f"{len(image_files)} images in {images}", "image": f"{len(label_files)} labels in {labels}"}
    else:
        ids = sorted(set(_split_ids(root / benchmark.split_list, benchmark)))
        scopes = dict.fromkeys(("label", "image"), f"{len(ids)} ids listed in {root / benchmark.split_list}")
    for kind, found, folder, suffix in (("label", label_files, labels, f".{benchmark.label_ext}"),
                                        ("image", image_files, images, image_suffix)):
        missing = [folder / f"{i}{suffix}" for i in ids if i not in found]
        if missing:
            shown = ", ".join(str(m) for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise FileNotFoundError(
                f"Dataset '{benchmark.name}': {kind} files missing for {len(missing)} of the {scopes[kind]}: {shown}. "
                f"Extract the release as datasets/README.md lays it out and run `{benchmark.prepare}`.")
    return [{"file_name": str(image_files[i]), "sem_seg_file_name": str(label_files[i]),
             "dataset_name": benchmark.name} for i in ids]


def _files_by_id(folder: Path, suffix: str, nested: bool, benchmark: Benchmark) -> Dict[str, str]:
    """{relative path without ``suffix``: path} of the files ending in ``suffix`` (leftover
    ``*.tmp.png`` of an interrupted prepare step skipped); ``FileNotFoundError`` if there is none."""
    files = {}
    for path in (folder.rglob(f"*{suffix}") if nested else folder.glob(f"*{suffix}")):
        if not path.name.endswith(".tmp.png") and path.is_file():
            files[path.relative_to(folder).as_posix()[: -len(suffix)]] = str(path)
    if not files:
        raise FileNotFoundError(f"Dataset '{benchmark.name}': no *{suffix} files in {folder}; extract the release "
                                f"as datasets/README.md lays it out and run `{benchmark.prepare}`.")
    return files


def _split_ids(path: Path, benchmark: Benchmark) -> List[str]:
    if not path.is_file():
        raise FileNotFoundError(f"Dataset '{benchmark.name}': its split list {path} is missing; extract the release "
                                f"as datasets/README.md lays it out and run `{benchmark.prepare}`.")
    ids = path.read_text().split()
    if not ids:
        raise FileNotFoundError(f"Dataset '{benchmark.name}': its split list {path} is empty; extract it again "
                                "from the release (datasets/README.md).")
    return ids


def register_benchmark(benchmark: Benchmark, root: Optional[Union[str, Path]] = None) -> str:
    """Register ``benchmark`` (replacing an earlier registration of its name); reads at most its
    class-name file. ``root`` defaults to ``$DETECTRON2_DATASETS`` at call time."""
    root = datasets_root(root)
    if benchmark.name in DatasetCatalog.list():
        DatasetCatalog.remove(benchmark.name)
        MetadataCatalog.remove(benchmark.name)
    DatasetCatalog.register(benchmark.name, lambda: load_benchmark(benchmark, root))
    meta = dict(ignore_label=benchmark.ignore_label, evaluator_type="sem_seg", image_root=str(root / benchmark.image_dir),
                sem_seg_root=str(root / benchmark.label_dir), prepare=benchmark.prepare)
    if benchmark.background_threshold is not None:
        meta["background_threshold"] = benchmark.background_threshold
    MetadataCatalog.get(benchmark.name).set(**meta)
    if _class_file(benchmark, root).is_file():
        _set_metadata(benchmark, root)
    return benchmark.name


def register_benchmarks(benchmarks: Sequence[Benchmark], root: Optional[Union[str, Path]] = None) -> List[str]:
    """:func:`register_benchmark` for each."""
    return [register_benchmark(b, root) for b in benchmarks]
