"""ttd_d2.utils.profiling: the interval union by hand, and a CPU profile of a known step."""
from types import SimpleNamespace

import pytest
import torch

from ttd_d2.utils.profiling import ProfileSummary, busy_time, profile_steps


@pytest.mark.parametrize("intervals, expected", [
    ([], 0.0),
    ([(0, 2)], 2.0),
    ([(0, 2), (3, 4)], 3.0),  # disjoint: a host gap of 1 between them
    ([(0, 4), (1, 2)], 4.0),  # nested: counted once
    ([(2, 5), (0, 3)], 5.0),  # overlapping, out of order
    ([(0, 1), (1, 2)], 2.0),  # touching
])
def test_busy_time_is_the_union_length(intervals, expected):
    assert busy_time(intervals) == pytest.approx(expected)


def test_derived_fractions():
    s = ProfileSummary(steps=2, wall_ms=10.0, device="cuda", device_busy_ms=7.5)
    assert s.device_busy_fraction == pytest.approx(0.75)
    assert s.host_gap_ms == pytest.approx(2.5)
    assert ProfileSummary(steps=1, wall_ms=1.0, device="cpu").host_gap_ms is None


def test_cpu_profile_counts_syncs_and_ranks_the_matmul_first():
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def step():
        c = a @ b
        c.sum().item()  # one host read per step, as .item() on a GPU tensor would be
        c.sum().item()

    step()
    summary = profile_steps(step, steps=3, device=torch.device("cpu"))
    assert summary.steps == 3 and summary.wall_ms > 0
    assert summary.device_busy_ms is None  # no device kernels on CPU
    assert summary.sync_counts["aten::_local_scalar_dense"] == pytest.approx(2.0)
    assert summary.syncs == pytest.approx(2.0)
    assert summary.top[0][0] in ("aten::mm", "aten::matmul")
    assert summary.top[0][2] == pytest.approx(1.0)  # one call per step
    text = summary.table()
    assert "host reads of scalars per step: 2" in text and "aten::mm" in text
    assert summary.to_dict()["host_gap_ms"] is None


def test_cpu_profile_counts_operators_and_labelled_stages():
    """Operators called from Python per step (``a @ b`` is one ``aten::matmul``, whatever it calls
    inside; ``relu`` one) and the ``ttd.*`` stages' host time."""
    from torch.profiler import record_function

    a, b = torch.randn(64, 64), torch.randn(64, 64)

    def step():
        with record_function("ttd.outer"):
            with record_function("ttd.inner"):
                torch.relu(a @ b)

    step()
    summary = profile_steps(step, steps=2, device=torch.device("cpu"))
    assert summary.launches == pytest.approx(2.0)
    assert [name for name, _ in summary.stages] == ["ttd.outer", "ttd.inner"]
    (_, outer), (_, inner) = summary.stages
    assert outer >= inner > 0
    assert "operators called from Python per step: 2" in summary.table()


@pytest.mark.parametrize("name, category", [
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1x1x1_kernel0_0", "attention"),
    ("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN", "matmul"),
    ("_refine_step_kernel", "pamr"),
    ("_affinity_kernel", "pamr"),
    ("triton_poi_fused_gelu_view_10", "fused (inductor)"),
    ("triton_tem_fused__to_copy_addmm_mul_sigmoid_t_view_12", "matmul"),  # max-autotune's GEMM template
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float, false>(int, float)", "norm"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda(at::TensorIteratorBase&)", "copy / cast"),
    ("void at::native::(anonymous namespace)::upsample_bilinear2d_out_frame<float, float>(int, float)", "resize"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&)", "elementwise / reduce"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float, unsigned int, 4, 64, 64>", "copy / cast"),
    ("void at::native::_scatter_gather_elementwise_kernel<128, 4>", "elementwise / reduce"),
    ("Memset (Device)", "other"),
])
def test_kernel_category_of_kernels_seen_on_the_gpu_host(name, category):
    from ttd_d2.utils.profiling import kernel_category

    assert kernel_category(name) == category


def _device_event(name, start, end):
    """A fake CUDA event of ``prof.events()`` (a kernel, or a stage's device-side span), times in us."""
    return SimpleNamespace(name=name, device_type="DeviceType.CUDA", time_range=SimpleNamespace(start=start, end=end),
                           cpu_parent=None)


def test_device_time_by_family_sums_the_kernels():
    """Two steps of three fake CUDA kernels: per-step family times, largest first, summing to
    the kernels' total (overlap is not removed: busy time is the union, families are sums)."""
    from ttd_d2.utils.profiling import summarize_events

    events = [_device_event("nvjet_sm90_tst_128x8", 0, 3000), _device_event("triton_poi_fused_add", 3000, 4000),
              _device_event("nvjet_sm90_tst_128x8", 5000, 8000), _device_event("_refine_step_kernel", 8000, 8500)]
    summary = summarize_events(events, steps=2, wall_ms=20.0, device="cuda")
    assert summary.categories == {"matmul": pytest.approx(3.0), "fused (inductor)": pytest.approx(0.5),
                                  "pamr": pytest.approx(0.25)}
    assert list(summary.categories) == ["matmul", "fused (inductor)", "pamr"]
    assert summary.device_busy_ms == pytest.approx(3.75)
    assert "device time by kernel family" in summary.table()


def test_stage_device_times_clip_kernels_to_each_span():
    """Busy time inside each span (kernels cut at its ends), idle = span - busy, summed per name
    over its spans and listed in order of first start; a nested stage lies inside its parent."""
    from ttd_d2.utils.profiling import stage_device_times

    kernels = [(0, 2), (3, 6), (8, 9), (10, 14)]
    spans = [("ttd.forward", 0, 6), ("ttd.teacher", 3, 6), ("ttd.backward", 8, 14), ("ttd.forward", 10, 12)]
    got = stage_device_times(spans, kernels)
    assert [name for name, _, _ in got] == ["ttd.forward", "ttd.teacher", "ttd.backward"]
    forward, teacher, backward = got
    assert forward[1:] == pytest.approx((5.0 + 2.0, 6.0 + 2.0))  # (0,2) + (3,6); then (10,12) of (10,14)
    assert teacher[1:] == pytest.approx((3.0, 3.0))  # no idle time inside
    assert backward[1:] == pytest.approx((5.0, 6.0))  # (8,9) + (10,14); idle 1 between them
    assert stage_device_times([("ttd.x", 0, 1)], []) == [("ttd.x", 0.0, 1.0)]


def test_summary_reports_each_stage_device_time_per_step():
    """The device-side stage annotations become per-step (busy, span) rows; they are not kernels."""
    from ttd_d2.utils.profiling import summarize_events

    events = [_device_event("ttd.teacher", 0, 4000), _device_event("nvjet_sm90_tst_128x8", 0, 1000),
              _device_event("triton_poi_fused_add", 2000, 4000), _device_event("nvjet_sm90_tst_128x8", 5000, 6000)]
    summary = summarize_events(events, steps=1, wall_ms=10.0, device="cuda")
    assert summary.device_stages == [("ttd.teacher", pytest.approx(3.0), pytest.approx(4.0))]
    assert summary.device_busy_ms == pytest.approx(4.0)  # the annotation is not counted as a kernel
    assert "idle   1.000)  ttd.teacher" in summary.table()
