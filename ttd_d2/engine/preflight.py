"""Before anything is built or downloaded: are the config's values valid, does every file, dataset
and shard it names exist, and can ``OUTPUT_DIR`` be written?

``tools/train_net.py`` calls :func:`check_inputs` first, so a config run on a machine without its
weights or data, or with a value out of range, stops at once with one message listing every
problem and its fix, instead of failing on the first of them minutes later (after a model
download, say) and after detectron2 has written ``config.yaml`` and ``log.txt`` to ``OUTPUT_DIR``. Nothing is
read but directory listings and file stats; open_clip tags (``MODEL.CLIP.PRETRAINED openai``) are
only checked to be known tags: whether one is cached is found out when the model is built.
"""
from __future__ import annotations

import os
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..config_checks import model_config_problems, training_config_problems
from ..data.streams.shards import expand_shards
from ..modeling.backbone.clip_loading import check_pretrained, resolve_arch
from ..utils.cli import output_folder_problem

__all__ = ["DATASET_PATH_KEYS", "config_problems", "missing_inputs", "output_problems", "check_inputs"]

# Metadata entries that name a dataset's folders or files on disk (detectron2's conventions and
# ttd_d2's registrations, docs/INTERFACES.md).
DATASET_PATH_KEYS = ("dataset_root", "image_root", "sem_seg_root", "json_file")
DATASETS_HELP = "datasets/README.md lists the registered names, their layouts and prepare commands"


def _weight_files(cfg) -> List[tuple]:
    """(config key, path, how to get it) of each weight file the config names."""
    files = []
    if cfg.MODEL.BACKBONE.NAME == "TCL" and cfg.MODEL.TCL.WEIGHTS:
        files.append(("MODEL.TCL.WEIGHTS", cfg.MODEL.TCL.WEIGHTS,
                      "TCL's released checkpoint (docs/BACKBONES.md), or '' to start TCL's head from the CLIP"))
    if cfg.MODEL.TTD.LORA.WEIGHTS:
        files.append(("MODEL.TTD.LORA.WEIGHTS", cfg.MODEL.TTD.LORA.WEIGHTS, "a model_lora_*.pth of a TTD run"))
    if cfg.MODEL.WEIGHTS and "://" not in cfg.MODEL.WEIGHTS:
        files.append(("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS, "a model_*.pth of a ttd_d2 run, or ''"))
    return files


def _dataset_problems(name: str, key: str) -> List[str]:
    if name not in DatasetCatalog.list():
        return [f"{key}: dataset '{name}' is not registered ({DATASETS_HELP}; image-text pairs of your own: "
                "register them with detectron2's DatasetCatalog before training)"]
    meta = MetadataCatalog.get(name)
    prepare = meta.get("prepare", None)
    fix = f"run `{prepare}`" if prepare else DATASETS_HELP
    return [f"{key}: dataset '{name}': {attr} '{getattr(meta, attr)}' does not exist ({fix}; "
            f"$DETECTRON2_DATASETS is '{os.environ.get('DETECTRON2_DATASETS', 'datasets')}')"
            for attr in DATASET_PATH_KEYS if meta.get(attr, None) and not os.path.exists(getattr(meta, attr))]


def config_problems(cfg, training: bool) -> List[str]:
    """The invalid values ``TTD.from_config`` (for the TTD meta-architecture) and, when
    ``training``, ``TTDTrainer`` would refuse (``ttd_d2.config_checks``), one sentence each."""
    problems = model_config_problems(cfg) if cfg.MODEL.META_ARCHITECTURE == "TTD" else []
    return problems + (training_config_problems(cfg) if training else [])


def missing_inputs(cfg, training: bool) -> List[str]:
    """One line per missing input of ``cfg``, naming its key and the fix: the CLIP checkpoint
    (a missing file or an unknown open_clip tag), the TCL, LoRA and model weight files, and the
    datasets of ``DATASETS.TEST`` (and ``DATASETS.TRAIN`` when ``training``): unregistered names
    and registered ones whose folders are not there."""
    problems = []
    if cfg.MODEL.CLIP.PRETRAINED:
        try:
            check_pretrained(resolve_arch(cfg.MODEL.CLIP.ARCH), cfg.MODEL.CLIP.PRETRAINED)
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e))
    problems += [f"{key}: '{path}' does not exist: give {fix}" for key, path, fix in _weight_files(cfg)
                 if not os.path.isfile(path)]
    keep_lists = cfg.DATASETS.IMAGE_TEXT.KEEP_LISTS if training else ()
    problems += [f"DATASETS.IMAGE_TEXT.KEEP_LISTS[{i}]: '{p}' does not exist: give a keep-list of sample keys "
                 "(docs/DATASETS.md), or '' for that source" for i, p in enumerate(keep_lists) if p and not os.path.isfile(p)]
    for i, patterns in enumerate(cfg.DATASETS.IMAGE_TEXT.SHARDS if training else ()):
        try:
            expand_shards(patterns)
        except FileNotFoundError as e:
            problems.append(f"DATASETS.IMAGE_TEXT.SHARDS[{i}]: {e}")
    folders = cfg.DATASETS.IMAGE_TEXT.FOLDERS if training else ()
    problems += [f"DATASETS.IMAGE_TEXT.FOLDERS[{i}]: '{p}/{sub}' does not exist: give folders holding image/ and "
                 "json/ (docs/DATASETS.md, 'Image-text folders')" for i, p in enumerate(folders)
                 for sub in ("image", "json") if not os.path.isdir(os.path.join(p, sub))]
    for key, names in (("DATASETS.TRAIN", cfg.DATASETS.TRAIN if training else ()), ("DATASETS.TEST", cfg.DATASETS.TEST)):
        for name in names:
            problems += _dataset_problems(name, key)
    return problems


def output_problems(cfg) -> List[str]:
    """Why ``OUTPUT_DIR`` cannot take the run's files (it is a file, or the folder it is, or
    would be created in, is not writable), or []."""
    problem = output_folder_problem(cfg.OUTPUT_DIR)
    return [f"OUTPUT_DIR '{cfg.OUTPUT_DIR}': {problem}"] if problem else []


def check_inputs(cfg, training: bool) -> None:
    """``SystemExit`` listing :func:`config_problems`, :func:`missing_inputs` and
    :func:`output_problems`, if any."""
    problems = config_problems(cfg, training) + missing_inputs(cfg, training) + output_problems(cfg)
    if problems:
        raise SystemExit("Cannot start: the config has invalid values, names inputs that are not on this machine, "
                         "or names an output folder it cannot write.\n  - " + "\n  - ".join(problems))
