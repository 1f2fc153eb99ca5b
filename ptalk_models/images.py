"""Image array conventions shared by the engine: everything inside ``ptalk_models`` works on uint8 RGB."""
from __future__ import annotations

import numpy as np


def as_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` as a C-contiguous uint8 RGB array ``[..., H, W, 3]``.

    Accepts uint8 or float arrays (float assumed in [0, 1], as ComfyUI IMAGE tensors are; clipped), with
    1 (grayscale, also plain ``[H, W]``), 3 (RGB) or 4 (RGBA: alpha is dropped, colour kept) channels.
    Raises ValueError (naming ``name``) for other shapes, empty images, or NaN pixels.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim < 3 or a.shape[-3] == 0 or a.shape[-2] == 0:
        raise ValueError(f"{name}: expected an image [H, W, C] or a batch [B, H, W, C], got shape {a.shape}")
    c = a.shape[-1]
    if c == 1:
        a = np.repeat(a, 3, axis=-1)
    elif c == 4:
        a = a[..., :3]
    elif c != 3:
        raise ValueError(f"{name}: expected 1, 3 or 4 channels (gray, RGB, RGBA), got {c} (shape {a.shape})")
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        if np.isnan(a).any():
            raise ValueError(f"{name}: contains NaN pixels; fix the node that produced it")
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


#: Relative tolerance of :func:`same_aspect`, the engine's one aspect-ratio rule: 1 % of the reference aspect.
#: Landmarks are normalised (x / width, y / height), so they fit any resolution of the same framing; a 1 %
#: tolerance accepts the rounding of a resize (e.g. 1920x1080 -> 853x480, 0.04 %) and rejects another framing
#: (16:9 vs 4:3 is 33 %, a square crop of 16:9 44 %).
ASPECT_TOLERANCE = 0.01


def aspect_ratio(size_wh: tuple[int, int]) -> float:
    """Width / height of a ``(width, height)`` pixel size (float)."""
    return float(size_wh[0]) / float(size_wh[1])


def same_aspect(size_wh: tuple[int, int], ref_wh: tuple[int, int]) -> bool:
    """Whether two ``(width, height)`` pixel sizes have the same aspect ratio, relative to ``ref_wh``'s:
    ``|w/h - w_ref/h_ref| <= ASPECT_TOLERANCE * w_ref/h_ref`` (:data:`ASPECT_TOLERANCE` = 1 %).

    The one aspect rule of the pack: every place that compares the aspect of landmarks with frames (or of two
    image sizes) uses this function (landmarks are normalised, so a different resolution of the same framing is
    fine, another framing is not)."""
    b = aspect_ratio(ref_wh)
    return abs(aspect_ratio(size_wh) - b) <= ASPECT_TOLERANCE * b
