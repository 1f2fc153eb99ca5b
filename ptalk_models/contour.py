"""Head-contour guide: a coarse map of the head's outer shape and position (PortraitTalk §III-B).

PortraitTalk's identity cross-attention is conditioned on a *head contour*, "a coarse Canny edge map of the
previous frame or the reference" made with a "modified Canny with reduced sensitivity to local details"
(arXiv 2412.07754, §III-B). The paper gives no recipe; this module implements that intent as the outline of a
coarse head silhouette, which keeps the head's outer shape and position and has no interior (facial) edges:

1. **Head frame.** From the MediaPipe landmarks (given, or detected with :func:`ptalk_models.face.detect_landmarks`)
   a similarity frame is fixed on the face: origin half-way between forehead (10) and chin (152), u axis along
   the outer eye corners (33 → 263, so head roll is followed), v axis down, unit
   ``s = max(|p10 − p152|, |p234 − p454|)`` pixels.
2. **Downscale + smoothing.** The head region ``u ∈ [−1.1, 1.1], v ∈ [−1.35, 0.85]`` is resampled
   (``cv2.resize`` INTER_AREA, then ``cv2.warpAffine``) to a ``detail`` x ``detail`` work image and smoothed with
   ``cv2.bilateralFilter``: hair strands, skin texture and facial features vanish, the head/background colour
   step stays.
3. **Silhouette.** ``cv2.grabCut`` (Rother, Kolmogorov, Blake 2004, "GrabCut": colour GMMs + graph cut)
   segments the head in the work image, seeded from the landmarks: inside a head ellipse (centre ``(0, −0.2)``,
   semi-axes ``0.85 x 0.95``) probable head, outside it and outside the frame sure background, the face oval
   shrunk to 85 % and a patch just above the forehead landmark (hair or scalp) sure head. It runs on the rows
   down to ``v = 0.3`` only, so neck, collar and shoulders do not enter the colour models. With
   ``use_face_oval`` the face-oval polygon is merged in and below the ear lobes (``v > 0.2``) the silhouette
   *is* the face oval, so the jaw line is present and the neck is excluded; without it the GrabCut region is
   cut flat below the chin (``v > 0.55``). Work pixels outside the frame take the value of the nearest pixel
   inside it. The connected component holding the face centre is kept, its holes filled, and it is smoothed
   by a morphological open + close and a Gaussian blur of ``smoothing`` x ``s``.
4. **Edges.** The smoothed mask is warped back to the frame (bilinear, threshold 0.5) and ``cv2.Canny`` traces
   its boundary: one closed 1-pixel curve, open only where the head leaves the frame (no line is drawn along
   the image border; arcs under a tenth of the longest piece are dropped), dilated to ``thickness`` pixels.

The outline follows the image (a shifted or rotated head gives a shifted or rotated outline) and ignores local
detail and small brightness changes. Frames are processed independently and deterministically (OpenCV's RNG,
which GrabCut's k-means initialisation uses, is re-seeded for every frame). Where hair and background have
similar colours (e.g. blond hair against a bright window) that part of the outline can change from frame to
frame.

A frame without a detectable face has no head to outline: with ``on_missing="empty"`` (the default) its edge
map and mask are all zero, so an all-black frame gives an all-black guide; ``on_missing="error"`` raises
:class:`ContourInputError` naming the frame.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import InputError
from .images import as_rgb_uint8, same_aspect
from .landmarks import CHIN, FACE_OVAL, FOREHEAD, LEFT_EYE_OUTER, NUM_LANDMARKS, RIGHT_EYE_OUTER, FaceLandmarks

# OpenCV is imported inside the functions that use it, so importing the pack (ComfyUI start-up) stays cheap.

SOURCES = ("same", "previous")
ON_MISSING = ("empty", "error")

# Head frame (units of s, v down; forehead landmark 10 at v = -0.5, chin 152 at v = +0.5 for a frontal face).
_ROI_U = (-1.1, 1.1)                       # work region; square, so work pixels are square
_ROI_V = (-1.35, 0.85)
_ELLIPSE = ((0.0, -0.2), (0.85, 0.95))     # centre (u, v), semi-axes (u, v): the head lies inside
_OVAL_CUT_V = 0.20                         # below this, use_face_oval keeps the face oval only (jaw line)
_CHIN_CUT_V = 0.55                         # without the face oval: nothing below this
_SURE_FG = 0.85                            # face oval scaled about its centroid: sure foreground
_CROWN = (0.7, 0.12)                       # sure-head patch above landmark 10: width (x oval width), height
_GRABCUT_ITERS = 4
_GC_MARGIN_V = 0.1                         # GrabCut runs on rows down to the cut level + this
_OUTSIDE_RGB = (255, 0, 255)               # work pixels outside the frame (then sure background)
_MIN_PIECE = 0.1                           # edge pieces shorter than this x the longest are dropped
_CANNY = (64, 128)                         # thresholds on the 0/255 mask: any real boundary passes


def default_thickness(width: int, height: int) -> int:
    """Line width in pixels for a ``width`` x ``height`` frame: 3 px at 512, scaled with the short side."""
    return max(1, int(round(3.0 * min(width, height) / 512.0)))


def _head_frame(px: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Origin (x, y), rotation matrix R (columns = u, v axes in image px) and unit s (px) of the head frame."""
    p10, p152, p234, p454 = px[FOREHEAD], px[CHIN], px[234], px[454]
    e = px[LEFT_EYE_OUTER] - px[RIGHT_EYE_OUTER]
    n = float(np.hypot(*e))
    ex = e / n if n > 1e-6 else np.array([1.0, 0.0])
    ey = np.array([-ex[1], ex[0]])
    s = max(float(np.hypot(*(p152 - p10))), float(np.hypot(*(p454 - p234))), 1.0)
    return 0.5 * (p10 + p152), np.stack([ex, ey], axis=1), s


def _face_to_work(origin, R, s, n: int) -> np.ndarray:
    """2x3 affine: work-pixel index coords (i, j) → full-frame pixel index coords (x, y)."""
    du = (_ROI_U[1] - _ROI_U[0]) / n
    dv = (_ROI_V[1] - _ROI_V[0]) / n
    # (u, v) = (U0 + (i + .5) du, V0 + (j + .5) dv); x_px_continuous = origin + s R (u, v); index = cont - 0.5
    L = s * R @ np.diag([du, dv])
    t = origin + s * R @ np.array([_ROI_U[0] + 0.5 * du, _ROI_V[0] + 0.5 * dv]) - 0.5
    return np.hstack([L, t[:, None]])


def _apply(A: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ A[:, :2].T + A[:, 2]


def _scaled_poly(poly: np.ndarray, k: float) -> np.ndarray:
    c = poly.mean(axis=0)
    return c + k * (poly - c)


def _fill(shape, poly: np.ndarray) -> np.ndarray:
    import cv2

    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return m


def _odd(k: float) -> int:
    k = int(round(k))
    return max(1, k + (1 - k % 2))


def _head_mask_one(img: np.ndarray, px: np.ndarray, detail: int, smoothing: float,
                   use_face_oval: bool) -> np.ndarray:
    """Binary head mask (uint8 0/1, frame size) for one RGB uint8 frame and its landmarks in pixels."""
    import cv2

    H, W = img.shape[:2]
    n = int(detail)
    origin, R, s = _head_frame(px)
    A = _face_to_work(origin, R, s, n)               # work → frame
    # 1. Anti-aliased downscale (INTER_AREA), then the rotation/crop warp to the n x n work image. Pixels
    #    outside the frame get a constant colour and are excluded below (sure background).
    scale = n / (s * (_ROI_U[1] - _ROI_U[0]))
    src, A_src = img, A
    if scale < 0.9:
        sw, sh = max(1, int(round(W * scale))), max(1, int(round(H * scale)))
        src = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
        S = np.array([[sw / W, 0.0], [0.0, sh / H]])
        A_src = np.hstack([S @ A[:, :2], (S @ (A[:, 2] + 0.5) - 0.5)[:, None]])
    work = cv2.warpAffine(src, A_src, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=_OUTSIDE_RGB)
    inframe = np.zeros(src.shape[:2], np.uint8)
    inframe[1:-1, 1:-1] = 1                        # the outermost pixel ring of videos is often an artefact
    valid = cv2.warpAffine(inframe, A_src, (n, n),
                           flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0) > 0
    work = cv2.bilateralFilter(work, 7, 40, 5)     # flattens texture, keeps the head/background colour step

    # 2. GrabCut seeds from the landmarks, in head-frame coordinates (u, v) of each work pixel: inside the head
    #    ellipse probable head, outside it (and outside the frame) sure background, the face oval shrunk to 85 %
    #    and a patch just above the forehead landmark (hair or scalp, always head) sure head; the patch puts the
    #    hair colours into the head model.
    Ainv = cv2.invertAffineTransform(A)
    du, dv = (_ROI_U[1] - _ROI_U[0]) / n, (_ROI_V[1] - _ROI_V[0]) / n
    oval = _apply(Ainv, px[FACE_OVAL])             # work pixel coordinates
    ou = _ROI_U[0] + (oval[:, 0] + 0.5) * du
    vt = _ROI_V[0] + (_apply(Ainv, px[[FOREHEAD]])[0, 1] + 0.5) * dv
    u = np.broadcast_to(_ROI_U[0] + (np.arange(n)[None, :] + 0.5) * du, (n, n))
    v = np.broadcast_to(_ROI_V[0] + (np.arange(n)[:, None] + 0.5) * dv, (n, n))
    (cu, cv_), (au, av) = _ELLIPSE
    inside = ((u - cu) / au) ** 2 + ((v - cv_) / av) ** 2 <= 1.0
    gc = np.where(inside, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    gc[_fill((n, n), _scaled_poly(oval, _SURE_FG)) > 0] = cv2.GC_FGD
    crown = (np.abs(u - 0.5 * (ou.max() + ou.min())) <= 0.5 * _CROWN[0] * (ou.max() - ou.min())) & \
            (v <= vt) & (v >= vt - _CROWN[1])
    gc[crown] = cv2.GC_FGD
    gc[~valid] = cv2.GC_BGD
    oval_mask = _fill((n, n), oval)

    # 3. GrabCut on the rows down to just below the lowest level it decides (the neck, collar and shoulders
    #    further down would put skin and clothing colours into the background model).
    cut = _OVAL_CUT_V if use_face_oval else _CHIN_CUT_V
    rows = int(np.clip(np.ceil((cut + _GC_MARGIN_V - _ROI_V[0]) / (_ROI_V[1] - _ROI_V[0]) * n), 8, n))
    g = np.ascontiguousarray(gc[:rows])
    fg_seed, bg_seed = np.isin(g, (cv2.GC_FGD, cv2.GC_PR_FGD)).any(), np.isin(g, (cv2.GC_BGD, cv2.GC_PR_BGD)).any()
    if fg_seed and bg_seed:
        cv2.setRNGSeed(0)  # GrabCut's GMM initialisation runs k-means++ on OpenCV's RNG: keep it deterministic
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(np.ascontiguousarray(work[:rows]), g, None, bgd, fgd, _GRABCUT_ITERS, cv2.GC_INIT_WITH_MASK)
    fg = np.zeros((n, n), np.uint8)
    fg[:rows] = np.isin(g, (cv2.GC_FGD, cv2.GC_PR_FGD))
    fg = _extend(fg, valid)
    if use_face_oval:
        fg |= oval_mask
        low = v > _OVAL_CUT_V
        fg[low] = oval_mask[low]
    else:
        fg[v > _CHIN_CUT_V] = 0

    # 4. One region: the component holding the face centre, holes filled; coarse shape by open + close
    #    (removes spurs/notches smaller than the kernel) and a Gaussian blur that rounds the outline.
    centre = np.clip(np.round(oval.mean(axis=0)).astype(int), 0, n - 1)
    fg[centre[1], centre[0]] = 1
    fg = _component_at(fg, centre, connectivity=4)
    k = _odd(smoothing * n / (_ROI_U[1] - _ROI_U[0]))
    if k > 1:
        ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        opened = cv2.morphologyEx(fg, cv2.MORPH_OPEN, ker)
        if use_face_oval:
            opened |= oval_mask
        if opened[centre[1], centre[0]]:
            fg = _component_at(opened, centre, connectivity=4)
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, ker)
    # (at least 0.7 work pixels of blur, so that the upscaled outline has no staircase)
    soft = cv2.GaussianBlur(fg.astype(np.float32), (0, 0), max(k / 2.0, 0.7))

    # 5. Back to the frame: bilinear warp of the soft mask, threshold at 0.5, keep the face's component.
    full = cv2.warpAffine(soft, A, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    m = (full >= 0.5).astype(np.uint8)
    x0, y0, w, h = cv2.boundingRect(m)              # components only inside the head's box (faster)
    if w == 0:                                      # the face lies wholly outside the frame
        return m
    sub = m[y0:y0 + h, x0:x0 + w]
    ncomp, lab, stats, _ = cv2.connectedComponentsWithStats(sub, connectivity=8)
    if ncomp > 2:
        cx, cy = np.round(origin - 0.5).astype(int) - (x0, y0)
        if 0 <= cx < w and 0 <= cy < h and lab[cy, cx] > 0:
            keep = lab[cy, cx]
        else:
            keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        m[y0:y0 + h, x0:x0 + w] = lab == keep
    return m


def _extend(fg: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Give each work pixel outside the frame the value of the nearest pixel inside it, so that the smoothing
    and the frame border do not bend the outline where the head leaves the frame."""
    import cv2

    if valid.all() or not valid.any():
        return fg
    _, labels = cv2.distanceTransformWithLabels((~valid).astype(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    return fg[valid][labels - 1]  # labels number the inside pixels 1.. in row-major order


def _component_at(mask01: np.ndarray, xy: np.ndarray, connectivity: int) -> np.ndarray:
    """The connected component of ``mask01`` holding pixel ``xy`` (x, y), with its holes filled (uint8 0/1)."""
    import cv2

    _, lab = cv2.connectedComponents(mask01, connectivity=connectivity)
    comp = (lab == lab[xy[1], xy[0]]).astype(np.uint8)
    cnts, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(comp)
    cv2.drawContours(out, cnts, -1, 1, cv2.FILLED)
    return out


def _edges_from_mask(mask01: np.ndarray, thickness: int) -> np.ndarray:
    """Boundary of a 0/1 mask (uint8 0/255), traced with cv2.Canny and dilated to ``thickness`` px."""
    import cv2

    H, W = mask01.shape
    e = np.zeros((H, W), np.uint8)
    x0, y0, w, h = cv2.boundingRect(mask01)
    if w == 0:
        return e
    # Canny inside the mask's box grown by 3 px (the same result as on the whole frame, faster)
    x0, y0, x1, y1 = max(x0 - 3, 0), max(y0 - 3, 0), min(x0 + w + 3, W), min(y0 + h + 3, H)
    sub = cv2.Canny(np.ascontiguousarray(mask01[y0:y1, x0:x1]) * 255, *_CANNY, L2gradient=True)
    # Where the head leaves the frame the outline is open; drop the small arcs that notches along the frame
    # border leave behind (under a tenth of the longest piece).
    n, lab, stats, _ = cv2.connectedComponentsWithStats(sub, connectivity=8)
    if n > 2:
        area = stats[1:, cv2.CC_STAT_AREA]
        sub[~np.isin(lab, 1 + np.flatnonzero(area >= _MIN_PIECE * area.max()))] = 0
    e[y0:y1, x0:x1] = sub
    if thickness > 1:
        e = cv2.dilate(e, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (thickness, thickness)))
    return e


class ContourInputError(InputError):
    """A bad :func:`head_contour` input, an :class:`~ptalk_models.errors.InputError` raised as
    ``ContourInputError(argument, message)``: ``.argument`` names the parameter (``images``, ``landmarks``,
    ``reference``, ``reference_landmarks``, ``source``, ``on_missing``, ``detail``, ``smoothing``,
    ``thickness``) and the message says what is wrong and how to fix it, without the parameter's name."""


def _as_batch(images, name: str) -> np.ndarray:
    try:
        b = as_rgb_uint8(images, name)
    except ValueError as e:
        raise ContourInputError(name, str(e).removeprefix(f"{name}: ")) from None
    if b.ndim == 3:
        b = b[None]
    if b.ndim != 4 or len(b) == 0:
        raise ContourInputError(name, f"expected an image [H, W, C] or a non-empty batch [T, H, W, C], got shape "
                                f"{tuple(np.shape(images))}")
    return b


def _as_landmarks(lm, name: str) -> FaceLandmarks:
    """``lm`` checked to be a FaceLandmarks (ContourInputError naming ``name`` otherwise)."""
    if isinstance(lm, FaceLandmarks):
        return lm
    raise ContourInputError(name, f"expected FaceLandmarks (PTALK_LANDMARKS), got {type(lm).__name__}; connect a "
                            "Face Landmarks node or leave it unconnected to detect them")


def _landmarks_for(batch: np.ndarray, landmarks: FaceLandmarks | None, name: str,
                   lm_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixel points float64 ``[T, 478, 2]``, present bool ``[T]``) for a batch; detected with MediaPipe when
    ``landmarks`` is None (frames without a face → present False)."""
    T, H, W = batch.shape[:3]
    if landmarks is None:
        from .face import NoFaceError, detect_landmarks

        try:
            landmarks = detect_landmarks(batch, on_missing="keep")
        except NoFaceError:  # not a single face in the batch
            return np.zeros((T, NUM_LANDMARKS, 2)), np.zeros(T, bool)
    landmarks = _as_landmarks(landmarks, lm_name)
    if len(landmarks) not in (1, T):
        raise ContourInputError(lm_name, f"{len(landmarks)} landmark frames for {T} {name} frames; give one landmark "
                                f"frame (used for all) or exactly one per frame")
    lw, lh = landmarks.image_size
    if not same_aspect((lw, lh), (W, H)):
        raise ContourInputError(lm_name, f"the landmarks were detected on {lw}x{lh} images but {name} are {W}x{H} "
                                f"(another aspect ratio); detect the landmarks on these images")
    pts = landmarks.points[..., :2].astype(np.float64) * np.array([W, H], np.float64)
    present = landmarks.present.copy()
    if len(landmarks) == 1 and T > 1:
        pts, present = np.repeat(pts, T, axis=0), np.repeat(present, T)
    return pts, present


def _contours(batch, pts, present, *, detail, smoothing, thickness, use_face_oval, on_missing, progress,
              sources=None):
    """Edge maps and masks (uint8 0/255 ``[T, H, W]``) of a batch; ``sources[t]`` = (input name, description)
    of frame t for error messages."""
    T, H, W = batch.shape[:3]
    edges = np.zeros((T, H, W), np.uint8)
    masks = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        if present[t] and np.isfinite(pts[t]).all():
            m = _head_mask_one(batch[t], pts[t], detail, smoothing, use_face_oval)
            masks[t] = m * 255
            edges[t] = _edges_from_mask(m, thickness)
        elif on_missing == "error":
            inp, what = sources[t] if sources else ("images", f"frame {t} of {T}")
            raise ContourInputError(inp, f"no face in {what} ({W}x{H}), so there is no head to outline; use images "
                                    f"that show a face, or set on_missing to 'empty' for an empty (black) guide")
        if progress is not None:
            progress(t + 1, T)
    return edges, masks


def head_contour(images, landmarks: FaceLandmarks | None = None, *, detail: int = 128, smoothing: float = 0.06,
                 thickness: int = 0, use_face_oval: bool = True, source: str = "same", reference=None,
                 reference_landmarks: FaceLandmarks | None = None, on_missing: str = "empty",
                 progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Coarse head-contour guide per frame (PortraitTalk §III-B "modified Canny"; method in the module docstring).

    Args:
        images: frames, uint8 or float in [0, 1], ``[H, W, C]`` or ``[T, H, W, C]`` with C = 1, 3 or 4
            (gray / RGB / RGBA, alpha ignored). Any size (odd sizes too).
        landmarks: :class:`FaceLandmarks` of ``images`` (``T`` frames, or 1 used for all; same aspect ratio, any
            resolution since points are normalised). None → detected with MediaPipe
            (:func:`ptalk_models.face.detect_landmarks`). Frames flagged ``present=False``, with non-finite
            points, or where detection finds no face have no head to outline: see ``on_missing``.
        detail: side in pixels of the square work image that the head region (2.2 x the face height) is
            resampled to before segmentation, 32–512; lower = coarser outline. 128 ≈ the paper's "coarse".
        smoothing: outline smoothing as a fraction of the face height (morphological open/close kernel and
            Gaussian blur of the head mask), 0–0.3; 0 keeps every notch GrabCut finds.
        thickness: line width in pixels; 0 → :func:`default_thickness` (3 px at 512).
        use_face_oval: merge the landmarks' face oval (jaw line) and, below the ear lobes, use it as the outline
            (neck and shoulders excluded); False → image silhouette only, cut flat below the chin.
        source: ``"same"``: guide[t] from frame t. ``"previous"`` (the paper's use): guide[t] from frame t − 1;
            guide[0] from ``reference`` (resized to the frame size; same aspect ratio) or, without one, from
            frame 0 itself.
        reference: optional image ``[H', W', C]`` (or a one-image batch) for guide[0] when source="previous";
            ignored when source="same".
        reference_landmarks: optional one-frame landmarks of ``reference``; None → detected.
        on_missing: a frame with no face: ``"empty"`` → all-zero edge map and mask (so all-black frames give an
            all-black guide); ``"error"`` → :class:`ContourInputError` naming the frame.
        progress: optional ``callable(done, total)``; may raise to interrupt.

    Returns:
        ``(edges, mask)``: uint8 ``[T, H, W]`` each, values {0, 255}. ``edges`` is the head outline (white on
        black: one closed curve, open only where the head leaves the frame); ``mask`` is the filled head region
        it bounds. Under ``source="previous"`` both come from the previous frame / the reference.

    Raises:
        ContourInputError (an InputError, a ValueError) with ``argument`` = ``"images"`` (bad shape, channels,
            NaN; a faceless frame with ``on_missing="error"``), ``"landmarks"`` / ``"reference_landmarks"``
            (not FaceLandmarks, another length or aspect ratio), ``"reference"`` (another aspect ratio, a batch,
            no face), or the out-of-range parameter (``"source"``, ``"on_missing"``, ``"detail"``,
            ``"smoothing"``, ``"thickness"``).
    """
    if source not in SOURCES:
        raise ContourInputError("source", f"must be one of {SOURCES}, got {source!r}")
    if on_missing not in ON_MISSING:
        raise ContourInputError("on_missing", f"must be one of {ON_MISSING}, got {on_missing!r}")
    if not 32 <= int(detail) <= 512:
        raise ContourInputError("detail", f"must be 32–512 work pixels, got {detail}")
    if not 0.0 <= float(smoothing) <= 0.3:
        raise ContourInputError("smoothing", f"must be 0–0.3 (fraction of the face height), got {smoothing}")
    if int(thickness) < 0:
        raise ContourInputError("thickness", f"must be >= 0 pixels (0 = automatic), got {thickness}")
    batch = _as_batch(images, "images")
    T, H, W = batch.shape[:3]
    opts = dict(detail=int(detail), smoothing=float(smoothing), thickness=int(thickness) or default_thickness(W, H),
                use_face_oval=bool(use_face_oval), on_missing=on_missing, progress=progress)
    pts, present = _landmarks_for(batch, landmarks, "images", "landmarks")
    if source == "same":
        return _contours(batch, pts, present, **opts)
    if reference is None:
        # guide[0] from frame 0, guide[t] from frame t-1: each source frame is computed once
        n = max(T - 1, 1)
        e, m = _contours(batch[:n], pts[:n], present[:n], **opts)
        return np.concatenate([e[:1], e[:T - 1]]), np.concatenate([m[:1], m[:T - 1]])

    # source == "previous" with a reference: sources are [reference, frame 0, …, frame T-2].
    ref = _as_batch(reference, "reference")
    if len(ref) != 1:
        raise ContourInputError("reference", f"expected one image, got a batch of {len(ref)}")
    rh, rw = ref.shape[1:3]
    if not same_aspect((rw, rh), (W, H)):
        raise ContourInputError("reference", f"it is {rw}x{rh} but the frames are {W}x{H} (another aspect ratio); "
                                "crop or resize the reference to the frames' aspect ratio")
    if reference_landmarks is not None:
        reference_landmarks = _as_landmarks(reference_landmarks, "reference_landmarks").frame(0)
    rpts, rpresent = _landmarks_for(ref, reference_landmarks, "reference", "reference_landmarks")
    if (rw, rh) != (W, H):
        import cv2

        ref = cv2.resize(ref[0], (W, H), interpolation=cv2.INTER_AREA if rw > W else cv2.INTER_CUBIC)[None]
        rpts = rpts * np.array([W / rw, H / rh])
    sources = [("reference", "the reference image")] + [("images", f"frame {t} of {T}") for t in range(T - 1)]
    return _contours(np.concatenate([ref, batch[:T - 1]]), np.concatenate([rpts, pts[:T - 1]]),
                     np.concatenate([rpresent, present[:T - 1]]), sources=sources, **opts)

