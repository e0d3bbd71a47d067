"""Rendering of one synthetic detection image: coloured shapes on a textured background.

Pure numpy + PIL, driven by a ``numpy.random.Generator`` so that the same generator state gives the
same pixels and boxes on every machine. Images are (H, W, 3) uint8 arrays; boxes are COCO
``[x, y, width, height]`` in pixels, tight around the rendered shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('circle', 'square', 'triangle', 'star')
BACKGROUNDS = ('noise', 'gradient', 'stripes', 'blobs')

# Shapes are drawn at this multiple of the image size and box-filtered down: anti-aliased edges
# (what a camera sees) and boxes with sub-pixel accuracy.
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeStyle:
    """Ranges that set how hard the images are.

    min_size / max_size: side of a shape's bounding square as a fraction of the image side.
    max_objects: objects per image are uniform in [1, max_objects]; a fraction ``empty_fraction``
        of the images has none. max_overlap: largest fraction of a new shape's box that may be
        covered by earlier boxes (and vice versa), so shapes overlap but none is hidden.
    min_contrast: smallest distance (0-255 RGB, Euclidean) between a shape's colour and the mean
        background colour under it, so every object is visible to a human.
    """

    min_size: float = 0.08
    max_size: float = 0.45
    max_objects: int = 6
    empty_fraction: float = 0.1
    max_overlap: float = 0.35
    min_contrast: float = 80.0
    noise_std: float = 6.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float32 texture in [0, 255]: noise, gradient, stripes or blobs."""
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    base = rng.uniform(40, 215, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 'noise':
        img = base + rng.normal(0, rng.uniform(10, 30), size=(size, size, 3))
    elif kind == 'gradient':
        other = rng.uniform(40, 215, size=3)
        angle = rng.uniform(0, 2 * math.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = base + t[..., None] * (other - base)
    elif kind == 'stripes':
        other = rng.uniform(40, 215, size=3)
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(0.05, 0.25)
        phase = np.cos(angle) * xx + np.sin(angle) * yy
        t = 0.5 + 0.5 * np.sin(2 * math.pi * phase / period)
        img = base + t[..., None] * (other - base)
    else:  # blobs: low-frequency noise, a cloudy texture
        coarse = rng.uniform(-40, 40, size=(4, 4, 3)).astype(np.float32)
        up = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((size, size),
                                                                        Image.BICUBIC))
                       for c in range(3)], axis=-1)
        img = base + up
    return np.clip(img, 0, 255).astype(np.float32)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a square, triangle or five-pointed star inscribed in a circle of radius r."""
    if kind == 'square':
        radii, n = [r], 4
    elif kind == 'triangle':
        radii, n = [r], 3
    elif kind == 'star':
        radii, n = [r, 0.45 * r], 10
    else:
        raise ValueError(f"kind={kind!r}: expected one of 'square', 'triangle', 'star'")
    return [(cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / n),
             cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / n)) for i in range(n)]


def _shape_alpha(kind: str, size: int, cx: float, cy: float, r: float,
                 angle: float) -> tuple[np.ndarray, int, int]:
    """Anti-aliased coverage of one shape in the window around it.

    Returns (alpha, x0, y0): alpha (h, w) float32 in [0, 1] is the covered fraction of the image
    pixels [y0:y0 + h, x0:x0 + w].
    """
    s = _SUPERSAMPLE
    # Draw only the window around the shape (10-100x fewer pixels than the whole image).
    x0, y0 = max(int(math.floor(cx - r)) - 1, 0), max(int(math.floor(cy - r)) - 1, 0)
    x1, y1 = min(int(math.ceil(cx + r)) + 1, size), min(int(math.ceil(cy + r)) + 1, size)
    canvas = Image.new('L', ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == 'circle':
        draw.ellipse([(cx - r - x0) * s, (cy - r - y0) * s, (cx + r - x0) * s, (cy + r - y0) * s],
                     fill=255)
    else:
        draw.polygon([((x - x0) * s, (y - y0) * s) for x, y in _polygon(kind, cx, cy, r, angle)],
                     fill=255)
    # A box filter over s x s blocks: the covered fraction of each output pixel.
    alpha = np.asarray(canvas.resize((x1 - x0, y1 - y0), Image.BOX), dtype=np.float32) / 255.0
    return alpha, x0, y0


def _tight_box(alpha: np.ndarray, x0: int, y0: int) -> list[float] | None:
    """COCO [x, y, w, h] of the pixels at least half covered, or None if there are none."""
    ys, xs = np.nonzero(alpha >= 0.5)
    if len(xs) == 0:
        return None
    left, top = x0 + int(xs.min()), y0 + int(ys.min())
    right, bottom = x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1
    return [float(left), float(top), float(right - left), float(bottom - top)]


def _overlap(a: list[float], b: list[float]) -> float:
    """Intersection area over the smaller box's area, for COCO [x, y, w, h] boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min(a[2] * a[3], b[2] * b[3])


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray,
                        min_contrast: float) -> np.ndarray:
    """A random RGB colour at least ``min_contrast`` away from the mean colour ``under`` it."""
    colour = rng.uniform(0, 255, size=3)
    for _ in range(50):
        if np.linalg.norm(colour - under) >= min_contrast:
            break
        colour = rng.uniform(0, 255, size=3)
    else:  # the colour opposite the background in RGB is always far enough
        colour = np.where(under > 127, 0.0, 255.0)
    return colour


def render_image(rng: np.random.Generator, size: int,
                 style: ShapeStyle = ShapeStyle()) -> tuple[np.ndarray, list[dict]]:
    """One image and its objects.

    Returns:
        image: (size, size, 3) uint8.
        objects: list of dict(category=index into CLASSES, bbox=[x, y, w, h], area=float), in
            drawing order (later shapes are drawn over earlier ones).
    """
    img = _background(rng, size)
    n = 0 if rng.random() < style.empty_fraction else int(rng.integers(1, style.max_objects + 1))
    objects: list[dict] = []
    for _ in range(n):
        for _attempt in range(20):  # rejection sampling of a placement with bounded overlap
            category = int(rng.integers(len(CLASSES)))
            side = rng.uniform(style.min_size, style.max_size) * size
            r = side / 2
            cx, cy = rng.uniform(r, size - r, size=2)
            alpha, x0, y0 = _shape_alpha(CLASSES[category], size, cx, cy, r,
                                         rng.uniform(0, 2 * math.pi))
            box = _tight_box(alpha, x0, y0)
            if box is None or min(box[2], box[3]) < 2:
                continue
            if all(_overlap(box, o['bbox']) <= style.max_overlap for o in objects):
                break
        else:
            continue
        h, w = alpha.shape
        window = img[y0:y0 + h, x0:x0 + w]  # a view: compositing writes into img
        under = window[alpha >= 0.5].mean(axis=0)
        colour = _contrasting_colour(rng, under, style.min_contrast)
        # Mild shading across the shape so that objects are not perfectly flat patches.
        shade = 1.0 + rng.uniform(-0.3, 0.3) * (np.arange(w, dtype=np.float32) / max(w, 1) - 0.5)
        fill = np.clip(colour[None, None, :] * shade[None, :, None], 0, 255)
        window[...] = window * (1 - alpha[..., None]) + fill * alpha[..., None]
        objects.append(dict(category=category, bbox=box, area=float(alpha.sum())))
    img = img + rng.normal(0, style.noise_std, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects
