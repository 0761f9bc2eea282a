"""Pictures of TTD on caption images (docs/SYNTHETIC_BENCHMARK.md, "What the quickstart measures").

One row per image, titled with its caption: the image, its ground-truth caption region, the
caption mask before and after TTD (masker probabilities, with the caption's foreground IoU at
the mask threshold), the mask of each tag the teacher selects (its word and score), and the TTD
target, the union of the selected tags' normalised masks. The tags, scores, masks and target
come from the model before TTD, which is what the teacher is at the start of training (the
frozen teacher throughout; ``ema`` and ``self`` start from it), computed by the functions
training uses (``select_tags``, ``distillation_targets``), so the picture shows what TTD
distils. Drawn with matplotlib (a ``Figure`` saved to a file: no pyplot, no display).

Shapes: K = candidate tags of a caption, h x w = its patch grid, H x W = the image.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.data.detection_utils import read_image

from ..evaluation.caption_seg import read_label_png
from ..evaluation.metrics import binary_confusion, foreground_iou, to_numpy
from ..modeling.meta_arch.segmentation import maps_to_image
from ..modeling.meta_arch.segmentation import padded_size as padded_image_size
from ..modeling.ttd.losses import distillation_targets
from ..modeling.ttd.scoring import select_tags

__all__ = ["Panel", "teacher_target", "caption_row", "draw_grid", "pick_images", "caption_grid"]

FIXED_PANELS = 5  # image, ground truth, caption mask before, after, TTD target (plus one per selected tag)


@dataclass(frozen=True)
class Panel:
    """One cell of the grid: ``data`` is an RGB image uint8 [H, W, 3] or a map Float[H, W] in [0, 1]."""

    title: str
    data: np.ndarray


def teacher_target(
    out: Dict, method: str, threshold: float, norm: str, padded_size: Tuple[int, int], image_size: Tuple[int, int],
    out_size: Tuple[int, int],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The teacher's selection and target for one caption, as TTD training builds them.

    Args:
        out: the model's caption output (docs/INTERFACES.md): ``tags`` [K], ``tag_scores``
            {method: Float[K]}, ``tag_masks`` Float[K, h, w] on the patch grid of the input
            image padded to ``padded_size``.
        method, threshold: ``MODEL.TTD.TAG_SCORING`` and ``TAG_THRESHOLD``.
        norm: ``MODEL.TTD.TARGET_NORM``.
        image_size: the input image's (rows, columns); out_size: the size to map to.
    Returns:
        (selected Bool[K], tag masks Float[K, *out_size], target Float[*out_size]).
    """
    masks = out["tag_masks"]
    valid = torch.ones(1, len(out["tags"]), dtype=torch.bool, device=masks.device)
    selected = select_tags(out["tag_scores"][method].to(masks.device)[None], valid, threshold)
    _, union = distillation_targets(masks[None], selected, norm)  # union [1, h, w]
    maps = to_numpy(maps_to_image(torch.cat([masks, union]).float(), padded_size, image_size, out_size))
    return to_numpy(selected[0]).astype(bool), maps[:-1], maps[-1]


def _mask_title(label: str, mask: np.ndarray, gt: np.ndarray, mask_threshold: float) -> str:
    tp, fp, fn, _ = binary_confusion(mask >= mask_threshold, gt)
    return f"{label}\nIoU {100 * foreground_iou(tp, fp, fn):.0f}"


def caption_row(
    image: np.ndarray, gt: np.ndarray, before: Dict, after: Dict, method: str, threshold: float, norm: str,
    padded_size: Tuple[int, int], image_size: Tuple[int, int], mask_threshold: float = 0.5,
) -> List[Panel]:
    """The panels of one image: image, ground truth, caption mask before and after, one per tag
    the teacher selects (``before``'s tags, in caption order, titled with word and score), the
    TTD target. ``image`` uint8 [H, W, 3], ``gt`` Bool[H, W]; ``before`` and ``after`` the two
    models' caption outputs for the same input (see :func:`teacher_target`)."""
    out_size = tuple(gt.shape)
    selected, tag_maps, target = teacher_target(before, method, threshold, norm, padded_size, image_size, out_size)
    scores = to_numpy(before["tag_scores"][method])
    panels = [
        Panel("image", image),
        Panel("ground truth", gt.astype(np.float32)),
        Panel(_mask_title("before TTD", to_numpy(before["caption_mask"]), gt, mask_threshold), to_numpy(before["caption_mask"])),
        Panel(_mask_title("after TTD", to_numpy(after["caption_mask"]), gt, mask_threshold), to_numpy(after["caption_mask"])),
    ]
    panels += [Panel(f"'{tag}' {score:.2f}", tag_map)
               for tag, score, tag_map, keep in zip(before["tags"], scores, tag_maps, selected) if keep]
    panels.append(Panel(_mask_title("TTD target", target, gt, mask_threshold), target))
    return panels


def draw_grid(
    rows: Sequence[Tuple[str, Sequence[Panel]]], path: Union[str, Path], title: str = "", cell_inches: float = 1.35
) -> int:
    """Draw ``rows`` of (caption, panels) into a PNG at ``path`` (one row per caption, the caption
    as its title, maps in [0, 1] on one colour scale, ``title`` above everything) and return the
    number of panels drawn."""
    from matplotlib.figure import Figure  # a Figure without pyplot: no global state, no display

    if not rows:
        raise ValueError("draw_grid: no rows to draw")
    columns = max(len(panels) for _, panels in rows)
    figure = Figure(figsize=(cell_inches * columns, 1.45 * cell_inches * len(rows) + 0.3), layout="constrained")
    figure.suptitle(title, fontsize=8)
    drawn = 0
    for subfigure, (caption, panels) in zip(np.atleast_1d(figure.subfigures(len(rows), 1)), rows):
        subfigure.suptitle(f'"{caption}"', fontsize=9)
        axes = np.atleast_1d(subfigure.subplots(1, columns))
        for axis in axes:
            axis.set_axis_off()
        for axis, panel in zip(axes, panels):
            if panel.data.ndim == 3:
                axis.imshow(panel.data, interpolation="nearest")
            else:
                axis.imshow(panel.data, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            axis.set_title(panel.title, fontsize=7)
            drawn += 1
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return drawn


def pick_images(records: Sequence[Dict], count: int = 4) -> List[int]:
    """Fixed indices into ``records``: the first ``count`` images with several objects (where the
    secondary objects show the bias), topped up with the first others if there are fewer."""
    several = [i for i, r in enumerate(records) if len(r.get("objects", ())) > 1]
    others = [i for i in range(len(records)) if i not in several]
    return sorted((several + others)[:count])


@torch.no_grad()
def caption_grid(
    before_model, after_model, records: Sequence[Dict], mapper, path: Union[str, Path], method: str, threshold: float,
    norm: str, mask_threshold: float = 0.5,
) -> int:
    """Run both models (``TTD`` in eval mode, masker as they should be shown) on caption
    ``records`` (dataset dicts with ``caption_mask_file``) through ``mapper`` (the test mapper),
    draw one row per record into ``path`` (:func:`draw_grid`) and return the number of panels."""
    rows = []
    for record in records:
        x = mapper(record)
        before, after = before_model([x])[0], after_model([x])[0]
        image = read_image(record["file_name"], format="RGB")
        gt = read_label_png(record["caption_mask_file"]) > 0
        image_size = tuple(x["image"].shape[-2:])
        # from the image, not from the maps: TCL's maps are 4x the patch grid
        padded = padded_image_size(image_size, before_model.backbone.size_divisibility)
        panels = caption_row(image, gt, before, after, method, threshold, norm, padded, image_size, mask_threshold)
        rows.append((record["caption"], panels))
    title = (f"masks from 0 (dark blue) to 1 (yellow); IoU with the caption region at mask >= {mask_threshold:g}; "
             f"quoted: the tags {method} selects before TTD (score >= {threshold:g}), whose {norm} masks' union is the target")
    return draw_grid(rows, path, title)
