"""Scene-cut (shot boundary) detection on a stream of frames with PySceneDetect's content detector.

Backend: ``scenedetect`` (PySceneDetect, https://www.scenedetect.com, BSD-3-Clause) ``ContentDetector``: per frame
the mean absolute change of hue, saturation, luma and (dilated Canny) edges against the previous frame, weighted
(its defaults); a frame whose score reaches ``threshold`` (default 27) starts a new shot, and shots shorter than
``min_scene_len`` frames are merged (its flash filter). Frames are fed one at a time as they are decoded, so this
runs in the same pass as face detection and holds one (downscaled) frame: memory does not grow with the video's
length.

Units: frame indices are decode order, 0-based; a *cut* at ``k`` means frame ``k`` is the first frame of a new
shot. Frames are uint8 RGB ``[H, W, 3]``.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

#: PySceneDetect's default content threshold (``ContentDetector(threshold=27.0)``): the weighted mean
#: change per pixel (0-255 scale) that starts a new shot.
DEFAULT_THRESHOLD = 27.0
#: Shortest shot, seconds: cuts closer than this to the previous one are merged (PySceneDetect's default is 15
#: frames, 0.6 s at 25 fps).
MIN_SHOT_S = 0.5
#: Frames are downscaled (area) to at most this width before scoring (PySceneDetect's SceneManager also
#: downscales by default); scores are mean per-pixel changes, so they do not depend on the size.
SCORE_WIDTH = 320


class CutDetector:
    """Feed frames in decode order with :meth:`push`; :attr:`cuts` lists the first frame of every shot after the
    first (sorted). ``fps`` (> 0) converts :data:`MIN_SHOT_S` to frames. Raises ValueError for fps <= 0."""

    def __init__(self, fps: float, threshold: float = DEFAULT_THRESHOLD, min_shot_s: float = MIN_SHOT_S):
        try:
            from scenedetect.detectors import ContentDetector
        except ImportError as e:  # the pack updated without re-installing its requirements
            raise InputError("face", f"face = auto needs the scenedetect package ({e})",
                             "pip install -r requirements.txt in ComfyUI's Python, or choose the face by "
                             "largest / index") from None

        fps = float(fps)
        if not np.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = fps
        self._min_len = max(1, int(round(float(min_shot_s) * fps)))
        self._det = ContentDetector(threshold=float(threshold), min_scene_len=self._min_len)
        self._n = 0
        self._cuts: set[int] = set()

    def push(self, frame: np.ndarray) -> None:
        """Score the next frame (uint8 RGB ``[H, W, 3]``) against the previous one."""
        import cv2
        from scenedetect import FrameTimecode

        h, w = frame.shape[:2]
        if w > SCORE_WIDTH:
            frame = cv2.resize(frame, (SCORE_WIDTH, max(1, int(round(h * SCORE_WIDTH / w)))),
                               interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
        for tc in self._det.process_frame(FrameTimecode(self._n, fps=self.fps), bgr):
            if 0 < tc.frame_num:
                self._cuts.add(int(tc.frame_num))
        self._n += 1

    @property
    def frames(self) -> int:
        """How many frames were pushed."""
        return self._n

    @property
    def cuts(self) -> list[int]:
        """First frame of each shot after the first, ascending, in ``(0, frames)``."""
        return sorted(c for c in self._cuts if c < self._n)


def shots(cuts, n_frames: int) -> list[tuple[int, int]]:
    """``[start, stop)`` frame ranges of the shots of an ``n_frames`` video cut at ``cuts`` (first frames of new
    shots; out-of-range and repeated cuts ignored). One shot ``(0, n_frames)`` without cuts."""
    n = int(n_frames)
    edges = [0] + sorted({int(c) for c in cuts if 0 < int(c) < n}) + [n]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def detect_cuts(frames, fps: float, threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """:class:`CutDetector` over an iterable of uint8 RGB frames (consumed one at a time): the cut frames."""
    det = CutDetector(fps, threshold)
    for f in frames:
        det.push(f)
    return det.cuts


__all__ = ["DEFAULT_THRESHOLD", "MIN_SHOT_S", "CutDetector", "shots", "detect_cuts"]
