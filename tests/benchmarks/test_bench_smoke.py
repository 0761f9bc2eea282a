"""CPU smoke test of benchmarks/bench_ttd_step.py: the tiny CLIP, two timed steps per model."""
import json
from pathlib import Path

import pytest

from conftest import load_script
from ttd_d2.modeling.ttd.tags import caption_to_tags

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ttd_step.py"
TINY_ARGS = [
    "--arch", "tests/fixtures/tiny_clip.json", "--image-size", "32", "--batch-size", "4",
    "--steps", "2", "--warmup", "1", "--device", "cpu",
    # the tiny CLIP's 16-token context holds these captions with 3 tags (at most 10 tokens);
    # with 8 their last tags would fall past the window and stop being candidates
    "--tags-per-caption", "3",
]


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_ttd_step.py")


def test_captions_have_the_requested_number_of_tags(bench):
    for step in range(3):
        captions = bench.make_captions(64, 8, seed=0, step=step)
        assert captions == bench.make_captions(64, 8, seed=0, step=step)  # deterministic
        assert all(len(caption_to_tags(c)) == 8 for c in captions), captions
    assert len(set(bench.CONTENT_WORDS)) == len(bench.CONTENT_WORDS)


def test_smoke_tiny_cpu(bench, tmp_path):
    out = tmp_path / "bench.json"
    report = bench.main(TINY_ARGS + ["--output", str(out), "MODEL.TTD.LORA.RANK", "4"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    results = report["results"]
    for step in ("ttd", "plain"):
        r = results[step]
        assert r["images_per_s"] > 0 and r["step_time_ms"] > 0
        assert r["peak_memory_gib"] is None  # CPU: no peak memory
        assert r["precision"] == "fp32"
        assert r["flops"]["step"] > 0 and r["flops"]["step_executed"] > 0 and r["tflops_per_s"] > 0
    assert report["ttd_over_plain_throughput"] > 0
    assert report["ttd_over_plain_throughput"] == pytest.approx(
        results["ttd"]["images_per_s"] / results["plain"]["images_per_s"])
    ttd, plain = results["ttd"], results["plain"]
    assert set(ttd["losses"]) == {"loss_distill", "loss_tag"} and set(plain["losses"]) == {"loss_contrastive"}
    # LoRA vs full fine-tune of every weight but the masker's w, b (no loss reads them without TTD)
    assert ttd["trainable_params"] < plain["trainable_params"] == plain["params"] - 2
    assert ttd["candidates_per_caption"] == 3
    assert ttd["flops"]["teacher_forward"] > 0 and plain["flops"]["teacher_forward"] == 0
    assert report["settings"]["opts"] == ["MODEL.TTD.LORA.RANK", "4"]


def test_profile_and_late_adapter_target(bench, tmp_path):
    report = bench.main(TINY_ARGS + ["--skip-flops", "--profile", "2", "--trace-dir", str(tmp_path), "--text-in-step",
                                     "MODEL.TTD.LORA.IMAGE_LAYERS", "2"])
    assert report["target_ratio"] == bench.TARGET_RATIO_LATE_ADAPTERS == 1.2
    assert report["settings"]["text_in_step"] and report["results"]["ttd"]["candidates_per_caption"] == 3
    for step in ("ttd", "plain"):
        profile = report["results"][step]["profile"]
        assert profile["steps"] == 2 and profile["wall_ms"] > 0
        assert profile["device_busy_ms"] is None and profile["top"]  # CPU: top operators, no kernels
        assert (tmp_path / f"{step}.json").stat().st_size > 0  # the Chrome trace
        assert set(profile["sync_counts"]) == {"aten::_local_scalar_dense"}  # CPU: host reads


def test_a_step_whose_losses_train_nothing_fails_with_the_cause(bench):
    """The plain step on a frozen-CLIP backbone (TCL) has no trainable weight in its loss: a clear
    error naming the backbone and the fix, not autograd's."""
    import torch
    from torch import nn

    class Frozen(nn.Module):
        backbone = nn.Identity()

        def forward(self, batch):
            return {"loss_contrastive": torch.zeros(())}

    with pytest.raises(SystemExit, match="reach no trainable weight.*Identity.*CLIPDense config"):
        bench.train_step(Frozen(), None, [])
