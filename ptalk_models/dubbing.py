"""Visual dubbing on landmarks (PersonaTalk-style, arXiv 2409.05379): an existing video + new speech ->
the same person with the same head motion and a new lip sync. Pure numpy (no ComfyUI, no torch).

:func:`plan_dub` runs steps 2-4 below for a detected video in one call.

Pipeline (landmark level; rendering the frames is a separate step):

1. detect the source video's landmarks (:func:`ptalk_models.face.detect_landmarks`), optionally
   :func:`smooth_landmarks` them;
2. pick a closed-mouth source frame (:func:`closed_mouth_frame`) and generate audio-driven landmarks for
   the new speech on it (:func:`ptalk_models.audio2landmarks.generate_landmarks` with ``reference`` = that
   frame): the *driven* sequence;
3. make the lengths agree: :func:`apply_length_policy` gives, per output frame, the source frame to use
   (``source.points[idx]``) -- the driven sequence defines the output length;
4. :func:`dub_landmarks`: mouth and jaw from the driven sequence, everything else from the source.

Conventions: landmarks are :class:`~ptalk_models.landmarks.FaceLandmarks` (``[T, 478, 3]``, x / width,
y / height, MediaPipe z with the scale of x). Geometry is done in pixels (x * W, y * H, z * W of each
sequence's own ``image_size``) and converted back to normalised coordinates. Distances quoted in the
docstrings are in inter-ocular units (IOD, outer eye corners 33-263).
"""
from __future__ import annotations

import numpy as np

from .audio2landmarks import DEFAULT_BACKEND, generate_landmarks
from .landmarks import CHIN, LIPS_OUTER, NOSE_TIP, FaceLandmarks, inner_lip_aperture

LENGTH_POLICIES = ("trim", "loop", "ping-pong", "hold")

#: The length policy used when none is chosen: when the new speech outlasts the video, the video plays forward
#: then backward (ping-pong), so the head, eyes and brows keep moving naturally and there is never a jump. A
#: plain loop jumps back to the first frame at every seam (on the retalking_face_5 clip the head jumps ~50 px,
#: 10 % of the frame, in one frame; a cross-fade there would show two heads), and "hold" freezes everything but
#: the mouth after the clip's end.
DEFAULT_LENGTH_POLICY = "ping-pong"

#: What each length policy does, for node tooltips and messages.
LENGTH_POLICY_HELP = {
    "ping-pong": "the video plays forward, then backward, then forward … (0 1 2 3 2 1 0 1 …): the head keeps "
                 "moving without ever jumping; the default",
    "loop": "the video starts again from its first frame (0 1 2 3 0 1 …): the head jumps back at every seam unless "
            "the clip ends where it began",
    "hold": "the video plays once, then freezes on its last frame (0 1 2 3 3 3 …): only the mouth moves after the "
            "clip's end",
    "trim": "the output stops at the shorter of video and speech (the speech is cut when the video is shorter)",
}

#: Upper-face points that do not move with speech (eye corners, nose bridge, forehead, temples): the head
#: pose of a frame is the similarity transform of these points from the rest face to that frame.
STABLE_POINTS = (33, 133, 263, 362,             # eye corners
                 168, 6, 197, 195,             # nose bridge
                 10, 151, 9, 8,                # forehead
                 127, 356, 162, 389, 21, 251)  # upper face oval (temples)

#: Mouth-weight ramp: 0 at and above the nose tip (1), 1 at and below the highest outer-lip point
#: (:data:`~ptalk_models.landmarks.LIPS_OUTER`), measured along the face's vertical axis of the rest pose.
RAMP_TOP = NOSE_TIP

#: Persona scale bounds and the percentiles of the inner-lip aperture used for the speaker's range.
PERSONA_SCALE_RANGE = (0.25, 4.0)
PERSONA_PERCENTILES = (5.0, 95.0)


# ------------------------------------------------------------------------------------------ length policy
def apply_length_policy(n_frames_video: int, n_frames_audio: int, policy: str) -> np.ndarray:
    """Source-video frame index for each output frame, int64 ``[N]``.

    The audio (driven landmarks) sets the output length ``N = n_frames_audio`` for every policy except
    ``"trim"``:

    * ``"trim"``: ``N = min(n_frames_video, n_frames_audio)``, indices ``0 .. N-1``. Whichever is longer is
      cut (a short video also cuts the audio: trim the driven sequence with ``driven.frames(0, N)``).
    * ``"loop"``: ``t % n_frames_video`` -- the video restarts from frame 0 (``0 1 2 0 1 2 ...``).
    * ``"ping-pong"``: the video plays forward then backward without repeating the end frames
      (``0 1 2 3 2 1 0 1 2 ...``, period ``2 n - 2``; ``0 0 0 ...`` when ``n = 1``).
    * ``"hold"``: the video plays once then freezes on its last frame (``0 1 2 2 2 ...``).

    With a video at least as long as the audio, "loop", "ping-pong" and "hold" all give ``0 .. N-1`` (the
    video's tail is dropped). Raises ValueError for an unknown policy or non-positive frame counts.
    """
    nv, na = int(n_frames_video), int(n_frames_audio)
    if nv < 1 or na < 1:
        raise ValueError(f"frame counts must be >= 1, got video {nv}, audio {na}")
    if policy not in LENGTH_POLICIES:
        raise ValueError(f"unknown length policy {policy!r}; choose one of {LENGTH_POLICIES}")
    if policy == "trim":
        return np.arange(min(nv, na), dtype=np.int64)
    t = np.arange(na, dtype=np.int64)
    if policy == "loop":
        return t % nv
    if policy == "hold":
        return np.minimum(t, nv - 1)
    if nv == 1:
        return np.zeros(na, np.int64)
    period = 2 * nv - 2
    p = t % period
    return np.where(p < nv, p, period - p)


# ------------------------------------------------------------------------------------------ smoothing
def _segments(present: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of consecutive True values."""
    p = np.concatenate([[False], np.asarray(present, bool), [False]])
    d = np.diff(p.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def smooth_landmarks(seq: FaceLandmarks, strength: float) -> FaceLandmarks:
    """Temporal smoothing of a detected landmark sequence (removes detector jitter).

    A centred Gaussian filter over time on every coordinate, ``sigma = strength`` frames (kernel truncated at
    3 sigma, edges reflected), applied separately to each run of consecutive frames with a face: frames
    without a face (``present`` False) are returned unchanged and stay flagged, and no run is blended with
    another across a gap. ``strength`` 0 returns a copy; 1-2 suits 25-30 fps detections (a larger sigma
    also blurs fast lip closures). Raises ValueError for a negative/non-finite strength.
    """
    s = float(strength)
    if not np.isfinite(s) or s < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    pts = seq.points.astype(np.float64)
    out = pts.copy()
    if s > 0:
        r = max(1, int(np.ceil(3.0 * s)))
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        k /= k.sum()
        for a, b in _segments(seq.present):
            n = b - a
            if n < 3:
                continue
            x = pts[a:b]
            rr = min(r, n - 1)
            kk = k[r - rr:r + rr + 1] / k[r - rr:r + rr + 1].sum()
            xp = np.concatenate([x[1:rr + 1][::-1], x, x[-rr - 1:-1][::-1]], axis=0)  # reflect, no edge repeat
            acc = np.zeros_like(x)
            for j, w in enumerate(kk):
                acc += w * xp[j:j + n]
            out[a:b] = acc
    res = FaceLandmarks(points=out.astype(np.float32), image_size=seq.image_size, fps=seq.fps,
                        present=seq.present.copy(), meta=dict(seq.meta))
    res.meta["smoothing_sigma_frames"] = s
    return res


# ------------------------------------------------------------------------------------------ geometry
def _to_px(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return points.astype(np.float64) * np.array([w, h, w], np.float64)


def _from_px(px: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return px / np.array([w, h, w], np.float64)


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares 3D similarity (Umeyama 1991) mapping point set ``src`` ``[K, 3]`` onto ``dst`` ``[K, 3]``.

    Returns ``(s, R, t)`` with ``dst ~= s * src @ R.T + t`` (R a proper rotation ``[3, 3]``)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    cov = b.T @ a / len(src)
    U, S, Vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        d[-1] = -1.0
    R = U @ np.diag(d) @ Vt
    var = (a ** 2).sum() / len(src)
    s = float((S * d).sum() / max(var, 1e-12))
    return s, R, md - s * ms @ R.T


def mouth_weights(rest: FaceLandmarks) -> np.ndarray:
    """Per-landmark weight of the driven mouth/jaw, float64 ``[478]`` in [0, 1], from the rest pose (frame 0).

    The face's vertical axis is the perpendicular to the eye line (outer eye corners) pointing to the chin;
    along it the weight ramps (smoothstep) from 0 at the nose tip (landmark 1) to 1 at the highest point of the
    outer lip contour (the cupid's bow). So all lip points, chin, jaw line and lower cheeks are 1, the nose base is partial, and the
    eyes, irises, brows, nose bridge and forehead are exactly 0 (copied bit-for-bit from the source).
    """
    px = _to_px(rest.points[0], rest.image_size)[:, :2]
    eye = px[263] - px[33]
    a = eye / max(np.linalg.norm(eye), 1e-9)
    b = np.array([-a[1], a[0]])
    if np.dot(px[CHIN] - px[33], b) < 0:
        b = -b
    v = px @ b
    top, bottom = v[RAMP_TOP], float(v[LIPS_OUTER].min())
    x = np.clip((v - top) / max(bottom - top, 1e-9), 0.0, 1.0)
    w = x * x * (3.0 - 2.0 * x)
    w[468:] = 0.0  # irises
    return w


def closed_mouth_frame(seq: FaceLandmarks) -> int:
    """Index of the present frame with the smallest inner-lip aperture: the rest pose to generate the driven
    landmarks on (and to pass as ``rest`` to :func:`dub_landmarks`)."""
    ap = inner_lip_aperture(seq).astype(np.float64)
    ap[~seq.present] = np.inf
    return int(np.argmin(ap))


def persona_scale(source: FaceLandmarks, driven: FaceLandmarks) -> float:
    """PersonaTalk-style speaker style: how much wider (>1) or narrower (<1) this speaker opens the mouth than
    the driven sequence does.

    Ratio of the inner-lip aperture range (95th minus 5th percentile, :func:`inner_lip_aperture`, IOD units) of
    the source's present frames to the driven sequence's, clipped to :data:`PERSONA_SCALE_RANGE`; 1.0 when
    either range is below 0.01 IOD (a silent driven sequence, or a source whose mouth never moves).
    """
    lo, hi = PERSONA_PERCENTILES
    a_src = inner_lip_aperture(source)[source.present]
    a_drv = inner_lip_aperture(driven)[driven.present]
    if len(a_src) < 2 or len(a_drv) < 2:
        return 1.0
    r_src = float(np.percentile(a_src, hi) - np.percentile(a_src, lo))
    r_drv = float(np.percentile(a_drv, hi) - np.percentile(a_drv, lo))
    if r_src < 0.01 or r_drv < 0.01:
        return 1.0
    return float(np.clip(r_src / r_drv, *PERSONA_SCALE_RANGE))


# ------------------------------------------------------------------------------------------ dubbing
def dub_landmarks(source: FaceLandmarks, driven: FaceLandmarks, rest: FaceLandmarks | None = None,
                  persona: bool = True) -> FaceLandmarks:
    """Replace the source's mouth/jaw motion by the driven sequence's, keeping the source's head and upper face.

    Args:
        source: the video's detected landmarks ``[T, 478, 3]`` (already length-matched: index it with
            :func:`apply_length_policy` first).
        driven: audio-driven landmarks ``[T, 478, 3]`` generated on ``rest`` (e.g. ``generate_landmarks(audio,
            sr, reference=rest)``); its own head motion and blinks are ignored.
        rest: the one-frame face (frame 0 used) the driven sequence was generated on -- a closed-mouth frame of
            the source. None -> ``source.frame(closed_mouth_frame(source))``, which is right only if
            ``driven`` was generated on that frame.
        persona: scale the driven mouth displacement by :func:`persona_scale` (the speaker's own aperture
            range in the source vs the driven one); False -> scale 1.

    Per frame t (pixels of each sequence's own grid):

    * ``D_t = S_t(driven[t]) - rest`` : the driven mouth/jaw displacement in the rest face's frame, where
      ``S_t`` is the 3D similarity taking driven[t]'s :data:`STABLE_POINTS` onto rest's (removes the driven
      head motion);
    * ``target_t = H_t(rest + k * D_t)``, ``H_t`` the similarity from rest's stable points to source[t]'s
      (the source's head pose), ``k`` the persona scale;
    * ``out_t = source_t + w * (target_t - source_t)`` with ``w`` = :func:`mouth_weights` (1 on lips and jaw,
      0 on the upper face, which therefore stays bit-identical to the source).

    Frames where the source has no face are copied from the source (still ``present`` False). ``meta`` gains
    ``dubbing`` = {persona_scale, rest_frame (or None), weights_nonzero}.

    Raises:
        ValueError: different lengths (apply a length policy first), or ``rest`` / ``driven`` without a face.
    """
    if not isinstance(source, FaceLandmarks) or not isinstance(driven, FaceLandmarks):
        raise ValueError("source and driven must be FaceLandmarks (PTALK_LANDMARKS)")
    T = len(source)
    if len(driven) != T:
        raise ValueError(f"source has {T} frames but driven has {len(driven)}; apply a length policy first "
                         f"(apply_length_policy)")
    rest_frame = None
    if rest is None:
        if not source.present.any():
            raise ValueError("source has no face in any frame")
        rest_frame = closed_mouth_frame(source)
        rest = source.frame(rest_frame)
    if not bool(rest.present[0]):
        raise ValueError("rest (frame 0) has no detected face")
    stable = list(STABLE_POINTS)
    rest_px = _to_px(rest.points[0], rest.image_size)
    drv_px = _to_px(driven.points, driven.image_size)
    src_px = _to_px(source.points, source.image_size)
    w = mouth_weights(rest)
    k = persona_scale(source, driven) if persona else 1.0
    sel = np.flatnonzero(w > 0)
    out = source.points.copy()
    for t in range(T):
        if not source.present[t]:
            continue
        if driven.present[t]:
            s, R, tr = similarity(drv_px[t, stable], rest_px[stable])
            disp = s * drv_px[t, sel] @ R.T + tr - rest_px[sel]
        else:
            disp = np.zeros((len(sel), 3))
        s, R, tr = similarity(rest_px[stable], src_px[t, stable])
        target = s * (rest_px[sel] + k * disp) @ R.T + tr
        mixed = src_px[t, sel] + w[sel, None] * (target - src_px[t, sel])
        out[t, sel] = _from_px(mixed, source.image_size).astype(np.float32)
    meta = dict(source.meta)
    meta["dubbing"] = {"persona_scale": float(k), "rest_frame": rest_frame, "weights_nonzero": int(len(sel))}
    return FaceLandmarks(points=out, image_size=source.image_size, fps=driven.fps or source.fps,
                         present=source.present.copy(), meta=meta)


def plan_dub(source: FaceLandmarks, waveform, sample_rate: int, fps: float,
             length_policy: str = DEFAULT_LENGTH_POLICY,
             smoothing: float = 1.0, persona: bool = True, expressiveness: float = 1.0,
             backend: str | None = None, transcript: str = "") -> tuple[FaceLandmarks, FaceLandmarks]:
    """Steps 1-4 of the module pipeline for a detected source video: (dubbed, aligned_source), both with one
    frame per *output* frame and ``meta["source_index"]`` (int list) = the source frame each output frame
    shows (:func:`apply_length_policy`).

    Args:
        source: the video's landmarks (:func:`ptalk_models.face.detect_landmarks` with ``on_missing="keep"``).
        waveform, sample_rate: the new speech, float ``[C, N]`` or ``[N]`` in [-1, 1], Hz.
        fps: the video's frame rate (frames per second); the output has ``round(audio seconds * fps)`` frames
            (``"trim"``: at most the video's).
        length_policy: one of :data:`LENGTH_POLICIES` (:data:`LENGTH_POLICY_HELP`), default
            :data:`DEFAULT_LENGTH_POLICY` ("ping-pong"); loop, ping-pong and hold differ only when the speech
            outlasts the video.
        smoothing: :func:`smooth_landmarks` sigma in frames (0 = none).
        persona, expressiveness, backend, transcript: see :func:`dub_landmarks` and
            :func:`ptalk_models.audio2landmarks.generate_landmarks` (backend None = its default).
    ``aligned_source`` is the (smoothed) source at those frames, ``dubbed`` the same with the new mouth/jaw.
    Raises ValueError: no face in any frame, an unknown policy, audio the phoneme backend cannot use.
    """
    if not np.asarray(source.present).any():
        raise ValueError("no frame of the video has a face; nothing to dub")
    src = smooth_landmarks(source, smoothing) if smoothing > 0 else source
    rest = src.frame(closed_mouth_frame(src))
    driven = generate_landmarks(waveform, sample_rate, rest, fps=fps, expressiveness=expressiveness,
                                transcript=transcript or "", backend=backend or DEFAULT_BACKEND, blink=False,
                                head_motion=False)
    idx = apply_length_policy(len(src), len(driven), length_policy)
    driven = driven.frames(0, len(idx))
    aligned = FaceLandmarks.from_points(src.points[idx], src.image_size, fps, src.present[idx],
                                        dict(src.meta, source_index=idx.tolist()))
    dubbed = dub_landmarks(aligned, driven, rest=rest, persona=bool(persona))
    dubbed.meta["source_index"] = idx.tolist()
    return dubbed, aligned


__all__ = ["LENGTH_POLICIES", "DEFAULT_LENGTH_POLICY", "LENGTH_POLICY_HELP", "STABLE_POINTS",
           "apply_length_policy", "smooth_landmarks", "similarity",
           "mouth_weights", "closed_mouth_frame", "persona_scale", "dub_landmarks",
           "plan_dub"]
