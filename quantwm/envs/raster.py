"""Anti-aliased rasterisation with numpy, shared by the Wall and PushT renderers.

Every function works on a batch of frames at once and returns per-pixel *coverage* in [0, 1]
(the fraction of a pixel a shape covers, approximated analytically), so a renderer is a few
array operations per shape followed by alpha compositing. No pygame, no display, no Pillow
in the inner loop: rendering a batch of B frames is a handful of (B, H, W) array operations.

Convention: pixel ``i`` of an ``n``-pixel image covers world coordinates
``[i * s, (i + 1) * s)`` with ``s = world_size / n``; image row = world y, column = world x
(y points down, as in the reference's pygame rendering).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def pixel_centres(img_size: int, world_size: float) -> np.ndarray:
    """World coordinates of the centres of the ``img_size`` pixels along one axis."""
    return (np.arange(img_size, dtype=np.float64) + 0.5) * (world_size / img_size)


def interval_coverage(
    lo: np.ndarray, hi: np.ndarray, img_size: int, world_size: float
) -> np.ndarray:
    """Exact fraction of each pixel (along one axis) inside ``[lo, hi]``.

    ``lo`` and ``hi`` are arrays of shape (B,); the result has shape (B, img_size). The product of
    an x and a y coverage is the exact area coverage of an axis-aligned box.
    """
    s = world_size / img_size
    edges = np.arange(img_size, dtype=np.float64) * s
    lo = np.asarray(lo, dtype=np.float64)[..., None]
    hi = np.asarray(hi, dtype=np.float64)[..., None]
    overlap = np.minimum(edges + s, hi) - np.maximum(edges, lo)
    return np.clip(overlap / s, 0.0, 1.0)


def window(
    centres: np.ndarray, radius: float, img_size: int, world_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows and columns (n, K) of a square window around each centre (n, 2) = (x, y).

    The window covers the disc of ``radius`` (world units) plus a one-pixel margin for the
    anti-aliasing ramp; indices are clipped to the image, so windows at the border repeat their
    edge pixels (harmless: the same pixel gets the same value). Shapes are rasterised only in
    their window, which is a fraction of the image.
    """
    px = world_size / img_size
    k = int(np.ceil(2 * radius / px)) + 3
    start = np.floor((np.asarray(centres, dtype=np.float64) - radius) / px).astype(np.int64) - 1
    idx = np.clip(start[..., None] + np.arange(k), 0, img_size - 1)  # (n, 2, K)
    return idx[:, 1], idx[:, 0]


def scatter(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, img_size: int) -> np.ndarray:
    """Full (n, H, W) float32 planes: ``values`` (n, K, K) in each frame's window, 0 elsewhere."""
    n = len(values)
    out = np.zeros((n, img_size, img_size), dtype=np.float32)
    out[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = values
    return out


def oriented_box_coverage(
    u: np.ndarray, v: np.ndarray, centre: tuple[float, float], half: tuple[float, float], px: float
) -> np.ndarray:
    """Approximate coverage of a box given pixel centres in the box's own frame.

    ``u``, ``v``: pixel-centre coordinates in the body frame (any shape). The box spans
    ``centre +- half`` in that frame. Coverage along each axis is ``clip(0.5 + d / px)`` with ``d``
    the signed distance of the pixel centre inside the slab, i.e. a linear ramp one pixel wide
    (exact for edges aligned with the pixel grid, a close approximation otherwise).
    """
    cu = np.clip(0.5 + (half[0] - np.abs(u - centre[0])) / px, 0.0, 1.0)
    cv = np.clip(0.5 + (half[1] - np.abs(v - centre[1])) / px, 0.0, 1.0)
    return cu * cv


def disc_coverage(dist: np.ndarray, radius: float, px: float) -> np.ndarray:
    """Approximate coverage of a disc of ``radius`` given pixel-centre distances to its centre."""
    return np.clip(0.5 + (radius - dist) / px, 0.0, 1.0)


def blank(n: int, img_size: int, colour: np.ndarray) -> np.ndarray:
    """A batch of ``n`` channel-first float32 images (n, 3, H, W) filled with an RGB colour."""
    img = np.empty((n, 3, img_size, img_size), dtype=np.float32)
    img[:] = np.asarray(colour, dtype=np.float32)[None, :, None, None]
    return img


def composite_(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-blend in place: ``img`` (B, 3, H, W) float32, ``alpha`` (B, H, W) in [0, 1].

    ``colour`` is an RGB triple or per-frame colours (B, 3). Channel-first planes keep the
    blend a few contiguous vector operations. Alphas below 1e-6 count as 0.
    """
    col = np.asarray(colour, dtype=np.float32)
    a = alpha.astype(np.float32)
    np.putmask(a, a < 1e-6, 0.0)  # flush tiny tails: denormal floats make the blend much slower
    for c in range(3):
        plane = img[:, c]
        plane += ((col[:, c, None, None] if col.ndim == 2 else col[c]) - plane) * a
    return img


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Channel-first float RGB in [0, 255] (B, 3, H, W) to channel-last uint8 (B, H, W, 3)."""
    out = np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def in_chunks(
    render: Callable[[slice], np.ndarray], n: int, img_size: int, chunk: int = 128
) -> np.ndarray:
    """Run ``render(slice)`` over ``n`` frames in chunks (bounded temporaries); stack the uint8."""
    out = np.empty((n, img_size, img_size, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        out[sl] = render(sl)
    return out
