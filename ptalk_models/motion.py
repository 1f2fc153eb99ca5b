"""Drive a reference face mesh with mouth parameters, blinks and head motion.

Geometry is done in pixels (x * width, y * height, z * width; MediaPipe's z has the scale of x) in a
*face-aligned frame*: origin at the mouth centre (midpoint of the mouth corners 61/291), axis ``a`` along
the eye line (outer eye corners 33 -> 263), axis ``b`` perpendicular to it pointing down the face, unit =
inter-ocular distance (IOD, :func:`ptalk_models.landmarks.inter_ocular_px`). Results are converted back
to normalised coordinates at the end.

:class:`FaceRig` precomputes, once per reference face, one displacement field ``[478, 3]`` (pixels per
unit parameter) for each mouth parameter (open / close / spread / round / press / tuck) and for the
blink. Control points (lip contours, jaw line, eyelids) get explicit displacements, fixed anchors (upper
face, nose) get none, and every other point is interpolated harmonically on MediaPipe's face-mesh
triangulation (discrete Laplace equation, edge weights 1 / length): no overshoot, and since the mesh has
holes at the mouth and the eyes, the upper and lower lips (and lids) move independently even when they
touch. A frame is then ``reference + sum_p coef_p(t) * field_p`` followed by a rigid 3D head
rotation about a pivot near the head centre and a small translation.

Magnitudes (expressiveness 1): ``open = 1`` is an inner-lip gap of 0.35 x IOD
(:data:`ptalk_models.visemes.WIDE_OPEN_IOD`, a wide-open mouth; calibrated speech peaks near 0.2 x IOD);
the lower lip takes 85 % of the gap and the upper lip 15 %, the chin drops ~0.8 x the gap (mandible
rotation about the jaw joint, weighted by depth); blinks close the eyelids fully (upper lid 85 % of the
way); head motion is a few degrees of yaw/pitch/roll and 1-2 % of IOD of translation. Randomness
(blinks, head motion) comes only from ``numpy.random.default_rng(seed)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .easing import smoothstep
from .landmarks import (CHIN, FACE_OVAL, LEFT_EYE, LEFT_EYEBROW, LEFT_IRIS, LIPS_INNER_LOWER,
                        LIPS_INNER_UPPER, LIPS_OUTER, MOUTH_CORNER_LEFT, MOUTH_CORNER_RIGHT, NUM_LANDMARKS,
                        RIGHT_EYE, RIGHT_EYEBROW, RIGHT_IRIS, FaceLandmarks, inner_lip_aperture)
from .mouth_motion import face_axes
from .topology import eye_halves, tesselation_edges
from .visemes import WIDE_OPEN_IOD

# Mouth topology derived from the ordered contours in landmarks.py.
_CORNERS = (MOUTH_CORNER_RIGHT, MOUTH_CORNER_LEFT, LIPS_INNER_UPPER[0], LIPS_INNER_UPPER[-1])
_INNER_UP = LIPS_INNER_UPPER[1:-1]
_INNER_LO = LIPS_INNER_LOWER[1:-1]
_OUTER_UP = LIPS_OUTER[1:10]      # 185 ... 409 (61 -> 291 over the upper lip)
_OUTER_LO = LIPS_OUTER[11:]       # 375 ... 146 (291 -> 61 under the lower lip)
_LIPS = sorted(set(LIPS_OUTER) | set(LIPS_INNER_UPPER) | set(LIPS_INNER_LOWER))
_SUBNASALE = 2
_TMJ_PROXY = (234, 454)           # face-oval points at the ears: depth of the jaw joint

GAP_KNEE_IOD, GAP_MAX_IOD = 0.35, 0.55   # soft saturation of the inner-lip gap (expressiveness > 1)
EYE_REACH_IOD = 0.15              # eye-region points farther than this from the lid contours stay fixed
UPPER_LID_SHARE = 0.85            # a blink moves the upper lid 85 % of the opening, the lower lid 15 %

HEAD_STD_DEG = (2.0, 1.5, 1.0)    # yaw, pitch, roll standard deviation (degrees) at expressiveness 1
HEAD_STD_SHIFT_IOD = (0.02, 0.015)  # x, y translation standard deviation, x IOD
HEAD_TIME_S = 0.6                 # Gaussian smoothing (s) of the head-motion noise
HEAD_SPEECH_NOD_DEG = 1.0         # extra pitch (chin down) at full speech level
HEAD_FADE_IN_S = 0.5              # head motion ramps in from the reference pose over this time
BLINK_INTERVAL_S = (2.0, 6.0)     # uniform inter-blink interval
BLINK_FIRST_S = (0.6, 2.5)        # first blink time
BLINK_DURATION_S = (0.15, 0.25)   # uniform blink duration
BLINK_CLOSE_SHARE = 0.4           # fraction of a blink spent closing (opening is slower)

FIELDS = ("open", "close", "spread", "round", "press", "tuck", "blink")


def _harmonic_matrix(xy: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
    """Harmonic interpolation on the face mesh: ``M`` ``[468, K]`` with values = ``M @ values at ctrl``.

    Free vertices satisfy the discrete Laplace equation on the mesh graph (edge weights 1 / rest length),
    with the ``ctrl`` vertices as Dirichlet conditions. Weights are positive, so the result obeys the
    maximum principle (no overshoot beyond the control values), and because the mesh has holes at the
    mouth and eyes, the upper and lower lips (and lids) are interpolated independently.
    """
    n = 468
    e = tesselation_edges().astype(np.int64)   # MediaPipe's face-mesh edges (ptalk_models.topology)
    length = np.linalg.norm(xy[e[:, 0]] - xy[e[:, 1]], axis=1)
    w = 1.0 / np.maximum(length, 1e-3 * max(float(np.median(length)), 1e-9))
    A = np.zeros((n, n))
    A[e[:, 0], e[:, 1]] = w
    A[e[:, 1], e[:, 0]] = w
    Lap = np.diag(A.sum(1)) - A
    ctrl = np.asarray(ctrl, np.int64)
    free = np.setdiff1d(np.arange(n), ctrl)
    M = np.zeros((n, len(ctrl)))
    M[ctrl, np.arange(len(ctrl))] = 1.0
    if len(free):
        Lff = Lap[np.ix_(free, free)] + 1e-9 * np.eye(len(free))
        M[free] = np.linalg.solve(Lff, A[np.ix_(free, ctrl)])
    return M


@dataclass
class FaceRig:
    """Per-reference precomputation (see module docstring). Build with :func:`build_rig`.

    ``ref_px``  float64 ``[478, 3]`` reference in pixels (x*W, y*H, z*W).
    ``fields``  float64 ``[len(FIELDS), 478, 3]`` pixel displacement per unit of each :data:`FIELDS` entry
                (``open``: per +1 IOD of inner-lip aperture; ``close``: full closure of the reference's
                own lip gap; the others per unit parameter, see :mod:`ptalk_models.visemes`).
    ``iod``     inter-ocular distance, px. ``gap0``: reference inner-lip aperture (x IOD).
    ``axes``    ``[2, 2]`` unit vectors a (eye line) and b (down the face) in pixel x/y.
    ``pivot``   ``[3]`` pixel centre of the head rotation.
    """

    ref_px: np.ndarray
    fields: np.ndarray
    iod: float
    gap0: float
    axes: np.ndarray
    pivot: np.ndarray
    image_size: tuple

    def to_normalised(self, pts_px: np.ndarray) -> np.ndarray:
        """Points in this rig's pixels (float ``[..., 478, 3]``: x, y, z * width, as :func:`animate` returns)
        → float32 ``[..., 478, 3]`` normalised like :class:`FaceLandmarks` (x / width, y / height, z / width)."""
        W, H = self.image_size
        out = np.empty(pts_px.shape, np.float32)
        out[..., 0] = pts_px[..., 0] / W
        out[..., 1] = pts_px[..., 1] / H
        out[..., 2] = pts_px[..., 2] / W
        return out


def build_rig(reference: FaceLandmarks) -> FaceRig:
    """Deformation fields for frame 0 of ``reference`` (the rest pose).

    Raises:
        ValueError: if frame 0 has no detected face (``present[0]`` False) or a degenerate geometry
            (eyes or mouth corners coincide, non-finite points).
    """
    if not isinstance(reference, FaceLandmarks):
        raise ValueError(f"reference must be FaceLandmarks, got {type(reference).__name__}")
    if len(reference) < 1 or not bool(reference.present[0]):
        raise ValueError("reference frame 0 has no detected face; detect landmarks on a photo with a visible face")
    W, H = reference.image_size
    p = reference.points[0].astype(np.float64)
    if not np.isfinite(p).all():
        raise ValueError("reference landmarks contain NaN/Inf; re-run face detection")
    ref = np.c_[p[:, 0] * W, p[:, 1] * H, p[:, 2] * W]
    ua, ub, iod = face_axes(ref)
    mouth_w = float(np.linalg.norm(ref[MOUTH_CORNER_LEFT, :2] - ref[MOUTH_CORNER_RIGHT, :2]))
    if iod < 2.0 or mouth_w < 1.0:
        raise ValueError(f"reference face is degenerate (inter-ocular {iod:.1f} px, mouth width {mouth_w:.1f} px)")
    origin = 0.5 * (ref[MOUTH_CORNER_LEFT, :2] + ref[MOUTH_CORNER_RIGHT, :2])
    a = (ref[:, :2] - origin) @ ua / iod
    b = (ref[:, :2] - origin) @ ub / iod
    z = (ref[:, 2] - ref[:, 2].mean()) / iod
    gap0 = float(inner_lip_aperture(reference.frame(0))[0])

    mouth = _mouth_fields(a, b, z, gap0)             # dict name -> [478, 3] in IOD units (a, b, z)
    mouth["blink"] = _blink_field(a, b)
    fields = np.zeros((len(FIELDS), NUM_LANDMARKS, 3))
    for i, name in enumerate(FIELDS):
        f = mouth[name]
        fields[i, :, :2] = iod * (f[:, :1] * ua[None] + f[:, 1:2] * ub[None])
        fields[i, :, 2] = iod * f[:, 2]
    rig = FaceRig(ref_px=ref, fields=fields, iod=iod, gap0=gap0, axes=np.stack([ua, ub]),
                  pivot=np.r_[ref[:, :2].mean(0) + 0.3 * iod * ub, 0.0], image_size=(W, H))
    # Calibrate "open": one unit must add exactly 1 IOD of inner_lip_aperture (measured, not assumed).
    probe = 0.2
    pts = rig.ref_px + probe * rig.fields[FIELDS.index("open")]
    probe_lm = FaceLandmarks.from_points(rig.to_normalised(pts[None]), rig.image_size)
    gain = (float(inner_lip_aperture(probe_lm)[0]) - gap0) / probe
    if gain > 1e-3:
        rig.fields[FIELDS.index("open")] /= gain
    return rig


def _mouth_fields(a, b, z, gap0) -> dict:
    n = len(a)
    corner_a = a[[MOUTH_CORNER_RIGHT, MOUTH_CORNER_LEFT]]
    hw = max(0.5 * abs(float(corner_a[1] - corner_a[0])), 1e-3)
    s = np.sqrt(np.clip(1.0 - (a / hw) ** 2, 0.0, 1.0))          # elliptical profile across the mouth
    # control sets
    b_corner = float(np.mean(b[[MOUTH_CORNER_RIGHT, MOUTH_CORNER_LEFT]]))
    oval = np.array(FACE_OVAL)
    jaw = [int(i) for i in oval[b[oval] > b_corner + 0.05]]
    z_tmj = float(np.mean(z[list(_TMJ_PROXY)]))
    lever = np.clip((z_tmj - z) / max(z_tmj - z[CHIN], 1e-6), 0.0, 1.0)
    is_ctrl = np.zeros(n, bool)
    is_ctrl[_LIPS] = True
    is_ctrl[jaw] = True
    anchors = np.flatnonzero(((b < b[_SUBNASALE]) | np.isin(np.arange(n), oval)) & ~is_ctrl)
    anchors = anchors[anchors < 468]                              # irises are not part of the mouth mesh
    ctrl = np.r_[_LIPS, jaw, anchors].astype(int)
    M = np.zeros((n, len(ctrl)))
    M[:468] = _harmonic_matrix(np.c_[a, b][:468], ctrl)

    def field(lip_disp: dict, jaw_disp=None) -> np.ndarray:
        vals = np.zeros((len(ctrl), 3))
        for k, i in enumerate(ctrl[:len(_LIPS) + len(jaw)]):
            if i in lip_disp:
                vals[k] = lip_disp[i]
            elif jaw_disp is not None and i in jaw:
                vals[k] = jaw_disp[i]
        return M @ vals                                           # irises (rows 468+) stay 0

    def lipset(groups):
        d = {}
        for idx, fn in groups:
            for i in idx:
                d[i] = np.asarray(fn(i), float)
        return d

    up, lo = _INNER_UP + _OUTER_UP, _INNER_LO + _OUTER_LO
    # open: per unit gap (re-calibrated in build_rig); corners drop 0.25, mouth narrows 8 %.
    f_open = field(lipset([
        (_INNER_UP, lambda i: (-0.08 * a[i], -0.15 * s[i] + 0.25 * (1 - s[i]), 0.0)),
        (_OUTER_UP, lambda i: (-0.08 * a[i], -0.10 * s[i] + 0.25 * (1 - s[i]), 0.0)),
        (_INNER_LO, lambda i: (-0.08 * a[i], 0.85 * s[i] + 0.25 * (1 - s[i]), 0.0)),
        (_OUTER_LO, lambda i: (-0.08 * a[i], 0.80 * s[i] + 0.25 * (1 - s[i]), 0.0)),
        (_CORNERS, lambda i: (-0.08 * a[i], 0.25, 0.0)),
    ]), {i: (0.0, 0.8 * lever[i], 0.0) for i in jaw})
    # close: bring each inner upper/lower pair to its midpoint (full closure of the reference's gap).
    if gap0 > 0.01:
        dup = {}
        for iu, il in zip(_INNER_UP, _INNER_LO):
            m = 0.5 * np.array([a[iu] + a[il], b[iu] + b[il]])
            dup[iu] = (m[0] - a[iu], m[1] - b[iu], 0.0)
            dup[il] = (m[0] - a[il], m[1] - b[il], 0.0)
        ia_up = np.argsort(a[_INNER_UP])
        ia_lo = np.argsort(a[_INNER_LO])
        db_up = np.array([dup[i][1] for i in _INNER_UP])
        db_lo = np.array([dup[i][1] for i in _INNER_LO])
        for i in _OUTER_UP:
            dup[i] = (0.0, float(np.interp(a[i], a[_INNER_UP][ia_up], db_up[ia_up])), 0.0)
        for i in _OUTER_LO:
            dup[i] = (0.0, float(np.interp(a[i], a[_INNER_LO][ia_lo], db_lo[ia_lo])), 0.0)
        for i in _CORNERS:
            dup[i] = (0.0, 0.0, 0.0)
        f_close = field(dup)
    else:
        f_close = np.zeros((n, 3))
    all_lips = list(up) + list(lo) + list(_CORNERS)
    f_spread = field(lipset([
        (all_lips, lambda i: (a[i], -0.15 * hw * (1 - s[i]), 0.0)),
    ]))
    # round: lips pushed forward (towards the camera) and pursed (outer contour bulges); the narrowing
    # of rounded vowels is carried by a negative spread (calibrated on real video, see visemes.py).
    f_round = field(lipset([
        (_INNER_UP + _INNER_LO + list(_CORNERS), lambda i: (0.0, 0.0, -0.15 * (0.5 + 0.5 * s[i]))),
        (_OUTER_UP, lambda i: (0.0, -0.04 * s[i], -0.15 * (0.5 + 0.5 * s[i]))),
        (_OUTER_LO, lambda i: (0.0, 0.04 * s[i], -0.15 * (0.5 + 0.5 * s[i]))),
    ]))
    f_press = field(lipset([
        (_OUTER_UP, lambda i: (0.0, 0.035 * s[i], 0.0)),
        (_OUTER_LO, lambda i: (0.0, -0.035 * s[i], 0.0)),
    ]))
    f_tuck = field(lipset([
        (_OUTER_LO, lambda i: (0.0, -0.06 * s[i], 0.04 * s[i])),
        (_INNER_LO, lambda i: (0.0, 0.0, 0.04 * s[i])),
        (_OUTER_UP, lambda i: (0.0, -0.01 * s[i], 0.0)),
    ]))
    return {"open": f_open, "close": f_close, "spread": f_spread, "round": f_round, "press": f_press,
            "tuck": f_tuck}


def _eye_pairs(contour):
    """(upper lid points, lower lid points) paired by position; the corners (0, 8) are excluded."""
    upper, lower = eye_halves(contour)
    return upper[1:-1], lower[1:-1]


def _blink_field(a, b) -> np.ndarray:
    """Full-closure blink field in IOD units: upper lids to 85 % of the opening, lower lids up 15 %."""
    n = len(a)
    disp = {}
    for contour in (RIGHT_EYE, LEFT_EYE):
        upper, lower = _eye_pairs(contour)
        for iu, il in zip(upper, lower):
            d = np.array([a[il] - a[iu], b[il] - b[iu]])
            disp[iu] = (UPPER_LID_SHARE * d[0], UPPER_LID_SHARE * d[1], 0.0)
            disp[il] = (-(1 - UPPER_LID_SHARE) * d[0], -(1 - UPPER_LID_SHARE) * d[1], 0.0)
        for i in (contour[0], contour[8]):
            disp[i] = (0.0, 0.0, 0.0)
    eyes = np.array(RIGHT_EYE + LEFT_EYE)
    irises = np.array(RIGHT_IRIS + LEFT_IRIS)
    dist = np.min(np.hypot(a[:, None] - a[None, eyes], b[:, None] - b[None, eyes]), axis=1)
    fixed = (dist > EYE_REACH_IOD) | np.isin(np.arange(n), RIGHT_EYEBROW + LEFT_EYEBROW)
    fixed[eyes] = False
    fixed[irises] = False
    ctrl = np.r_[eyes, np.flatnonzero(fixed)]
    vals = np.zeros((len(ctrl), 3))
    vals[:len(eyes)] = [disp[int(i)] for i in eyes]
    out = np.zeros((n, 3))
    out[:468] = _harmonic_matrix(np.c_[a, b][:468], ctrl) @ vals
    # irises: squash the eye opening linearly towards the closed-lid line, so they hide under the lids.
    for contour, iris in ((RIGHT_EYE, RIGHT_IRIS), (LEFT_EYE, LEFT_IRIS)):
        upper, lower = _eye_pairs(contour)
        ua, la = a[upper], a[lower]
        bu = np.interp(a[iris], ua[np.argsort(ua)], b[upper][np.argsort(ua)])
        bl = np.interp(a[iris], la[np.argsort(la)], b[lower][np.argsort(la)])
        h = bl - bu
        out[iris, 0] = 0.0
        out[iris, 1] = -(1 - UPPER_LID_SHARE) * h - (b[iris] - bl)
        out[iris, 2] = 0.0
    return out


# ----------------------------------------------------------------------------------------------------
# Blinks and head motion (seeded)

def blink_curve(n_frames: int, fps: float, seed: int) -> np.ndarray:
    """Eyelid closure per frame, float32 ``[n_frames]`` in [0, 1] (1 = closed), seeded natural blinks.

    Blinks every :data:`BLINK_INTERVAL_S` (uniform 2-6 s; first at 0.6-2.5 s), each lasting
    :data:`BLINK_DURATION_S` (uniform 150-250 ms): a raised-cosine closing over 40 % of the blink and a
    slower opening; each blink's peak is placed on a frame centre so at least one frame is fully closed.
    """
    n_frames, fps = int(n_frames), float(fps)
    rng = np.random.default_rng([int(seed) % (1 << 64), 0xB11])
    t = (np.arange(n_frames) + 0.5) / fps
    out = np.zeros(n_frames)
    dur = n_frames / fps
    tc = rng.uniform(*BLINK_FIRST_S)
    while tc < dur + 1.0:
        d = rng.uniform(*BLINK_DURATION_S)
        peak = (np.floor(tc * fps) + 0.5) / fps                 # on a frame centre
        start, end = peak - BLINK_CLOSE_SHARE * d, peak + (1 - BLINK_CLOSE_SHARE) * d
        rise = (t >= start) & (t <= peak)
        fall = (t > peak) & (t <= end)
        out[rise] = np.maximum(out[rise], 0.5 * (1 - np.cos(np.pi * (t[rise] - start) / (peak - start))))
        out[fall] = np.maximum(out[fall], 0.5 * (1 + np.cos(np.pi * (t[fall] - peak) / (end - peak))))
        tc += rng.uniform(*BLINK_INTERVAL_S)
    return out.astype(np.float32)


def _smooth_noise(rng, n: int, fps: float, sigma_s: float, dims: int) -> np.ndarray:
    """Unit-variance Gaussian-smoothed white noise ``[n, dims]`` (variance normalised analytically)."""
    sig = max(sigma_s * fps, 1e-3)
    r = int(np.ceil(3 * sig))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sig) ** 2)
    k /= np.sqrt((k ** 2).sum())
    w = rng.standard_normal((n + 2 * r, dims))
    return np.stack([np.convolve(w[:, j], k, mode="valid") for j in range(dims)], axis=1)[:n]


def head_motion(n_frames: int, fps: float, seed: int, speech=None) -> np.ndarray:
    """Head pose offsets per frame, float32 ``[n_frames, 5]``: yaw, pitch, roll (degrees), tx, ty (x IOD).

    Smooth seeded noise (Gaussian-filtered, :data:`HEAD_TIME_S`) with standard deviations
    :data:`HEAD_STD_DEG` / :data:`HEAD_STD_SHIFT_IOD`, plus a small speech-driven nod (pitch, chin down,
    :data:`HEAD_SPEECH_NOD_DEG` x the smoothed speech level ``speech`` in [0, 1], zero-mean over the clip),
    faded in from the reference pose over :data:`HEAD_FADE_IN_S`. Pitch > 0 = chin down, yaw > 0 = face
    turning to the image right, roll > 0 = clockwise in the image.
    """
    n_frames, fps = int(n_frames), float(fps)
    rng = np.random.default_rng([int(seed) % (1 << 64), 0x4EAD])
    noise = _smooth_noise(rng, n_frames, fps, HEAD_TIME_S, 5)
    pose = noise * np.array(HEAD_STD_DEG + HEAD_STD_SHIFT_IOD)[None]
    if speech is not None and len(speech) == n_frames and n_frames > 1:
        s = np.asarray(speech, np.float64)
        sig = 0.15 * fps
        r = int(np.ceil(3 * sig))
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / max(sig, 1e-3)) ** 2)
        k /= k.sum()
        s = np.convolve(np.pad(s, r, mode="edge"), k, mode="valid")[:n_frames]
        pose[:, 1] += HEAD_SPEECH_NOD_DEG * (s - s.mean())
    fade = smoothstep((np.arange(n_frames) / fps) / HEAD_FADE_IN_S)
    return (pose * fade[:, None]).astype(np.float32)


def _rotation(yaw, pitch, roll) -> np.ndarray:
    """``[T, 3, 3]`` rotations (image axes x right, y down, z away from the camera), angles in degrees."""
    y, p, r = (np.deg2rad(np.asarray(v, np.float64)) for v in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    one, zero = np.ones_like(y), np.zeros_like(y)
    Ry = np.stack([np.stack([cy, zero, -sy], -1), np.stack([zero, one, zero], -1), np.stack([sy, zero, cy], -1)], -2)
    Rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], -2)
    Rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], -2)
    return Rz @ Ry @ Rx


def soft_gap(g: np.ndarray) -> np.ndarray:
    """Soft saturation of inner-lip gaps (x IOD): identity up to 0.35, approaching 0.55 asymptotically."""
    g = np.maximum(np.asarray(g, np.float64), 0.0)
    span = GAP_MAX_IOD - GAP_KNEE_IOD
    return np.where(g <= GAP_KNEE_IOD, g, GAP_KNEE_IOD + span * np.tanh((g - GAP_KNEE_IOD) / span))


def animate(rig: FaceRig, mouth: np.ndarray, blink: np.ndarray | None = None, head: np.ndarray | None = None,
            expressiveness: float = 1.0) -> np.ndarray:
    """Deformed points in pixels, float64 ``[T, 478, 3]`` (x, y, z * width).

    Args:
        rig: :func:`build_rig` output.
        mouth: ``[T, 5]`` mouth parameters (:data:`ptalk_models.visemes.MOUTH_PARAMS`, loudness-scaled).
        blink: ``[T]`` eyelid closure 0..1 or None. head: ``[T, 5]`` from :func:`head_motion` or None.
        expressiveness: multiplier (>= 0) of the mouth's deviation from the reference and of head motion.
            The inner-lip gap is ``gap0 + e * (0.35 * open - gap0)`` (so 0 keeps the reference mouth, 1 uses
            the absolute targets: closed in silence, 0.35 IOD for ``open = 1``), soft-limited to 0.55 IOD.
    Memory: float64 ``[T, 478, 3]``; call it on chunks of frames for very long sequences.
    """
    mouth = np.asarray(mouth, np.float64)
    T = len(mouth)
    e = float(expressiveness)
    gap = soft_gap(rig.gap0 + e * (WIDE_OPEN_IOD * mouth[:, 0] - rig.gap0))
    delta = gap - rig.gap0
    coef = np.zeros((T, len(FIELDS)))
    coef[:, FIELDS.index("open")] = np.maximum(delta, 0.0)
    if rig.gap0 > 0.01:
        coef[:, FIELDS.index("close")] = np.clip(-delta / rig.gap0, 0.0, 1.0)
    for j, name in enumerate(("spread", "round", "press", "tuck"), start=1):
        coef[:, FIELDS.index(name)] = e * mouth[:, j]
    if blink is not None:
        coef[:, FIELDS.index("blink")] = np.clip(np.asarray(blink, np.float64), 0.0, 1.0)
    pts = rig.ref_px[None] + np.einsum("tf,fnc->tnc", coef, rig.fields)
    return _posed(rig, pts, head, e)


def animate_offsets(rig: FaceRig, offsets_px: np.ndarray, blink: np.ndarray | None = None,
                    head: np.ndarray | None = None, expressiveness: float = 1.0,
                    indices: np.ndarray | None = None) -> np.ndarray:
    """Deformed points in pixels, float64 ``[T, 478, 3]``, from per-landmark displacements (the neural
    audio→motion backend, :mod:`ptalk_models.audio2motion`).

    The reference's own lip gap is closed first (the ``close`` field, scaled by ``min(expressiveness, 1)``), since
    the displacements are relative to a closed neutral mouth; then ``expressiveness × offsets_px`` is added, the
    blink field and the head motion applied as in :func:`animate`.

    Args:
        offsets_px: float ``[T, 478, 3]`` pixel displacements (x, y, z·width) in the reference's frame
            (:func:`ptalk_models.mouth_motion.offsets_to_pixels` with ``rig.axes`` and ``rig.iod``), or
            ``[T, K, 3]`` for the landmarks ``indices`` only (the others do not move).
        blink, head, expressiveness: as :func:`animate` (expressiveness 0 keeps the reference mouth and pose).
        indices: int ``[K]`` landmark indices of ``offsets_px``'s second axis, or None (all 478).
    """
    e = float(expressiveness)
    o = np.asarray(offsets_px, np.float64)
    base = rig.ref_px.copy()
    if rig.gap0 > 0.01:
        base += min(e, 1.0) * rig.fields[FIELDS.index("close")]
    pts = np.repeat(base[None], len(o), axis=0)
    if indices is None:
        pts += e * o
    else:
        pts[:, indices] += e * o
    if blink is not None:
        b = np.clip(np.asarray(blink, np.float64), 0.0, 1.0)
        field = rig.fields[FIELDS.index("blink")]
        moving = np.flatnonzero(np.abs(field).sum(1) > 0)
        pts[:, moving] += b[:, None, None] * field[moving][None]
    return _posed(rig, pts, head, e)


def _posed(rig: FaceRig, pts: np.ndarray, head: np.ndarray | None, e: float) -> np.ndarray:
    """``pts`` ``[T, 478, 3]`` turned and shifted by the head motion ``head`` ``[T, 5]`` × ``e`` (None: unchanged)."""
    if head is not None:
        h = np.asarray(head, np.float64) * e
        R = _rotation(h[:, 0], h[:, 1], h[:, 2])
        pts = np.matmul(pts - rig.pivot, R.transpose(0, 2, 1)) + rig.pivot
        shift = rig.iod * (h[:, 3:4] * np.array([1.0, 0.0]) + h[:, 4:5] * np.array([0.0, 1.0]))
        pts[..., :2] += shift[:, None, :]
    return pts
