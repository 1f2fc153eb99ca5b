"""Lower-face motion relative to a neutral mesh: what the neural audio→motion model predicts (paper §III-B).

A clip's MediaPipe landmarks (pixels: x·W, y·H, z·W) are freed of head pose by a 3-D similarity (Umeyama 1991:
rotation, uniform scale, translation; :mod:`ptalk_models.head_pose`) fitted on the eye corners, nose bridge,
forehead midline and temples, which speech does not move, onto the clip's NEUTRAL mesh: the median of the
pose-aligned frames whose inner-lip aperture is among the clip's lowest 10 % (lips closed or nearly so).
The motion of frame ``t`` is ``aligned_t - neutral`` expressed in the neutral face's own axes (``a`` along the
eye line 33→263, ``b`` down the face in the image plane, ``z`` MediaPipe depth) and divided by the neutral
inter-ocular distance (outer eye corners): "offsets", float ``[T, 478, 3]`` in IOD units, independent of image
size, head pose and face size.

:func:`offsets_to_pixels` maps such offsets back onto any reference face (its own axes and IOD).
"""
from __future__ import annotations

import numpy as np

from .head_pose import STABLE_POINTS, similarity
from .landmarks import (LEFT_EYE_OUTER, LOWER_LIP_INNER_MID, NUM_LANDMARKS, RIGHT_EYE_OUTER,
                        UPPER_LIP_INNER_MID, to_pixels)

NEUTRAL_QUANTILE = 0.10


def align(points_px: np.ndarray, target_px: np.ndarray) -> np.ndarray:
    """Each frame of float ``[T, 478, 3]`` moved by its :func:`~ptalk_models.head_pose.similarity` on
    :data:`~ptalk_models.head_pose.STABLE_POINTS` onto ``target_px`` ``[478, 3]``."""
    out = np.empty(points_px.shape, np.float64)
    idx = list(STABLE_POINTS)
    for t, p in enumerate(points_px):
        s, R, tr = similarity(p[idx].astype(np.float64), target_px[idx].astype(np.float64))
        out[t] = s * p @ R.T + tr
    return out


def face_axes(points_px: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(ua, ub, iod) of one face ``[478, 3]`` in pixels: unit vectors along the eye line (subject's right→left
    outer corner) and down the face (ua turned +90°), both in the image plane, and the inter-ocular distance."""
    eye = points_px[LEFT_EYE_OUTER, :2] - points_px[RIGHT_EYE_OUTER, :2]
    iod = float(np.linalg.norm(eye))
    ua = eye / max(iod, 1e-9)
    return ua, np.array([-ua[1], ua[0]]), iod


def clip_offsets(points: np.ndarray, present: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (module docstring) of a clip's frames: float32 ``[T, 478, 3]`` (IOD units; zeros where no face)
    and the neutral mesh in pixels ``[478, 3]``.

    Args:
        points: float ``[T, 478, 3]`` normalised MediaPipe landmarks. present: bool ``[T]``. size: (W, H) px.
    Raises:
        ValueError: fewer than 2 frames with a face.
    """
    present = np.asarray(present, bool)
    if present.sum() < 2:
        raise ValueError("a clip needs at least 2 frames with a face")
    px = to_pixels(np.asarray(points)[present], size)
    ref = px[0]
    aligned = align(px, ref)
    aligned = align(px, np.median(aligned, axis=0))
    ua, ub, iod = face_axes(np.median(aligned, axis=0))
    gap = np.linalg.norm(aligned[:, UPPER_LIP_INNER_MID, :2] - aligned[:, LOWER_LIP_INNER_MID, :2], axis=-1) / iod
    closed = gap <= np.quantile(gap, NEUTRAL_QUANTILE)
    neutral = np.median(aligned[closed], axis=0)
    aligned = align(px, neutral)
    ua, ub, iod = face_axes(neutral)
    d = aligned - neutral
    out = np.zeros((len(present), NUM_LANDMARKS, 3), np.float32)
    out[present, :, 0] = d[..., :2] @ ua / iod
    out[present, :, 1] = d[..., :2] @ ub / iod
    out[present, :, 2] = d[..., 2] / iod
    return out, neutral


def offsets_to_pixels(offsets: np.ndarray, ua: np.ndarray, ub: np.ndarray, iod: float) -> np.ndarray:
    """Offsets ``[..., 478, 3]`` (IOD units, face axes) → pixel displacements ``[..., 478, 3]`` (x, y, z·W) for a
    face with axes ``ua``, ``ub`` and inter-ocular distance ``iod`` px (:func:`face_axes`)."""
    o = np.asarray(offsets, np.float64)
    out = np.empty(o.shape, np.float64)
    out[..., :2] = iod * (o[..., 0:1] * ua + o[..., 1:2] * ub)
    out[..., 2] = iod * o[..., 2]
    return out
