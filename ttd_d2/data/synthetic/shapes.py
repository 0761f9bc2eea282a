"""The benchmark's twelve shapes as polygons at unit nominal radius (``render.py`` scales,
rotates and rasterises them). Coordinates ``(x, y)``, ``y`` down, centred at the origin."""
from typing import Dict, Tuple

import numpy as np

__all__ = ["unit_shapes"]


def _regular_polygon(num_vertices: int, radius: float, phase_deg: float) -> np.ndarray:
    angles = np.deg2rad(phase_deg + 360.0 * np.arange(num_vertices) / num_vertices)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    angles = np.deg2rad(-90.0 + 180.0 * np.arange(2 * points) / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    y = y - 0.5 * (y.max() + y.min())
    return np.stack([x, y], axis=1) / 14.5


def unit_shapes() -> Dict[str, Tuple[Tuple[np.ndarray, int], ...]]:
    """Per class, fill operations ``(polygon [P, 2] at unit nominal radius, value)``.

    Sizes are chosen so that every class covers roughly 0.55-0.9 of the area of a circle of
    the nominal radius; holes (ring, moon) are polygons filled with 0.
    """
    circle = _regular_polygon(48, 1.0, 0.0)
    cross_arm, cross_len = 0.36, 1.05
    cross = np.array([
        (-cross_arm, -cross_len), (cross_arm, -cross_len), (cross_arm, -cross_arm),
        (cross_len, -cross_arm), (cross_len, cross_arm), (cross_arm, cross_arm),
        (cross_arm, cross_len), (-cross_arm, cross_len), (-cross_arm, cross_arm),
        (-cross_len, cross_arm), (-cross_len, -cross_arm), (-cross_arm, -cross_arm),
    ])
    arrow = np.array([
        (-1.1, -0.36), (0.0, -0.36), (0.0, -0.9), (1.1, 0.0),
        (0.0, 0.9), (0.0, 0.36), (-1.1, 0.36),
    ])
    return {
        "circle": ((0.95 * circle, 1),),
        "square": ((_regular_polygon(4, 1.1, 45.0), 1),),
        "triangle": ((_regular_polygon(3, 1.25, -90.0) + np.array([0.0, 0.3]), 1),),
        "star": ((_star(5, 1.2, 0.58) + np.array([0.0, 0.1]), 1),),
        "cross": ((cross, 1),),
        "ring": ((1.05 * circle, 1), (0.5 * circle, 0)),
        "diamond": ((np.array([(0.0, -1.15), (0.82, 0.0), (0.0, 1.15), (-0.82, 0.0)]), 1),),
        "hexagon": ((_regular_polygon(6, 1.0, 0.0), 1),),
        "heart": ((_heart(), 1),),
        "moon": ((1.05 * circle, 1), (0.9 * circle + np.array([0.55, -0.25]), 0)),
        "arrow": ((arrow, 1),),
        "ellipse": ((circle * np.array([1.12, 0.62]), 1),),
    }
