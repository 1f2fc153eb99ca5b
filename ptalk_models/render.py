"""Piecewise-affine warp renderer: reference photo + driving face landmarks -> video frames (numpy + OpenCV).

The "talking photo" renderer of the PortraitTalk foundation path. For each driving frame the reference
portrait is warped so that its MediaPipe face mesh lands on the driving landmarks (the classic
piecewise-affine warp used by active appearance models, Cootes et al. 2001; here on MediaPipe's
face-mesh triangles), and an opened mouth gets a synthetic oral cavity and teeth.

How it works (all in a face crop, so any image size and aspect ratio is cheap):

* **Crop.** The face bounding box (all 478 reference landmarks) expanded ``crop_scale`` times (default
  1.9) about its centre and clipped to the image (it is only extended past the image, with replicated
  border pixels, when the face itself touches the image edge). Pixels outside the crop are never touched:
  they are bit-identical to the reference.
* **Mesh.** MediaPipe's own 852 face-mesh triangles (:mod:`.topology`), plus strips closing the mouth
  and eye holes, plus two rings of triangles between the face oval and the crop border: each face-oval
  point casts a ray from the oval centroid to the crop border; the border point is a fixed anchor, an
  intermediate ring point (45 % of the way out) follows half of the oval point's motion. The warp is
  therefore continuous, and exactly zero on the crop border and outside the rings (crop corners), so the
  paste has no seam; a narrow feather band at the crop border (``feather``, fraction of the crop size)
  blends the warped crop into the untouched background on top of that.
* **Warp.** Per frame the target triangles are rasterised into a triangle-id map
  (``cv2.fillConvexPoly``, 1/16 px precision; mesh triangles are drawn far-to-near by landmark depth z so
  the nearer surface wins where a turned face overlaps itself), each pixel's source position is its
  triangle's inverse affine map (vectorised numpy), and one ``cv2.remap`` (bilinear) samples the reference.
  The triangulation is built once per reference; a frame whose motion would fold the border rings
  (a very large head movement) is rendered with a larger crop instead.
* **Mouth.** The mouth hole of the mesh is closed by three strips: one riding on the upper inner lip and
  one on the lower inner lip, each carrying its half of the reference's mouth interior (visible teeth
  stay with their lip, rigidly while the mouth is at least as open as in the reference, squeezed when it
  is more closed), and a middle strip that opens up between them. With ``mouth_fill`` on, that newly
  opened band is painted (anti-aliased) with a dark oral cavity -- the reference's lip colour shifted to
  red and darkened, darkest in the middle, a faint tongue tone low in a wide-open mouth -- an off-white
  upper-teeth band under the upper lip (only the part the reference's own teeth do not already show)
  and, when wide open, a lower-teeth band. Colours come from the reference (lip colour, face exposure,
  saturation, so a grayscale photo gets grey teeth). A (nearly) closed reference mouth (inner-lip gap
  under 12 % of the inner mouth width) has no usable interior: there the whole inner-lip opening is
  painted, fading in as the driven aperture exceeds the reference's. Closing an open reference mouth
  just compresses its interior (teeth included) between the lips; nothing is painted.

Limits: it is a 2-D warp of one photo (no new content except the mouth interior): large head turns
stretch the texture, gaze (iris landmarks 468-477) is not re-rendered (the eye moves with the lids),
and closing the eyes stretches the upper-lid skin over the eye.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from . import landmarks as L
from .easing import smoothstep
from .errors import InputError
from .images import ASPECT_TOLERANCE, as_rgb_uint8, aspect_ratio, same_aspect
from .landmarks import FaceLandmarks, NUM_LANDMARKS, inner_lip_gap_px
from .topology import face_mesh_triangles, hole_triangles, strip_triangles

# OpenCV is imported inside the functions that use it, so importing the pack (ComfyUI start-up) stays cheap.

_SHIFT = 4                     # sub-pixel bits for cv2.fillConvexPoly
_SUB = float(1 << _SHIFT)
_RING_FRACTION = 0.45          # intermediate ring position between face oval (0) and crop border (1)
_RING_FOLLOW = 0.5             # fraction of the oval point's displacement the intermediate ring follows
_ESCALATE = (1.0, 1.45, 2.1)   # crop-scale multipliers tried when a frame would fold the border rings
_OPEN_REF_RATIO = 0.12         # reference inner-lip gap / inner mouth width above which its interior is kept
MOUTH_FILLS = ("cavity_and_teeth", "cavity", "none")
"""``mouth_fill`` options: dark cavity with upper (and, wide open, lower) teeth; dark cavity only; nothing
(the opened band then shows the stretched lip line of the reference)."""
_UPPER_MID = np.array(L.LIPS_INNER_UPPER[1:-1])   # inner-lip points between the corners (78, 308)
_LOWER_MID = np.array(L.LIPS_INNER_LOWER[1:-1])


# ----------------------------------------------------------------------------------------------- inputs

def _as_image(image, name: str) -> np.ndarray:
    """One ``uint8 [H, W, 3]`` RGB image from anything :func:`.images.as_rgb_uint8` accepts
    (uint8 or 0-1 float; grayscale ``[H, W]``/``[H, W, 1]``, RGB, RGBA with alpha dropped).

    Raises :class:`~ptalk_models.errors.InputError` with ``argument`` = ``name`` (the caller's parameter)."""
    try:
        img = as_rgb_uint8(image, name)
    except ValueError as e:
        raise InputError(name, str(e)) from None
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 3:
        raise InputError(name, f"{name}: expected one image [H, W, C], got a batch of shape {img.shape};",
                         "pass one frame")
    if img.shape[0] < 8 or img.shape[1] < 8:
        raise InputError(name, f"{name} is too small ({img.shape[1]}x{img.shape[0]} px);", "need at least 8x8")
    return img


def check_aspect(image_wh: tuple[int, int], lm_wh: tuple[int, int], image_name: str, lm_name: str) -> None:
    """Raise ValueError unless two (width, height) pixel sizes have the same aspect ratio by the pack's one rule
    (:func:`ptalk_models.images.same_aspect`, relative tolerance :data:`~ptalk_models.images.ASPECT_TOLERANCE`);
    the message names ``image_name`` / ``lm_name`` and the fix."""
    if not same_aspect(image_wh, lm_wh):
        a, b = aspect_ratio(image_wh), aspect_ratio(lm_wh)
        raise ValueError(
            f"{image_name} is {image_wh[0]}x{image_wh[1]} px (aspect {a:.4f}) but {lm_name} refer to a "
            f"{lm_wh[0]}x{lm_wh[1]} image (aspect {b:.4f}); the aspect ratios must match within "
            f"{ASPECT_TOLERANCE:.0%}. "
            f"Detect the landmarks on this same image, or resize/crop the image to {lm_wh[0]}x{lm_wh[1]} "
            "(same framing) before rendering.")


def aperture_px(pts_px: np.ndarray) -> float:
    """Mean inner-lip gap in pixels (:func:`ptalk_models.landmarks.inner_lip_gap_px`) of one frame's
    ``[478, 2]`` pixel points."""
    return float(inner_lip_gap_px(pts_px))


# ----------------------------------------------------------------------------------------------- layout

@dataclass
class _Layout:
    """Crop and triangulation for one crop scale (computed once per reference)."""
    x0: int
    y0: int
    cw: int
    ch: int
    ref_crop: np.ndarray        # uint8 [ch, cw, 3]
    src_v: np.ndarray           # float64 [V, 2] source vertices in crop coords (478 face + ring + border)
    tris: np.ndarray            # int32 [N, 3] vertex indices; mesh triangles last
    n_static: int               # first n_static triangles (rings, holes) are drawn in fixed order
    ring_idx: np.ndarray        # int32 [R] vertex indices of the intermediate ring
    mu_idx: np.ndarray          # int32 [9] mouth mid-line vertices riding on the upper inner lip
    ml_idx: np.ndarray          # int32 [9] ... riding on the lower inner lip
    ring_oval: np.ndarray       # int32 [R] face-oval landmark each ring point follows
    ring_tri_slice: slice       # triangles between oval, ring and border (fold check)
    src_sign: np.ndarray        # float64 [N] sign of each triangle's source area
    xs: np.ndarray              # float32 [ch, cw] pixel x
    ys: np.ndarray              # float32 [ch, cw] pixel y
    paste: tuple                # (img_y0, img_y1, img_x0, img_x1, crop_y0, crop_x0)
    weight: np.ndarray | None   # float32 [ch, cw, 1] feather weight, None when no band is needed
    bands: tuple = ()           # (row slice, col slice) rectangles of the paste area holding every weight < 1


def _ray_to_box(c: np.ndarray, d: np.ndarray, w: float, h: float) -> np.ndarray:
    """Smallest t > 0 with c + t d on the border of [0, w] x [0, h] (c inside); d: [R, 2]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = np.where(d[:, 0] > 0, (w - c[0]) / d[:, 0], np.where(d[:, 0] < 0, -c[0] / d[:, 0], np.inf))
        ty = np.where(d[:, 1] > 0, (h - c[1]) / d[:, 1], np.where(d[:, 1] < 0, -c[1] / d[:, 1], np.inf))
    return np.minimum(tx, ty)


def _tri_areas(v: np.ndarray, tris: np.ndarray) -> np.ndarray:
    a, b, c = v[tris[:, 0]], v[tris[:, 1]], v[tris[:, 2]]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def _strip_between(inner: list[int], outer: list[int], v: np.ndarray) -> list[tuple[int, int, int]]:
    """Quad strip between two closed rings of equal length; each quad split along its shorter diagonal."""
    n = len(inner)
    out = []
    for i in range(n):
        j = (i + 1) % n
        a, b, c, d = inner[i], inner[j], outer[j], outer[i]
        if np.linalg.norm(v[a] - v[c]) <= np.linalg.norm(v[b] - v[d]):
            out += [(a, b, c), (a, c, d)]
        else:
            out += [(a, b, d), (b, c, d)]
    return out


def _ring_triangles_delaunay(v: np.ndarray, oval: list[int], others: list[int]) -> list[tuple[int, int, int]]:
    """Fallback ring triangulation for a non-star-shaped oval: Delaunay of oval + ring points (cv2.Subdiv2D),
    keeping the triangles outside the face-oval polygon."""
    import cv2

    ids = list(oval) + list(others)
    pts = v[ids]
    lo = pts.min(0) - 10
    hi = pts.max(0) + 10
    sub = cv2.Subdiv2D((int(lo[0]), int(lo[1]), int(hi[0] - lo[0]) + 1, int(hi[1] - lo[1]) + 1))
    vid = {}
    for k, p in enumerate(pts):
        try:
            vid[sub.insert((float(p[0]), float(p[1])))] = ids[k]
        except cv2.error:
            continue
    poly = v[oval].astype(np.float32).reshape(-1, 1, 2)
    out = []
    for t in sub.getTriangleList():
        tri = []
        for q in t.reshape(3, 2):
            # Subdiv2D vertex ids start at 4 (0..3 are the virtual outer vertices)
            k, _ = sub.findNearest((float(q[0]), float(q[1])))
            if k not in vid:
                tri = None
                break
            tri.append(vid[k])
        if tri is None or len(set(tri)) < 3:
            continue
        cen = v[tri].mean(0)
        if cv2.pointPolygonTest(poly, (float(cen[0]), float(cen[1])), False) < 0:
            out.append(tuple(tri))
    return out


def _build_layout(img: np.ndarray, ref_px: np.ndarray, crop_scale: float, feather: float) -> _Layout:
    import cv2

    H, W = img.shape[:2]
    face = ref_px[:NUM_LANDMARKS]
    lo, hi = face.min(0), face.max(0)
    c = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo) * crop_scale
    half = np.maximum(half, 0.5 * max(hi[0] - lo[0], hi[1] - lo[1]) * 0.75 * crop_scale)  # not too thin
    margin = 0.08 * (hi - lo).max() + 2.0
    # clip to the image, but always contain the face with a margin (padding past the image edge if needed)
    x0 = int(np.floor(max(c[0] - half[0], min(0.0, lo[0] - margin))))
    y0 = int(np.floor(max(c[1] - half[1], min(0.0, lo[1] - margin))))
    x1 = int(np.ceil(min(c[0] + half[0], max(float(W), hi[0] + margin))))
    y1 = int(np.ceil(min(c[1] + half[1], max(float(H), hi[1] + margin))))
    cw, ch = x1 - x0, y1 - y0

    pad = (max(0, -y0), max(0, y1 - H), max(0, -x0), max(0, x1 - W))
    if any(pad):
        padded = cv2.copyMakeBorder(img, *pad, cv2.BORDER_REPLICATE)
        ref_crop = padded[y0 + pad[0]:y1 + pad[0], x0 + pad[2]:x1 + pad[2]]
    else:
        ref_crop = img[y0:y1, x0:x1]
    ref_crop = np.ascontiguousarray(ref_crop)

    off = np.array([x0, y0], np.float64)
    face_v = ref_px[:NUM_LANDMARKS].astype(np.float64) - off
    oval = list(L.FACE_OVAL)
    o = face_v[oval]
    cen = o.mean(0)
    d = o - cen
    t_b = _ray_to_box(cen, d, cw - 1.0, ch - 1.0)
    t_b = np.maximum(t_b, 1.0 + 1e-3)
    border = cen + d * t_b[:, None]
    ring = o + _RING_FRACTION * (border - o)
    R = len(oval)
    ring_idx = np.arange(NUM_LANDMARKS, NUM_LANDMARKS + R, dtype=np.int32)
    border_idx = np.arange(NUM_LANDMARKS + R, NUM_LANDMARKS + 2 * R, dtype=np.int32)
    # mouth interior: mid-line between the inner lips, as two vertex copies (one riding on the upper lip,
    # one on the lower lip) so what is inside a reference's open mouth follows its lip; the band between
    # the copies is the newly opened cavity
    mid = 0.5 * (face_v[_UPPER_MID] + face_v[_LOWER_MID])
    n_mid = len(_UPPER_MID)
    mu_idx = np.arange(NUM_LANDMARKS + 2 * R, NUM_LANDMARKS + 2 * R + n_mid, dtype=np.int32)
    ml_idx = mu_idx + n_mid
    src_v = np.concatenate([face_v, ring, border, mid, mid])

    ang = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
    dang = np.diff(np.append(ang, ang[0] + np.sign(ang[-1] - ang[0]) * 2 * np.pi))
    star = (np.all(dang > 0) or np.all(dang < 0)) and abs(abs(dang.sum()) - 2 * np.pi) < 1e-6
    if star:
        ring_tris = (_strip_between(oval, list(ring_idx), src_v)
                     + _strip_between(list(ring_idx), list(border_idx), src_v))
    else:
        ring_tris = _ring_triangles_delaunay(src_v, oval, list(ring_idx) + list(border_idx))
    holes = hole_triangles()
    c0, c1 = L.LIPS_INNER_UPPER[0], L.LIPS_INNER_UPPER[-1]
    mu_line = [c0] + list(mu_idx) + [c1]
    ml_line = [c0] + list(ml_idx) + [c1]
    mouth = (strip_triangles(L.LIPS_INNER_UPPER, mu_line) + strip_triangles(mu_line, ml_line)
             + strip_triangles(ml_line, L.LIPS_INNER_LOWER))
    hole_tris = np.concatenate([np.array(mouth, np.int32), holes["right_eye"], holes["left_eye"]])
    tris = np.concatenate([np.array(ring_tris, np.int32).reshape(-1, 3), hole_tris,
                           face_mesh_triangles()]).astype(np.int32)
    n_ring = len(ring_tris)
    src_area = _tri_areas(src_v, tris)

    ys, xs = np.mgrid[0:ch, 0:cw].astype(np.float32)

    # paste rectangle (crop ∩ image) and feather band on crop sides that lie inside the image
    iy0, iy1, ix0, ix1 = max(0, y0), min(H, y1), max(0, x0), min(W, x1)
    band = max(1.0, feather * min(cw, ch))
    weight = None
    if feather > 0:
        wx = np.ones(cw, np.float32)
        wy = np.ones(ch, np.float32)
        r = np.arange(cw, dtype=np.float32)
        q = np.arange(ch, dtype=np.float32)
        if x0 > 0:
            wx = np.minimum(wx, (r + 0.5) / band)
        if x1 < W:
            wx = np.minimum(wx, (cw - 0.5 - r) / band)
        if y0 > 0:
            wy = np.minimum(wy, (q + 0.5) / band)
        if y1 < H:
            wy = np.minimum(wy, (ch - 0.5 - q) / band)
        wgt = smoothstep(np.minimum(wy[:, None], wx[None, :]))
        if (wgt < 1).any():
            weight = wgt[:, :, None].astype(np.float32)
    bands = ()
    if weight is not None:
        bands = _feather_bands(wy >= 1, wx >= 1, (iy0 - y0, iy1 - y0), (ix0 - x0, ix1 - x0))

    return _Layout(x0=x0, y0=y0, cw=cw, ch=ch, ref_crop=ref_crop, src_v=src_v, tris=tris,
                   n_static=n_ring + len(hole_tris), ring_idx=ring_idx, mu_idx=mu_idx, ml_idx=ml_idx,
                   ring_oval=np.array(oval, np.int32), ring_tri_slice=slice(0, n_ring),
                   src_sign=np.sign(src_area), xs=xs, ys=ys,
                   paste=(iy0, iy1, ix0, ix1, iy0 - y0, ix0 - x0), weight=weight, bands=bands)


def _feather_bands(row_full: np.ndarray, col_full: np.ndarray, rows: tuple[int, int],
                   cols: tuple[int, int]) -> tuple:
    """Rectangles (row slice, col slice), in paste-area coordinates, covering every pixel of the paste area
    (crop rows ``rows[0]:rows[1]``, cols ``cols[0]:cols[1]``) whose feather weight is below 1.

    ``row_full`` / ``col_full``: bool per crop row / column, True where that coordinate's own weight is >= 1
    (the weight is ``smoothstep(min(row weight, col weight))``, so it is 1 exactly where both are). Full-weight
    rows and columns form one contiguous interior; the bands are what lies above, below, left and right of it
    (blending a pixel of weight 1 gives the warped value back, so covering a few more pixels is harmless).
    """
    r = row_full[rows[0]:rows[1]]
    c = col_full[cols[0]:cols[1]]
    h, w = len(r), len(c)
    if not r.any() or not c.any():
        return ((slice(0, h), slice(0, w)),)
    r0, r1 = int(np.argmax(r)), h - int(np.argmax(r[::-1]))
    c0, c1 = int(np.argmax(c)), w - int(np.argmax(c[::-1]))
    out = []
    if r0 > 0:
        out.append((slice(0, r0), slice(0, w)))
    if r1 < h:
        out.append((slice(r1, h), slice(0, w)))
    if c0 > 0:
        out.append((slice(r0, r1), slice(0, c0)))
    if c1 < w:
        out.append((slice(r0, r1), slice(c1, w)))
    return tuple(out)


# ------------------------------------------------------------------------------------------- mouth fill

def _reference_colours(img: np.ndarray, ref_px: np.ndarray) -> dict:
    """Lip colour, teeth colour and image saturation sampled from the reference (float32 RGB 0-255)."""
    import cv2

    H, W = img.shape[:2]
    pts = ref_px[:, :2]
    lo = np.floor(pts[L.FACE_OVAL].min(0)).astype(int) - 2
    hi = np.ceil(pts[L.FACE_OVAL].max(0)).astype(int) + 3
    x0, y0 = max(0, lo[0]), max(0, lo[1])
    x1, y1 = min(W, hi[0]), min(H, hi[1])
    roi = img[y0:y1, x0:x1].astype(np.float32)
    off = np.array([x0, y0], np.float64)

    def poly_mask(idx):
        m = np.zeros(roi.shape[:2], np.uint8)
        p = np.rint((pts[idx] - off) * _SUB).astype(np.int32)
        cv2.fillPoly(m, [p], 1, cv2.LINE_8, _SHIFT)
        return m.astype(bool)

    lip = poly_mask(L.LIPS_OUTER) & ~poly_mask(L.LIPS_INNER)
    face = poly_mask(L.FACE_OVAL) & ~poly_mask(L.LIPS_OUTER)
    if roi.size == 0 or lip.sum() < 4 or face.sum() < 16:
        lip_rgb = np.array([150.0, 90.0, 85.0], np.float32)
        face_px = roi.reshape(-1, 3) if roi.size else np.full((1, 3), 160.0, np.float32)
    else:
        lip_rgb = np.median(roi[lip], axis=0).astype(np.float32)
        face_px = roi[face]
    luma = face_px @ np.array([0.299, 0.587, 0.114], np.float32)
    bright = float(np.percentile(luma, 90)) if len(luma) else 180.0
    sat = float((lip_rgb.max() - lip_rgb.min()) / max(lip_rgb.max(), 1.0))
    colourful = float(np.clip(sat / 0.15, 0.0, 1.0))

    teeth = np.array([236.0, 230.0, 212.0], np.float32)
    teeth_luma = float(np.clip(0.92 * bright, 110.0, 232.0))
    teeth = teeth * (teeth_luma / float(teeth @ np.array([0.299, 0.587, 0.114], np.float32)))
    teeth = teeth_luma + colourful * (teeth - teeth_luma)
    lip_grey = float(lip_rgb @ np.array([0.299, 0.587, 0.114], np.float32))
    lip_c = lip_grey + colourful * (lip_rgb - lip_grey)
    # the mouth's inside is redder than the lip surface: shift towards red as far as the photo has colour
    cav = lip_c * (1.0 + colourful * np.array([0.25, -0.2, -0.25], np.float32))
    return {
        "cavity_edge": (cav * 0.30).astype(np.float32),
        "cavity_core": (cav * 0.12).astype(np.float32),
        "tongue": (cav * 0.62).astype(np.float32),
        "teeth": np.clip(teeth, 0, 255).astype(np.float32),
    }


def _interp_poly(u, pu, pv):
    return np.interp(u, np.maximum.accumulate(pu), pv)


def _paint_mouth(crop: np.ndarray, upper: np.ndarray, lower: np.ndarray, mid_up: np.ndarray,
                 mid_lo: np.ndarray, colours: dict, teeth: bool = True, strength: float = 1.0) -> None:
    """Paint oral cavity and teeth into the newly opened part of the mouth of ``crop`` (uint8, in place).

    ``upper``/``lower``: float ``[11, 2]`` target inner-lip polylines (corner 78 -> corner 308, crop
    pixels); ``mid_up``/``mid_lo``: the same-length polylines bounding the band to paint (the newly opened
    band, or ``upper``/``lower`` for the whole opening); ``strength`` in [0, 1] scales the opacity. Pixels are parametrised across the mouth
    (u: 0 at one corner, 1 at the other) and along its perpendicular (v, pixels), so any head roll works.
    """
    ch, cw = crop.shape[:2]
    cl, cr = upper[0], upper[-1]
    axis = cr - cl
    wm = float(np.hypot(*axis))
    if wm < 2.0:
        return
    eu = axis / wm
    ev = np.array([-eu[1], eu[0]])

    def uv(poly):
        q = poly - cl
        return q @ eu / wm, q @ ev

    (u_u, v_u), (u_l, v_l), (u_mu, v_mu), (u_ml, v_ml) = uv(upper), uv(lower), uv(mid_up), uv(mid_lo)
    box = np.vstack([mid_up, mid_lo])
    bx0 = max(0, int(np.floor(box[:, 0].min())) - 2)
    by0 = max(0, int(np.floor(box[:, 1].min())) - 2)
    bx1 = min(cw, int(np.ceil(box[:, 0].max())) + 3)
    by1 = min(ch, int(np.ceil(box[:, 1].max())) + 3)
    if bx1 <= bx0 or by1 <= by0:
        return
    yy, xx = np.mgrid[by0:by1, bx0:bx1].astype(np.float64)
    px, py = xx - cl[0], yy - cl[1]
    u = (px * eu[0] + py * eu[1]) / wm
    v = px * ev[0] + py * ev[1]
    lip_u = _interp_poly(u, u_u, v_u)        # upper inner lip edge
    lip_l = _interp_poly(u, u_l, v_l)        # lower inner lip edge
    top = _interp_poly(u, u_mu, v_mu)        # newly opened band
    bot = np.maximum(_interp_poly(u, u_ml, v_ml), top)

    # anti-aliased coverage of each pixel by the band (vertical overlap x horizontal overlap)
    cov_v = np.clip(np.minimum(bot, v + 0.5) - np.maximum(top, v - 0.5), 0.0, 1.0)
    cov_u = np.clip(np.minimum(1.0, u + 0.5 / wm) - np.maximum(0.0, u - 0.5 / wm), 0.0, 1.0 / wm) * wm
    alpha = cov_v * cov_u * float(strength)
    if alpha.max() <= 0.0:
        return

    gap = np.maximum(lip_l - lip_u, 0.0)
    uc = np.clip(u, 0.0, 1.0)
    across = np.sin(np.pi * uc)                   # 0 at the corners, 1 in the middle
    gap_mid = float(_interp_poly(0.5, u_l, v_l) - _interp_poly(0.5, u_u, v_u))

    # cavity: lit next to the lips, darkest in the middle
    depth = np.clip(np.minimum(v - lip_u, lip_l - v) / np.maximum(0.5 * gap, 0.5), 0, 1)
    deep = smoothstep(depth ** 0.8 * across ** 0.5)
    col = colours["cavity_edge"] + (colours["cavity_core"] - colours["cavity_edge"]) * deep[..., None]
    # faint tongue tone low in a well-opened mouth
    tongue_on = float(np.clip((gap_mid / wm - 0.12) / 0.15, 0, 1))
    if tongue_on > 0:
        t_top = lip_l - 0.38 * gap * across
        tw = (smoothstep((v - t_top) / np.maximum(0.25 * gap, 1.0)) * smoothstep(across / 0.5)
              * 0.55 * tongue_on)
        col = col + (colours["tongue"] * (0.55 + 0.45 * across[..., None]) - col) * tw[..., None]

    # upper teeth: a band under the upper inner lip (only the part the reference's own mouth interior does
    # not already show), tapering and darkening towards the corners (buccal corridors)
    prof = np.sin(np.pi * np.clip((uc - 0.06) / 0.88, 0, 1)) ** 0.6
    h_up = np.minimum(0.12 * wm, 0.55 * gap) * prof
    t_up = np.clip(lip_u + h_up - v + 0.5, 0, 1) * (h_up > 0.3)
    t_lo = 0.0
    low_on = float(np.clip((gap_mid / wm - 0.22) / 0.12, 0, 1))   # lower teeth only when wide open
    if low_on > 0:
        prof_lo = np.sin(np.pi * np.clip((uc - 0.16) / 0.68, 0, 1)) ** 0.7
        h_lo = np.minimum(0.065 * wm, 0.3 * gap) * prof_lo * low_on
        t_lo = np.clip(v - (lip_l - h_lo) + 0.5, 0, 1) * (h_lo > 0.3)
    shade = 0.58 + 0.42 * prof
    shadow = 0.78 + 0.22 * smoothstep((v - lip_u) / np.maximum(0.3 * h_up, 0.75))   # under the upper lip
    # faint gaps between the front teeth (central incisors ~0.17, laterals ~0.13 of the mouth width)
    gaps_u = np.array([0.5, 0.33, 0.67, 0.2, 0.8])
    line = np.exp(-(((uc[..., None] - gaps_u) * wm) / 0.55) ** 2).max(-1)
    teeth_a = np.clip(np.maximum(t_up, t_lo), 0, 1) * float(teeth)
    teeth_rgb = colours["teeth"] * (shade * shadow * (1.0 - 0.16 * line))[..., None]
    col = col + (teeth_rgb - col) * teeth_a[..., None]

    roi = crop[by0:by1, bx0:bx1].astype(np.float32)
    a = alpha[..., None].astype(np.float32)
    crop[by0:by1, bx0:bx1] = np.clip(roi + (col.astype(np.float32) - roi) * a + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- renderer

class WarpRenderer:
    """Warp one reference portrait to driving face landmarks (piecewise-affine, MediaPipe face mesh).

    Args:
        reference_image: ``uint8 [H, W, 3]`` RGB, any size / aspect ratio. Grayscale ``[H, W]`` /
            ``[H, W, 1]``, RGBA ``[H, W, 4]`` (alpha dropped) and 0-1 float images are converted
            (:func:`ptalk_models.images.as_rgb_uint8`); output frames are always RGB.
        reference: :class:`FaceLandmarks` of that image (frame 0 is used; normalised coordinates, so they
            may have been detected on a resized copy with the same aspect ratio).
        crop_scale: face-crop size as a multiple of the landmark bounding box (default 1.9).
        feather: width of the paste feather band as a fraction of the crop's smaller side (default 0.06;
            0 disables it).
        mouth_fill: what to paint in the newly opened part of the mouth, one of :data:`MOUTH_FILLS`
            (``"cavity_and_teeth"`` default, ``"cavity"``, ``"none"``); True/False mean the first/last.

    Raises:
        InputError (a ValueError) whose ``argument`` names the parameter: ``reference_image`` not a single
            gray/RGB/RGBA image of at least 8x8; ``reference`` not a FaceLandmarks, its ``image_size`` of
            another aspect ratio than ``reference_image`` (more than 1 %), its frame 0 without a face
            (``present`` False) or with non-finite landmarks; bad ``crop_scale`` / ``feather`` / ``mouth_fill``.

    :meth:`render` is deterministic and uses no randomness; one instance is not thread-safe.
    """

    def __init__(self, reference_image: np.ndarray, reference: FaceLandmarks, crop_scale: float = 1.9,
                 feather: float = 0.06, mouth_fill: str | bool = "cavity_and_teeth"):
        if not isinstance(reference, FaceLandmarks):
            raise InputError("reference", f"reference must be a FaceLandmarks, got {type(reference).__name__}")
        img = _as_image(reference_image, "reference_image")
        H, W = img.shape[:2]
        try:
            check_aspect((W, H), reference.image_size, "reference_image", "reference landmarks")
        except ValueError as e:
            raise InputError("reference", str(e)) from None
        if len(reference) == 0 or not bool(reference.present[0]):
            raise InputError("reference", "reference landmarks: frame 0 has no face (present=False);",
                             "detect the face on the reference image first (a frontal, unoccluded face is needed)")
        pts = reference.points[0]
        if not np.isfinite(pts).all():
            raise InputError("reference", "reference landmarks: frame 0 contains NaN/inf coordinates")
        if not (1.0 <= float(crop_scale) <= 6.0):
            raise InputError("crop_scale", f"crop_scale must be in [1, 6] (multiple of the face box), got {crop_scale}")
        if not (0.0 <= float(feather) <= 0.3):
            raise InputError("feather", f"feather must be in [0, 0.3] (fraction of the crop size), got {feather}")
        if isinstance(mouth_fill, (bool, np.bool_)):
            mouth_fill = MOUTH_FILLS[0] if mouth_fill else "none"
        if mouth_fill not in MOUTH_FILLS:
            raise InputError("mouth_fill", f"mouth_fill must be one of {MOUTH_FILLS}, got {mouth_fill!r}")
        self.image = img
        self.width, self.height = W, H
        self.crop_scale = float(crop_scale)
        self.feather = float(feather)
        self.mouth_fill = mouth_fill
        self._wh = np.array([W, H], np.float64)
        self.ref_px = pts[:, :2].astype(np.float64) * self._wh
        self.ref_z = pts[:, 2].astype(np.float64)
        self.ref_aperture_px = aperture_px(self.ref_px)
        inner_width = float(np.linalg.norm(self.ref_px[L.LIPS_INNER_UPPER[0]] - self.ref_px[L.LIPS_INNER_UPPER[-1]]))
        #: whether the reference mouth is open enough (gap >= 12 % of the inner mouth width) for its own
        #: interior (teeth) to be kept and carried by the lips; otherwise openings are painted entirely
        self.ref_mouth_open = self.ref_aperture_px >= _OPEN_REF_RATIO * max(inner_width, 1.0)
        self._colours = _reference_colours(img, self.ref_px)
        self._layouts: dict[float, _Layout] = {}

    # --------------------------------------------------------------------------------------------------
    def _layout(self, mult: float) -> _Layout:
        lay = self._layouts.get(mult)
        if lay is None:
            lay = _build_layout(self.image, self.ref_px, self.crop_scale * mult, self.feather)
            self._layouts[mult] = lay
        return lay

    def crop_box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` pixel box (x1/y1 exclusive) of the base face crop, clipped to the image.

        Outside it (and outside the enlarged crops used only for very large head motion) the output is
        bit-identical to the reference image.
        """
        lay = self._layout(1.0)
        iy0, iy1, ix0, ix1 = lay.paste[:4]
        return ix0, iy0, ix1, iy1

    def _target_vertices(self, lay: _Layout, tgt_px: np.ndarray) -> np.ndarray:
        off = np.array([lay.x0, lay.y0], np.float64)
        v = lay.src_v.copy()
        v[:NUM_LANDMARKS] = tgt_px - off
        disp = tgt_px[lay.ring_oval] - self.ref_px[lay.ring_oval]
        v[lay.ring_idx] += _RING_FOLLOW * disp
        # mouth mid-line copies: rigidly attached to their lip while the mouth is at least as open as in
        # the reference; squeezed proportionally when it is more closed
        ur, lr = self.ref_px[_UPPER_MID], self.ref_px[_LOWER_MID]
        ut, lt = v[_UPPER_MID], v[_LOWER_MID]
        gap_r = np.linalg.norm(ur - lr, axis=1)
        gap_t = np.linalg.norm(ut - lt, axis=1)
        f = np.clip(gap_t / np.maximum(gap_r, 1e-6), 0.0, 1.0)[:, None]
        mid = 0.5 * (ur + lr)
        v[lay.mu_idx] = ut + f * (mid - ur)
        v[lay.ml_idx] = lt + f * (mid - lr)
        return v

    def render(self, points: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Render one frame: the reference warped to ``points``.

        The reference with :meth:`render_patch`'s patch pasted in (bit-identical to compositing them).

        Args:
            points: float ``[478, 3]`` (or ``[478, 2]``) driving landmarks, normalised like
                :class:`FaceLandmarks` (x / width, y / height; z optional, used only for draw order).
            out: optional ``uint8 [H, W, 3]`` array to write into (e.g. a slice of a video buffer).
        Returns:
            ``uint8 [H, W, 3]`` RGB frame at the reference image's size.
        Raises:
            ValueError: wrong points shape or non-finite values; wrong ``out`` shape/dtype.
        """
        if out is None:
            out = np.empty_like(self.image)
        elif out.shape != self.image.shape or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 {self.image.shape}, got {out.dtype} {out.shape}")
        patch, x, y = self.render_patch(points)
        out[...] = self.image
        out[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        return out

    def render_patch(self, points: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Render only the part of the frame that differs from the reference: ``(patch, x, y)``.

        ``patch`` is ``uint8 [h, w, 3]`` RGB, the face crop (already feathered into the reference) whose top-left
        corner lies at column ``x``, row ``y`` of the reference image; every pixel outside it equals the
        reference. Its size is the face crop's (:meth:`crop_box`, or an enlarged crop for very large head
        motion), never the photo's, so the cost of a frame does not depend on the photo size: a streamed
        encoder composites it into the unchanging photo (:class:`ptalk_models.media.PatchedFrame`).
        ``points`` and the errors are as for :meth:`render`; the patch is a fresh array (it may be a
        non-contiguous view of one).
        """
        p = np.asarray(points, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != NUM_LANDMARKS or p.shape[1] not in (2, 3):
            raise InputError("points",
                             f"points must be [{NUM_LANDMARKS}, 3] normalised landmarks, got {tuple(p.shape)}")
        if not np.isfinite(p[:, :2]).all():
            raise InputError("points", "points contain NaN/inf;", "mark such frames present=False instead")
        tgt_px = p[:, :2] * self._wh
        tgt_z = p[:, 2] if p.shape[1] == 3 else self.ref_z

        # pick the smallest crop whose border rings do not fold under this motion
        for mult in _ESCALATE:
            lay = self._layout(mult)
            tv = self._target_vertices(lay, tgt_px)
            ring = lay.tris[lay.ring_tri_slice]
            sign = lay.src_sign[lay.ring_tri_slice]
            if np.all((_tri_areas(tv, ring) * sign > 0) | (sign == 0)):
                break

        warped = self._warp(lay, tv, tgt_z)
        if self.mouth_fill != "none":
            c0, c1 = tv[L.LIPS_INNER_UPPER[0]], tv[L.LIPS_INNER_UPPER[-1]]
            mu = np.vstack([c0, tv[lay.mu_idx], c1])
            ml = np.vstack([c0, tv[lay.ml_idx], c1])
            up, lo = tv[L.LIPS_INNER_UPPER], tv[L.LIPS_INNER_LOWER]
            strength = 1.0
            if not self.ref_mouth_open:
                # (nearly) closed reference: its thin mouth interior is no use; the whole opening is painted,
                # fading in as the driven aperture exceeds the reference's
                ap_t, ap_r = aperture_px(tgt_px), self.ref_aperture_px
                strength = float(np.clip((ap_t - 1.1 * ap_r - 0.5) / (ap_r + 1.5), 0.0, 1.0))
                mu, ml = up, lo
            if strength > 0 and np.max(np.linalg.norm(mu - ml, axis=1)) > 0.25:
                _paint_mouth(warped, up, lo, mu, ml, self._colours, teeth=self.mouth_fill == "cavity_and_teeth",
                             strength=strength)

        iy0, iy1, ix0, ix1, cy0, cx0 = lay.paste
        patch = warped[cy0:cy0 + (iy1 - iy0), cx0:cx0 + (ix1 - ix0)]
        if lay.weight is not None:
            # feather: blend into the reference only where the weight is below 1 (the bands along the crop
            # sides inside the image); elsewhere the warped pixels are kept as they are
            w = lay.weight[cy0:cy0 + (iy1 - iy0), cx0:cx0 + (ix1 - ix0)]
            ref_area = self.image[iy0:iy1, ix0:ix1]
            for rs, cs in lay.bands:
                src, ref = patch[rs, cs], ref_area[rs, cs]
                blended = ref + (src.astype(np.float32) - ref) * w[rs, cs]
                patch[rs, cs] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        return patch, ix0, iy0

    def _warp(self, lay: _Layout, tv: np.ndarray, tgt_z: np.ndarray) -> np.ndarray:
        import cv2

        tris = lay.tris
        ns = lay.n_static
        # mesh triangles far-to-near (MediaPipe z: smaller = nearer) so the nearer surface is drawn last
        zmesh = tgt_z[tris[ns:]].mean(1)
        order = np.concatenate([np.arange(ns), ns + np.argsort(-zmesh, kind="stable")])
        tris = tris[order]
        T = tv[tris]                  # [N, 3, 2] target
        S = lay.src_v[tris]           # [N, 3, 2] source
        N = len(tris)

        # inverse affine (target -> source) per triangle, u = a_u x + b_u y + c_u (v likewise), in closed form
        # from the edge vectors: [a b] = F E^-1 with E = (t1 - t0, t2 - t0), F = (s1 - s0, s2 - s0)
        e1, e2 = T[:, 1] - T[:, 0], T[:, 2] - T[:, 0]
        f1, f2 = S[:, 1] - S[:, 0], S[:, 2] - S[:, 0]
        det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        bad = np.abs(det) < 1e-3      # |det| = 2 x target area in px^2
        inv = (1.0 / np.where(bad, 1.0, det))[:, None]
        a = (f1 * e2[:, 1:2] - f2 * e1[:, 1:2]) * inv   # [N, 2] d(u, v)/dx
        b = (f2 * e1[:, 0:1] - f1 * e2[:, 0:1]) * inv   # [N, 2] d(u, v)/dy
        # degenerate target triangle (a closed lid or lip strip): translate like its first vertex (for the
        # hole strips that is the upper lid / lip margin, so a closed eye's line shows lashes, not sclera)
        a[bad] = (1.0, 0.0)
        b[bad] = (0.0, 1.0)
        c = S[:, 0] - a * T[:, 0, 0:1] - b * T[:, 0, 1:2]
        tab = np.empty((N + 1, 6), np.float32)
        tab[:N, 0], tab[:N, 1], tab[:N, 2] = a[:, 0], b[:, 0], c[:, 0]
        tab[:N, 3], tab[:N, 4], tab[:N, 5] = a[:, 1], b[:, 1], c[:, 1]
        tab[N] = (1, 0, 0, 0, 1, 0)   # background: identity

        ids = np.full((lay.ch, lay.cw), N, np.uint16)
        Ti = np.rint(T * _SUB).astype(np.int32)
        # degenerate triangles first (they only claim the pixels on their line that nothing else covers)
        fill, line8 = cv2.fillConvexPoly, cv2.LINE_8
        draw = np.concatenate([np.flatnonzero(bad), np.flatnonzero(~bad)])
        for k, poly in zip(draw.tolist(), Ti[draw]):
            fill(ids, poly, k, line8, _SHIFT)

        # per pixel, its triangle's affine map: map = a x + b y + c, gathered one coefficient at a time from
        # contiguous columns (same float32 operations and order as a [ch, cw, 6] gather, ~2.5x faster)
        xs, ys = lay.xs, lay.ys
        idx = ids.astype(np.intp)
        maps = []
        for k in (0, 3):
            m = np.take(np.ascontiguousarray(tab[:, k]), idx)
            m *= xs
            t = np.take(np.ascontiguousarray(tab[:, k + 1]), idx)
            t *= ys
            m += t
            m += np.take(np.ascontiguousarray(tab[:, k + 2]), idx)
            maps.append(m)
        map_x, map_y = maps
        return cv2.remap(lay.ref_crop, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def iter_render(renderer: WarpRenderer, sequence: FaceLandmarks, even_size: bool = False,
                patches: bool = False) -> Iterator[np.ndarray]:
    """Yield the frames of ``sequence`` rendered by ``renderer``, one by one.

    Memory stays at one frame, for streaming straight into a video encoder; build the renderer first, so bad
    references fail before any encoding starts. ``even_size`` crops the last row/column when the
    height/width is odd (H.264 in yuv420p needs even sizes). Frames with ``present == False`` are the
    reference unchanged.

    Yields uint8 ``[H, W, 3]`` fresh arrays, or with ``patches`` :class:`ptalk_models.media.PatchedFrame`
    objects: the reference (the same array object every time, cropped by ``even_size``) plus the face-crop
    patch of :meth:`WarpRenderer.render_patch` -- no full-size frame is made, so the cost per frame depends on
    the face crop, not on the photo size (``np.asarray`` of one gives the full frame, bit-identical to the
    array the plain mode yields).

    Raises :class:`~ptalk_models.errors.InputError` (``argument`` ``"sequence"``) for a ``sequence`` that is not a
    FaceLandmarks or has another aspect ratio than the renderer's image; ``"points"`` (from
    :meth:`WarpRenderer.render_patch`) for a frame of malformed or non-finite landmarks.
    """
    from .media import PatchedFrame

    if not isinstance(sequence, FaceLandmarks):
        raise InputError("sequence", f"sequence must be a FaceLandmarks, got {type(sequence).__name__}")
    r = renderer
    try:
        check_aspect((r.width, r.height), sequence.image_size, "reference_image", "driving landmarks (sequence)")
    except ValueError as e:
        raise InputError("sequence", str(e)) from None
    h, w = even_dims(r.height, r.width) if even_size else (r.height, r.width)
    if patches:
        background = r.image[:h, :w]
        empty = np.zeros((0, 0, 3), np.uint8)
        for i in range(len(sequence)):
            if not sequence.present[i]:
                yield PatchedFrame(background, empty, 0, 0)
                continue
            patch, x, y = r.render_patch(sequence.points[i])
            yield PatchedFrame(background, patch[:max(0, h - y), :max(0, w - x)], x, y)
        return
    for i in range(len(sequence)):
        frame = r.render(sequence.points[i]) if sequence.present[i] else r.image.copy()
        yield frame[:h, :w] if (h, w) != (r.height, r.width) else frame


def even_dims(height: int, width: int) -> tuple[int, int]:
    """(height, width) rounded down to even numbers (at least 2)."""
    return max(2, height - height % 2), max(2, width - width % 2)


def render_sequence(reference_image: np.ndarray, reference: FaceLandmarks, sequence: FaceLandmarks,
                    progress: Callable[[int, int], None] | None = None, even_size: bool = False,
                    **renderer_kwargs) -> np.ndarray:
    """Render a driving landmark sequence: ``uint8 [T, H, W, 3]`` RGB frames at the reference image's size.

    Args:
        reference_image, reference: as for :class:`WarpRenderer` (``renderer_kwargs`` are passed to it).
        sequence: driving :class:`FaceLandmarks` (T frames). Frames with ``present == False`` are the
            reference image unchanged. Its aspect ratio must match the reference image's within 1 %.
        progress: optional ``callable(frames_done, T)`` called after each frame (1..T). It may raise (e.g.
            ComfyUI's interrupt check) to stop rendering; the exception propagates unchanged.
        even_size: crop an odd last row/column (for H.264 encoders), see :func:`iter_render`.
    Raises:
        ValueError: as :class:`WarpRenderer`, or a ``sequence`` that is not a FaceLandmarks / has another
            aspect ratio.
    """
    frames = None
    T = len(sequence) if isinstance(sequence, FaceLandmarks) else 0
    renderer = WarpRenderer(reference_image, reference, **renderer_kwargs)
    for i, frame in enumerate(iter_render(renderer, sequence, even_size=even_size)):
        if frames is None:
            frames = np.empty((T,) + frame.shape, np.uint8)
        frames[i] = frame
        if progress is not None:
            progress(i + 1, T)
    return frames
