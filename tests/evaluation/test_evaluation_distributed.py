"""Two CPU processes (gloo): results gathered on rank 0 equal a single-process run."""
import os
import pickle
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.data import MetadataCatalog
from detectron2.evaluation.testing import flatten_results_dict
from PIL import Image

from ttd_d2.evaluation import build_caption_evaluators

DATASET = "test_evaluation_distributed_captions"
H, W = 3, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_fake(tmp_dir, n=4):
    rng = np.random.default_rng(5)
    records, outputs = [], []
    for i in range(n):
        instance = rng.integers(0, 3, size=(H, W))
        for name, arr in (("cap", instance > 0), ("inst", instance)):
            Image.fromarray(arr.astype(np.uint8)).save(os.path.join(tmp_dir, f"{name}{i}.png"))
        records.append({
            "file_name": f"img{i}.jpg", "height": H, "width": W, "tags": ["dog", "cat"],
            "caption_mask_file": os.path.join(tmp_dir, f"cap{i}.png"),
            "instance_mask_file": os.path.join(tmp_dir, f"inst{i}.png"),
            "objects": [{"category": "dog", "category_id": 0, "dominant": True},
                        {"category": "cat", "category_id": 1, "dominant": False}][: 1 + i % 2],
        })
        scores = {m: torch.tensor(rng.random(3), dtype=torch.float32)
                  for m in ("s_image", "s_text", "s_pixel", "image_text")}
        scores["nltk"] = torch.tensor([1.0, 0.0, 1.0])
        outputs.append({
            "caption_mask": torch.tensor(rng.random((H, W)), dtype=torch.float32),
            "tags": ["dog", "on", "cat"], "tag_scores": scores, "tag_threshold": 0.5,
            "tag_caption_cos": torch.tensor(rng.random(3), dtype=torch.float32),
            "class_logits": torch.tensor(rng.random(2), dtype=torch.float32),
        })
    return records, outputs


def worker(rank, world_size, port, records, outputs, result_file):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    MetadataCatalog.get(DATASET).set(thing_classes=["dog", "cat"])
    evaluator = build_caption_evaluators(DATASET)
    evaluator.reset()
    evaluator.process(records[rank::world_size], outputs[rank::world_size])
    results = evaluator.evaluate()
    with open(f"{result_file}.{rank}", "wb") as f:
        pickle.dump(results, f)
    dist.barrier()
    # Leave without tearing gloo down: with torch 2.14 its teardown at exit now and then
    # aborts the process ("terminate called without an active exception").
    os._exit(0)


def test_two_process_gather_matches_single_process(tmp_path):
    records, outputs = make_fake(str(tmp_path))
    result_file = str(tmp_path / "results")
    mp.spawn(worker, args=(2, free_port(), records, outputs, result_file), nprocs=2, join=True)
    with open(result_file + ".0", "rb") as f:
        gathered = pickle.load(f)
    with open(result_file + ".1", "rb") as f:
        assert pickle.load(f) == {}  # DatasetEvaluators drops the None of rank 1

    MetadataCatalog.get(DATASET).set(thing_classes=["dog", "cat"])
    single = build_caption_evaluators(DATASET, distributed=False)
    single.reset()
    single.process(records, outputs)
    expected = flatten_results_dict(single.evaluate())
    # ranks hold records 0,2 and 1,3: mean-of-per-caption metrics are order-free
    assert flatten_results_dict(gathered) == pytest.approx(expected, nan_ok=True)
