"""`PTALK_LANDMARKS`: the one landmark structure every PortraitTalk node passes around.

A :class:`FaceLandmarks` holds a sequence of MediaPipe face-mesh landmarks (478 points: the 468-point
canonical face mesh plus 2 x 5 iris points, the topology of MediaPipe's Face Landmarker and of
``refine_landmarks=True`` in the legacy Face Mesh):

``points``   float32 ``[T, 478, 3]``. x is normalised to the image width (0 = left edge, 1 = right edge),
             y to the image height (0 = top, 1 = bottom), z is MediaPipe's relative depth (roughly the
             same scale as x; smaller = closer to the camera). Multiply x by ``width`` and y by ``height``
             for pixels.
``image_size`` ``(width, height)`` in pixels of the frames the landmarks refer to.
``fps``      frames per second of the sequence (float; 0.0 for a still / unordered batch).
``present``  bool ``[T]``: False where no face was found in that frame (its points are then a copy of the
             nearest frame that has one, or zeros if none has, and must not be trusted).

The index sets below are MediaPipe's standard face-mesh regions (``FACEMESH_LIPS``, ``FACEMESH_LEFT_EYE`` …,
https://github.com/google-ai-edge/mediapipe, ``face_mesh_connections.py``), as ordered polylines. "Left"/"right"
are the subject's: the subject's right eye is on the image's left.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

NUM_LANDMARKS = 478

# Ordered contours (closed polylines unless noted).
LIPS_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146]
LIPS_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95]
LIPS_INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]  # mouth corner → corner (open)
LIPS_INNER_LOWER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
RIGHT_EYE = [33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7]
LEFT_EYE = [263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249]
RIGHT_EYEBROW = [70, 63, 105, 66, 107, 55, 65, 52, 53, 46]
LEFT_EYEBROW = [300, 293, 334, 296, 336, 285, 295, 282, 283, 276]
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
RIGHT_IRIS = [468, 469, 470, 471, 472]  # centre first
LEFT_IRIS = [473, 474, 475, 476, 477]

# Single points.
UPPER_LIP_INNER_MID = 13
LOWER_LIP_INNER_MID = 14
MOUTH_CORNER_RIGHT = 61   # subject's right (image left)
MOUTH_CORNER_LEFT = 291
RIGHT_EYE_OUTER, RIGHT_EYE_INNER = 33, 133
LEFT_EYE_OUTER, LEFT_EYE_INNER = 263, 362
RIGHT_EYE_TOP, RIGHT_EYE_BOTTOM = 159, 145
LEFT_EYE_TOP, LEFT_EYE_BOTTOM = 386, 374
#: Inner upper/lower lip point pairs across the mouth's centre (13/14 midline, 82/87 and 312/317 beside it),
#: whose mean distance is the inner-lip gap (:func:`inner_lip_gap_px`).
INNER_LIP_PAIRS = ((UPPER_LIP_INNER_MID, LOWER_LIP_INNER_MID), (82, 87), (312, 317))
NOSE_TIP = 1
CHIN = 152
FOREHEAD = 10


@dataclass
class FaceLandmarks:
    """A sequence of MediaPipe 478-point face landmarks; the ``PTALK_LANDMARKS`` ComfyUI type.

    See the module docstring for the layout. Construct with :meth:`from_points` to get validation.
    """

    points: np.ndarray                 # float32 [T, 478, 3], normalised x/width, y/height, z relative
    image_size: tuple[int, int]        # (width, height) in pixels
    fps: float = 0.0                   # frames per second; 0.0 for a still or an unordered batch
    present: np.ndarray = field(default=None)  # bool [T]
    meta: dict = field(default_factory=dict)   # free-form provenance (source node, backend, seed …)

    def __post_init__(self):
        pts = np.asarray(self.points, dtype=np.float32)
        if pts.ndim == 2:
            pts = pts[None]
        if pts.ndim != 3 or pts.shape[1:] != (NUM_LANDMARKS, 3):
            raise ValueError(f"FaceLandmarks.points must be [T, {NUM_LANDMARKS}, 3], got {tuple(pts.shape)}")
        self.points = pts
        w, h = (int(v) for v in self.image_size)
        if w <= 0 or h <= 0:
            raise ValueError(f"FaceLandmarks.image_size must be positive (width, height) pixels, got {self.image_size}")
        self.image_size = (w, h)
        if self.present is None:
            self.present = np.ones(len(pts), dtype=bool)
        self.present = np.asarray(self.present, dtype=bool).reshape(-1)
        if len(self.present) != len(pts):
            raise ValueError(f"FaceLandmarks.present has {len(self.present)} flags for {len(pts)} frames")
        self.fps = float(self.fps)

    @classmethod
    def from_points(cls, points, image_size, fps=0.0, present=None, meta=None) -> "FaceLandmarks":
        """A validated FaceLandmarks from float ``[T, 478, 3]`` (or one frame ``[478, 3]``) normalised points,
        ``image_size`` ``(width, height)`` px, ``fps``, bool ``present [T]`` (None = all present) and a copy of
        ``meta``. Raises ValueError for a wrong points shape, a non-positive size or a ``present`` length
        mismatch."""
        return cls(points=points, image_size=image_size, fps=fps, present=present, meta=dict(meta or {}))

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def width(self) -> int:
        return self.image_size[0]

    @property
    def height(self) -> int:
        return self.image_size[1]

    @property
    def duration(self) -> float:
        """Seconds covered at ``fps`` (0.0 when fps is 0)."""
        return len(self) / self.fps if self.fps > 0 else 0.0

    def pixels(self, t: int | slice | None = None) -> np.ndarray:
        """x, y in pixels (float32 ``[..., 478, 2]``) for frame(s) ``t`` (all frames when None)."""
        pts = self.points if t is None else self.points[t]
        return pts[..., :2] * np.array([self.width, self.height], dtype=np.float32)

    def frame(self, t: int) -> "FaceLandmarks":
        """A one-frame FaceLandmarks (negative t counts from the end)."""
        t = int(t) % len(self)
        return replace(self, points=self.points[t:t + 1].copy(), present=self.present[t:t + 1].copy(),
                       meta=dict(self.meta))

    def frames(self, start: int, stop: int) -> "FaceLandmarks":
        """Frames ``[start, stop)`` as a new FaceLandmarks (same image size, fps, meta)."""
        return replace(self, points=self.points[start:stop].copy(), present=self.present[start:stop].copy(),
                       meta=dict(self.meta))

    def with_points(self, points: np.ndarray, fps: float | None = None, present=None, **meta) -> "FaceLandmarks":
        """A new sequence with the same image size, new points (and optionally fps/present/meta)."""
        m = dict(self.meta)
        m.update(meta)
        return FaceLandmarks(points=points, image_size=self.image_size,
                             fps=self.fps if fps is None else fps, present=present, meta=m)


def to_pixels(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Normalised MediaPipe points ``[..., 478, 3]`` → pixels (x·W, y·H, z·W; MediaPipe's z has the scale of x),
    float64; ``size`` = (W, H)."""
    w, h = size
    return np.asarray(points, np.float64) * np.array([w, h, w], np.float64)


def from_pixels(px: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`to_pixels`: pixels (x·W, y·H, z·W) ``[..., 478, 3]`` → normalised, float64."""
    w, h = size
    return np.asarray(px, np.float64) / np.array([w, h, w], np.float64)


def inter_ocular_px(pts_px: np.ndarray) -> np.ndarray:
    """Distance in pixels between the outer eye corners (33, 263); ``pts_px`` is ``[..., 478, 2]``."""
    return np.linalg.norm(pts_px[..., LEFT_EYE_OUTER, :2] - pts_px[..., RIGHT_EYE_OUTER, :2], axis=-1)


def inner_lip_gap_px(pts_px: np.ndarray) -> np.ndarray:
    """Mean gap in pixels between the inner upper and lower lip over :data:`INNER_LIP_PAIRS`.

    ``pts_px`` is float ``[..., 478, 2]`` (or ``[..., 478, 3]``; only x, y are used) in pixels; returns an
    array of the leading shape ``[...]`` (a 0-d array for one frame), same float dtype. 0 = lips touching.
    """
    return np.mean([np.linalg.norm(pts_px[..., a, :2] - pts_px[..., b, :2], axis=-1) for a, b in INNER_LIP_PAIRS],
                   axis=0)


def inner_lip_aperture(lm: FaceLandmarks) -> np.ndarray:
    """Inner-lip opening per frame, float32 ``[T]``, as a fraction of the inter-ocular distance.

    Mean vertical gap between the inner upper-lip and inner lower-lip contours (three central point pairs
    13/14, 82/87, 312/317, :func:`inner_lip_gap_px`), divided by the distance between the outer eye corners
    (:func:`inter_ocular_px`), so it is independent of image size and face scale. 0 = lips closed; about
    0.3–0.5 for a wide-open mouth.
    """
    px = lm.pixels()
    return (inner_lip_gap_px(px) / np.maximum(inter_ocular_px(px), 1e-6)).astype(np.float32)
