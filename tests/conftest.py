"""Shared fixtures: a tiny random open_clip model built through the real config path (``build``),
tiny training configs, empty datasets with metadata (``register``), and scripts of tools/ and
benchmarks/ imported as modules."""
import importlib.util
import os
import uuid
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from ttd_d2 import add_ttd_config

TINY_ARCH = str(Path(__file__).parent / "fixtures" / "tiny_clip.json")
REPO = Path(__file__).resolve().parents[1]


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


def make_tiny_train_cfg(train_dataset, output_dir, test_datasets=(), **opts):
    """``make_tiny_cfg`` set up to train a few iterations on 32 px images of ``train_dataset``
    in this process (no loader workers, no warm-up, no periodic evaluation); ``opts`` are
    config overrides ``{"KEY": value}`` applied last."""
    cfg = make_tiny_cfg()
    cfg.DATASETS.TRAIN = (train_dataset,)
    cfg.DATASETS.TEST = tuple(test_datasets)
    cfg.INPUT.TRAIN_SIZE = 32
    cfg.INPUT.MIN_SIZE_TEST = 0
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.BASE_LR = 1e-2
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.STEPS = ()
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.merge_from_list([x for k, v in opts.items() for x in (k, v)])
    return cfg


def build(cfg, seed=0, train=False, **opts):
    """A model from ``cfg`` (cloned; ``opts`` = dotted keys -> values, e.g.
    ``**{"MODEL.TTD.ENABLED": True}``), its random base weights from ``seed``, in training mode
    when ``train`` (else eval mode)."""
    cfg = cfg.clone()
    cfg.merge_from_list([x for k, v in opts.items() for x in (k, v)])
    torch.manual_seed(seed)
    return build_model(cfg).train(train)


def make_tiny_tcl_head(seed=0, gate_noise=0.3):
    """The TCL head of the tiny random CLIP, its decoder moved off the MaskCLIP start (gates open)
    by ``gate_noise`` standard normal noise, so that a checkpoint of it is not the identity."""
    cfg = make_tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "TCL"
    torch.manual_seed(seed)
    head = build_model(cfg).backbone.head
    with torch.no_grad():
        for p in head.decoder.parameters():
            p.add_(torch.randn_like(p) * gate_noise)
    return head


def load_script(relative_path: str):
    """Import a script of the repository (``tools/train_net.py``...; not a package) as a module."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location("ttd_script_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def register():
    """register(**metadata) -> the name of a fresh empty dataset with that metadata (e.g.
    ``stuff_classes``), removed from the catalogs after the test."""
    names = []

    def _register(**metadata):
        name = f"test_dataset_{uuid.uuid4().hex[:10]}"
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(**metadata)
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


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
