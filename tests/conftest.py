"""Shared fixtures: a tiny random open_clip model built through the real config path."""
import os
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg

from ttd_d2 import add_ttd_config

TINY_ARCH = str(Path(__file__).parent / "fixtures" / "tiny_clip.json")


def make_tiny_cfg():
    """A ttd_d2 config for the tiny test CLIP (random init, CPU)."""
    cfg = get_cfg()
    add_ttd_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "TTD"
    cfg.MODEL.BACKBONE.NAME = "CLIPDense"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLIP.ARCH = TINY_ARCH
    cfg.MODEL.CLIP.PRETRAINED = ""
    return cfg


@pytest.fixture
def tiny_cfg():
    torch.manual_seed(0)
    return make_tiny_cfg()


@pytest.fixture(scope="session")
def tiny_cfg_factory():
    """``make_tiny_cfg`` for module-scoped fixtures."""
    return make_tiny_cfg


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """Tiny models: one intra-op thread is much faster than several on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    if "NLTK_DATA" not in os.environ:
        shared = Path(__file__).resolve().parents[2] / "shared" / "nltk_data"
        if shared.is_dir():
            os.environ["NLTK_DATA"] = str(shared)
