"""Landmark drawing: MediaPipe-face ControlNet conditioning images and face-mesh overlays (OpenCV).

``style="controlnet"`` reproduces the look of the MediaPipe-face ControlNet annotator (CrucibleAI
ControlNetMediaPipeFace for SD 1.5 / 2.1, also the ``mediapipe_face`` preprocessor of
comfyui_controlnet_aux): on black, MediaPipe's face-oval, eye, eyebrow and lip connection sets as
coloured lines (one colour per region; the annotator's palette, so face oval and lips are two close
greens), a dot on each pupil (iris centre 468 / 473), no tesselation; line width 2 px at 512 px.
``style="mesh"`` draws the full face-mesh tesselation in grey under the same coloured contours plus
the iris rings, for inspecting landmarks.
"""
from __future__ import annotations

import numpy as np

# OpenCV is imported inside the functions that use it, so importing the pack (ComfyUI start-up) stays cheap.

from .images import as_rgb_uint8
from .landmarks import FaceLandmarks
from .topology import region_edges, tesselation_edges

# RGB colours of the MediaPipe-face ControlNet annotator (it draws BGR-ordered tuples on an RGB canvas and
# then swaps channels; these are the resulting RGB values). Left/right are the subject's.
CONTROLNET_COLORS: dict[str, tuple[int, int, int]] = {
    "face_oval": (10, 200, 10),
    "lips": (10, 180, 10),
    "right_eye": (180, 200, 10),
    "right_eyebrow": (180, 220, 10),
    "right_iris": (250, 200, 10),
    "left_eye": (10, 200, 180),
    "left_eyebrow": (10, 220, 180),
    "left_iris": (10, 200, 250),
}
MESH_GREY = (150, 150, 150)
_CONTOUR_REGIONS = ("face_oval", "lips", "right_eye", "left_eye", "right_eyebrow", "left_eyebrow")
_PUPILS = {"right_iris": 468, "left_iris": 473}
_SHIFT = 4  # sub-pixel bits for cv2 drawing
STYLES = ("controlnet", "mesh")


def default_thickness(width: int, height: int) -> int:
    """Line width in pixels for an image of ``width`` x ``height``: 2 px at 512 (the annotator's), scaled with min side."""
    return max(1, int(round(2.0 * min(width, height) / 512.0)))


def _as_frames(frames, n_lm: int) -> np.ndarray:
    f = as_rgb_uint8(frames, "draw_landmarks: frames")
    if f.ndim == 3:
        f = f[None]
    if f.ndim != 4:
        raise ValueError(f"draw_landmarks: frames must be [T, H, W, 3] RGB, got shape {tuple(np.shape(frames))}")
    if len(f) != n_lm and len(f) != 1 and n_lm != 1:
        raise ValueError(f"draw_landmarks: {len(f)} frames for {n_lm} landmark frames; pass one frame "
                         "(broadcast) or as many frames as landmark frames")
    return f


def _polylines(img, pts16: np.ndarray, edges: np.ndarray, color, thickness: int):
    import cv2

    segs = pts16[edges]  # [E, 2, 2] int32
    cv2.polylines(img, list(segs), False, color, thickness, cv2.LINE_AA, _SHIFT)


def draw_landmarks(lm: FaceLandmarks, frames: np.ndarray | None = None, style: str = "controlnet",
                   thickness: int | None = None) -> np.ndarray:
    """Draw face landmarks, ``uint8 [T, H, W, 3]`` RGB.

    Args:
        lm: landmark sequence (normalised coordinates; only x, y are used).
        frames: None -> draw on black at ``lm.image_size`` (what landmark ControlNets expect), or
            ``uint8 [T, H, W, 3]`` / ``[H, W, 3]`` RGB frames to draw over (copied, not modified; gray, RGBA
            and 0-1 float frames are converted by :func:`ptalk_models.images.as_rgb_uint8`). One frame
            is broadcast over all landmark frames (and one landmark frame over all frames). The frames'
            own size is used; coordinates are normalised so a different size than ``lm.image_size`` is fine.
        style: ``"controlnet"`` (MediaPipe-face ControlNet annotator look, see module docstring) or
            ``"mesh"`` (grey tesselation + coloured contours + iris rings).
        thickness: line width in pixels; default :func:`default_thickness` of the output size
            (2 px at 512). Lines are anti-aliased (``cv2.LINE_AA``) at 1/16 px precision.

    Frames with ``lm.present == False`` get nothing drawn (black, or the frame unchanged).

    Raises:
        ValueError: unknown style, bad frames shape, frame-count mismatch, thickness < 1.
    """
    import cv2

    if not isinstance(lm, FaceLandmarks):
        raise ValueError(f"draw_landmarks: lm must be a FaceLandmarks, got {type(lm).__name__}")
    if style not in STYLES:
        raise ValueError(f"draw_landmarks: unknown style {style!r}; choose one of {STYLES}")
    n = len(lm)
    if frames is None:
        w, h = lm.image_size
        out = np.zeros((n, h, w, 3), np.uint8)
    else:
        f = _as_frames(frames, n)
        t_out = max(n, len(f))
        out = np.empty((t_out,) + f.shape[1:], np.uint8)  # C-contiguous copy (cv2 draws in place)
        out[...] = f
        h, w = out.shape[1:3]
    if thickness is None:
        thickness = default_thickness(w, h)
    thickness = int(thickness)
    if thickness < 1:
        raise ValueError(f"draw_landmarks: thickness must be >= 1 pixel, got {thickness}")

    contour_edges = {r: region_edges(r) for r in _CONTOUR_REGIONS}
    if style == "mesh":
        tess = tesselation_edges()
        iris_edges = {r: region_edges(r) for r in _PUPILS}
        mesh_th = max(1, thickness // 2)
    scale = np.array([w, h], np.float64) * (1 << _SHIFT)
    dot_r = max(1, thickness)

    for t in range(len(out)):
        i = t if n > 1 else 0
        if not lm.present[i]:
            continue
        pts = np.rint(lm.points[i, :, :2].astype(np.float64) * scale).astype(np.int32)
        img = out[t]
        if style == "mesh":
            _polylines(img, pts, tess, MESH_GREY, mesh_th)
        for region, edges in contour_edges.items():
            _polylines(img, pts, edges, CONTROLNET_COLORS[region], thickness)
        for region, idx in _PUPILS.items():
            if style == "mesh":
                _polylines(img, pts, iris_edges[region], CONTROLNET_COLORS[region], mesh_th)
            cv2.circle(img, tuple(int(v) for v in pts[idx]), dot_r << _SHIFT, CONTROLNET_COLORS[region],
                       -1, cv2.LINE_AA, _SHIFT)
    return out
