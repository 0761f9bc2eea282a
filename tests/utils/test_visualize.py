"""ttd_d2/utils/visualize.py: the teacher's target as training builds it (hand-computed values), the
grid's panels, and the PNG drawn for a tiny random model on a generated caption split."""
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog

from conftest import make_tiny_cfg
from ttd_d2 import TTDTrainer
from ttd_d2.data.datasets.synthetic import register_synthetic_split
from ttd_d2.data import mappers
from ttd_d2.data.synthetic.writer import generate
from ttd_d2.utils.visualize import FIXED_PANELS, Panel, caption_grid, caption_row, draw_grid, pick_images, teacher_target

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def caption_output():
    """A caption output on a 2 x 2 patch grid of a 2 x 2 image (no resizing): three tags."""
    return {
        "tags": ["photo", "circle", "star"],
        "tag_scores": {"s_pixel": torch.tensor([0.2, 0.9, 0.6])},
        "tag_masks": torch.tensor([[[0.9, 0.9], [0.9, 0.9]],  # not selected
                                   [[0.2, 0.4], [0.6, 1.0]],  # min-max: [[0, .25], [.5, 1]]
                                   [[0.5, 0.5], [0.5, 0.7]]]),  # min-max: [[0, 0], [0, 1]]
        "caption_mask": torch.tensor([[0.0, 0.6], [0.7, 0.2]]),
    }


def test_teacher_target_is_the_union_of_the_selected_minmax_masks():
    selected, tag_maps, target = teacher_target(caption_output(), "s_pixel", 0.5, "minmax", (2, 2), (2, 2), (2, 2))
    assert selected.tolist() == [False, True, True]
    np.testing.assert_allclose(target, [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)
    np.testing.assert_allclose(tag_maps[1], [[0.2, 0.4], [0.6, 1.0]], atol=1e-6)  # the masks as they are
    _, _, raw = teacher_target(caption_output(), "s_pixel", 0.5, "none", (2, 2), (2, 2), (2, 2))
    np.testing.assert_allclose(raw, [[0.5, 0.5], [0.6, 1.0]], atol=1e-6)
    none_selected, _, empty = teacher_target(caption_output(), "s_pixel", 0.95, "minmax", (2, 2), (2, 2), (2, 2))
    assert not none_selected.any() and not empty.any()  # nothing selected: an all-zero target, as in training


def test_caption_row_panels_titles_and_ious():
    gt = np.array([[False, True], [True, False]])
    after = dict(caption_output(), caption_mask=torch.tensor([[0.0, 0.9], [0.1, 0.0]]))
    panels = caption_row(np.zeros((2, 2, 3), np.uint8), gt, caption_output(), after, "s_pixel", 0.5, "minmax",
                         (2, 2), (2, 2))
    assert len(panels) == FIXED_PANELS + 2
    titles = [p.title for p in panels]
    assert titles[:2] == ["image", "ground truth"] and titles[4:6] == ["'circle' 0.90", "'star' 0.60"]
    assert titles[2] == "before TTD\nIoU 100" and titles[3] == "after TTD\nIoU 50"
    assert titles[6] == "TTD target\nIoU 33"  # target >= 0.5 at (1, 0) and (1, 1); gt at (0, 1), (1, 0)


def test_draw_grid_writes_a_png_with_every_panel(tmp_path):
    maps = [Panel("image", np.zeros((8, 8, 3), np.uint8))] + [Panel(f"m{i}", np.full((8, 8), i / 5)) for i in range(5)]
    path = tmp_path / "sub" / "grid.png"
    assert draw_grid([("a circle", maps), ("a star", maps[:3])], path, "title") == 9
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="no rows"):
        draw_grid([], tmp_path / "empty.png")


def test_pick_images_prefers_several_objects():
    records = [{"objects": [1] * n} for n in (1, 2, 1, 3, 1)]
    assert pick_images(records, 2) == [1, 3]
    assert pick_images(records, 3) == [0, 1, 3]
    assert pick_images(records[:1], 4) == [0]


def test_caption_grid_on_a_tiny_model(tmp_path):
    root = tmp_path / "synthetic"
    generate(root, "captions", "vistiny", 3, seed=4, image_size=32)
    register_synthetic_split(root, "captions", "vistiny")
    cfg = make_tiny_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 32
    torch.manual_seed(0)
    model = TTDTrainer.build_model(cfg).eval()
    records, mapper = DatasetCatalog.get("synth_captions_vistiny"), mappers.TestMapper(cfg)
    path = tmp_path / "grid.png"
    drawn = caption_grid(model, model, records, mapper, path, "s_pixel", 0.5, "minmax")
    with torch.no_grad():
        selected = sum(int((model([mapper(r)])[0]["tag_scores"]["s_pixel"] >= 0.5).sum()) for r in records)
    assert drawn == len(records) * FIXED_PANELS + selected
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_caption_grid_maps_tcl_masks_from_the_image_size_not_the_map_size(tmp_path, monkeypatch):
    """TCL's tag masks are 4x the patch grid: the padded size comes from the image (32 x 32 on a
    patch grid of 8), not from the maps (which gave 128 x 128 and drew their top-left quarter)."""
    from ttd_d2.utils import visualize

    root = tmp_path / "synthetic"
    generate(root, "captions", "vistcl", 1, seed=4, image_size=32)
    register_synthetic_split(root, "captions", "vistcl")
    cfg = make_tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "TCL"
    cfg.INPUT.MIN_SIZE_TEST = 32
    torch.manual_seed(0)
    model = TTDTrainer.build_model(cfg).eval()
    seen = []
    real_row = visualize.caption_row
    monkeypatch.setattr(visualize, "caption_row", lambda *a, **k: seen.append(a) or real_row(*a, **k))
    records, mapper = DatasetCatalog.get("synth_captions_vistcl"), mappers.TestMapper(cfg)
    with torch.no_grad():
        maps = model([mapper(records[0])])[0]["tag_masks"]
    visualize.caption_grid(model, model, records, mapper, tmp_path / "grid.png", "s_pixel", 0.5, "minmax")
    patch = model.backbone.size_divisibility
    assert maps.shape[-1] * patch == 4 * 32  # the maps are finer than the patch grid
    assert seen[0][7] == (32, 32) and seen[0][8] == (32, 32)  # padded size, image size
