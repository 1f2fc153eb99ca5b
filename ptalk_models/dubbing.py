"""Visual dubbing on landmarks (PersonaTalk-style, arXiv 2409.05379): an existing video + new speech ->
the same person with the same head motion and a new lip sync. Pure numpy (no ComfyUI, no torch).

:func:`plan_dub` runs steps 2-4 below for a detected video in one call and returns a :class:`DubPlan` (the
``PTALK_DUB_PLAN`` socket): target and aligned source landmarks, the source frame of every output frame, the fps;
:func:`check_dub_inputs` is the one check of a renderer's frames against a plan.

Pipeline (landmark level; rendering the frames is a separate step):

1. detect the source video's landmarks (:func:`ptalk_models.face.detect_landmarks`), optionally
   :func:`smooth_landmarks` them;
2. pick a closed-mouth source frame (:func:`closed_mouth_frame`) and generate audio-driven landmarks for
   the new speech on it (:func:`ptalk_models.audio2landmarks.generate_landmarks` with ``reference`` = that
   frame): the *driven* sequence;
3. make the lengths agree: :func:`apply_length_policy` gives, per output frame, the source frame to use
   (``source.points[idx]``) -- the driven sequence defines the output length;
4. :func:`dub_landmarks`: mouth and jaw from the driven sequence, everything else from the source; where Silero
   VAD finds no speech in the new audio (:mod:`ptalk_models.vad`) the mouth rests in the rest frame's shape
   (:func:`silence_gain`). With ``speaker_labels`` (several people, e.g. the active speaker of each shot,
   :mod:`ptalk_models.active_speaker`) each person has their own rest frame and persona scale.

Conventions: landmarks are :class:`~ptalk_models.landmarks.FaceLandmarks` (``[T, 478, 3]``, x / width,
y / height, MediaPipe z with the scale of x). Geometry is done in pixels (x * W, y * H, z * W of each
sequence's own ``image_size``) and converted back to normalised coordinates. Distances quoted in the
docstrings are in inter-ocular units (IOD, outer eye corners 33-263).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audio2landmarks import DEFAULT_BACKEND, generate_landmarks
from .errors import InputError
from .head_pose import STABLE_POINTS, similarity
from .images import ASPECT_TOLERANCE, aspect_ratio, same_aspect
from .landmarks import CHIN, LIPS_OUTER, NOSE_TIP, FaceLandmarks, from_pixels, inner_lip_aperture, to_pixels
from .vad import DEFAULT_THRESHOLD as DEFAULT_VAD_THRESHOLD
from .vad import speech_frames

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


def smooth_landmarks(seq: FaceLandmarks, strength: float, labels: np.ndarray | None = None) -> FaceLandmarks:
    """Temporal smoothing of a detected landmark sequence (removes detector jitter).

    A centred Gaussian filter over time on every coordinate, ``sigma = strength`` frames (kernel truncated at
    3 sigma, edges reflected), applied separately to each run of consecutive frames with a face: frames
    without a face (``present`` False) are returned unchanged and stay flagged, and no run is blended with
    another across a gap. ``labels`` (int ``[T]``, e.g. which person each frame shows) also ends a run where
    the label changes, so two people are never blended across a cut. ``strength`` 0 returns a copy; 1-2 suits
    25-30 fps detections (a larger sigma also blurs fast lip closures). Raises ValueError for a
    negative/non-finite strength.
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
        runs = _segments(seq.present)
        if labels is not None:
            lab = np.asarray(labels).reshape(-1)
            runs = [(lo, hi) for a, b in runs
                    for lo, hi in zip([a] + [t for t in range(a + 1, b) if lab[t] != lab[t - 1]],
                                      [t for t in range(a + 1, b) if lab[t] != lab[t - 1]] + [b])]
        for a, b in runs:
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
def mouth_weights(rest: FaceLandmarks) -> np.ndarray:
    """Per-landmark weight of the driven mouth/jaw, float64 ``[478]`` in [0, 1], from the rest pose (frame 0).

    The face's vertical axis is the perpendicular to the eye line (outer eye corners) pointing to the chin;
    along it the weight ramps (smoothstep) from 0 at the nose tip (landmark 1) to 1 at the highest point of the
    outer lip contour (the cupid's bow). So all lip points, chin, jaw line and lower cheeks are 1, the nose base is partial, and the
    eyes, irises, brows, nose bridge and forehead are exactly 0 (copied bit-for-bit from the source).
    """
    px = to_pixels(rest.points[0], rest.image_size)[:, :2]
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
                  persona: bool = True, mouth_gain=None, driven_rest: FaceLandmarks | None = None) -> FaceLandmarks:
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
        mouth_gain: optional float ``[T]`` in [0, 1] multiplying the driven displacement per frame: 0 = the
            mouth and jaw rest in ``rest``'s shape (silence, :func:`silence_gain`), 1 = as driven; None = all 1.
        driven_rest: the face ``driven`` was generated on when it is not ``rest`` (another person of the same
            video, e.g. the speaker of another shot): the displacement is measured from ``driven_rest`` and
            carried onto ``rest`` by the similarity between their stable points (scale and rotation). None =
            ``rest``.

    Per frame t (pixels of each sequence's own grid):

    * ``D_t = S_t(driven[t]) - rest`` : the driven mouth/jaw displacement in the rest face's frame, where
      ``S_t`` is the 3D similarity taking driven[t]'s :data:`STABLE_POINTS` onto rest's (removes the driven
      head motion);
    * ``target_t = H_t(rest + g_t * k * D_t)``, ``g_t`` = ``mouth_gain[t]``, ``H_t`` the similarity from rest's stable points to source[t]'s
      (the source's head pose), ``k`` the persona scale;
    * ``out_t = source_t + w * (target_t - source_t)`` with ``w`` = :func:`mouth_weights` (1 on lips and jaw,
      0 on the upper face, which therefore stays bit-identical to the source).

    Frames where the source has no face are copied from the source (still ``present`` False). ``meta`` gains
    ``dubbing`` = {persona_scale, rest_frame (or None), weights_nonzero}.

    Raises:
        ValueError: different lengths (apply a length policy first), ``rest`` / ``driven`` without a face, or
            a ``mouth_gain`` of another length or outside [0, 1].
    """
    if not isinstance(source, FaceLandmarks) or not isinstance(driven, FaceLandmarks):
        raise ValueError("source and driven must be FaceLandmarks (PTALK_LANDMARKS)")
    T = len(source)
    if len(driven) != T:
        raise ValueError(f"source has {T} frames but driven has {len(driven)}; apply a length policy first "
                         f"(apply_length_policy)")
    gain = np.ones(T) if mouth_gain is None else np.asarray(mouth_gain, np.float64).reshape(-1)
    if len(gain) != T or not np.all((gain >= 0) & (gain <= 1)):
        raise ValueError(f"mouth_gain must be {T} values in [0, 1], got {len(gain)} "
                         f"(range {np.nanmin(gain) if len(gain) else 0:g}..{np.nanmax(gain) if len(gain) else 0:g})")
    rest_frame = None
    if rest is None:
        if not source.present.any():
            raise ValueError("source has no face in any frame")
        rest_frame = closed_mouth_frame(source)
        rest = source.frame(rest_frame)
    if not bool(rest.present[0]):
        raise ValueError("rest (frame 0) has no detected face")
    stable = list(STABLE_POINTS)
    rest_px = to_pixels(rest.points[0], rest.image_size)
    base_px, s_r, R_r = rest_px, 1.0, np.eye(3)
    if driven_rest is not None:
        base_px = to_pixels(driven_rest.points[0], driven_rest.image_size)
        s_r, R_r, _ = similarity(base_px[stable], rest_px[stable])
    drv_px = to_pixels(driven.points, driven.image_size)
    src_px = to_pixels(source.points, source.image_size)
    w = mouth_weights(rest)
    k = persona_scale(source, driven) if persona else 1.0
    sel = np.flatnonzero(w > 0)
    out = source.points.copy()
    for t in range(T):
        if not source.present[t]:
            continue
        if driven.present[t]:
            s, R, tr = similarity(drv_px[t, stable], base_px[stable])
            disp = s_r * (s * drv_px[t, sel] @ R.T + tr - base_px[sel]) @ R_r.T
        else:
            disp = np.zeros((len(sel), 3))
        s, R, tr = similarity(rest_px[stable], src_px[t, stable])
        target = s * (rest_px[sel] + gain[t] * k * disp) @ R.T + tr
        mixed = src_px[t, sel] + w[sel, None] * (target - src_px[t, sel])
        out[t, sel] = from_pixels(mixed, source.image_size).astype(np.float32)
    meta = dict(source.meta)
    meta["dubbing"] = {"persona_scale": float(k), "rest_frame": rest_frame, "weights_nonzero": int(len(sel)),
                       "resting_frames": int((gain == 0).sum())}
    return FaceLandmarks(points=out, image_size=source.image_size, fps=driven.fps or source.fps,
                         present=source.present.copy(), meta=meta)


#: Seconds over which the mouth eases between resting (silence) and the driven motion (speech) in
#: :func:`silence_gain`: a moving average of the speech mask over ``2 * round(SILENCE_RAMP_S * fps) + 1`` frames.
SILENCE_RAMP_S = 0.04


def silence_gain(speech, fps: float) -> np.ndarray:
    """Per-frame mouth gain for :func:`dub_landmarks` from a speech mask: float64 ``[T]`` in [0, 1].

    ``speech``: bool ``[T]`` (:func:`ptalk_models.vad.speech_frames`). The mask's moving average over
    ``2 r + 1`` frames, ``r = max(1, round(SILENCE_RAMP_S * fps))`` (3 frames at 25 fps), edges padded with
    their own value: 0 inside silences longer than ``2 r`` frames (the mouth rests exactly in the rest shape),
    1 inside speech, a short ramp at each boundary instead of a jump. Raises ValueError for fps <= 0.
    """
    m = np.asarray(speech, bool).astype(np.float64).reshape(-1)
    fps = float(fps)
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if m.size == 0:
        return m
    r = max(1, int(round(SILENCE_RAMP_S * fps)))
    padded = np.concatenate([np.full(r, m[0]), m, np.full(r, m[-1])])
    g = np.convolve(padded, np.ones(2 * r + 1) / (2 * r + 1), mode="valid")
    return np.clip(np.where(g < 1e-9, 0.0, g), 0.0, 1.0)


@dataclass
class DubPlan:
    """A dubbing plan: what every output frame of a dub shows; the ``PTALK_DUB_PLAN`` ComfyUI type.

    Made by :func:`plan_dub` (Audio → Dub Landmarks, Dub Video) and consumed by the renderers (Dub Render, Dub
    Diffusion Render), which check it against their frames with :func:`check_dub_inputs`. ``N`` below is the
    output length (frames), ``T`` the source video's frame count.

    Attributes:
        target: the dubbed landmarks, :class:`FaceLandmarks` ``[N, 478, 3]`` (normalised x / width, y / height):
            the source's head and upper face with the new speech's mouth and jaw.
        source: the (smoothed) source landmarks of the same output frames, :class:`FaceLandmarks` ``[N, 478, 3]``
            (``source[t]`` is the video's frame ``source_index[t]``): what the renderers warp from.
        source_index: int64 ``[N]``, for each output frame the index (decode order, 0-based) of the source-video
            frame it shows, all in ``[0, source_frames)`` (:func:`apply_length_policy`).
        fps: frames per second of the output, the same as the source video's (> 0). The plan is the one owner of
            the dub's frame rate: ``target`` and ``source`` are copies carrying it as their ``fps``.
        source_frames: ``T``, the number of frames of the source video the plan was made from.
        source_size: ``(width, height)`` in pixels of the source video's frames (the landmarks' ``image_size``).
        warnings: things the user should know (audio problems, faceless frames), in plain words; may be empty.
        speech: bool ``[N]`` or None: per output frame, whether the voice-activity detector found speech in the
            new audio there (:func:`ptalk_models.vad.speech_frames`); None when it was not run. Where False, the
            target mouth rests in the source's closed-mouth shape.
        person: int64 ``[N]`` or None: per output frame, which person the landmarks are (``speaker_labels`` of
            :func:`plan_dub`, e.g. the active speaker's track per shot; -1 = nobody); None = one person
            throughout. Renderers that take texture from the video (own-frames mouth) keep each person's apart.

    ``meta`` of ``target`` / ``source`` is provenance only; nothing here is read from it.
    Raises ValueError on construction when the fields disagree (lengths, sizes, an index out of range, fps <= 0).
    """

    target: FaceLandmarks
    source: FaceLandmarks
    source_index: np.ndarray
    fps: float
    source_frames: int
    source_size: tuple[int, int]
    warnings: list[str] = field(default_factory=list)
    speech: np.ndarray | None = None
    person: np.ndarray | None = None

    def __post_init__(self):
        if not isinstance(self.target, FaceLandmarks) or not isinstance(self.source, FaceLandmarks):
            raise ValueError("DubPlan.target and DubPlan.source must be FaceLandmarks")
        idx = np.asarray(self.source_index)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"DubPlan.source_index must be an int array [N], got {idx.dtype} {idx.shape}")
        self.source_index = idx.astype(np.int64)
        n = len(self.source_index)
        if len(self.target) != n or len(self.source) != n:
            raise ValueError(f"DubPlan: target has {len(self.target)}, source {len(self.source)} and source_index "
                             f"{n} frames; all three must have one entry per output frame")
        self.fps = float(self.fps)
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"DubPlan.fps must be > 0 frames per second, got {self.fps}")
        self.source_frames = int(self.source_frames)
        if n and (self.source_index.min() < 0 or self.source_index.max() >= self.source_frames):
            raise ValueError(f"DubPlan.source_index must lie in [0, {self.source_frames}), got "
                             f"{int(self.source_index.min())}..{int(self.source_index.max())}")
        self.source_size = (int(self.source_size[0]), int(self.source_size[1]))
        for name, lm in (("target", self.target), ("source", self.source)):
            if lm.image_size != self.source_size:
                raise ValueError(f"DubPlan.{name} is for {lm.image_size[0]}x{lm.image_size[1]} frames but "
                                 f"source_size is {self.source_size[0]}x{self.source_size[1]}")
        # the plan's fps on its own copies (the caller's landmarks, maybe cached by ComfyUI, stay as they are)
        self.target = self.target.with_points(self.target.points, fps=self.fps, present=self.target.present)
        self.source = self.source.with_points(self.source.points, fps=self.fps, present=self.source.present)
        self.warnings = [str(w) for w in self.warnings]
        if self.speech is not None:
            sp = np.asarray(self.speech).reshape(-1).astype(bool)
            if len(sp) != n:
                raise ValueError(f"DubPlan.speech has {len(sp)} entries for {n} output frames")
            self.speech = sp
        if self.person is not None:
            pp = np.asarray(self.person).reshape(-1)
            if len(pp) != n or (pp.size and not np.issubdtype(pp.dtype, np.integer)):
                raise ValueError(f"DubPlan.person must be {n} integer labels, got {pp.dtype} [{len(pp)}]")
            self.person = pp.astype(np.int64)

    def __len__(self) -> int:
        """The number of output frames ``N``."""
        return len(self.source_index)

    @property
    def duration(self) -> float:
        """Seconds of output: ``N / fps``."""
        return len(self) / self.fps

    def with_source_index(self, source_index, source_frames: int) -> "DubPlan":
        """The same plan with its output frames mapped to another frame numbering of the same video (e.g. the
        decoded frames of a variable-frame-rate stream instead of its constant-rate timeline): int ``[N]``
        indices in ``[0, source_frames)``."""
        return DubPlan(self.target, self.source, source_index, self.fps, source_frames, self.source_size,
                       list(self.warnings), self.speech, self.person)


def check_dub_inputs(plan, n_frames: int, frame_size: tuple[int, int]) -> None:
    """The one check of a renderer's inputs for a dub: ``plan`` against the source frames it is given.

    Args:
        plan: a :class:`DubPlan` with at least one output frame.
        n_frames: how many source frames the renderer was given (the IMAGE batch's length).
        frame_size: ``(width, height)`` of those frames in pixels.

    The frames must be the video the plan was made from: ``n_frames == plan.source_frames`` and the same aspect
    ratio as ``plan.source_size`` by the pack's one rule (:func:`ptalk_models.images.same_aspect`, 1 % relative;
    another resolution of the same framing is fine, the landmarks are normalised).

    Raises:
        InputError: ``argument`` = ``"plan"`` (not a DubPlan, or empty), ``"n_frames"`` (another frame count) or
            ``"frame_size"`` (another aspect ratio); the message names both sides and the fix.
    """
    if not isinstance(plan, DubPlan):
        raise InputError("plan", f"expected a dubbing plan (PTALK_DUB_PLAN), got {type(plan).__name__};",
                         "wire the plan output of Audio → Dub Landmarks")
    if len(plan) == 0:
        raise InputError("plan", "the plan has no output frames (the speech is shorter than one frame);",
                         "use a longer speech track")
    n = int(n_frames)
    if n != plan.source_frames:
        raise InputError("n_frames", f"{n} frames are connected but the plan was made for a video of "
                                     f"{plan.source_frames} frames;",
                         "connect the frames of the same video the plan was made from (the images that fed Face "
                         "Landmarks)")
    w, h = (int(v) for v in frame_size)
    pw, ph = plan.source_size
    if not same_aspect((w, h), plan.source_size):
        raise InputError("frame_size", f"the plan was made for {pw}x{ph} frames (aspect {aspect_ratio((pw, ph)):.4f}) "
                                       f"but these are {w}x{h} (aspect {aspect_ratio((w, h)):.4f}); the aspect "
                                       f"ratios must match within {ASPECT_TOLERANCE:.0%};",
                         "connect the frames of the same video the plan was made from (or a resize of them that "
                         "keeps the framing)")


#: :func:`ptalk_models.audio2landmarks.generate_landmarks`'s arguments that :func:`plan_dub` derives from its own
#: ``source`` (the closed-mouth frame is the reference, the landmarks' fps the frame rate); the others
#: (``waveform``, ``sample_rate``, ``expressiveness``, ``backend``, ``transcript``) keep their names.
_GENERATE_ARGS = {"reference": "source", "fps": "source"}


def plan_dub(source: FaceLandmarks, waveform, sample_rate: int,
             length_policy: str = DEFAULT_LENGTH_POLICY,
             smoothing: float = 1.0, persona: bool = True, expressiveness: float = 1.0,
             backend: str | None = None, transcript: str = "", vad: bool = True,
             vad_threshold: float = DEFAULT_VAD_THRESHOLD, speaker_labels=None) -> DubPlan:
    """Steps 2-4 of the module pipeline for a detected source video: the :class:`DubPlan` of the dub.

    Args:
        source: the video's landmarks, one entry per video frame (:func:`ptalk_models.face.detect_landmarks` with
            ``on_missing="keep"``); its ``fps`` (the video's frame rate, > 0) becomes the plan's, its
            ``image_size`` the plan's ``source_size``.
        waveform, sample_rate: the new speech, float ``[C, N]`` or ``[N]`` in [-1, 1], Hz.
        length_policy: one of :data:`LENGTH_POLICIES` (:data:`LENGTH_POLICY_HELP`), default
            :data:`DEFAULT_LENGTH_POLICY` ("ping-pong"); loop, ping-pong and hold differ only when the speech
            outlasts the video.
        smoothing: :func:`smooth_landmarks` sigma in frames (0 = none).
        persona, expressiveness, backend, transcript: see :func:`dub_landmarks` and
            :func:`ptalk_models.audio2landmarks.generate_landmarks` (backend None = its default).
        vad: run voice-activity detection on the new speech (:func:`ptalk_models.vad.speech_frames`, Silero VAD):
            where it finds no speech the mouth and jaw rest in the source's closed-mouth shape
            (:func:`closed_mouth_frame`), easing in and out over :data:`SILENCE_RAMP_S` (:func:`silence_gain`),
            so breaths, clicks and background noise do not move the lips. False: the audio model alone drives
            every frame (``plan.speech`` None).
        vad_threshold: Silero's speech probability threshold in (0, 1) (default 0.5; higher = stricter).
        speaker_labels: optional int ``[T]`` per source frame: which person ``source`` shows there (e.g.
            :attr:`ptalk_models.active_speaker.SpeakerChoice.labels`: the speaker of each shot), -1 = nobody
            (treated as faceless). Each person gets their own closed-mouth rest frame and persona scale; the
            speech is generated once, on the rest frame of the person with the most frames, and carried onto the
            others' rest shapes (:func:`dub_landmarks`' ``driven_rest``). None: one person throughout.

    The plan has ``round(audio seconds * fps)`` output frames (``"trim"``: at most the video's); its ``source``
    is the (smoothed) source at the frames ``source_index``, its ``target`` the same with the new mouth/jaw;
    ``warnings`` holds the audio model's warnings and a note on faceless frames.

    Raises:
        InputError: ``argument`` = ``"source"`` (not FaceLandmarks, no face in any frame, no frame rate, a frame
            rate outside :data:`ptalk_models.audio2landmarks.FPS_RANGE`, a closed-mouth frame the audio model
            cannot use), ``"length_policy"``, ``"smoothing"``, ``"vad_threshold"``, ``"waveform"`` / ``"sample_rate"`` (audio the
            audio model cannot use), ``"expressiveness"``, ``"backend"`` or ``"transcript"``: the errors of
            :func:`ptalk_models.audio2landmarks.generate_landmarks` with its arguments renamed to this
            function's (:data:`_GENERATE_ARGS`).
    """
    if not isinstance(source, FaceLandmarks):
        raise InputError("source", f"expected FaceLandmarks (PTALK_LANDMARKS), got {type(source).__name__}")
    if not np.asarray(source.present).any():
        raise InputError("source", "no frame of the video has a face; nothing to dub")
    fps = float(source.fps)
    if not np.isfinite(fps) or fps <= 0:
        raise InputError("source", f"the landmarks carry no frame rate (fps {fps:g});",
                         "wire the video's fps (Get Video Components' fps) into Face Landmarks' fps")
    if length_policy not in LENGTH_POLICIES:
        raise InputError("length_policy", f"unknown length policy {length_policy!r};",
                         f"choose one of {LENGTH_POLICIES}")
    labels = None
    if speaker_labels is not None:
        labels = np.asarray(speaker_labels).reshape(-1)
        if len(labels) != len(source) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
            raise InputError("speaker_labels", f"expected {len(source)} integer labels (one per source frame), got "
                                               f"{labels.dtype} [{len(labels)}]")
        source = source.with_points(source.points, present=np.asarray(source.present) & (labels >= 0))
        if not source.present.any():
            raise InputError("source", "no frame of the video has a labelled face; nothing to dub")
    try:
        src = smooth_landmarks(source, smoothing, labels)
    except ValueError as e:
        raise InputError("smoothing", str(e)) from None
    people = [None]
    if labels is not None:
        ids, counts = np.unique(labels[src.present], return_counts=True)
        people = [int(i) for i in ids[np.argsort(-counts, kind="stable")]]
    rests = {}
    for p in people:
        sub = src if p is None else src.with_points(src.points, present=src.present & (labels == p))
        rests[p] = src.frame(closed_mouth_frame(sub))
    rest = rests[people[0]]
    try:
        driven = generate_landmarks(waveform, sample_rate, rest, fps=fps, expressiveness=expressiveness,
                                    transcript=transcript or "", backend=backend or DEFAULT_BACKEND, blink=False,
                                    head_motion=False)
    except InputError as e:
        err = InputError(_GENERATE_ARGS.get(e.argument, e.argument), str(e))
        err.fix = e.fix
        raise err from None
    idx = apply_length_policy(len(src), len(driven), length_policy)
    driven = driven.frames(0, len(idx))
    speech = gain = None
    if vad:
        try:
            speech = speech_frames(waveform, sample_rate, fps, len(idx), vad_threshold)
        except InputError as e:
            if e.argument == "threshold":
                raise InputError("vad_threshold", str(e)) from None
            raise
        gain = silence_gain(speech, fps)
    aligned = FaceLandmarks.from_points(src.points[idx], src.image_size, fps, src.present[idx], src.meta)
    if labels is None:
        dubbed = dub_landmarks(aligned, driven, rest=rest, persona=bool(persona), mouth_gain=gain)
    else:
        out_pts, lab = aligned.points.copy(), labels[idx]
        for p in people:
            part = aligned.with_points(aligned.points, present=aligned.present & (lab == p))
            if not part.present.any():
                continue
            d = dub_landmarks(part, driven, rest=rests[p], persona=bool(persona), mouth_gain=gain,
                              driven_rest=None if p == people[0] else rest)
            out_pts[part.present] = d.points[part.present]
        dubbed = aligned.with_points(out_pts, present=aligned.present)
        dubbed.meta["dubbing"] = {"people": people}
    warnings = list(driven.meta.get("warnings", []))
    if speech is not None and not speech.any():
        warnings.append("the voice-activity detector (Silero VAD) found no speech in the new audio: the mouth "
                        "stays closed throughout (set vad off to let the audio model drive it anyway)")
    faceless = int((~aligned.present).sum())
    if faceless:
        warnings.append(f"{faceless} of {len(aligned)} output frames show a source frame without a face; they "
                        "pass through unchanged")
    return DubPlan(target=dubbed, source=aligned, source_index=idx, fps=fps, source_frames=len(source),
                   source_size=source.image_size, warnings=warnings, speech=speech,
                   person=None if labels is None else labels[idx])


__all__ = ["LENGTH_POLICIES", "DEFAULT_LENGTH_POLICY", "LENGTH_POLICY_HELP", "STABLE_POINTS",
           "apply_length_policy", "smooth_landmarks", "similarity",
           "mouth_weights", "closed_mouth_frame", "persona_scale", "dub_landmarks", "SILENCE_RAMP_S",
           "silence_gain", "DEFAULT_VAD_THRESHOLD",
           "DubPlan", "check_dub_inputs", "plan_dub"]
