"""Batch augmentation that turns clean glyph masks into varied RGB images.

``augment(masks, size, rng, config)`` takes a batch of grey ink masks rendered at a higher
resolution (``(B, S, S)`` uint8, the glyph centred) and returns ``(B, size, size, 3)`` uint8:

1. stroke weight: per image erode / keep / dilate the ink at the mask resolution;
2. geometry: one random affine map (scale, aspect, rotation, shear, translation) plus an
   elastic displacement (random offsets of the vertices of a coarse mesh, bilinear in
   between), resampled bilinearly (at ``supersample`` x the output size, then box-filtered);
3. blur: a Gaussian of random width;
4. colour: a random background (two colours along a gradient in a random direction plus a
   smooth random texture) and a random foreground colour at a minimum luminance contrast
   (dark on light or light on dark) along a weak gradient of its own;
5. pixel noise (uniform) of random strength.

``augment_art(art, size, rng, config, background)`` does steps 2, 3 and 5 to colour artwork
(``(B, S, S, 4)`` RGBA, the emoji benchmark) and lays it over step 4's background, its values
mapped into a luminance range; the glyph foreground colour is not used.

All random numbers are drawn up front, vectorised over the batch, from ``rng``: the same masks
and generator state give the same pixels. The per-image pixel work runs in Pillow's C code
(MESH transform, Gaussian blur, resize, composite; docs/notes-implementation.md); stroke
weight and noise are numpy over the batch.
``AugmentConfig`` holds the strengths and is part of every cache key that depends on pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation (angles in degrees, lengths as fractions of the image)."""

    scale: tuple[float, float] = (0.8, 1.1)  # glyph zoom (log-uniform)
    aspect: float = 0.12  # +- log-ratio of the x and y zoom
    rotation: float = 12.0
    shear: float = 0.2
    translate: float = 0.08
    elastic: float = 0.02  # std of the mesh vertex displacements, in image fractions
    elastic_grid: int = 4  # mesh cells per side
    weight_prob: float = 0.5  # probability of an erode or a dilate step
    blur: tuple[float, float] = (0.0, 0.9)  # Gaussian sigma in output pixels
    noise: tuple[float, float] = (0.0, 0.07)  # std of pixel noise, in [0, 1] units
    texture: tuple[float, float] = (0.0, 0.25)  # amplitude of the smooth background texture
    texture_grid: int = 5  # texture / gradient control points per side
    min_contrast: float = 0.35  # |luminance(foreground) - luminance(background)|
    supersample: int = 1

    def __post_init__(self):
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be a range 0 < lo <= hi, got {self.scale}")
        if self.elastic_grid < 1 or self.texture_grid < 2 or self.supersample < 1:
            raise ValueError("elastic_grid >= 1, texture_grid >= 2 and supersample >= 1 are required")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


NONE = AugmentConfig(
    scale=(1.0, 1.0), aspect=0.0, rotation=0.0, shear=0.0, translate=0.0, elastic=0.0, weight_prob=0.0,
    blur=(0.0, 0.0), noise=(0.0, 0.0), texture=(0.0, 0.0), min_contrast=1.0,
)  # no warp, blur, noise or texture: the plain glyph at maximal contrast over a colour gradient

_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass
class _Params:
    """Every random number of one batch, drawn in a fixed order."""

    weight: np.ndarray  # (n,) -1 thin, 0 keep, 1 bold
    inv: np.ndarray  # (n, 2, 2) output -> source linear map, normalised coordinates
    shift: np.ndarray  # (n, 2) translation, normalised coordinates
    disp: np.ndarray  # (n, g+1, g+1, 2) mesh vertex displacements
    blur: np.ndarray  # (n,) sigma in output pixels
    bg: np.ndarray  # (n, t, t, 3) background control points in [0, 1]
    fg: np.ndarray  # (n, t, t, 3) foreground control points in [0, 1]
    noise: np.ndarray  # (n,) std


def _ramp(phi: np.ndarray, grid: int) -> np.ndarray:
    """(n, grid, grid) linear ramps in [0, 1] in directions ``phi``."""
    g = np.linspace(-1, 1, grid)
    return (np.cos(phi)[:, None, None] * g[None, None, :] + np.sin(phi)[:, None, None] * g[None, :, None]) / 2.83 + 0.5


def _colours(n: int, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    t = cfg.texture_grid
    phi = rng.uniform(0, 2 * np.pi, (2, n))
    c0, c1 = rng.random((2, n, 3))
    bg = c0[:, None, None] + (c1 - c0)[:, None, None] * _ramp(phi[0], t)[..., None]
    amp = rng.uniform(*cfg.texture, n)
    bg = np.clip(bg + amp[:, None, None, None] * rng.standard_normal((n, t, t, 3)) / 2, 0, 1)
    # foreground: a random colour moved to >= min_contrast luminance away from the background
    fg = rng.random((n, 3))
    lb, lf = bg.mean(axis=(1, 2)) @ _LUMA, fg @ _LUMA
    gap = np.maximum(np.abs(lf - lb), cfg.min_contrast)
    sign = np.where(np.abs(lf - lb) >= cfg.min_contrast, np.sign(lf - lb + 1e-9), np.where(rng.random(n) < 0.5, -1.0, 1.0))
    target = lb + sign * gap
    target = np.where((target < 0) | (target > 1), lb - sign * gap, target)
    fg = np.clip(fg + (np.clip(target, 0, 1) - lf)[:, None], 0, 1)
    tilt = rng.normal(0, 0.1, (n, 3))
    fgi = np.clip(fg[:, None, None] + tilt[:, None, None] * (_ramp(phi[1], t)[..., None] - 0.5) * 2, 0, 1)
    return bg, fgi


def draw_params(n: int, rng: np.random.Generator, cfg: AugmentConfig) -> _Params:
    u = rng.random(n)
    weight = np.where(u < cfg.weight_prob / 2, -1, np.where(u < cfg.weight_prob, 1, 0))
    scale = np.exp(rng.uniform(np.log(cfg.scale[0]), np.log(cfg.scale[1]), n))
    aspect = np.exp(rng.uniform(-cfg.aspect, cfg.aspect, n))
    theta = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation, n))
    shear = rng.uniform(-cfg.shear, cfg.shear, n)
    shift = rng.uniform(-cfg.translate, cfg.translate, (n, 2)) * 2  # normalised coordinates span 2
    disp = rng.standard_normal((n, cfg.elastic_grid + 1, cfg.elastic_grid + 1, 2)) * (2 * cfg.elastic)
    # forward map rotate @ shear @ zoom in normalised coordinates; sampling needs its inverse
    c, s = np.cos(theta), np.sin(theta)
    sx, sy = scale * aspect, scale / aspect
    fwd = np.empty((n, 2, 2))
    fwd[:, 0, 0], fwd[:, 0, 1] = c * sx, (c * shear - s) * sy
    fwd[:, 1, 0], fwd[:, 1, 1] = s * sx, (s * shear + c) * sy
    blur = rng.uniform(*cfg.blur, n)
    bg, fg = _colours(n, rng, cfg)
    noise = rng.uniform(*cfg.noise, n)
    return _Params(weight, np.linalg.inv(fwd), shift, disp, blur, bg, fg, noise)


def _mesh(inv: np.ndarray, shift: np.ndarray, disp: np.ndarray, m: int, s: int) -> list:
    """Pillow MESH data for one image: output cells -> source quads (inverse affine + displacement)."""
    g = disp.shape[0] - 1
    edges = np.round(np.linspace(0, m, g + 1)).astype(int)
    u, v = np.meshgrid(edges / m * 2 - 1 - shift[0], edges / m * 2 - 1 - shift[1], indexing="xy")  # [row, col]
    px = ((inv[0, 0] * u + inv[0, 1] * v + disp[..., 0]) + 1) / 2 * s  # source pixel coordinates
    py = ((inv[1, 0] * u + inv[1, 1] * v + disp[..., 1]) + 1) / 2 * s
    xy = np.stack([px, py], axis=-1)  # (g+1, g+1, 2)
    # quad corners of each cell: upper left, lower left, lower right, upper right
    quads = np.concatenate([xy[:-1, :-1], xy[1:, :-1], xy[1:, 1:], xy[:-1, 1:]], axis=-1).reshape(-1, 8)
    boxes = np.stack(np.broadcast_arrays(edges[None, :-1], edges[:-1, None], edges[None, 1:], edges[1:, None]), -1)
    return list(zip(map(tuple, boxes.reshape(-1, 4).tolist()), map(tuple, quads.tolist())))


def _upsample(control: np.ndarray, size: int) -> Image.Image:
    """A (t, t, 3) uint8 grid of colours, bilinearly upsampled to a (size, size) RGB image."""
    return Image.fromarray(control).resize((size, size), Image.Resampling.BILINEAR)


def _shift_extreme(x: np.ndarray, op) -> np.ndarray:
    """3x3 max (``np.maximum``: dilate) or min (erode) filter of images ``x`` (B, H, W)."""
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = x.shape[1:]
    out = x.copy()
    for dy in range(3):
        for dx in range(3):
            op(out, pad[:, dy : dy + h, dx : dx + w], out=out)
    return out


def _warp(image: Image.Image, p: _Params, k: int, m: int, cfg: AugmentConfig) -> Image.Image:
    """Image ``k`` of a batch warped by its affine map and mesh to ``m`` px, reduced by
    ``cfg.supersample`` and blurred (any Pillow mode: ``L`` masks, premultiplied ``RGBa`` art)."""
    out = image.transform((m, m), Image.Transform.MESH, _mesh(p.inv[k], p.shift[k], p.disp[k], m, image.width), Image.Resampling.BILINEAR)
    if cfg.supersample > 1:
        out = out.reduce(cfg.supersample)
    if p.blur[k] > 0.05:
        out = out.filter(ImageFilter.GaussianBlur(float(p.blur[k])))
    return out


def _add_noise(out: np.ndarray, p: _Params, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    if cfg.noise[1] > 0:  # uniform noise of std p.noise (cheaper to draw than Gaussian)
        amp = (p.noise * 255 * np.sqrt(12)).astype(np.float32)[:, None, None, None]
        noisy = out + amp * (rng.random(out.shape, np.float32) - np.float32(0.5))
        np.clip(noisy, 0, 255, out=noisy)
        out = (noisy + 0.5).astype(np.uint8)
    return out


def augment(masks: np.ndarray, size: int, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """Augment glyph masks ``(B, S, S)`` uint8 into RGB images ``(B, size, size, 3)`` uint8."""
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or masks.dtype != np.uint8:
        raise ValueError(f"masks must be uint8 (B, S, S), got {masks.dtype} {masks.shape}")
    n = masks.shape[0]
    p = draw_params(n, rng, cfg)
    m = size * cfg.supersample
    masks = masks.copy()
    for w, op in ((-1, np.minimum), (1, np.maximum)):  # stroke weight: erode or dilate
        if (p.weight == w).any():
            masks[p.weight == w] = _shift_extreme(masks[p.weight == w], op)
    bg = (p.bg * 255 + 0.5).astype(np.uint8)
    fg = (p.fg * 255 + 0.5).astype(np.uint8)
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        ink = _warp(Image.fromarray(masks[k]), p, k, m, cfg)
        out[k] = np.asarray(Image.composite(_upsample(fg[k], size), _upsample(bg[k], size), ink))
    return _add_noise(out, p, rng, cfg)


def augment_art(
    art: np.ndarray, size: int, rng: np.random.Generator, cfg: AugmentConfig, background: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """Augment colour artwork ``(B, S, S, 4)`` uint8 RGBA (straight alpha) into RGB images
    ``(B, size, size, 3)`` uint8.

    The art is warped like a glyph mask (in premultiplied alpha, so transparent pixels never
    bleed colour), blurred, and laid over the glyph background (gradient + texture) with its
    values mapped linearly into ``background`` (e.g. ``(0.6, 1.0)``: light backgrounds only);
    the glyph foreground colour and the stroke weight are not used. Then pixel noise.
    """
    if art.ndim != 4 or art.shape[1] != art.shape[2] or art.shape[3] != 4 or art.dtype != np.uint8:
        raise ValueError(f"art must be uint8 (B, S, S, 4), got {art.dtype} {art.shape}")
    n = art.shape[0]
    p = draw_params(n, rng, cfg)
    m = size * cfg.supersample
    lo, hi = background
    bg = ((lo + (hi - lo) * p.bg) * 255 + 0.5).astype(np.uint8)
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        warped = _warp(Image.fromarray(art[k], "RGBA").convert("RGBa"), p, k, m, cfg).convert("RGBA")
        out[k] = np.asarray(Image.composite(warped.convert("RGB"), _upsample(bg[k], size), warped.getchannel("A")))
    return _add_noise(out, p, rng, cfg)
