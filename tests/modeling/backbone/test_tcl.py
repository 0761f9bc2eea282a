"""The TCL backbone on the tiny random CLIP: shapes, its dense output at initialisation against
CLIPDense's MaskCLIP path, what is frozen, pixel statistics."""
import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_cfg
from ttd_d2.modeling.backbone import TCL, CLIPDense
from ttd_d2.modeling.backbone.tcl_decoder import GatedDecoder

PATCH, EMBED, WIDTH = 8, 32, 64  # tests/fixtures/tiny_clip.json


def tcl_cfg(**opts):
    cfg = make_tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "TCL"
    cfg.merge_from_list([x for k, v in opts.items() for x in (k, v)])
    return cfg


def build(backbone_cls, cfg, seed=0):
    torch.manual_seed(seed)
    return backbone_cls(cfg).eval()


@pytest.fixture(scope="module")
def tcl():
    return build(TCL, tcl_cfg())


@pytest.mark.parametrize("size", [(32, 32), (24, 40), (48, 16)])
def test_shapes_square_and_non_square(tcl, size):
    h, w = size
    with torch.no_grad():
        out = tcl(torch.randn(2, 3, h, w))
    assert out["dense"].shape == (2, EMBED, 4 * h // PATCH, 4 * w // PATCH)
    assert out["global"].shape == (2, EMBED)
    assert out["dense"].dtype == out["global"].dtype == torch.float32
    assert tcl.dense_scale == 4 and tcl.size_divisibility == PATCH
    assert tcl.output_shape()["dense"].stride == PATCH // 4 and tcl.output_shape()["dense"].channels == EMBED


def test_at_initialisation_dense_is_maskclip_upsampled_by_nearest():
    """Gates 0: the decoder is a nearest 4x upsampling and ln_post, proj act per position, so
    TCL's dense map is CLIPDense's MaskCLIP map of the same CLIP, each patch a 4x4 square."""
    tcl, maskclip = build(TCL, tcl_cfg()), build(CLIPDense, make_tiny_cfg())  # same seed, same CLIP
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        ours, reference = tcl(x), maskclip(x)
        expected = F.interpolate(reference["dense"], scale_factor=4, mode="nearest")
        assert torch.allclose(ours["dense"], expected, atol=1e-6)
        assert torch.allclose(ours["global"], reference["global"], atol=1e-6)  # the frozen CLIP's own
        # the dense path is the head's copy: changing the CLIP's own last block leaves it alone
        tcl.clip.visual.transformer.resblocks[-1].mlp.c_fc.weight.mul_(3.0)
        assert torch.allclose(tcl(x)["dense"], expected, atol=1e-6)
        assert not torch.allclose(tcl(x)["global"], reference["global"], atol=1e-3)


@pytest.mark.parametrize("path", ["clearclip", "naclip"])
def test_dense_path_at_initialisation_is_that_head_upsampled(path):
    """MODEL.TCL.DENSE_PATH: the head's copied block runs as that training-free head, so at
    initialisation the dense map is CLIPDense's map of that mode, upsampled 4x by nearest."""
    scales = {"MODEL.CLIP.ATTN_SCALE": 0.3, "MODEL.CLIP.NACLIP_SIGMA": 2.0}  # the CLIP's keys reach the head
    tcl = build(TCL, tcl_cfg(**{"MODEL.TCL.DENSE_PATH": path}, **scales))
    reference_cfg = tcl_cfg(**scales)
    reference_cfg.MODEL.BACKBONE.NAME, reference_cfg.MODEL.CLIP.DENSE_MODE = "CLIPDense", path
    reference = build(CLIPDense, reference_cfg)
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        expected = F.interpolate(reference(x)["dense"], scale_factor=4, mode="nearest")
        assert torch.allclose(tcl(x)["dense"], expected, atol=1e-5)
        maskclip = F.interpolate(build(CLIPDense, make_tiny_cfg())(x)["dense"], scale_factor=4, mode="nearest")
        assert not torch.allclose(tcl(x)["dense"], maskclip, atol=1e-3)


def test_open_gates_change_the_dense_map_at_fine_resolution():
    tcl = build(TCL, tcl_cfg())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = tcl(x)["dense"]
        for block in tcl.head.decoder.blocks:
            for conv in block.convs:
                conv.gate.fill_(0.5)
        after = tcl(x)["dense"]
    assert not torch.allclose(before, after, atol=1e-4)
    # no longer constant over each patch's 4x4 square
    squares = after.unfold(2, 4, 4).unfold(3, 4, 4)
    assert squares.flatten(-2).std(-1).max() > 1e-4


def test_decoder_is_nearest_upsampling_at_initialisation():
    decoder = GatedDecoder(WIDTH, num_blocks=2)
    x = torch.randn(2, WIDTH, 3, 5)
    assert decoder.scale == 4
    assert torch.equal(decoder(x), x.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3))


def test_clip_is_frozen_and_the_head_trains(tcl):
    trainable = {n for n, p in tcl.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("clip.visual.tcl_head.") for n in trainable)
    assert {n for n, _ in tcl.head.named_parameters()} == {n[len("clip.visual.tcl_head."):] for n in trainable}


def test_pixel_statistics_imagenet_unless_configured():
    assert TCL(tcl_cfg()).pixel_mean == pytest.approx([255 * m for m in (0.485, 0.456, 0.406)])
    assert TCL(tcl_cfg()).pixel_std == pytest.approx([255 * s for s in (0.229, 0.224, 0.225)])
    own = TCL(tcl_cfg(**{"MODEL.TCL.PIXEL_MEAN": [], "MODEL.TCL.PIXEL_STD": []}))
    assert own.pixel_mean == pytest.approx(CLIPDense(make_tiny_cfg()).pixel_mean)


def test_other_dense_modes_are_refused():
    with pytest.raises(ValueError, match="MODEL.CLIP.DENSE_MODE 'clearclip': TCL runs its copied block as MaskCLIP"):
        TCL(tcl_cfg(**{"MODEL.CLIP.DENSE_MODE": "clearclip"}))
