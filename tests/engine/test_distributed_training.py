"""Multi-process training as detectron2 runs it: two CPU processes (gloo), the real
``TTDTrainer`` (its model, optimizer, train loader, hooks and detectron2's DDP wrapping with
``find_unused_parameters=False``), for every dense head and teacher with TTD, TTD plus the
contrastive loss, contrastive pretraining, TTD on the TCL backbone, and TCL's own objective
(with and without its decoder-only warm-up). After a few iterations the trainable parameters
must be identical on both ranks (DDP averaged every gradient) and changed.

detectron2 v0.6's ``launch`` needs CUDA for several processes, so the workers set up what it
sets up (the process group, ``comm``'s local group) themselves. All cases run in one spawn
(starting two interpreters costs more than a case); each case is reported by its own test.
"""
import os
import socket
import uuid
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from conftest import REPO, TINY_ARCH, load_script, make_tiny_train_cfg
from shard_fixtures import write_shards
from ttd_d2.data.datasets.image_text import register_shard_source
from ttd_d2.data.datasets.synthetic import register_synthetic
from ttd_d2.data.synthetic.writer import generate

WORLD_SIZE = 2
ITERATIONS = 3
SHARD_SOURCE = "ttd_test_ddp_shards"
# TCL trained with its own objective (modeling/tcl): negatives from both ranks' captions
TCL_OBJECTIVE = {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TTD.ENABLED": False, "MODEL.TCL.LOSS.CONTRASTIVE_WEIGHT": 0.1,
                 "MODEL.TCL.LOSS.AREA_WEIGHT": 0.4, "MODEL.TCL.LOSS.TV_WEIGHT": 1.0}
CASES = {
    "vanilla-self-s_image": {"MODEL.CLIP.DENSE_MODE": "vanilla", "MODEL.TTD.TEACHER": "self",
                             "MODEL.TTD.TAG_SCORING": "s_image"},
    "maskclip-frozen": {"MODEL.CLIP.DENSE_MODE": "maskclip", "MODEL.TTD.TEACHER": "frozen"},
    "sclip-ema": {"MODEL.CLIP.DENSE_MODE": "sclip", "MODEL.TTD.TEACHER": "ema", "MODEL.TTD.EMA_DECAY": 0.5},
    "clearclip-frozen": {"MODEL.CLIP.DENSE_MODE": "clearclip", "MODEL.TTD.TEACHER": "frozen"},
    "clearclip-self-image_text-layers1": {"MODEL.CLIP.DENSE_MODE": "clearclip", "MODEL.TTD.TEACHER": "self",
                                          "MODEL.TTD.TAG_SCORING": "image_text", "MODEL.TTD.LORA.IMAGE_LAYERS": 1},
    "naclip-ema": {"MODEL.CLIP.DENSE_MODE": "naclip", "MODEL.TTD.TEACHER": "ema", "MODEL.TTD.EMA_DECAY": 0.5},
    "naclip-frozen-contrastive": {"MODEL.CLIP.DENSE_MODE": "naclip", "MODEL.TTD.TEACHER": "frozen",
                                  "MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0},
    "contrastive-pretraining": {"MODEL.TTD.ENABLED": False, "MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0},
    "tcl-frozen": {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TTD.TEACHER": "frozen", "MODEL.TTD.LORA.IMAGE_LAYERS": 1},
    "tcl-ema-decoder-contrastive": {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TTD.TEACHER": "ema", "MODEL.TTD.EMA_DECAY": 0.5,
                                    "MODEL.TCL.TRAIN_DECODER": True, "MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0},
    "tcl-objective": TCL_OBJECTIVE,
    # the copied block starts at the last iteration: DDP keeps its gradient all along (delayed_start)
    "tcl-objective-decoder-warmup": {**TCL_OBJECTIVE, "MODEL.TCL.DECODER_ONLY_ITERS": ITERATIONS - 1},
    # the head's copied block run as ClearCLIP / NACLIP (MODEL.TCL.DENSE_PATH): the MLP those paths
    # skip is frozen, so every trainable parameter still gets a gradient (TCL's objective and TTD)
    "tcl-objective-clearclip-path": {**TCL_OBJECTIVE, "MODEL.TCL.DENSE_PATH": "clearclip"},
    "tcl-naclip-path-frozen": {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TCL.DENSE_PATH": "naclip", "MODEL.TTD.TEACHER": "frozen",
                               "MODEL.TTD.LORA.IMAGE_LAYERS": 1},
    # webdataset shards with bad samples, two loader workers per rank: 2 x 2 processes, 8 shards
    "streamed-shards-2-workers": {"DATASETS.TRAIN": (SHARD_SOURCE,), "DATALOADER.NUM_WORKERS": 2},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def case_cfg(dataset, output_dir, opts):
    return make_tiny_train_cfg(dataset, output_dir, **{
        "MODEL.TTD.ENABLED": True,
        "SOLVER.IMS_PER_BATCH": 2 * WORLD_SIZE,  # global batch: 2 images per rank
        "SOLVER.MAX_ITER": ITERATIONS,
        "SOLVER.CHECKPOINT_PERIOD": 1000,
        "SOLVER.WEIGHT_DECAY": 0.0,  # a parameter changes only through its gradient
        "SEED": 0,  # same initial weights on both ranks, as with a pretrained model
        **opts,
    })


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run_case(dataset, output_dir, opts):
    from detectron2.utils.env import seed_all_rng

    from ttd_d2.engine import TTDTrainer

    cfg = case_cfg(dataset, output_dir, opts)
    seed_all_rng(cfg.SEED)
    trainer = TTDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model.module if isinstance(trainer.model, DistributedDataParallel) else trainer.model
    captions = []
    model.register_forward_pre_hook(lambda _, args: captions.append([x["caption"] for x in args[0]]))
    initial = trainable(model)
    trainer.train()
    return {"ddp": isinstance(trainer.model, DistributedDataParallel), "initial": initial,
            "final": trainable(model), "captions": captions}


PRUNE = "prune-samples"
PRUNE_TINY = ["MODEL.CLIP.ARCH", TINY_ARCH, "MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu", "INPUT.TRAIN_SIZE", "32"]


def run_prune(shards, output_dir):
    """tools/prune_samples.py's ``main`` in this rank (as ``launch`` runs it): {"report": the
    keep-list on rank 0 (None elsewhere), "scored": the shards this rank scored}."""
    prune = load_script("tools/prune_samples.py")
    real, scored = prune.score_shard, []

    def recording(scorer, shard, batch_size):
        scored.append(os.path.basename(shard))
        return real(scorer, shard, batch_size)

    prune.score_shard = recording
    args = prune.parse_args(["--config-file", str(REPO / "configs" / "synthetic" / "maskclip.yaml"), "--shards", shards,
                             "--output-dir", output_dir, "--batch-size", "4", "--keep-fraction", "0.5", *PRUNE_TINY])
    return {"report": prune.main(args), "scored": scored}


def worker(rank, port, root, dataset, out_dir, shards):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE, timeout=timedelta(seconds=120))
    if hasattr(comm, "create_local_process_group"):  # detectron2 > 0.6
        comm.create_local_process_group(WORLD_SIZE)
    else:
        comm._LOCAL_PROCESS_GROUP = dist.new_group(list(range(WORLD_SIZE)))
    register_synthetic(root)
    register_shard_source(SHARD_SOURCE, shards)
    results = {}
    for name, opts in CASES.items():
        try:
            results[name] = run_case(dataset, os.path.join(out_dir, name), opts)
        except Exception as e:  # reported by the case's test; both ranks raise alike
            results[name] = f"{type(e).__name__}: {e}"
        dist.barrier()
    try:
        results[PRUNE] = run_prune(shards, os.path.join(out_dir, PRUNE))
    except Exception as e:
        results[PRUNE] = f"{type(e).__name__}: {e}"
    dist.barrier()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    # Leave without tearing gloo down: with torch 2.14 its teardown at exit now and then
    # aborts the process ("terminate called without an active exception").
    os._exit(0)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """[rank 0 results, rank 1 results], each {case: dict or error string}."""
    root = tmp_path_factory.mktemp("synthetic")
    split = f"ddp{uuid.uuid4().hex[:8]}"
    generate(root, "image_text", split, 16, 0, image_size=32)
    out_dir = tmp_path_factory.mktemp("ddp_runs")
    shards = tmp_path_factory.mktemp("shards")
    write_shards(shards, num_shards=8, good_per_shard=4)
    mp.spawn(worker, args=(free_port(), str(root), f"synth_image_text_{split}", str(out_dir), str(shards / "*.tar")),
             nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("case", list(CASES))
def test_two_process_training_keeps_ranks_in_sync(ranks, case):
    results = [r[case] for r in ranks]
    for rank, result in enumerate(results):
        assert isinstance(result, dict), f"rank {rank}: {result}"
    first, second = results
    assert first["ddp"] and second["ddp"]
    assert len(first["captions"]) == ITERATIONS
    assert first["captions"] != second["captions"]  # each rank trained on its own samples
    assert first["final"] and set(first["final"]) == set(second["final"])
    differ = [n for n, p in first["final"].items() if not torch.equal(p, second["final"][n])]
    assert not differ, f"parameters differ between ranks: {differ[:5]}"
    unchanged = [n for n, p in first["final"].items() if torch.equal(p, first["initial"][n])]
    assert not unchanged, f"parameters not trained: {unchanged[:5]}"


def test_two_ranks_and_their_workers_train_on_disjoint_samples(ranks):
    """The streamed case: every caption names its sample's key, so no two processes (2 ranks x 2
    loader workers) read the same sample: 3 steps x 2 ranks x 2 samples = 12 distinct captions."""
    captions = [c for r in ranks for step in r["streamed-shards-2-workers"]["captions"] for c in step]
    assert len(captions) == ITERATIONS * WORLD_SIZE * 2 and len(set(captions)) == len(captions)


def test_pruning_spreads_the_shards_over_the_ranks(ranks, tmp_path):
    """tools/prune_samples.py under 2 processes: each shard scored by exactly one rank, the
    keep-list written once (rank 0) and equal to a one-process run's on the same shards."""
    results = [r[PRUNE] for r in ranks]
    for rank, result in enumerate(results):
        assert isinstance(result, dict), f"rank {rank}: {result}"
    first, second = results
    assert second["report"] is None and first["report"] is not None
    assert first["scored"] and second["scored"] and not set(first["scored"]) & set(second["scored"])
    assert len(first["scored"]) + len(second["scored"]) == 8  # the module's 8 shards
    shards = tmp_path / "shards"
    write_shards(shards, num_shards=8, good_per_shard=4)  # the same fixture, written again
    one = run_prune(str(shards / "*.tar"), str(tmp_path / "one_process"))["report"]
    for key in ("keys", "num_scored", "num_kept", "skipped"):
        assert first["report"][key] == one[key], key
    assert abs(first["report"]["threshold"] - one["threshold"]) < 1e-6
