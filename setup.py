#!/usr/bin/env python
"""ttd_d2: TTD (Text-Tag Self-Distillation, ECCV 2024) as a Detectron2 plugin.

torch/torchvision and detectron2 are installed first by ``scripts/install.sh`` (detectron2 is
not on PyPI); this file lists what pip can resolve on its own.
"""
from setuptools import find_packages, setup

setup(
    name="ttd_d2",
    version="0.1.0",
    description="Text-Tag Self-Distillation for CLIP-based dense models, as a Detectron2 plugin",
    python_requires=">=3.9",
    packages=find_packages(include=["ttd_d2", "ttd_d2.*"]),
    package_data={"ttd_d2": ["model_configs/*.json", "data/datasets/class_names/*.txt"]},
    install_requires=[
        "torch>=2.0",
        "open_clip_torch>=2.20",
        "fvcore",
        "matplotlib>=3.5",  # the quickstart's pictures (ttd_d2/utils/visualize.py); detectron2 needs it too
        "pycocotools",
        "nltk>=3.8",
        "joblib",  # the evaluation cache (ttd_d2/evaluation/result_cache.py); nltk needs it too
        "opencv-python-headless",
        "tabulate",
        "tqdm",
        "scipy",  # reads PASCAL Context's .mat labels (tools/prepare_pascal_context.py)
        "webdataset>=0.2.86",  # CC3M / CC12M tar shards as img2dataset writes them (ttd_d2/data/streams)
    ],
    extras_require={"test": ["pytest"]},
)
