"""Per-frame condition images of the AnimateNet Temporal Sampler (paper §III-B): structure (the frame's landmarks
drawn as a ControlNet-style face mesh) and identity (the coarse head contour of the previous frame, of the
init frames, or of the reference). Pure numpy/OpenCV/torch; the sampler loop is in ``nodes/glue/temporal_sampling.py``.
"""
from __future__ import annotations

import numpy as np
import torch

from .contour import head_contour
from .draw import draw_landmarks
from .landmarks import FaceLandmarks

CONTOUR_SOURCES = ("previous frame", "init frames", "reference")


def to_chw(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` → float32 ``[T, 3, H, W]`` in [0, 1] (what ControlNet hints and AnimateNet take)."""
    return torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float().div_(255.0)


class FrameConditions:
    """Condition images for frames ``[start, stop)`` of a landmark sequence, at the output size.

    Args:
        landmarks: the driving :class:`FaceLandmarks` (T frames; normalised, so they are drawn at ``size_hw``).
        size_hw: output (height, width) in pixels (multiples of 8).
        reference: uint8 ``[H, W, 3]`` portrait at ``size_hw``: frame 0's previous frame.
        contour_source: ``"previous frame"`` (paper: the contour of the previously *generated* frame — with
            windows, the last frame before the window), ``"init frames"`` (of init frame t − 1, e.g. the warp
            render; needs ``init_frames``) or ``"reference"`` (the reference's contour for every frame).
        init_frames: uint8 ``[T, H, W, 3]`` or None.
        contour_detail: Contour Guide's ``detail`` (px of the work image).
    The contour of a frame is computed with the *driving* landmarks of that frame (no face detection on
    generated frames).
    """

    def __init__(self, landmarks: FaceLandmarks, size_hw: tuple[int, int], reference: np.ndarray,
                 contour_source: str = "previous frame", init_frames: np.ndarray | None = None,
                 contour_detail: int = 128):
        if contour_source not in CONTOUR_SOURCES:
            raise ValueError(f"contour_source must be one of {CONTOUR_SOURCES}, got {contour_source!r}")
        if contour_source == "init frames" and init_frames is None:
            raise ValueError("contour_source 'init frames' needs init_frames")
        h, w = size_hw
        self.lm = FaceLandmarks.from_points(landmarks.points, (w, h), landmarks.fps, landmarks.present,
                                            landmarks.meta)
        self.size_hw, self.reference, self.source = (h, w), reference, contour_source
        self.init_frames, self.detail = init_frames, contour_detail
        self.needs_previous_frame = contour_source == "previous frame"
        self._reference_contour = None

    def structure(self, start: int, stop: int) -> torch.Tensor:
        """Landmark drawings of frames ``[start, stop)``: float ``[n, 3, H, W]`` in [0, 1] (Draw Landmarks,
        ControlNet style, white-ish mesh on black)."""
        return to_chw(draw_landmarks(self.lm.frames(start, stop), style="controlnet"))

    def _contour(self, image: np.ndarray, frame: int) -> np.ndarray:
        edges, _ = head_contour(image, self.lm.frame(frame), detail=self.detail)
        return np.repeat(edges[..., None], 3, axis=-1)

    def reference_contour(self) -> np.ndarray:
        if self._reference_contour is None:
            self._reference_contour = self._contour(self.reference, 0)
        return self._reference_contour

    def identity(self, start: int, stop: int, previous_frame=None) -> torch.Tensor:
        """Contour guides of frames ``[start, stop)``: float ``[n, 3, H, W]`` in [0, 1] (white outline on black).
        ``previous_frame``: the last generated frame before ``start`` (IMAGE ``[1, H, W, 3]`` float or uint8
        ``[H, W, 3]``), used by the ``"previous frame"`` source."""
        n = stop - start
        if self.source == "reference" or start == 0 and self.source == "previous frame":
            return to_chw(np.repeat(self.reference_contour(), n, axis=0))
        if self.source == "previous frame":
            if previous_frame is None:
                raise ValueError("contour_source 'previous frame' needs the previously generated frame")
            img = previous_frame
            if torch.is_tensor(img):
                img = (img[0].detach().float().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
            return to_chw(np.repeat(self._contour(img, start - 1), n, axis=0))
        out = [self.reference_contour() if t == 0 else self._contour(self.init_frames[t - 1], t - 1)
               for t in range(start, stop)]
        return to_chw(np.concatenate(out))
