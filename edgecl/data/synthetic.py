"""Procedurally generated "shapes" data set: offline, deterministic, many classes.

A class is a (colour, shape) pair: 10 colours x 10 shapes = 100 classes, named
like ``red-circle``. Every image draws the shape at a random position, scale
and rotation over a noisy grey gradient, with colour jitter and pixel noise,
rendered at 2x and box-filtered down (antialiasing). The same seed gives the
same pixels on every machine.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "ellipse", "halfdisc", "crescent", "star")
COLOURS = {
    "red": (0.90, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.00),
    "yellow": (0.95, 0.90, 0.10),
    "lime": (0.55, 0.95, 0.20),
    "green": (0.05, 0.55, 0.15),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.10, 0.25, 0.95),
    "purple": (0.50, 0.15, 0.75),
    "magenta": (0.95, 0.15, 0.75),
    "white": (0.97, 0.97, 0.97),
}
COLOUR_NAMES = tuple(COLOURS)
NUM_CLASSES = len(SHAPES) * len(COLOURS)
MAX_ROTATION = 0.35  # radians; upright-ish shapes keep small ViTs trainable on a CPU


def class_names(num_classes: int = NUM_CLASSES) -> list[str]:
    if not 1 <= num_classes <= NUM_CLASSES:
        raise DataError(f"the shapes data set has 1..{NUM_CLASSES} classes, asked for {num_classes}")
    return [f"{COLOUR_NAMES[c // len(SHAPES)]}-{SHAPES[c % len(SHAPES)]}" for c in range(num_classes)]


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = np.sqrt(u * u + v * v)
    if shape == 0:
        return r < 0.95
    if shape == 1:
        return np.maximum(np.abs(u), np.abs(v)) < 0.75
    if shape == 2:
        return (v < 0.65) & (v > 1.7 * np.abs(u) - 0.85)
    if shape == 3:
        return ((np.abs(u) < 0.28) | (np.abs(v) < 0.28)) & (np.maximum(np.abs(u), np.abs(v)) < 0.95)
    if shape == 4:
        return (r > 0.55) & (r < 0.95)
    if shape == 5:
        return np.abs(u) + np.abs(v) < 0.95
    if shape == 6:
        return (u / 0.98) ** 2 + (v / 0.45) ** 2 < 1.0
    if shape == 7:
        return (r < 0.95) & (v > -0.1)
    if shape == 8:
        return (r < 0.95) & ((u - 0.4) ** 2 + v * v > 0.62**2)
    if shape == 9:
        theta = np.arctan2(v, u)
        return r < 0.55 + 0.38 * np.cos(5 * theta)
    raise ValueError(f"unknown shape {shape}")


def render(
    shape_ids: np.ndarray,
    colour_ids: np.ndarray,
    rng: np.random.Generator,
    size: int = 32,
    max_rotation: float = MAX_ROTATION,
) -> np.ndarray:
    """Draw one image per (shape, colour) id pair -> uint8 ``(N, size, size, 3)``."""
    n = len(shape_ids)
    hi = 2 * size
    grid = (np.arange(hi, dtype=np.float32) + 0.5) / hi * 2.0 - 1.0
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    cx, cy = rng.uniform(-0.25, 0.25, (2, n)).astype(np.float32)
    scale = rng.uniform(0.45, 0.72, n).astype(np.float32)
    theta = rng.uniform(-max_rotation, max_rotation, n).astype(np.float32)
    # background: grey gradient in a random direction
    g0, g1 = rng.uniform(0.12, 0.45, (2, n)).astype(np.float32)
    phi = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    ramp = (np.cos(phi)[:, None, None] * gx + np.sin(phi)[:, None, None] * gy + 1) / 2
    img = np.repeat((g0[:, None, None] + (g1 - g0)[:, None, None] * ramp)[..., None], 3, axis=-1)
    base = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)[colour_ids]
    colour = np.clip(base + rng.normal(0, 0.06, (n, 3)).astype(np.float32), 0, 1)
    shade = rng.uniform(0.8, 1.0, n).astype(np.float32)
    for s in np.unique(shape_ids):
        idx = np.nonzero(shape_ids == s)[0]
        x = (gx[None] - cx[idx, None, None]) / scale[idx, None, None]
        y = (gy[None] - cy[idx, None, None]) / scale[idx, None, None]
        c, si = np.cos(theta[idx])[:, None, None], np.sin(theta[idx])[:, None, None]
        mask = _shape_mask(int(s), c * x + si * y, -si * x + c * y)
        fg = (colour[idx] * shade[idx, None])[:, None, None, :]
        img[idx] = np.where(mask[..., None], fg, img[idx])
    img = img.reshape(n, size, 2, size, 2, 3).mean(axis=(2, 4))
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_shapes(
    num_classes: int = NUM_CLASSES,
    train_per_class: int = 30,
    test_per_class: int = 10,
    seed: int = 0,
    size: int = 32,
):
    """Train and test sets of the shapes data set as ``ArrayDataset`` pairs."""
    from .dataset import ArrayDataset

    names = class_names(num_classes)
    rng = np.random.default_rng(seed)
    out = []
    for per_class in (train_per_class, test_per_class):
        labels = np.repeat(np.arange(num_classes), per_class)
        images = render(labels % len(SHAPES), labels // len(SHAPES), rng, size)
        out.append(ArrayDataset(images, labels.astype(np.int64), names))
    return out[0], out[1]
