"""Procedural scenes of coloured shapes on textured backgrounds (the synthetic benchmark).

A scene holds 1, 2 or 3 objects (probability .5 / .3 / .2) of distinct classes. The first
object is the *dominant* one: nominal radius 0.23-0.30 of the image width, drawn last (on
top), so it is always fully visible and the largest visible region. Secondary objects have
nominal radius 0.14-0.20 (shrunk further, rarely, if their shape would otherwise cover as
much area as the dominant one) and are placed so that at most ``MAX_OCCLUSION`` of each one is
hidden by the objects listed before it (a secondary that cannot be placed after
``PLACEMENT_ATTEMPTS`` tries is left out; none was in 20000 images). Draw order is the reverse
of the object order, so an object is occluded only by the objects before it in the list.

Everything is a pure function of a ``numpy.random.Generator``; :func:`image_rngs` derives the
generators of image ``index`` from ``(seed, index)`` alone, so image ``i`` of a split does
not depend on how many images the split holds.

Coordinates: ``(x, y)`` in pixels, ``x`` to the right, ``y`` down. Images are RGB uint8.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

import cv2
import numpy as np

from .shapes import unit_shapes

# The smallest image side the renderer keeps its scenes at (writer.generate refuses smaller):
# smaller, the secondary objects that no longer fit are left out more and more (of 20000 scenes:
# 26 at 16 px, 115 at 12, 779 at 8, none at 64), and below 5 px the dominant object can cover no
# pixel at all (an empty caption mask).
MIN_IMAGE_SIZE = 16

__all__ = [
    "MIN_IMAGE_SIZE",
    "CLASSES",
    "BACKGROUND_KINDS",
    "ObjectSpec",
    "Scene",
    "image_rngs",
    "sample_num_objects",
    "shape_polygons",
    "rasterize_shape",
    "render_background",
    "sample_scene",
    "render_scene",
    "semantic_label",
    "caption_mask",
]

CLASSES: Tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring",
    "diamond", "hexagon", "heart", "moon", "arrow", "ellipse",
)
BACKGROUND_KINDS: Tuple[str, ...] = ("noisy", "striped", "gradient")

NUM_OBJECTS_PROBS = (0.5, 0.3, 0.2)  # P(1 object), P(2), P(3)
DOMINANT_RADIUS = (0.23, 0.30)  # fraction of the image width
SECONDARY_RADIUS = (0.14, 0.20)
MAX_OCCLUSION = 0.35  # largest hidden fraction of a secondary object
DOMINANCE_MARGIN = 1.2  # dominant area >= margin * any secondary's full area
PLACEMENT_ATTEMPTS = 30
MIN_OBJECT_CONTRAST = 90.0  # RGB distance between an object and the background beneath it
MIN_COLOUR_DISTANCE = 60.0  # RGB distance between two objects' colours

# Largest random rotation, degrees, per class (symmetry and class identity: a square stays
# axis-aligned enough not to read as a diamond).
_MAX_ROTATION: Dict[str, float] = {
    "circle": 0.0, "square": 15.0, "triangle": 20.0, "star": 36.0, "cross": 20.0,
    "ring": 0.0, "diamond": 10.0, "hexagon": 30.0, "heart": 20.0, "moon": 180.0,
    "arrow": 180.0, "ellipse": 180.0,
}
_SUBPIXEL_SHIFT = 4  # cv2.fillPoly fixed-point bits


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene.

    Attributes:
        category_id: index into :data:`CLASSES`.
        center: (x, y) in pixels.
        radius: nominal radius in pixels (shapes span roughly ``[-1.1, 1.1] * radius``).
        angle: rotation in degrees, counter-clockwise on screen.
        colour: RGB, 0..255.
        dominant: True for the scene's dominant (first) object.
    """

    category_id: int
    center: Tuple[float, float]
    radius: float
    angle: float
    colour: Tuple[int, int, int]
    dominant: bool

    @property
    def category(self) -> str:
        return CLASSES[self.category_id]


@dataclass(frozen=True)
class Scene:
    """A rendered scene.

    Attributes:
        image: uint8 [S, S, 3] RGB.
        instance_mask: uint8 [S, S]; 0 = background, i = ``objects[i - 1]`` (visible part).
        objects: the objects, dominant first.
        background: one of :data:`BACKGROUND_KINDS`.
    """

    image: np.ndarray
    instance_mask: np.ndarray
    objects: Tuple[ObjectSpec, ...]
    background: str


def image_rngs(seed: int, index: int) -> Tuple[np.random.Generator, np.random.Generator]:
    """The (scene, caption) generators of image ``index`` of the split with ``seed``.

    Both are PCG64 streams of ``SeedSequence(seed, spawn_key=(index, k))``: independent of
    every other image, and of the number of images in the split.
    """
    scene = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index, 0))))
    caption = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index, 1))))
    return scene, caption


def sample_num_objects(rng: np.random.Generator) -> int:
    """1, 2 or 3 with probabilities :data:`NUM_OBJECTS_PROBS`."""
    return int(rng.choice(len(NUM_OBJECTS_PROBS), p=NUM_OBJECTS_PROBS)) + 1


_UNIT_SHAPES = unit_shapes()


def shape_polygons(category_id: int, radius: float, angle: float) -> Tuple[Tuple[np.ndarray, int], ...]:
    """Fill operations of a shape centred at the origin.

    Returns:
        tuple of ``(polygon float [P, 2] in pixels, fill value 0 or 1)``, applied in order.
    """
    theta = math.radians(angle)
    # Counter-clockwise on screen, where y points down.
    rotation = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    return tuple((radius * polygon @ rotation.T, value) for polygon, value in _UNIT_SHAPES[CLASSES[category_id]])


def rasterize_shape(obj: ObjectSpec, image_size: int) -> np.ndarray:
    """Binary mask bool [S, S] of an object drawn alone (no occlusion)."""
    canvas = np.zeros((image_size, image_size), np.uint8)
    scale = float(1 << _SUBPIXEL_SHIFT)
    center = np.asarray(obj.center)
    for polygon, value in shape_polygons(obj.category_id, obj.radius, obj.angle):
        points = np.round((polygon + center) * scale).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(canvas, [points], int(value), lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)
    return canvas.astype(bool)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def render_background(rng: np.random.Generator, image_size: int) -> Tuple[np.ndarray, str]:
    """A textured background.

    Returns:
        (float32 [S, S, 3] RGB in 0..255, kind): ``noisy`` (smooth random blobs between two
        colours), ``striped`` (two-colour stripes, random angle and period) or ``gradient``
        (linear ramp between two colours, random direction).
    """
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    first, second = _random_colour(rng), _random_colour(rng)
    if kind == "noisy":
        cells = int(rng.integers(3, 7))
        coarse = rng.random((cells, cells)).astype(np.float32)
        weight = cv2.resize(coarse, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
        weight = np.clip(weight, 0.0, 1.0)
    else:
        theta = rng.uniform(0.0, np.pi)
        coords = np.arange(image_size, dtype=np.float32)
        along = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None]
        if kind == "striped":
            period = rng.uniform(6.0, 16.0)
            weight = ((along / period + rng.random()) % 1.0 < 0.5).astype(np.float32)
        else:
            weight = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    background = first + weight[..., None] * (second - first)
    return background.astype(np.float32), kind


def _pick_colour(rng: np.random.Generator, beneath: np.ndarray, others: list) -> np.ndarray:
    """An RGB colour far from ``beneath`` (mean background colour under the object) and
    from the colours in ``others``; the most distant of a few tries if none is far enough."""
    best, best_margin = None, -np.inf
    for _ in range(20):
        colour = _random_colour(rng)
        margin = min([np.linalg.norm(colour - beneath) - MIN_OBJECT_CONTRAST]
                     + [np.linalg.norm(colour - other) - MIN_COLOUR_DISTANCE for other in others])
        if margin >= 0:
            return colour
        if margin > best_margin:
            best, best_margin = colour, margin
    return best


def _place(rng: np.random.Generator, category_id: int, radius: float, image_size: int):
    """A random angle and a centre that keeps the whole shape inside the image."""
    max_rotation = _MAX_ROTATION[CLASSES[category_id]]
    angle = float(rng.uniform(-max_rotation, max_rotation))
    points = np.concatenate([p for p, _ in shape_polygons(category_id, radius, angle)])
    low, high = -points.min(axis=0), (image_size - 1) - points.max(axis=0)
    center = rng.uniform(np.minimum(low, high), np.maximum(low, high))
    return angle, (float(center[0]), float(center[1]))


def _make_object(rng, category_id: int, radius: float, image_size: int, dominant: bool) -> ObjectSpec:
    """An uncoloured object at a random pose (colours are picked once the layout is final)."""
    angle, center = _place(rng, category_id, radius, image_size)
    return ObjectSpec(category_id, center, float(radius), angle, (0, 0, 0), dominant)


def _place_secondary(rng, category_id: int, image_size: int, dominant_area: int, occupied: np.ndarray):
    """A secondary object and its full mask bool [S, S]: clearly smaller than the dominant
    one and at most ``MAX_OCCLUSION`` hidden by ``occupied``; None after
    ``PLACEMENT_ATTEMPTS`` failures (the object is then left out; rare)."""
    for _ in range(PLACEMENT_ATTEMPTS):
        radius = rng.uniform(*SECONDARY_RADIUS) * image_size
        candidate = _make_object(rng, category_id, radius, image_size, False)
        mask = rasterize_shape(candidate, image_size)
        area = mask.sum()
        if area * DOMINANCE_MARGIN > dominant_area:  # a bulky shape beside a thin one: shrink it
            radius *= 0.97 * math.sqrt(dominant_area / (DOMINANCE_MARGIN * area))
            candidate = _make_object(rng, category_id, radius, image_size, False)
            mask = rasterize_shape(candidate, image_size)
            area = mask.sum()
        if 0 < area and area * DOMINANCE_MARGIN <= dominant_area and (mask & occupied).sum() <= MAX_OCCLUSION * area:
            return candidate, mask
    return None


def sample_scene(rng: np.random.Generator, image_size: int = 64, single_object_radius=None):
    """Sample the layout, colours and background of a scene. ``single_object_radius``
    (fractions of the width, or None = :data:`DOMINANT_RADIUS`) is the radius range of a
    scene that holds one object; scenes of several objects are unaffected (the same draws).

    Returns:
        (objects: tuple[ObjectSpec] dominant first, masks: list of bool [S, S] full masks in
        the same order, background float32 [S, S, 3], background kind).
    """
    background, kind = render_background(rng, image_size)
    category_ids = [int(c) for c in rng.choice(len(CLASSES), size=sample_num_objects(rng), replace=False)]
    radius_range = single_object_radius if single_object_radius and len(category_ids) == 1 else DOMINANT_RADIUS
    radius = rng.uniform(*radius_range) * image_size
    objects = [_make_object(rng, category_ids[0], radius, image_size, True)]
    masks = [rasterize_shape(objects[0], image_size)]
    occupied = masks[0].copy()
    for category_id in category_ids[1:]:
        placed = _place_secondary(rng, category_id, image_size, masks[0].sum(), occupied)
        if placed is not None:
            objects.append(placed[0])
            masks.append(placed[1])
            occupied |= placed[1]
    colours = []
    for mask in masks:
        beneath = background[mask].mean(axis=0) if mask.any() else background.mean(axis=(0, 1))
        colours.append(_pick_colour(rng, beneath, colours))
    objects = tuple(
        ObjectSpec(o.category_id, o.center, o.radius, o.angle, tuple(int(c) for c in colour), o.dominant)
        for o, colour in zip(objects, colours)
    )
    return objects, masks, background, kind


def render_scene(rng: np.random.Generator, image_size: int = 64, single_object_radius=None) -> Scene:
    """Sample and draw one scene (see the module docstring and :func:`sample_scene`)."""
    objects, masks, background, kind = sample_scene(rng, image_size, single_object_radius)
    image = background
    instance_mask = np.zeros((image_size, image_size), np.uint8)
    for instance_id in range(len(objects), 0, -1):  # last object first: the dominant ends on top
        mask = masks[instance_id - 1]
        image[mask] = np.asarray(objects[instance_id - 1].colour, np.float32)
        instance_mask[mask] = instance_id
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(image=image, instance_mask=instance_mask, objects=objects, background=kind)


def semantic_label(scene: Scene) -> np.ndarray:
    """uint8 [S, S]: 0 = background, ``category_id + 1`` for object pixels (no ignore pixels:
    masks are exact, the renderer does not anti-alias)."""
    lookup = np.zeros(len(scene.objects) + 1, np.uint8)
    for i, obj in enumerate(scene.objects, start=1):
        lookup[i] = obj.category_id + 1
    return lookup[scene.instance_mask]


def caption_mask(scene: Scene) -> np.ndarray:
    """uint8 [S, S]: 1 where any object is visible (the union of the objects named by an
    evaluation caption), else 0."""
    return (scene.instance_mask > 0).astype(np.uint8)
