"""Helpers of the TTD meta-architecture tests (tests/modeling/meta_arch/): the TTD switch, random
and coloured-shape images, caption batches, and what training tests check on a model and its
losses."""
import cv2
import numpy as np
import torch

SCORE_KEYS = {"s_image", "s_text", "s_pixel", "image_text", "nltk"}


def ttd_opts(**extra):
    return {"MODEL.TTD.ENABLED": True, **extra}


def random_image(seed, h=32, w=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230), "yellow": (240, 230, 40)}


def shape_image(shapes, size=32, seed=0):
    """uint8 [3, size, size]: coloured shapes ("circle" | "square" | "triangle") on grey noise."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(110, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    for i, (colour, kind) in enumerate(shapes):
        c = COLOURS[colour]
        cx, cy = (8 + 16 * (i % 2), 8 + 16 * (i // 2))
        if kind == "circle":
            cv2.circle(img, (cx, cy), 7, c, -1)
        elif kind == "square":
            cv2.rectangle(img, (cx - 6, cy - 6), (cx + 6, cy + 6), c, -1)
        else:
            pts = np.array([[cx, cy - 7], [cx - 7, cy + 6], [cx + 7, cy + 6]], np.int32)
            cv2.fillPoly(img, [pts], c)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def shape_batch():
    specs = [
        [("red", "circle"), ("blue", "square")],
        [("green", "triangle")],
        [("yellow", "square"), ("red", "triangle"), ("blue", "circle")],
        [("blue", "circle"), ("green", "square")],
    ]
    batch = []
    for i, spec in enumerate(specs):
        caption = "a photo of " + " and ".join(f"a {c} {k}" for c, k in spec)
        batch.append({"image": shape_image(spec, seed=i), "caption": caption})
    return batch


def caption_batch(captions, size=32, seed=0):
    return [{"image": random_image(seed + i, size, size), "caption": c} for i, c in enumerate(captions)]


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def finite(losses):
    return all(torch.isfinite(v).all() for v in losses.values())
