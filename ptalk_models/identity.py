"""Face identity embeddings (`PTALK_FACE_EMBED`): dlib ResNet (128-D, embedded) or InsightFace ArcFace (512-D).

PortraitTalk (arXiv 2412.07754) §III-A encodes the reference face's identity after removing the background;
the same embedding is the identity metric of the evaluation (per-frame identity similarity). Two backends:

``dlib`` (default, offline)
    dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``, 128-D, 99.38 % on LFW) and
    its 5-point shape predictor, both shipped in the ``face_recognition_models`` package (``dlib-bin``
    runs them). The face is placed by our MediaPipe landmarks: a box derived from the 478-point mesh plays
    the part of dlib's HOG face detector box (calibrated on GRID, CREMA-D and retalking frames: the HOG
    box is a square of side ``1.02 · sqrt(w · h)`` of the mesh's bounding box, centred on it, within ±8 %),
    dlib's 5-point predictor refines the eye corners and nose base inside it, and ``dlib.get_face_chip``
    cuts the standard 150x150 chip (padding 0.25) that the network was trained on. Faces are compared by
    Euclidean distance; 0.6 is dlib's same-person threshold.

``insightface`` (user-supplied models, never downloaded)
    The ArcFace recognition model of an InsightFace model pack (``antelopev2``: ``glintr100.onnx``;
    ``buffalo_l``: ``w600k_r50.onnx``) in ``<root>/models/<name>/``, ComfyUI's ``models/insightface``
    convention (the folder IPAdapter-FaceID and InstantID packs use). The face is aligned to the standard
    112x112 ArcFace five-point template (eye centres, nose tip, mouth corners) from MediaPipe points with
    ``cv2.estimateAffinePartial2D``; the model's ``get_feat`` output is L2-normalised (512-D). Faces are
    compared by cosine distance. InsightFace's own detector / ``FaceAnalysis`` is not used (it downloads
    missing models); the ``.onnx`` file is checked first and loaded by path with ``download=False``.

Background removal (§III-A): pixels outside the MediaPipe ``FACE_OVAL`` polygon, dilated by
``BACKGROUND_DILATION`` x the inter-ocular distance, are replaced by the colour that the recognition
network's input normalisation maps to zero -- dlib's mean RGB (122.782, 117.001, 104.298) for the dlib
ResNet, 127.5 grey for ArcFace ((x - 127.5) / 127.5) -- i.e. "no signal" for the network rather than an
arbitrary colour. The dlib 5-point predictor and the chip both see the background-removed image, and the
mask is cut with the same alignment as the face, so pixels outside the source image are background too:
anything outside the dilated oval cannot change the embedding. Measured on the six GRID speakers of
``video/`` (8 frames each, dlib): same/different-person separation is unchanged by the removal (d' 11.2
without, 11.3 with; largest within-speaker distance 0.30 / 0.31, smallest cross-speaker 0.65 / 0.63: hair
and clothes, now hidden, were weak identity cues in GRID's one-studio set), while a real background swap
(blue screen chroma-keyed to another photo, same landmarks) moves the embedding by 0.033 instead of 0.050.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

from .errors import InputError
from .images import as_rgb_uint8
from .landmarks import (FACE_OVAL, LEFT_EYE_INNER, LEFT_EYE_OUTER, RIGHT_EYE_INNER, RIGHT_EYE_OUTER, FaceLandmarks,
                        inter_ocular_px)
from .telemetry import disable_telemetry

BACKENDS = ("dlib", "insightface")
INSIGHTFACE_MODELS = ("antelopev2", "buffalo_l")
#: Recognition model file of each InsightFace model pack.
INSIGHTFACE_RECOGNITION_FILES = {"antelopev2": "glintr100.onnx", "buffalo_l": "w600k_r50.onnx"}

#: Embedding size per backend.
EMBEDDING_DIM = {"dlib": 128, "insightface": 512}
#: Side in pixels of the aligned crop each network takes.
CROP_SIZE = {"dlib": 150, "insightface": 112}

#: Distance at or below which two faces are the same person: dlib's documented 0.6 (Euclidean, dlib
#: face-recognition docs / ``face_recognition`` default tolerance); for ArcFace the cosine distance 0.55
#: that deepface lists for InsightFace's buffalo_l (``deepface/config/threshold.py``), an approximate value
#: for antelopev2's glintr100 too.
SAME_PERSON_THRESHOLD = {"dlib": 0.6, "insightface": 0.55}

#: Dilation of the face-oval mask, in inter-ocular distances (outer eye corners), before background removal.
BACKGROUND_DILATION = 0.10
#: Background fill per backend (RGB): the value the network's input normalisation maps to zero.
BACKGROUND_FILL = {"dlib": (122.782, 117.001, 104.298), "insightface": (127.5, 127.5, 127.5)}

#: Standard ArcFace 112x112 template (InsightFace ``face_align.arcface_dst``): image-left eye centre,
#: image-right eye centre, nose tip, image-left mouth corner, image-right mouth corner, in pixels.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)

# MediaPipe mesh points for the ArcFace template: iris centres (468 = subject's right eye = image left),
# nose tip, mouth corners (61 = image left).
_ARCFACE_MP = ([468], [473], [1], [61], [291])
# dlib 5-point order (ibug): image-right eye outer/inner, image-left eye outer/inner, nose base.
_DLIB5_MP = (LEFT_EYE_OUTER, LEFT_EYE_INNER, RIGHT_EYE_OUTER, RIGHT_EYE_INNER, 2)
# dlib HOG face box from the mesh bounding box (see module docstring).
_DLIB_BOX_SCALE = 1.02


class InsightFaceUnavailable(RuntimeError):
    """The ``insightface`` backend cannot run: the package or the model files are missing."""


@dataclass
class FaceEmbedding:
    """Identity embeddings of one person's reference images: the ``PTALK_FACE_EMBED`` ComfyUI type.

    ``embeddings`` float32 ``[N, D]``: one row per input image (D = 128 for dlib, 512 for insightface,
               unit length for insightface); rows of images without a face are NaN.
    ``mean``     float32 ``[D]``: mean of the present rows (insightface: re-normalised to unit length).
    ``present``  bool ``[N]``: False where no face was found.
    ``backend``  ``"dlib"`` or ``"insightface"``; ``dim`` = D.
    ``crops``    uint8 RGB ``[N, S, S, 3]``: the aligned, background-removed crops the network saw
               (S = 150 dlib chip, 112 ArcFace); zeros where no face.
    ``meta``     provenance: model files, alignment, background fill, image sizes …
    ``face_images`` uint8 RGB ``[N, 224, 224, 3]``: the faces aligned to the ArcFace template at 224 px *with*
               their background (InsightFace ``norm_crop`` style) — the CLIP-vision input of
               IP-Adapter-FaceID-Plus; zeros where no face. None when not computed.
    """

    embeddings: np.ndarray
    mean: np.ndarray
    present: np.ndarray
    backend: str
    dim: int
    crops: np.ndarray
    meta: dict = field(default_factory=dict)
    face_images: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def threshold(self) -> float:
        """Same-person distance threshold of this backend (:data:`SAME_PERSON_THRESHOLD`)."""
        return SAME_PERSON_THRESHOLD[self.backend]

    def distance(self, other) -> np.ndarray:
        """:func:`face_distance` of every row to ``other`` (a ``[D]`` vector or a FaceEmbedding's mean)."""
        b = other.mean if isinstance(other, FaceEmbedding) else other
        return face_distance(self.embeddings, b, self.backend)

    def similarity(self, other) -> np.ndarray:
        """:func:`identity_similarity` of every row to ``other``."""
        b = other.mean if isinstance(other, FaceEmbedding) else other
        return identity_similarity(self.embeddings, b, self.backend)


# ----------------------------------------------------------------------------------------------- metrics
def _backend_of(a: np.ndarray, backend: str | None) -> str:
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        return backend
    d = a.shape[-1]
    for name, dim in EMBEDDING_DIM.items():
        if d == dim:
            return name
    raise ValueError(f"cannot tell the backend from embedding size {d} (128 = dlib, 512 = insightface); "
                     "pass backend=")


def face_distance(a, b, backend: str | None = None) -> np.ndarray:
    """Raw face distance between embedding(s) ``a`` (``[D]`` or ``[N, D]``) and ``b`` (``[D]``).

    dlib: Euclidean distance (same person when <= 0.6). insightface: cosine distance ``1 - cos(a, b)`` in
    [0, 2] (same person when <= :data:`SAME_PERSON_THRESHOLD` ``["insightface"]``). ``backend`` is inferred
    from D when None (128 → dlib, 512 → insightface). NaN rows give NaN. Returns float32 ``[]`` or ``[N]``.
    Raises ValueError for mismatched or unknown sizes.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if b.ndim != 1 or a.ndim not in (1, 2) or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"face_distance: a must be [D] or [N, D] and b [D] with the same D, got "
                         f"{a.shape} and {b.shape}")
    backend = _backend_of(b, backend)
    if backend == "dlib":
        d = np.linalg.norm(a - b, axis=-1)
    else:
        na = np.linalg.norm(a, axis=-1)
        nb = np.linalg.norm(b)
        d = np.clip(1.0 - (a @ b) / np.maximum(na * nb, 1e-12), 0.0, 2.0)
    return np.asarray(d, np.float32)


def identity_similarity(a, b, backend: str | None = None) -> np.ndarray:
    """Identity similarity in [0, 1] between embedding(s) ``a`` (``[D]`` or ``[N, D]``) and ``b`` (``[D]``).

    ``similarity = clip(1 - face_distance(a, b) / (2 · threshold), 0, 1)`` with the backend's
    :data:`SAME_PERSON_THRESHOLD`: 1 = identical embeddings, 0.5 = exactly at the same-person threshold
    (dlib: Euclidean 0.6; ArcFace: cosine distance 0.55), 0 = twice the threshold or farther. So > 0.5 reads
    "same person" for both backends. NaN rows (no face) give NaN. Returns float32 ``[]`` or ``[N]``.
    """
    a = np.asarray(a, np.float32)
    backend = _backend_of(np.asarray(b), backend)
    d = face_distance(a, b, backend)
    return np.asarray(np.clip(1.0 - d / (2.0 * SAME_PERSON_THRESHOLD[backend]), 0.0, 1.0), np.float32)


# ----------------------------------------------------------------------------------------------- geometry
def face_mask(size_wh: tuple[int, int], pts_px: np.ndarray, dilation: float = BACKGROUND_DILATION) -> np.ndarray:
    """uint8 ``[H, W]`` mask (255 inside) of the MediaPipe ``FACE_OVAL`` polygon dilated by ``dilation``
    inter-ocular distances (outer eye corners, :func:`ptalk_models.landmarks.inter_ocular_px`); ``size_wh`` is
    ``(W, H)`` pixels, ``pts_px`` float ``[478, 2]`` pixels. OpenCV ``fillPoly`` + elliptical ``dilate``."""
    import cv2

    w, h = size_wh
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts_px[FACE_OVAL]).astype(np.int32)], 255, lineType=cv2.LINE_8)
    r = int(round(dilation * float(inter_ocular_px(pts_px))))
    if r > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return mask


def dlib_face_box(pts_px: np.ndarray):
    """``dlib.rectangle`` standing in for dlib's HOG face-detector box, from ``[478, 2]`` mesh pixels."""
    import dlib

    lo, hi = pts_px.min(0), pts_px.max(0)
    c = 0.5 * (lo + hi)
    half = 0.5 * _DLIB_BOX_SCALE * float(np.sqrt(max(hi[0] - lo[0], 1.0) * max(hi[1] - lo[1], 1.0)))
    return dlib.rectangle(int(round(c[0] - half)), int(round(c[1] - half)),
                          int(round(c[0] + half)), int(round(c[1] + half)))


def arcface_points(pts_px: np.ndarray) -> np.ndarray:
    """The five ArcFace template points (float32 ``[5, 2]`` pixels) from ``[478, 2]`` MediaPipe pixels."""
    return np.stack([pts_px[idx].mean(0) for idx in _ARCFACE_MP]).astype(np.float32)


def arcface_align(image: np.ndarray, pts_px: np.ndarray, size: int = 112) -> np.ndarray:
    """2x3 float32 similarity transform mapping image pixels onto the ``size`` x ``size`` ArcFace template
    (``cv2.estimateAffinePartial2D`` of :func:`arcface_points` onto :data:`ARCFACE_TEMPLATE`, least squares over
    all five points). ``pts_px``: float ``[478, 2]`` MediaPipe pixels; ``image`` is not read (only the points
    decide the transform). Raises ValueError when the fit fails (degenerate landmarks)."""
    import cv2

    dst = ARCFACE_TEMPLATE * (size / 112.0)
    # all five points are inliers (huge RANSAC threshold) -> the Levenberg-Marquardt refinement is the least-squares
    # similarity over all of them, as InsightFace's own Umeyama fit (face_align.estimate_norm)
    M, _ = cv2.estimateAffinePartial2D(arcface_points(pts_px), dst, method=cv2.RANSAC, ransacReprojThreshold=1e6,
                                       maxIters=1, refineIters=50)
    if M is None:
        raise ValueError("could not fit the ArcFace alignment (degenerate landmarks)")
    return M.astype(np.float32)


# ----------------------------------------------------------------------------------------------- models
@lru_cache(maxsize=1)
def _dlib_models():
    import dlib
    import face_recognition_models as frm

    return (dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
            dlib.face_recognition_model_v1(frm.face_recognition_model_location()),
            {"shape_predictor": os.path.basename(frm.pose_predictor_five_point_model_location()),
             "recognition_model": os.path.basename(frm.face_recognition_model_location())})


_DLIB_LOCK = threading.Lock()
_INSIGHTFACE_LOCK = threading.Lock()
_INSIGHTFACE_CACHE: dict[str, object] = {}

_INSIGHTFACE_HELP = (
    "Put the '{name}' pack's .onnx files into ComfyUI/models/insightface/models/{name}/ and `pip install "
    "insightface onnxruntime` into ComfyUI's Python; nothing is downloaded automatically. Or use backend "
    "'dlib' (embedded, offline).")


def insightface_model_file(root: str | os.PathLike | None, name: str = "antelopev2") -> str:
    """Path of the ArcFace recognition ``.onnx`` of model pack ``name`` under ``root`` (the
    ``models/insightface`` folder; InsightFace's ``FaceAnalysis(root=...)``): ``<root>/models/<name>/`` or the
    ``<root>/models/<name>/<name>/`` a nested unzip leaves. ``root`` None → ``~/.insightface``.

    Raises :class:`InsightFaceUnavailable` naming the folder and the fix when the file is missing.
    """
    if name not in INSIGHTFACE_RECOGNITION_FILES:
        raise ValueError(f"insightface_model must be one of {INSIGHTFACE_MODELS}, got {name!r}")
    root = os.path.expanduser(str(root) if root else "~/.insightface")
    rec = INSIGHTFACE_RECOGNITION_FILES[name]
    folder = os.path.join(root, "models", name)
    for cand in (os.path.join(folder, rec), os.path.join(folder, name, rec)):
        if os.path.isfile(cand):
            return cand
    raise InsightFaceUnavailable(f"InsightFace model pack '{name}' not found: {folder} has no {rec}. "
                                 + _INSIGHTFACE_HELP.format(name=name))


def _insightface_model(root, name):
    """The loaded ArcFace model (``insightface.model_zoo.get_model`` on a checked local file, no download)."""
    path = insightface_model_file(root, name)  # files first: never reach code that could fetch
    if importlib.util.find_spec("insightface") is None or importlib.util.find_spec("onnxruntime") is None:
        raise InsightFaceUnavailable(
            "the 'insightface' backend needs the insightface and onnxruntime packages: "
            "`pip install insightface onnxruntime` into ComfyUI's Python (models found at "
            f"{os.path.dirname(path)}), or use backend 'dlib'.")
    with _INSIGHTFACE_LOCK:
        model = _INSIGHTFACE_CACHE.get(path)
        if model is None:
            disable_telemetry()
            import onnxruntime
            from insightface.model_zoo import model_zoo

            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in onnxruntime.get_available_providers()]
            model = model_zoo.get_model(path, download=False, providers=providers)
            if model is None or getattr(model, "taskname", None) != "recognition":
                raise InsightFaceUnavailable(f"{path} is not an ArcFace recognition model; re-copy the "
                                             f"'{name}' pack")
            _INSIGHTFACE_CACHE[path] = model
    return model, path


# ----------------------------------------------------------------------------------------------- embedding
def _as_batch(images, landmarks):
    """(list of uint8 [H, W, 3], list of [478, 2] px or None per image, present flags)."""
    if isinstance(images, (list, tuple)):
        imgs = [as_rgb_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
        if any(im.ndim != 3 for im in imgs):
            raise InputError("images", "images: a list must hold single images [H, W, C]")
    else:
        arr = as_rgb_uint8(images, "images")
        imgs = list(arr[None] if arr.ndim == 3 else arr)
    if not imgs:
        raise InputError("images", "images: empty batch;", "give at least one reference image")
    n = len(imgs)
    if landmarks is None:
        from .face import NoFaceError, detect_landmarks

        lms = []
        if isinstance(images, (list, tuple)):
            for im in imgs:
                try:
                    lms.append(detect_landmarks(im, on_missing="keep"))
                except NoFaceError:
                    lms.append(None)
        else:
            try:
                lm = detect_landmarks(np.stack(imgs), on_missing="keep")
                lms = [lm.frame(i) for i in range(n)]
            except NoFaceError:  # no face anywhere
                lms = [None] * n
    else:
        lms = list(landmarks) if isinstance(landmarks, (list, tuple)) else \
            ([landmarks.frame(i) for i in range(len(landmarks))] if isinstance(landmarks, FaceLandmarks) else None)
        if lms is None:
            raise InputError("landmarks",
                             f"landmarks: expected FaceLandmarks (PTALK_LANDMARKS), got {type(landmarks).__name__}")
        if len(lms) == 1 and n > 1:
            lms = lms * n
        if len(lms) != n:
            raise InputError("landmarks", f"landmarks: {len(lms)} frame(s) for {n} image(s);",
                             "give one landmark frame per image (or one for all)")
    pts, present = [], np.zeros(n, bool)
    for i, (im, lm) in enumerate(zip(imgs, lms)):
        if lm is None or not bool(lm.present[0]):
            pts.append(None)
            continue
        h, w = im.shape[:2]
        if tuple(lm.image_size) != (w, h):
            raise InputError("landmarks", f"landmarks: frame {i} refers to a {lm.image_size[0]}x{lm.image_size[1]} "
                             f"image but image {i} is {w}x{h};", "detect the landmarks on these images")
        pts.append(lm.pixels(0).astype(np.float64))
        present[i] = True
    return imgs, pts, present


def _dlib_embed(imgs, pts, remove_background, dilation, alignment):
    import dlib

    predictor, recognizer, files = _dlib_models()
    S = CROP_SIZE["dlib"]
    fill = np.array(BACKGROUND_FILL["dlib"], np.float32)
    crops, chips_idx, chips = np.zeros((len(imgs), S, S, 3), np.uint8), [], []
    with _DLIB_LOCK:
        for i, (im, p) in enumerate(zip(imgs, pts)):
            if p is None:
                continue
            box = dlib_face_box(p)
            if remove_background:  # the predictor and the chip see the face only
                m = face_mask((im.shape[1], im.shape[0]), p, dilation)
                im = np.where(m[..., None] > 0, im, np.rint(fill).astype(np.uint8))
            if alignment == "dlib5":
                shape = predictor(im, box)
            elif alignment == "mediapipe5":
                shape = dlib.full_object_detection(box, [dlib.point(int(round(x)), int(round(y)))
                                                         for x, y in p[list(_DLIB5_MP)]])
            else:
                raise ValueError(f"alignment must be 'dlib5' or 'mediapipe5', got {alignment!r}")
            chip = dlib.get_face_chip(im, shape, size=S, padding=0.25)
            if remove_background:  # chip pixels from outside the image are background too
                mchip = dlib.get_face_chip(np.ascontiguousarray(np.repeat(m[..., None], 3, -1)), shape,
                                           size=S, padding=0.25)[..., :1].astype(np.float32) / 255.0
                chip = np.clip(np.rint(chip * mchip + fill * (1.0 - mchip)), 0, 255).astype(np.uint8)
            crops[i] = chip
            chips_idx.append(i)
            chips.append(np.ascontiguousarray(chip))
        desc = recognizer.compute_face_descriptor(chips) if chips else []
    emb = np.full((len(imgs), EMBEDDING_DIM["dlib"]), np.nan, np.float32)
    for i, d in zip(chips_idx, desc):
        emb[i] = np.asarray(d, np.float32)
    return emb, crops, dict(files, alignment=f"{alignment} in a MediaPipe-derived box; dlib.get_face_chip "
                                             f"{S}x{S} padding 0.25")


def _insightface_embed(imgs, pts, remove_background, dilation, root, name):
    import cv2

    model, path = _insightface_model(root, name)
    S = CROP_SIZE["insightface"]
    fill = np.array(BACKGROUND_FILL["insightface"], np.float32)
    crops = np.zeros((len(imgs), S, S, 3), np.uint8)
    emb = np.full((len(imgs), EMBEDDING_DIM["insightface"]), np.nan, np.float32)
    for i, (im, p) in enumerate(zip(imgs, pts)):
        if p is None:
            continue
        M = arcface_align(im, p, S)
        crop = cv2.warpAffine(im, M, (S, S), flags=cv2.INTER_LINEAR, borderValue=0)
        if remove_background:
            m = face_mask((im.shape[1], im.shape[0]), p, dilation)
            mc = cv2.warpAffine(m, M, (S, S), flags=cv2.INTER_LINEAR, borderValue=0)[..., None] / 255.0
            crop = np.clip(np.rint(crop * mc + fill * (1.0 - mc)), 0, 255).astype(np.uint8)
        crops[i] = crop
        with _INSIGHTFACE_LOCK:
            f = np.asarray(model.get_feat(np.ascontiguousarray(crop[..., ::-1])), np.float32).reshape(-1)  # BGR in
        emb[i] = f / max(float(np.linalg.norm(f)), 1e-12)
    return emb, crops, {"recognition_model": path, "alignment": f"ArcFace 5-point template {S}x{S} "
                                                                 "(cv2.estimateAffinePartial2D, MediaPipe points)"}


def embed_faces(images, landmarks: FaceLandmarks | Sequence[FaceLandmarks] | None = None, backend: str = "dlib",
                insightface_root: str | os.PathLike | None = None, insightface_model: str = "antelopev2",
                remove_background: bool = True, dilation: float = BACKGROUND_DILATION,
                alignment: str = "dlib5") -> FaceEmbedding:
    """Identity embedding of each image's face, plus their mean (reference images of one person).

    Args:
        images: uint8 (or float in [0, 1]) RGB ``[N, H, W, 3]`` or one ``[H, W, 3]`` (gray/RGBA accepted),
            any size; or a list of single images of different sizes.
        landmarks: optional :class:`FaceLandmarks` for the same images (N frames, or 1 for all; image_size
            must match), or a list of one-frame FaceLandmarks for a list of images. None → detected with
            :func:`ptalk_models.face.detect_landmarks` (``on_missing="keep"``).
        backend: ``"dlib"`` (embedded, 128-D, Euclidean) or ``"insightface"`` (512-D unit ArcFace, cosine).
        insightface_root: the ``models/insightface`` folder holding ``models/<insightface_model>/*.onnx``
            (None → ``~/.insightface``). Only read for the insightface backend; nothing is downloaded.
        insightface_model: ``"antelopev2"`` or ``"buffalo_l"``.
        remove_background: replace everything outside the dilated face oval by the network's neutral colour
            before embedding (paper §III-A; see the module docstring).
        dilation: face-oval dilation in inter-ocular distances.
        alignment: dlib backend only: ``"dlib5"`` (dlib's 5-point predictor inside a MediaPipe-derived box,
            default) or ``"mediapipe5"`` (the five points taken straight from the MediaPipe mesh).
    Returns:
        :class:`FaceEmbedding` (rows of faceless images NaN, ``present`` False).
    Raises:
        InputError (a ValueError) whose ``argument`` is ``"images"``, ``"landmarks"`` or ``"backend"``: malformed
        images/landmarks, unknown backend (other ValueErrors: pixels :func:`ptalk_models.images.as_rgb_uint8`
        rejects); :class:`ptalk_models.face.NoFaceError` (a
        ValueError) when no image has a face; :class:`InsightFaceUnavailable` when the insightface package
        or model files are missing (the message says where to put them).
    """
    if backend not in BACKENDS:
        raise InputError("backend", f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "insightface":  # fail on missing models before any detection work
        insightface_model_file(insightface_root, insightface_model)
    imgs, pts, present = _as_batch(images, landmarks)
    if not present.any():
        from .face import NoFaceError

        raise NoFaceError(f"images: no face found in any of the {len(imgs)} image(s); give clear, frontal "
                          "photos of the person (or landmarks with at least one present frame)", frame=0)
    if backend == "dlib":
        emb, crops, meta = _dlib_embed(imgs, pts, remove_background, dilation, alignment)
        mean = emb[present].mean(0)
    else:
        emb, crops, meta = _insightface_embed(imgs, pts, remove_background, dilation, insightface_root,
                                              insightface_model)
        mean = emb[present].mean(0)
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
    meta.update({"image_sizes": [(int(im.shape[1]), int(im.shape[0])) for im in imgs],
                 "remove_background": bool(remove_background), "dilation": float(dilation),
                 "background_fill": BACKGROUND_FILL[backend] if remove_background else None,
                 "landmarks": "given" if landmarks is not None else "mediapipe FaceLandmarker",
                 "distance": "euclidean" if backend == "dlib" else "cosine",
                 "threshold": SAME_PERSON_THRESHOLD[backend]})
    return FaceEmbedding(embeddings=emb, mean=mean.astype(np.float32), present=present, backend=backend,
                         dim=EMBEDDING_DIM[backend], crops=crops, meta=meta,
                         face_images=_aligned_faces(imgs, pts, present, CLIP_FACE_SIZE))


#: Side of :attr:`FaceEmbedding.face_images` (IP-Adapter-FaceID-Plus's CLIP-vision face crop for SD1.5).
CLIP_FACE_SIZE = 224


def _aligned_faces(imgs, pts, present, size: int) -> np.ndarray:
    """ArcFace-template-aligned ``size``² RGB crops with background (zeros outside the image, as InsightFace's
    ``norm_crop``), uint8 ``[N, size, size, 3]``; zeros for faceless images."""
    import cv2

    out = np.zeros((len(imgs), size, size, 3), np.uint8)
    for i in np.flatnonzero(present):
        try:
            M = arcface_align(imgs[i], pts[i], size)
        except ValueError:
            continue
        out[i] = cv2.warpAffine(imgs[i], M, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    return out
