"""torch.compile of the towers' blocks (MODEL.CLIP.COMPILE, ttd_d2.modeling.compile.py):
the compiled TTD step gives the eager step's losses and adapter gradients, compiled inference
the eager scores; a block whose compilation fails runs eagerly with a warning; bad keys are
refused with the fix. The tests trace with ``aot_eager`` (dynamo + AOTAutograd, no codegen);
one runs inductor itself on a block, as the GPU host does."""
import copy
import logging

import pytest
import torch

from conftest import build
from ttd_d2.modeling.compile import CompiledWithFallback, compile_blocks, compile_backends

TTD = {"MODEL.TTD.ENABLED": True, "MODEL.TTD.TEACHER": "frozen", "MODEL.CLIP.DENSE_MODE": "clearclip"}


def batch():
    g = torch.Generator().manual_seed(0)
    captions = ("a red circle and a blue square", "a green triangle on a striped background")
    return [{"image": torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8), "caption": c} for c in captions]


def step(model):
    losses = model(batch())
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_step_equals_eager(tiny_cfg):
    eager = build(tiny_cfg, train=True, **TTD)
    compiled = build(tiny_cfg, train=True, **TTD, **{"MODEL.CLIP.COMPILE.MODE": "default",
                                                     "MODEL.CLIP.COMPILE.BACKEND": "aot_eager"})
    blocks = list(compiled.backbone.clip.visual.transformer.resblocks) + list(compiled.backbone.clip.transformer.resblocks)
    assert all(isinstance(b.__dict__.get("forward"), CompiledWithFallback) for b in blocks)
    with torch.no_grad():  # adapters that do something (B starts at zero)
        for (_, p), (_, q) in zip(eager.named_parameters(), compiled.named_parameters()):
            if p.requires_grad:
                q.copy_(p.normal_(0, 0.05) if p.dim() > 1 else p)
    for _ in range(2):  # the second call runs the cached graphs
        (loss_e, grad_e), (loss_c, grad_c) = step(eager), step(compiled)
        assert loss_e.keys() == loss_c.keys() == {"loss_distill", "loss_tag"}
        for k in loss_e:
            torch.testing.assert_close(loss_c[k], loss_e[k], rtol=1e-5, atol=1e-6)
        assert grad_e.keys() == grad_c.keys() and grad_e
        for k in grad_e:
            torch.testing.assert_close(grad_c[k], grad_e[k], rtol=1e-4, atol=1e-6)
    assert not any(b.forward.failed for b in blocks)


@pytest.fixture
def dataset(register):
    return register(stuff_classes=["circle, round", "square", "triangle"])


def test_compiled_inference_equals_eager(tiny_cfg, dataset):
    """The test-time protocol's windows, scales and flips through compiled blocks."""
    protocol = {"MODEL.SEG_INFERENCE.SLIDE_CROP": 32, "MODEL.SEG_INFERENCE.SLIDE_STRIDE": 16,
                "MODEL.SEG_INFERENCE.SCALES": [1.0, 0.5], "MODEL.SEG_INFERENCE.FLIP": True}
    eager = build(tiny_cfg, **protocol)
    compiled = build(tiny_cfg, **protocol, **{"MODEL.CLIP.COMPILE.MODE": "reduce-overhead",
                                              "MODEL.CLIP.COMPILE.BACKEND": "aot_eager"})
    image = torch.randint(0, 256, (3, 40, 56), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    inputs = [{"image": image, "height": 40, "width": 56, "dataset_name": dataset}]
    with torch.no_grad():
        torch.testing.assert_close(compiled(inputs)[0]["sem_seg"], eager(inputs)[0]["sem_seg"], rtol=1e-5, atol=1e-6)


@pytest.fixture
def broken_backend():
    """The name of a registered torch.compile backend that fails on every graph."""
    def broken(gm, example_inputs):
        raise RuntimeError("this backend cannot compile anything")

    torch._dynamo.register_backend(broken, name="ttd_test_broken")
    yield "ttd_test_broken"
    torch._dynamo.backends.registry._COMPILER_FNS.pop("ttd_test_broken", None)


def test_failing_compilation_falls_back_to_eager(tiny_cfg, caplog, broken_backend):
    model = build(tiny_cfg, **{"MODEL.CLIP.COMPILE.MODE": "default", "MODEL.CLIP.COMPILE.BACKEND": broken_backend})
    reference = build(tiny_cfg)
    x = torch.randn(2, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="ttd_d2.modeling.compile"), torch.no_grad():
        out = model.backbone(x)["dense"]
    torch.testing.assert_close(out, reference.backbone(x)["dense"])
    assert "torch.compile of visual.transformer.resblocks.0 failed" in caplog.text
    assert all(b.forward.failed for b in model.backbone.clip.visual.transformer.resblocks[:-1])


def test_keys_are_checked(tiny_cfg):
    with pytest.raises(ValueError, match=r"MODEL.CLIP.COMPILE.MODE = 'fast' is unknown: use one of , default"):
        build(tiny_cfg, **{"MODEL.CLIP.COMPILE.MODE": "fast"})
    with pytest.raises(ValueError, match="MODEL.CLIP.COMPILE.BACKEND = 'nope' is unknown: use one of .*inductor"):
        build(tiny_cfg, **{"MODEL.CLIP.COMPILE.MODE": "default", "MODEL.CLIP.COMPILE.BACKEND": "nope"})
    assert "aot_eager" in compile_backends() and "inductor" in compile_backends()


def test_deep_copy_of_a_compiled_block_runs_the_copy(tiny_cfg):
    """TCL's head deep-copies the last block: the copy's forward must be its own."""
    model = build(tiny_cfg)
    block = model.backbone.clip.visual.transformer.resblocks[0]
    compile_blocks([block], "b", "default", "aot_eager")
    twin = copy.deepcopy(block)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(2.0)
    x = torch.randn(1, 5, block.ln_1.normalized_shape[0])
    assert twin.forward.eager.__self__ is twin
    assert not torch.allclose(twin(x), block(x))


def test_inductor_compiles_a_block_forward_and_backward(tiny_cfg):
    """The default backend itself (CPU codegen here, as a CUDA kernel generator on the GPU host)."""
    model = build(tiny_cfg)
    block = model.backbone.clip.visual.transformer.resblocks[0]
    eager = copy.deepcopy(block)
    compile_blocks([block], "b", "default", "inductor")
    x = torch.randn(2, 5, block.ln_1.normalized_shape[0], requires_grad=True)
    out, ref = block(x), eager(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g, = torch.autograd.grad(out.square().sum(), x)
    r, = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    assert not block.forward.failed


@pytest.mark.parametrize("mode, copies", [("reduce-overhead", True), ("max-autotune", True), ("default", False)])
def test_cuda_graph_outputs_are_copied_before_the_next_replay(mode, copies):
    """CUDA graphs return static buffers that the same graph's next replay overwrites (all blocks
    of a tower replay one graph). Simulated here (no GPU): a "compiled" function returning one
    buffer; under CUDA-graph modes block 1's output must survive block 2's call."""
    static = torch.zeros(3)

    def replay(x):
        static.copy_(x + 1)
        return static, {"aux": static}

    wrapper = CompiledWithFallback(lambda x: (x + 1, {"aux": x + 1}), "b", mode, "inductor")
    wrapper.compiled = replay
    first, aux = wrapper(torch.zeros(3))
    wrapper(torch.full((3,), 5.0))
    survived = torch.equal(first, torch.ones(3)) and torch.equal(aux["aux"], torch.ones(3))
    assert survived is copies and wrapper.copy_outputs is copies


def test_a_ttd_step_keeps_every_variant_compiled(tiny_cfg):
    """Student and teacher, image and text, grad and no-grad, new shapes: as many graphs as
    dynamo's default limit of 8 per code object already (the blocks of a tower share theirs:
    tests/modeling/lora/test_shared_class.py); none may be left to run eagerly."""
    from torch._dynamo.utils import counters

    model = build(tiny_cfg, train=True, **TTD, **{"MODEL.CLIP.COMPILE.MODE": "default",
                                                  "MODEL.CLIP.COMPILE.BACKEND": "aot_eager"})
    counters.clear()
    for _ in range(2):
        step(model)
    model.eval()
    with torch.no_grad():
        model.backbone(torch.randn(1, 3, 40, 48))  # a new grid: one more variant
        model.backbone.encode_text(["circle", "a small blue square"], use_templates=True)  # text, no grad
    assert counters["frames"]["total"] == counters["frames"]["ok"] >= 8
    limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
    assert limit >= 64


def test_text_blocks_take_new_batch_shapes_without_a_graph_each(tiny_cfg):
    """Text batches of four padded sizes: the text blocks compile dynamic shapes from the second
    size on (two graphs), the image blocks one graph per shape."""
    from torch._dynamo.utils import counters

    model = build(tiny_cfg, **{"MODEL.CLIP.COMPILE.MODE": "default", "MODEL.CLIP.COMPILE.BACKEND": "aot_eager"}).eval()
    words = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "heart", "moon"]
    counters.clear()
    with torch.no_grad():
        for rows in (1, 40, 70, 100):  # padded to 32, 64, 96, 128 rows
            eager = model.backbone.encode_text([words[i % 10] for i in range(rows)], use_templates=False)
            assert eager.shape[0] == rows
    assert counters["frames"]["total"] == counters["frames"]["ok"] == 2
    for block in model.backbone.clip.transformer.resblocks:
        assert block.forward.dynamic is None and not block.forward.failed
    assert all(block.forward.dynamic is False for block in model.backbone.clip.visual.transformer.resblocks)


def test_text_mode_compiles_the_text_blocks_their_own_way(tiny_cfg):
    """MODEL.CLIP.COMPILE.TEXT_MODE: "same" gives the text blocks MODE; another mode is theirs
    ("" leaves them eager), the image blocks keep MODE; an unknown one is refused with the fix."""
    opts = {"MODEL.CLIP.COMPILE.MODE": "default", "MODEL.CLIP.COMPILE.BACKEND": "aot_eager"}
    same = build(tiny_cfg, **opts).backbone.clip
    assert all(b.forward.mode == "default" for b in same.transformer.resblocks)
    own = build(tiny_cfg, **opts, **{"MODEL.CLIP.COMPILE.TEXT_MODE": "max-autotune-no-cudagraphs"}).backbone.clip
    assert all(b.forward.mode == "max-autotune-no-cudagraphs" for b in own.transformer.resblocks)
    assert all(b.forward.mode == "default" for b in own.visual.transformer.resblocks)
    eager_text = build(tiny_cfg, **opts, **{"MODEL.CLIP.COMPILE.TEXT_MODE": ""}).backbone.clip
    assert not any(isinstance(b.__dict__.get("forward"), CompiledWithFallback) for b in eager_text.transformer.resblocks)
    assert all(isinstance(b.__dict__.get("forward"), CompiledWithFallback) for b in eager_text.visual.transformer.resblocks)
    with pytest.raises(ValueError, match=r"MODEL.CLIP.COMPILE.TEXT_MODE = 'fast' is unknown: use one of same, , default"):
        build(tiny_cfg, **opts, **{"MODEL.CLIP.COMPILE.TEXT_MODE": "fast"})


def test_gradient_free_dense_tower_is_one_compiled_region(tiny_cfg):
    """Dense-only calls without grad (the test-time protocol's windows) run every block and the
    dense head as one graph: the blocks' own wrappers run eagerly inside its trace (no frame of
    their own), and the embeddings equal the eager model's. With grad or the global embedding,
    the per-block graphs run as before."""
    from torch._dynamo.utils import counters

    eager = build(tiny_cfg)
    model = build(tiny_cfg, **{"MODEL.CLIP.COMPILE.MODE": "reduce-overhead", "MODEL.CLIP.COMPILE.BACKEND": "aot_eager"})
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    counters.clear()
    with torch.no_grad():
        for _ in range(2):
            out = model.backbone(x, with_global=False)["dense"]
            torch.testing.assert_close(out, eager.backbone(x, with_global=False)["dense"], rtol=1e-5, atol=1e-6)
    assert counters["frames"]["total"] == counters["frames"]["ok"] == 1  # the region, traced once
    assert not model.backbone._dense_tower.failed
    model.backbone(x, with_global=False)["dense"].sum().backward()  # with grad: the blocks' graphs
    assert counters["frames"]["total"] == counters["frames"]["ok"] > 1


def test_a_failing_dense_tower_runs_eagerly(tiny_cfg, caplog, broken_backend):
    model = build(tiny_cfg, **{"MODEL.CLIP.COMPILE.MODE": "default", "MODEL.CLIP.COMPILE.BACKEND": broken_backend})
    x = torch.randn(2, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="ttd_d2.modeling.compile"), torch.no_grad():
        out = model.backbone(x, with_global=False)["dense"]
    torch.testing.assert_close(out, build(tiny_cfg).backbone(x, with_global=False)["dense"])
    assert "torch.compile of visual.dense_tower failed" in caplog.text and model.backbone._dense_tower.failed


def test_tcl_gradient_free_dense_tower_is_one_region_that_follows_weight_updates(tiny_cfg):
    """TCL's trunk blocks and head (copied block, decoder, projection) run as one compiled region
    for the protocol's windows (DECODER_CONV direct: the path CUDA takes), equal to the eager
    head; after the decoder's weights change in place (a training step between evaluations)
    the region gives the new weights' embeddings, not its first trace's."""
    from torch._dynamo.utils import counters

    tcl = {"MODEL.BACKBONE.NAME": "TCL", "MODEL.TCL.DECODER_CONV": "direct"}
    eager = build(tiny_cfg, **tcl)
    model = build(tiny_cfg, **tcl, **{"MODEL.CLIP.COMPILE.MODE": "reduce-overhead", "MODEL.CLIP.COMPILE.BACKEND": "aot_eager"})
    model.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    counters.clear()
    with torch.no_grad():
        for _ in range(2):
            out = model.backbone(x, with_global=False)["dense"]
            assert out.shape == (2, eager.backbone.head.proj.shape[1], 16, 24)  # 4x the 8 px patch grid
            torch.testing.assert_close(out, eager.backbone(x, with_global=False)["dense"], rtol=1e-5, atol=1e-6)
        assert counters["frames"]["total"] == counters["frames"]["ok"] == 1 and not model.backbone._dense_tower.failed
        for m in (model, eager):
            for p in m.backbone.head.decoder.parameters():
                p.add_(0.5)
        torch.testing.assert_close(model.backbone(x, with_global=False)["dense"],
                                   eager.backbone(x, with_global=False)["dense"], rtol=1e-5, atol=1e-6)
