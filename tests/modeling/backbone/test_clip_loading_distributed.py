"""Two CPU processes (gloo) on one "machine": when loading CLIP fails on one process, every
process ends with that error, quickly, instead of waiting at a barrier until the timeout."""
import datetime
import json
import os
import socket
import time
from pathlib import Path

import open_clip
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from ttd_d2.modeling.backbone.clip_loading import load_clip

TINY_ARCH = str(Path(__file__).resolve().parents[2] / "fixtures" / "tiny_clip.json")
GLOO_TIMEOUT_S = 20  # a process left waiting fails after this, not after gloo's 30 min default
TEST_TIMEOUT_S = 120
FAILING = (0, 1, None)  # the rank whose load fails, in turn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_each_other(out_dir, rank, world_size, step, result):
    """Write this rank's result of ``step``, then wait for every rank's. A file, not a collective:
    a collective could pair with a barrier a process is still stuck in."""
    with open(os.path.join(out_dir, f"{step}.rank{rank}.json"), "w") as f:
        json.dump(result, f)
    deadline = time.monotonic() + TEST_TIMEOUT_S
    while not all(os.path.exists(os.path.join(out_dir, f"{step}.rank{r}.json")) for r in range(world_size)):
        if time.monotonic() > deadline:
            os._exit(1)
        time.sleep(0.05)


def worker(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=GLOO_TIMEOUT_S))
    comm._LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))  # as detectron2's launch() sets it
    torch.set_num_threads(1)
    create = open_clip.create_model
    # failing rank 0: the local master, which loads first; 1: a process that loads second
    for failing in FAILING:
        def create_or_fail(*args, **kwargs):
            if rank == failing:
                raise RuntimeError(f"simulated corrupt checkpoint on rank {failing}")
            return create(*args, **kwargs)

        open_clip.create_model = create_or_fail
        start = time.monotonic()
        try:
            model, _ = load_clip(TINY_ARCH)
            outcome = f"loaded {type(model.visual).__name__}"
        except Exception as e:  # the error each process ends with
            outcome = f"{type(e).__name__}: {e}"
        wait_for_each_other(out_dir, rank, world_size, failing, {"outcome": outcome, "seconds": time.monotonic() - start})
    # Leave without tearing gloo down: with torch 2.14 its teardown at exit now and then aborts
    # the process ("terminate called without an active exception").
    os._exit(0)


def test_clip_load_failure_on_one_process_ends_every_process(tmp_path):
    context = mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + TEST_TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the workers were still running after {TEST_TIMEOUT_S} s")
    results = {failing: [json.loads((tmp_path / f"{failing}.rank{r}.json").read_text()) for r in range(2)]
               for failing in FAILING}

    for failing in (0, 1):
        own, relayed = results[failing][failing], results[failing][1 - failing]
        assert own["outcome"] == f"RuntimeError: simulated corrupt checkpoint on rank {failing}"
        assert relayed["outcome"].startswith(
            f"RuntimeError: loading CLIP (MODEL.CLIP.ARCH / PRETRAINED) failed on process {failing} of 2")
        assert f"simulated corrupt checkpoint on rank {failing}" in relayed["outcome"]  # the real error
        assert relayed["seconds"] < GLOO_TIMEOUT_S / 2  # told at once, not after a timeout
    assert [r["outcome"] for r in results[None]] == ["loaded VisionTransformer"] * 2
