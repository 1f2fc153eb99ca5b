"""Face tracks: every face of a video followed through time, surviving short occlusions, restarted at scene cuts.

One pass over the frames (:func:`track_faces`): each frame is decoded once, all its faces are detected
(:class:`ptalk_models.face.FaceLandmarkDetector`, MediaPipe, up to ``max_faces``) and the frame is fed to the cut
detector (:class:`ptalk_models.scene_cuts.CutDetector`, PySceneDetect); then the frame is dropped. After the pass
the detected faces are assigned to tracks (:class:`FaceTracker`) with every cut known (PySceneDetect confirms a
cut only some frames later). Memory: one frame plus the landmarks of every detected face,
478 x 3 float32 = 5.6 KiB per face and frame (two faces over 10 min at 25 fps: 170 MB), independent of the
frame size.

Assignment rule (:meth:`FaceTracker.push`): the cost of giving face ``f`` to track ``k`` is the distance between
``f``'s nose tip and the track's last detected nose tip, in inter-ocular distances (IOD, outer eye corners) of the
track's last face; pairs are taken greedily, cheapest first, while the cost is below
``MATCH_IOD + MATCH_IOD_PER_FRAME * gap`` (gap = frames since the track was last seen). A track not seen for more
than ``max_gap`` frames (:data:`MAX_GAP_S` seconds: a hand or a passer-by in front of the face, a turned head,
a few frames the detector misses) is closed, and so is every track at a cut: faces after a cut always start new
tracks. Faces that match no track start one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .landmarks import NOSE_TIP, FaceLandmarks, inter_ocular_px

#: A track survives this many seconds without a detection (occlusion, missed frames), then it is closed.
MAX_GAP_S = 0.5
#: Largest nose-tip jump (IOD) from a track's last face to a face in the next frame that continues it ...
MATCH_IOD = 0.75
#: ... plus this much per frame the track was not seen.
MATCH_IOD_PER_FRAME = 0.15


@dataclass
class FaceTrack:
    """One face followed through one shot.

    Attributes:
        track_id: 0, 1, ... in order of first appearance.
        shot: index of the shot (:func:`ptalk_models.scene_cuts.shots`) the track lies in.
        frames: int, decode-order frame indices where the face was detected, ascending.
        points: float32 ``[len(frames), 478, 3]`` landmarks at those frames (normalised x / width, y / height).
    """

    track_id: int
    shot: int
    frames: list = field(default_factory=list)
    points: list = field(default_factory=list)

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def landmarks(self, n_frames: int, image_size: tuple[int, int], fps: float) -> FaceLandmarks:
        """The track as :class:`FaceLandmarks` over the whole video, ``[n_frames, 478, 3]``: ``present`` True at
        its frames; other frames are filled with its nearest detected frame's points and flagged absent (as
        :func:`ptalk_models.face.track_landmarks` does with ``on_missing="keep"``)."""
        n = int(n_frames)
        idx = np.asarray(self.frames, np.int64)
        pts = np.asarray(self.points, np.float32)
        present = np.zeros(n, bool)
        present[idx] = True
        j = np.clip(np.searchsorted(idx, np.arange(n)), 0, len(idx) - 1)
        jm = np.maximum(j - 1, 0)
        nearest = np.where(np.abs(idx[jm] - np.arange(n)) <= np.abs(idx[j] - np.arange(n)), jm, j)
        return FaceLandmarks(points=pts[nearest], image_size=image_size, fps=fps, present=present,
                             meta={"source": "mediapipe FaceLandmarker", "track_id": self.track_id,
                                   "shot": self.shot})


def _nose_iod(points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    w, h = size
    px = points[:, :2] * (w, h)
    return px[NOSE_TIP], max(float(inter_ocular_px(px)), 1.0)


class FaceTracker:
    """Assign each frame's faces to tracks (module docstring for the rule). ``size``: ``(width, height)`` in
    pixels; ``max_gap``: frames a track may go unseen (>= 0)."""

    def __init__(self, size: tuple[int, int], max_gap: int):
        self.size = (int(size[0]), int(size[1]))
        self.max_gap = max(0, int(max_gap))
        self.tracks: list[FaceTrack] = []
        self._active: list[FaceTrack] = []
        self._shot = 0

    def push(self, t: int, faces, cut: bool = False) -> list[int]:
        """Frame ``t`` (increasing) with its detected faces (float32 ``[478, 3]`` each); ``cut``: ``t`` starts a
        new shot. Returns the track id of each face."""
        if cut and t > 0:
            self._active = []
            self._shot += 1
        self._active = [k for k in self._active if t - k.last - 1 <= self.max_gap]
        pairs = []
        for i, f in enumerate(faces):
            nose, _ = _nose_iod(f, self.size)
            for k in self._active:
                kn, kiod = _nose_iod(k.points[-1], self.size)
                gap = t - k.last - 1
                cost = float(np.linalg.norm(nose - kn)) / kiod
                if cost <= MATCH_IOD + MATCH_IOD_PER_FRAME * gap:
                    pairs.append((cost, i, k))
        ids = [-1] * len(faces)
        used: set[int] = set()
        for cost, i, k in sorted(pairs, key=lambda p: p[0]):
            if ids[i] >= 0 or k.track_id in used:
                continue
            ids[i] = k.track_id
            used.add(k.track_id)
            k.frames.append(int(t))
            k.points.append(np.asarray(faces[i], np.float32))
        for i, f in enumerate(faces):
            if ids[i] < 0:
                k = FaceTrack(len(self.tracks), self._shot, [int(t)], [np.asarray(f, np.float32)])
                self.tracks.append(k)
                self._active.append(k)
                ids[i] = k.track_id
        return ids


@dataclass
class TrackedVideo:
    """What :func:`track_faces` found: ``tracks`` (:class:`FaceTrack`), ``cuts`` (first frames of new shots),
    ``n_frames``, ``image_size`` (width, height) and ``fps``; ``faces_per_frame`` int ``[n_frames]``."""

    tracks: list
    cuts: list
    n_frames: int
    image_size: tuple
    fps: float
    faces_per_frame: np.ndarray


def track_faces(frames: Iterable[np.ndarray], fps: float, total: int | None = None, max_faces: int = 8,
                max_gap_s: float = MAX_GAP_S, cut_threshold: float | None = None, model_path: str | None = None,
                min_confidence: float = 0.5,
                progress: Callable[[int, int], None] | None = None) -> TrackedVideo:
    """Detect, cut and track in one pass over ``frames`` (uint8 RGB ``[H, W, 3]``, all one size, decode order,
    consumed one at a time).

    Args:
        fps: the video's frame rate (> 0): converts :data:`MAX_GAP_S` and the shortest shot to frames.
        total: expected frame count, for ``progress`` only. max_faces: MediaPipe's face limit per frame.
        max_gap_s: seconds a track survives without a detection. cut_threshold: PySceneDetect content threshold
            (None: :data:`ptalk_models.scene_cuts.DEFAULT_THRESHOLD`).
        progress: optional ``callable(done, total)``.
    Raises:
        InputError: ``argument="frames"`` for no frames or frames of different sizes / bad frames.
        ValueError: fps <= 0. FileNotFoundError: no landmarker model.
    """
    from .errors import InputError
    from .face import FaceLandmarkDetector, rgb_frames
    from .scene_cuts import DEFAULT_THRESHOLD, CutDetector

    det = FaceLandmarkDetector.shared(model_path, max_faces=max_faces, min_confidence=min_confidence)
    cuts = CutDetector(fps, DEFAULT_THRESHOLD if cut_threshold is None else cut_threshold)
    detected: list[list[np.ndarray]] = []
    size = None
    for t, rgb in enumerate(rgb_frames(frames)):
        if size is None:
            size = (rgb.shape[1], rgb.shape[0])
        cuts.push(rgb)
        detected.append(det.detect(rgb))
        if progress is not None:
            progress(t + 1, max(total or 0, t + 1))
    if size is None:
        raise InputError("frames", "no frames to track faces in")
    # PySceneDetect reports a cut up to its shortest shot after the cut's frame (its flash filter waits), so the
    # faces are assigned to tracks once every cut is known
    cut_set = set(cuts.cuts)
    tracker = FaceTracker(size, int(round(max_gap_s * fps)))
    for t, faces in enumerate(detected):
        tracker.push(t, faces, cut=t in cut_set)
    return TrackedVideo(tracker.tracks, cuts.cuts, len(detected), size, float(fps),
                        np.asarray([len(f) for f in detected], np.int64))


__all__ = ["MAX_GAP_S", "MATCH_IOD", "MATCH_IOD_PER_FRAME", "FaceTrack", "FaceTracker", "TrackedVideo",
           "track_faces"]
